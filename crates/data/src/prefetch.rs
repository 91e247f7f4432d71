//! Reading ahead: a [`BlockReader`] on its own thread fills the next
//! batches while the caller trains on the current one.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use crate::DataError;
use crate::batch::Batch;
use crate::blocks::{BlockReader, Position};
use crate::source::BatchSource;

/// Batches from a reader thread, `depth` batches ahead at most.
pub struct Prefetcher {
    rx: Receiver<Result<Batch, DataError>>,
    recycle: SyncSender<Batch>,
    handle: Option<JoinHandle<BlockReader>>,
    done: bool,
}

impl Prefetcher {
    /// Starts reading from `reader`'s current position.
    pub fn spawn(mut reader: BlockReader, batch_size: usize, depth: usize) -> Result<Self, DataError> {
        let depth = depth.max(1);
        let (tx, rx) = sync_channel(depth);
        let (recycle, recycled) = sync_channel::<Batch>(depth + 2);
        let slots = reader.schema().slots.len();
        let dense = reader.schema().dense.len();
        let handle = std::thread::Builder::new()
            .name("vfl-reader".into())
            .spawn(move || {
                loop {
                    let mut b = recycled.try_recv().unwrap_or_else(|_| Batch::new(slots, dense));
                    match reader.fill(&mut b, batch_size) {
                        Ok(0) => break,
                        Ok(_) => {
                            if tx.send(Ok(b)).is_err() {
                                break;
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            break;
                        }
                    }
                }
                reader
            })
            .map_err(DataError::ReaderThread)?;
        Ok(Prefetcher {
            rx,
            recycle,
            handle: Some(handle),
            done: false,
        })
    }

    /// The next batch, or `None` at the end of the data.
    pub fn next_batch(&mut self) -> Result<Option<Batch>, DataError> {
        if self.done {
            return Ok(None);
        }
        match self.rx.recv() {
            Ok(r) => r.map(Some),
            Err(_) => {
                self.done = true;
                Ok(None)
            }
        }
    }

    /// Returns a batch's buffers for reuse.
    pub fn recycle(&self, b: Batch) {
        let _ = self.recycle.try_send(b);
    }

    /// Waits for the reader thread and returns the reader (e.g. for its
    /// skip count).
    pub fn finish(mut self) -> Option<BlockReader> {
        drop(std::mem::replace(&mut self.rx, sync_channel(1).1));
        self.handle.take().and_then(|h| h.join().ok())
    }
}

/// The reader position just after `batch` (its last row's block and the
/// next record): where a resumed run must continue.
pub fn position_after(batch: &Batch) -> Option<Position> {
    batch.sources.last().map(|s| Position {
        block: s.block as usize,
        record: s.record + 1,
    })
}
