//! Block assignment for several worker pairs (scale-out, issue 16): the
//! leader's coordinator hands an epoch's data blocks to worker pairs on
//! demand, so faster pairs take more, and every block is trained exactly
//! once per epoch. A state machine without I/O: inputs are a worker's
//! request, its report that a block is done, and the loss of a worker;
//! outputs are grants. The coordinator tells the follower's side the same
//! grants, so both workers of a pair read the same block.
//!
//! Determinism: the grants depend only on the epoch's block order (the
//! same seeded shuffle a single pair uses) and on the order of the
//! requests. In synchronous mode the pairs advance in lockstep, so the
//! requests of one step are known together; [`Assigner::grant_in_order`]
//! serves them by worker index, and a run with the same N grants the same
//! blocks to the same workers.
//!
//! A lost worker's block goes back to the front of the queue and is
//! trained again from its start by whoever asks next (in synchronous mode
//! the job resumes from its coordinated checkpoint instead, see
//! docs/scale-out.md).

use std::collections::{BTreeMap, VecDeque};

/// An answer to a worker's request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Grant {
    /// Train this block (index in the epoch's order, and its id).
    Block { index: usize, id: String },
    /// Nothing to hand out now, but blocks are in flight: one may come
    /// back if its worker is lost. Ask again later.
    Wait,
    /// Every block of the epoch is done.
    EpochDone,
}

/// Refusals: a worker that breaks the protocol.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AssignError {
    #[error("worker {worker}: there are only {workers} workers")]
    UnknownWorker { worker: usize, workers: usize },
    #[error("worker {worker} asked for a block while it holds block {holds}")]
    AlreadyHolds { worker: usize, holds: usize },
    #[error("assignment state of a checkpoint: {why}")]
    BadState { why: &'static str },
    #[error("worker {worker} reported block {index} done, but holds {holds}")]
    NotHeld { worker: usize, index: usize, holds: String },
}

/// Where an epoch's assignment stands, for checkpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AssignState {
    /// Blocks not yet granted, in the order they will be (returned blocks
    /// first).
    pub queue: Vec<usize>,
    /// Worker -> the block it holds.
    pub held: BTreeMap<usize, usize>,
    /// How many blocks are done.
    pub done: usize,
}

/// One epoch's assignment of blocks to `workers` worker pairs.
#[derive(Clone, Debug)]
pub struct Assigner {
    order: Vec<String>,
    workers: usize,
    queue: VecDeque<usize>,
    held: BTreeMap<usize, usize>,
    done: Vec<bool>,
    done_count: usize,
}

impl Assigner {
    /// An epoch over `order` (the block ids, already in the epoch's
    /// order) for `workers` worker pairs.
    pub fn new(order: Vec<String>, workers: usize) -> Self {
        let n = order.len();
        Assigner {
            order,
            workers,
            queue: (0..n).collect(),
            held: BTreeMap::new(),
            done: vec![false; n],
            done_count: 0,
        }
    }

    /// Resumes an epoch from a checkpoint's state. Blocks that were held
    /// stay with their workers (which resume them at their recorded
    /// positions).
    pub fn restore(order: Vec<String>, workers: usize, st: &AssignState) -> Result<Self, AssignError> {
        let mut a = Assigner::new(order, workers);
        for &w in st.held.keys() {
            a.check_worker(w)?;
        }
        let n = a.order.len();
        a.done = vec![true; n];
        for &i in st.queue.iter().chain(st.held.values()) {
            match a.done.get_mut(i) {
                None => {
                    return Err(AssignError::BadState {
                        why: "a block index past the epoch's blocks",
                    });
                }
                Some(open) if !*open => {
                    return Err(AssignError::BadState {
                        why: "a block listed twice",
                    });
                }
                Some(open) => *open = false,
            }
        }
        a.queue = st.queue.iter().copied().collect();
        a.held = st.held.clone();
        a.done_count = a.done.iter().filter(|d| **d).count();
        Ok(a)
    }

    /// The state to checkpoint.
    pub fn state(&self) -> AssignState {
        AssignState {
            queue: self.queue.iter().copied().collect(),
            held: self.held.clone(),
            done: self.done_count,
        }
    }

    fn check_worker(&self, worker: usize) -> Result<(), AssignError> {
        if worker >= self.workers {
            return Err(AssignError::UnknownWorker {
                worker,
                workers: self.workers,
            });
        }
        Ok(())
    }

