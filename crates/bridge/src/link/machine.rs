//! The reliable link as a state machine without I/O.
//!
//! Inputs are the driver's messages ([`Machine::send`]), frames that arrive
//! ([`Machine::receive`]), a connection lost or (re)established
//! ([`Machine::down`], [`Machine::up`]) and timer ticks ([`Machine::tick`]).
//! Outputs are frames to write ([`Machine::poll_transmit`]) and messages
//! delivered to the driver, exactly once and in order
//! ([`Machine::poll_message`]). The transport (tonic streams in
//! [`super::Core`]) only carries frames; everything that decides something
//! is here, so it is tested without sockets (the property tests in
//! `tests/cases/link_machine.rs` drive two machines through cuts, duplicates,
//! reorderings and restarts).
//!
//! ```text
//!            up(same process)                 down(why)
//!   Down ───────────────────────▶ Up ───────────────────────▶ Down
//!     │   (resend every unacked)   │   (frames in flight lost)
//!     │                            │
//!     └── up(other process) ──▶ Err(PeerRestarted): the driver starts a
//!                                new session from the newest checkpoint
//! ```

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::seq::{self, Arrived};

/// Acknowledge at the latest after this many messages received without
/// sending any (a one-way stream, as in eval, must not make the sender keep
/// everything until the next heartbeat).
pub const ACK_EVERY: u64 = 16;

/// One frame of a session, as the machine sees it: sequence number, the
/// sender's acknowledgement, heartbeat or not, and the session it names.
pub trait Frame: Clone {
    fn seq(&self) -> u64;
    fn ack(&self) -> u64;
    fn stamp(&mut self, seq: u64, ack: u64);
    fn is_heartbeat(&self) -> bool;
    /// A heartbeat of session `session_id` carrying `ack`.
    fn heartbeat(session_id: &str, ack: u64) -> Self;
    /// The session the sender says the frame belongs to (if it says).
    fn session(&self) -> Option<&str>;
}

/// A violation of the link protocol by the peer (or a peer restart): the
/// session cannot go on as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("a message of session `{got}` arrived on the stream of session {session}")]
    WrongSession { got: String, session: String },
    #[error("the peer acknowledges message {ack} of session {session}, but only {sent} were sent")]
    AckOfUnsent { ack: u64, sent: u64, session: String },
    #[error("message {seq} of session {session} arrived after message {last}: messages are missing")]
    Gap { seq: u64, last: u64, session: String },
    #[error("the peer has not acknowledged {count} messages of session {session} (at most {max} may wait)")]
    Unacknowledged { count: usize, max: usize, session: String },
    #[error("the peer sent more than {max} messages of session {session} ahead of this party")]
    Ahead { max: usize, session: String },
    #[error("the peer restarted (process {was} is now {now})")]
    PeerRestarted { was: String, now: String },
}

/// Whether the machine has a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conn {
    Up,
    /// Lost (why), until [`Machine::up`].
    Down(String),
}

/// One session's sequencing, acknowledgements, resend and heartbeats.
#[derive(Debug)]
pub struct Machine<Out: Frame, In: Frame> {
    session_id: String,
    /// The peer process this session belongs to; another one means it
    /// restarted.
    peer_process: String,
    conn: Conn,
    /// A loss the driver has not been told about yet.
    unreported: Option<String>,
    /// Highest sequence number received (our acknowledgement).
    received: u64,
    /// The highest acknowledgement sent so far.
    ack_sent: u64,
    unacked: seq::Unacked<Out>,
    /// Frames to write, in order.
    transmit: VecDeque<Out>,
    /// New messages for the driver, in order.
    ready: VecDeque<In>,
    /// A protocol error, reported before anything else.
    fatal: Option<LinkError>,
    max_queue: usize,
    heartbeat_every: Duration,
    /// When [`Machine::tick`] last gave a heartbeat.
    last_beat: Option<Instant>,
}

impl<Out: Frame, In: Frame> Machine<Out, In> {
    /// A new session, connected, with nothing sent or received.
    pub fn new(session_id: String, peer_process: String, max_queue: usize, heartbeat_every: Duration) -> Self {
        Self {
            session_id,
            peer_process,
            conn: Conn::Up,
            unreported: None,
            received: 0,
            ack_sent: 0,
            unacked: seq::Unacked::default(),
            transmit: VecDeque::new(),
            ready: VecDeque::new(),
            fatal: None,
            max_queue,
            heartbeat_every,
            last_beat: None,
        }
    }

    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    pub fn peer_process(&self) -> &str {
        &self.peer_process
    }

    pub fn conn(&self) -> &Conn {
        &self.conn
    }

    /// Our acknowledgement: the highest sequence number received.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Messages sent and not yet acknowledged.
    pub fn unacknowledged(&self) -> usize {
        self.unacked.len()
    }

    /// Messages delivered to the machine and not yet taken by the driver.
    pub fn ready(&self) -> usize {
        self.ready.len()
    }