    /// A worker asks for its next block.
    pub fn grant(&mut self, worker: usize) -> Result<Grant, AssignError> {
        self.check_worker(worker)?;
        if let Some(&holds) = self.held.get(&worker) {
            return Err(AssignError::AlreadyHolds { worker, holds });
        }
        if let Some(index) = self.queue.pop_front() {
            self.held.insert(worker, index);
            return Ok(Grant::Block {
                index,
                id: self.order[index].clone(),
            });
        }
        Ok(if self.held.is_empty() {
            Grant::EpochDone
        } else {
            Grant::Wait
        })
    }

    /// Serves the requests of one synchronous step by worker index (so the
    /// grants do not depend on which request arrived first).
    pub fn grant_in_order(&mut self, workers: &[usize]) -> Result<Vec<(usize, Grant)>, AssignError> {
        let mut sorted = workers.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        sorted.into_iter().map(|w| Ok((w, self.grant(w)?))).collect()
    }

    /// A worker has trained its block to the end.
    pub fn finish(&mut self, worker: usize, index: usize) -> Result<(), AssignError> {
        self.check_worker(worker)?;
        match self.held.get(&worker) {
            Some(&i) if i == index => {
                self.held.remove(&worker);
                self.done[index] = true;
                self.done_count += 1;
                Ok(())
            }
            other => Err(AssignError::NotHeld {
                worker,
                index,
                holds: other.map_or("nothing".into(), |i| format!("block {i}")),
            }),
        }
    }

    /// A worker is gone: its block goes back to the front of the queue.
    /// Returns that block, if it held one.
    pub fn lost(&mut self, worker: usize) -> Option<usize> {
        let index = self.held.remove(&worker)?;
        self.queue.push_front(index);
        Some(index)
    }

    /// Whether every block of the epoch is done.
    pub fn epoch_done(&self) -> bool {
        self.done_count == self.order.len()
    }

    /// The block a worker holds.
    pub fn held_by(&self, worker: usize) -> Option<usize> {
        self.held.get(&worker).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("b{i}")).collect()
    }

    #[test]
    fn hands_out_every_block_then_ends_the_epoch() {
        let mut a = Assigner::new(ids(3), 2);
        assert_eq!(
            a.grant(0).unwrap(),
            Grant::Block {
                index: 0,
                id: "b0".into()
            }
        );
        assert_eq!(
            a.grant(1).unwrap(),
            Grant::Block {
                index: 1,
                id: "b1".into()
            }
        );
        a.finish(1, 1).unwrap();
        assert_eq!(
            a.grant(1).unwrap(),
            Grant::Block {
                index: 2,
                id: "b2".into()
            }
        );
        a.finish(1, 2).unwrap();
        // Block 0 is still in flight: the faster worker waits.
        assert_eq!(a.grant(1).unwrap(), Grant::Wait);
        a.finish(0, 0).unwrap();
        assert_eq!(a.grant(1).unwrap(), Grant::EpochDone);
        assert!(a.epoch_done());
    }

    #[test]
    fn a_worker_that_asks_twice_is_refused() {
        let mut a = Assigner::new(ids(3), 2);
        a.grant(0).unwrap();
        assert_eq!(a.grant(0), Err(AssignError::AlreadyHolds { worker: 0, holds: 0 }));
    }

    #[test]
    fn an_unknown_worker_is_refused() {
        let mut a = Assigner::new(ids(3), 2);
        assert_eq!(a.grant(2), Err(AssignError::UnknownWorker { worker: 2, workers: 2 }));
    }

    #[test]
    fn finishing_a_block_not_held_is_refused() {
        let mut a = Assigner::new(ids(3), 2);
        a.grant(0).unwrap();
        assert!(matches!(a.finish(0, 1), Err(AssignError::NotHeld { index: 1, .. })));
        assert!(matches!(a.finish(1, 0), Err(AssignError::NotHeld { worker: 1, .. })));
    }

    #[test]
    fn a_lost_workers_block_is_handed_out_next() {
        let mut a = Assigner::new(ids(4), 2);
        a.grant(0).unwrap();
        a.grant(1).unwrap();
        assert_eq!(a.lost(0), Some(0));
        assert_eq!(a.lost(0), None);
        assert_eq!(
            a.grant(1).err(),
            Some(AssignError::AlreadyHolds { worker: 1, holds: 1 })
        );
        a.finish(1, 1).unwrap();
        assert_eq!(
            a.grant(1).unwrap(),
            Grant::Block {
                index: 0,
                id: "b0".into()
            }
        );
    }

    #[test]
    fn a_synchronous_step_is_served_by_worker_index() {
        let mut a = Assigner::new(ids(4), 3);
        let g = a.grant_in_order(&[2, 0, 1]).unwrap();
        let got: Vec<(usize, usize)> = g
            .iter()
            .map(|(w, g)| match g {
                Grant::Block { index, .. } => (*w, *index),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got, [(0, 0), (1, 1), (2, 2)]);
    }

    #[test]
    fn state_round_trips_through_a_checkpoint() {
        let mut a = Assigner::new(ids(5), 2);
        a.grant(0).unwrap();
        a.grant(1).unwrap();
        a.finish(1, 1).unwrap();
        a.grant(1).unwrap();
        let st = a.state();
        let text = serde_json::to_string(&st).unwrap();
        let back: AssignState = serde_json::from_str(&text).unwrap();
        let mut b = Assigner::restore(ids(5), 2, &back).unwrap();
        assert_eq!(b.state(), st);
        assert_eq!((b.held_by(0), b.held_by(1)), (Some(0), Some(2)));
        assert_eq!(b.grant(0).err(), a.grant(0).err());
        b.finish(0, 0).unwrap();
        a.finish(0, 0).unwrap();
        assert_eq!(b.grant(0).unwrap(), a.grant(0).unwrap());
    }

    #[test]
    fn a_checkpoint_naming_an_unknown_worker_is_refused() {
        let st = AssignState {
            queue: vec![],
            held: BTreeMap::from([(7, 0)]),
            done: 0,
        };
        assert!(matches!(
            Assigner::restore(ids(2), 2, &st),
            Err(AssignError::UnknownWorker { worker: 7, .. })
        ));
    }

    #[test]
    fn a_checkpoint_listing_a_block_twice_is_refused() {
        let st = AssignState {
            queue: vec![1],
            held: BTreeMap::from([(0, 1)]),
            done: 0,
        };
        assert!(matches!(
            Assigner::restore(ids(2), 2, &st),
            Err(AssignError::BadState { .. })
        ));
        let st = AssignState {
            queue: vec![5],
            ..Default::default()
        };
        assert!(matches!(
            Assigner::restore(ids(2), 2, &st),
            Err(AssignError::BadState { .. })
        ));
    }

    proptest::proptest! {
        /// Workers of uneven speeds (each block takes a random number of
        /// ticks, per worker), some lost and replaced on the way: every
        /// block is finished exactly once, none is held by two workers at
        /// once, and faster workers take more.
        #[test]
        fn every_block_exactly_once_under_uneven_speeds(
            blocks in 1usize..40,
            speeds in proptest::collection::vec(1u32..6, 1..6),
            losses in proptest::collection::vec((0usize..6, 0u32..200), 0..4),
        ) {
            let workers = speeds.len();
            let mut a = Assigner::new(ids(blocks), workers);
            let mut finished = vec![0u32; blocks];
            // Per worker: the block it trains and the ticks left.
            let mut busy: Vec<Option<(usize, u32)>> = vec![None; workers];
            let mut taken = vec![0usize; workers];
            for tick in 0..100_000u32 {
                for &(w, at) in &losses {
                    if at == tick && w < workers {
                        a.lost(w);
                        busy[w] = None;
                    }
                }
                for w in 0..workers {
                    match busy[w] {
                        Some((i, 1)) => {
                            a.finish(w, i).unwrap();
                            finished[i] += 1;
                            busy[w] = None;
                        }
                        Some((i, left)) => busy[w] = Some((i, left - 1)),
                        None => {}
                    }
                    if busy[w].is_none()
                        && let Grant::Block { index, .. } = a.grant(w).unwrap()
                    {
                        busy[w] = Some((index, speeds[w]));
                        taken[w] += 1;
                    }
                }
                let mut held: Vec<usize> = busy.iter().flatten().map(|b| b.0).collect();
                held.sort_unstable();
                let n = held.len();
                held.dedup();
                proptest::prop_assert_eq!(n, held.len(), "a block held by two workers");
                if a.epoch_done() {
                    break;
                }
            }
            proptest::prop_assert!(a.epoch_done());
            proptest::prop_assert!(finished.iter().all(|&f| f == 1), "{finished:?}");
            for w in 0..workers {
                proptest::prop_assert_eq!(a.grant(w).unwrap(), Grant::EpochDone);
            }
            // Without losses, a strictly faster worker never took fewer
            // blocks than a slower one (give or take the one in flight).
            if losses.is_empty() {
                for x in 0..workers {
                    for y in 0..workers {
                        if speeds[x] < speeds[y] {
                            proptest::prop_assert!(taken[x] + 1 >= taken[y], "{speeds:?} {taken:?}");
                        }
                    }
                }
            }
        }
    }
}