    /// Numbers and keeps a message of the driver and queues it for writing
    /// (if connected; otherwise it waits for the resend). Refused while
    /// connected if the peer leaves too many messages unacknowledged: during
    /// an outage messages wait, whoever is to blame.
    pub fn send(&mut self, mut m: Out) -> Result<(), LinkError> {
        if self.conn == Conn::Up && self.unacked.len() >= self.max_queue {
            return Err(LinkError::Unacknowledged {
                count: self.unacked.len(),
                max: self.max_queue,
                session: self.session_id.clone(),
            });
        }
        m.stamp(self.unacked.next_seq(), self.received);
        self.ack_sent = self.ack_sent.max(self.received);
        self.unacked.push(m.clone());
        if self.conn == Conn::Up {
            self.transmit.push_back(m);
        }
        Ok(())
    }

    /// The next frame to write.
    pub fn poll_transmit(&mut self) -> Option<Out> {
        self.transmit.pop_front()
    }

    /// Handles one arrived frame: its acknowledgement, then heartbeat,
    /// duplicate (dropped), gap (an error), or a new message for the
    /// driver. Returns which it was ([`Arrived::Gap`] is an error). An
    /// error is also kept for [`Machine::poll_message`].
    pub fn receive(&mut self, m: In) -> Result<Arrived, LinkError> {
        let r = self.accept(m);
        if let Err(e) = &r {
            self.fatal.get_or_insert_with(|| e.clone());
        }
        r
    }

    fn accept(&mut self, m: In) -> Result<Arrived, LinkError> {
        if let Some(s) = m.session()
            && s != self.session_id
        {
            return Err(LinkError::WrongSession {
                got: crate::sanitize(s, 64),
                session: self.session_id.clone(),
            });
        }
        self.unacked
            .acknowledge(m.ack())
            .map_err(|sent| LinkError::AckOfUnsent {
                ack: m.ack(),
                sent,
                session: self.session_id.clone(),
            })?;
        let seq = m.seq();
        match seq::classify(seq, m.is_heartbeat(), self.received) {
            a @ (Arrived::Heartbeat | Arrived::Duplicate) => return Ok(a),
            Arrived::Gap { last } => {
                return Err(LinkError::Gap {
                    seq,
                    last,
                    session: self.session_id.clone(),
                });
            }
            Arrived::New => {}
        }
        if self.ready.len() >= self.max_queue {
            return Err(LinkError::Ahead {
                max: self.max_queue,
                session: self.session_id.clone(),
            });
        }
        self.received = seq;
        self.ready.push_back(m);
        if self.conn == Conn::Up && seq >= self.ack_sent + ACK_EVERY {
            // Owed once: recorded as sent by the transport when it is.
            self.ack_sent = seq;
            let hb = self.heartbeat();
            self.transmit.push_back(hb);
        }
        Ok(Arrived::New)
    }

    /// What the driver gets next: a protocol error first, then delivered
    /// messages in order, then a loss it was not told about yet.
    pub fn poll_message(&mut self) -> Result<Option<In>, Polled> {
        if let Some(e) = self.fatal.take() {
            return Err(Polled::Fatal(e));
        }
        if let Some(m) = self.ready.pop_front() {
            return Ok(Some(m));
        }
        if let Some(why) = self.unreported.take() {
            return Err(Polled::Down(why));
        }
        Ok(None)
    }

    /// A loss the driver was not told about yet (taken: told now).
    pub fn take_loss(&mut self) -> Option<String> {
        self.unreported.take()
    }

    /// The connection is lost: frames not yet written wait for the resend
    /// (heartbeats are dropped).
    pub fn down(&mut self, why: impl Into<String>) {
        if self.conn == Conn::Up {
            let why = why.into();
            self.unreported = Some(why.clone());
            self.conn = Conn::Down(why);
        }
        self.transmit.clear();
    }

    /// A connection to the peer process `peer_process` is established. The
    /// same process: every unacknowledged message is queued again (the peer
    /// drops those it has); returns how many. Another process: it
    /// restarted, this session cannot continue.
    pub fn up(&mut self, peer_process: &str) -> Result<usize, LinkError> {
        if peer_process != self.peer_process {
            return Err(LinkError::PeerRestarted {
                was: self.peer_process.clone(),
                now: peer_process.to_string(),
            });
        }
        self.conn = Conn::Up;
        self.unreported = None;
        self.transmit.clear();
        let ack = self.received;
        for (_, m) in self.unacked.iter() {
            let mut m = m.clone();
            m.stamp(m.seq(), ack);
            self.transmit.push_back(m);
        }
        Ok(self.transmit.len())
    }

    /// A heartbeat carrying our acknowledgement now.
    pub fn heartbeat(&self) -> Out {
        Out::heartbeat(&self.session_id, self.received)
    }

    /// The transport wrote a frame carrying acknowledgement `ack`.
    pub fn ack_sent(&mut self, ack: u64) {
        self.ack_sent = self.ack_sent.max(ack);
    }

    /// Time passes: a heartbeat if connected and the last one is at least
    /// the heartbeat interval old. `now` should be the timer's deadline
    /// (not the jittery moment it fired), so that beats are one interval
    /// apart.
    pub fn tick(&mut self, now: Instant) -> Option<Out> {
        if self.conn != Conn::Up
            || self
                .last_beat
                .is_some_and(|t| now.saturating_duration_since(t) < self.heartbeat_every)
        {
            return None;
        }
        self.last_beat = Some(now);
        Some(self.heartbeat())
    }
}

/// Why [`Machine::poll_message`] has no message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Polled {
    /// The peer broke the protocol.
    Fatal(LinkError),
    /// The connection was lost (why); the driver reconnects.
    Down(String),
}
