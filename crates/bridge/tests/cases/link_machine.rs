//! The link's state machine without sockets: two machines exchange frames
//! over a simulated network that cuts connections (also leaving them dead
//! for a while, one side noticing and the other still writing into the
//! void), duplicates frames, reorders them and restarts a side, in orders
//! proptest picks. Every
//! message reaches the other driver exactly once and in order; a reordering
//! the sequence numbers cannot absorb is reported as an error, never
//! delivered wrongly; a restarted peer is always noticed.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use vfl_bridge::link::seq::Arrived;
use vfl_bridge::link::{Conn, Frame, LinkError, Machine, Polled};

#[derive(Clone, Debug, PartialEq)]
struct F {
    seq: u64,
    ack: u64,
    heartbeat: bool,
    session: String,
    payload: u64,
}

impl Frame for F {
    fn seq(&self) -> u64 {
        self.seq
    }
    fn ack(&self) -> u64 {
        self.ack
    }
    fn stamp(&mut self, seq: u64, ack: u64) {
        (self.seq, self.ack) = (seq, ack);
    }
    fn is_heartbeat(&self) -> bool {
        self.heartbeat
    }
    fn heartbeat(session_id: &str, ack: u64) -> Self {
        F {
            seq: 0,
            ack,
            heartbeat: true,
            session: session_id.into(),
            payload: 0,
        }
    }
    fn session(&self) -> Option<&str> {
        Some(&self.session)
    }
}

fn msg(session: &str, payload: u64) -> F {
    F {
        seq: 0,
        ack: 0,
        heartbeat: false,
        session: session.into(),
        payload,
    }
}

type M = Machine<F, F>;

/// One side: its machine, what its driver sent and what it was delivered
/// (payloads, in order).
struct Side {
    m: M,
    process: String,
    sent: Vec<u64>,
    got: Vec<u64>,
}

impl Side {
    fn new(session: &str, process: &str, peer: &str) -> Self {
        Side {
            m: M::new(session.into(), peer.into(), 1024, Duration::from_millis(10)),
            process: process.into(),
            sent: Vec::new(),
            got: Vec::new(),
        }
    }

    /// Writes what the machine gives onto the wire.
    fn pump(&mut self, wire: &mut VecDeque<F>) {
        while let Some(f) = self.m.poll_transmit() {
            wire.push_back(f);
        }
    }

    /// Takes every delivered message; the first error, if any.
    fn collect(&mut self) -> Option<LinkError> {
        loop {
            match self.m.poll_message() {
                Ok(Some(f)) => self.got.push(f.payload),
                Ok(None) | Err(Polled::Down(_)) => return None,
                Err(Polled::Fatal(e)) => return Some(e),
            }
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// The leader's (0) or follower's (1) driver sends a message.
    Send(usize),
    /// Up to n frames in flight towards side `to` arrive.
    Deliver { to: usize, n: usize },
    /// The frame at the head of the way towards `to` arrives twice.
    Duplicate { to: usize },
    /// Two frames in flight towards `to` swap places.
    Swap { to: usize, i: usize },
    /// The connection drops (frames in flight are lost); `noticed` says
    /// which sides notice before the reconnect.
    Cut { noticed: usize },
    /// The connection dies and stays dead until [`Op::Reconnect`]: what a
    /// side that has not noticed writes meanwhile is lost, what a side that
    /// noticed sends waits.
    Die { noticed: usize },
    /// A dead connection is replaced: both sides notice, then reconnect.
    Reconnect,
    /// The heartbeat timer of a side fires.
    Tick(usize),
    /// The follower process restarts.
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..2usize).prop_map(Op::Send),
        6 => (0..2usize, 1..5usize).prop_map(|(to, n)| Op::Deliver { to, n }),
        1 => (0..2usize).prop_map(|to| Op::Duplicate { to }),
        1 => (0..2usize, 0..8usize).prop_map(|(to, i)| Op::Swap { to, i }),
        1 => (0..3usize).prop_map(|noticed| Op::Cut { noticed }),
        1 => (0..3usize).prop_map(|noticed| Op::Die { noticed }),
        1 => Just(Op::Reconnect),
        2 => (0..2usize).prop_map(Op::Tick),
        1 => Just(Op::Restart),
    ]
}

/// Two parties, the ways between them and a clock.
struct World {
    sides: [Side; 2],
    /// Frames in flight towards side 0 and side 1.
    wire: [VecDeque<F>; 2],
    sessions: u32,
    /// The connection is dead: nothing written arrives.
    dead: bool,
    now: Instant,
    next_payload: u64,
}

impl World {
    fn new() -> Self {
        World {
            sides: [Side::new("s1", "leader", "f1"), Side::new("s1", "f1", "leader")],
            wire: [VecDeque::new(), VecDeque::new()],
            sessions: 1,
            dead: false,
            now: Instant::now(),
            next_payload: 1,
        }
    }

    fn pump(&mut self, from: usize) {
        self.sides[from].pump(&mut self.wire[1 - from]);
        if self.dead {
            self.wire = [VecDeque::new(), VecDeque::new()];
        }
    }

    /// Both sides notice the loss and reconnect to each other.
    fn reconnect(&mut self) {
        self.dead = false;
        for s in 0..2 {
            self.sides[s].m.down("cut");
        }
        for s in 0..2 {
            let peer = self.sides[1 - s].process.clone();
            self.sides[s].m.up(&peer).expect("the same processes");
            self.pump(s);
        }
    }

    /// Applies one operation; the first protocol error it causes, if any.
    fn apply(&mut self, op: &Op) -> Option<LinkError> {
        match *op {
            Op::Send(s) => {
                let session = self.sides[s].m.session_id().to_string();
                let p = self.next_payload;
                self.next_payload += 1;
                self.sides[s]
                    .m
                    .send(msg(&session, p))
                    .expect("queues are far from full");
                self.sides[s].sent.push(p);
                self.pump(s);
            }
            Op::Deliver { to, n } => {
                for _ in 0..n {
                    let Some(f) = self.wire[to].pop_front() else { break };
                    let _ = self.sides[to].m.receive(f);
                    if let Some(e) = self.sides[to].collect() {
                        return Some(e);
                    }
                    self.pump(to);
                }
            }
            Op::Duplicate { to } => {
                if let Some(f) = self.wire[to].front().cloned() {
                    self.wire[to].push_front(f);
                }
            }
            Op::Swap { to, i } => {
                let w = &mut self.wire[to];
                if w.len() >= 2 {
                    let i = i % (w.len() - 1);
                    w.swap(i, i + 1);
                }
            }
            Op::Cut { noticed } => {
                self.wire = [VecDeque::new(), VecDeque::new()];
                for s in 0..2 {
                    if noticed == 2 || noticed == s {
                        self.sides[s].m.down("cut");
                    }
                }
                // Reconnect: each side learns the other's process.
                self.dead = false;
                for s in 0..2 {
                    let peer = self.sides[1 - s].process.clone();
                    self.sides[s].m.up(&peer).expect("the same processes");
                    self.pump(s);
                }
            }
            Op::Die { noticed } => {
                self.dead = true;
                self.wire = [VecDeque::new(), VecDeque::new()];
                for s in 0..2 {
                    if noticed == 2 || noticed == s {
                        self.sides[s].m.down("died");
                    }
                }
            }
            Op::Reconnect => {
                if self.dead {
                    self.reconnect();
                }
            }
            Op::Tick(s) => {
                self.now += Duration::from_millis(10);
                if let Some(hb) = self.sides[s].m.tick(self.now)
                    && !self.dead
                {
                    self.wire[1 - s].push_back(hb);
                }
            }
            Op::Restart => {
                self.sessions += 1;
                let process = format!("f{}", self.sessions);
                // The leader meets a new process: never taken for the old one.
                match self.sides[0].m.up(&process) {
                    Err(LinkError::PeerRestarted { was, now }) => {
                        assert_eq!(
                            (was.as_str(), now.as_str()),
                            (self.sides[1].process.as_str(), process.as_str())
                        )
                    }
                    other => panic!("a restart was not noticed: {other:?}"),
                }
                // Both start a new session (the drivers resume from a
                // checkpoint); what was in flight is gone with the process.
                let session = format!("s{}", self.sessions);
                self.sides = [
                    Side::new(&session, "leader", &process),
                    Side::new(&session, &process, "leader"),
                ];
                self.wire = [VecDeque::new(), VecDeque::new()];
                self.dead = false;
            }
        }
        None
    }

    /// Each side has been delivered exactly the other's messages of this
    /// session so far, in order: a prefix of what was sent.
    fn check_prefix(&self) {
        for s in 0..2 {
            let (got, sent) = (&self.sides[s].got, &self.sides[1 - s].sent);
            assert!(
                got.len() <= sent.len(),
                "side {s} got more than was sent: {got:?} vs {sent:?}"
            );
            assert_eq!(got[..], sent[..got.len()], "side {s}: out of order or repeated");
        }
    }

    /// Lets every frame arrive (with heartbeats for the acknowledgements).
    fn settle(&mut self) -> Option<LinkError> {
        for _ in 0..3 {
            for s in 0..2 {
                if let Some(e) = self.apply(&Op::Tick(s)) {
                    return Some(e);
                }
            }
            while !self.wire[0].is_empty() || !self.wire[1].is_empty() {
                for to in 0..2 {
                    if let Some(e) = self.apply(&Op::Deliver { to, n: usize::MAX }) {
                        return Some(e);
                    }
                }
            }
        }
        None
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Cuts, duplicates, heartbeats and restarts in any order: exactly
    /// once, in order; after the network settles everything sent arrived and
    /// was acknowledged. A reordering either does no harm (the sequence
    /// numbers absorb it) or is reported as an error; what was delivered
    /// before it is still an in-order prefix.
    #[test]
    fn exactly_once_in_order_through_cuts_duplicates_reorderings_and_restarts(ops in prop::collection::vec(op(), 1..120)) {
        let mut w = World::new();
        let mut swapped = false;
        for op in &ops {
            swapped |= matches!(op, Op::Swap { .. });
            let err = w.apply(op);
            w.check_prefix();
            if let Some(e) = err {
                // Only a reordering that came before can break the order
                // the link relies on, and it is reported as a gap.
                prop_assert!(swapped, "{e} without a reordering");
                prop_assert!(matches!(e, LinkError::Gap { .. }), "{e}");
                return Ok(());
            }
        }
        // A last reconnect resends whatever the cuts left unacknowledged.
        if let Some(e) = w.apply(&Op::Cut { noticed: 2 }).or_else(|| w.settle()) {
            prop_assert!(swapped, "{e} without a reordering");
            prop_assert!(matches!(e, LinkError::Gap { .. }), "{e}");
            return Ok(());
        }
        w.check_prefix();
        for s in 0..2 {
            prop_assert_eq!(&w.sides[s].got, &w.sides[1 - s].sent);
            prop_assert_eq!(w.sides[s].m.unacknowledged(), 0);
        }
    }
}

/// A frame sent twice on one connection is dropped the second time.
#[test]
fn a_duplicate_is_dropped() {
    let mut w = World::new();
    w.apply(&Op::Send(0));
    w.apply(&Op::Duplicate { to: 1 });
    assert!(w.apply(&Op::Deliver { to: 1, n: 2 }).is_none());
    assert_eq!(w.sides[1].got, [1]);
}

/// Messages sent while the connection is down wait and go out on the
/// reconnect; messages the peer already has are resent and dropped there.
#[test]
fn messages_wait_through_an_outage() {
    let mut w = World::new();
    w.apply(&Op::Send(0));
    w.apply(&Op::Deliver { to: 1, n: 1 });
    w.sides[0].m.down("cut");
    assert_eq!(*w.sides[0].m.conn(), Conn::Down("cut".into()));
    w.apply(&Op::Send(0));
    assert!(w.wire[1].is_empty(), "nothing is written while down");
    assert_eq!(w.sides[0].m.up("f1"), Ok(2));
    w.pump(0);
    let mut arrived = Vec::new();
    while let Some(f) = w.wire[1].pop_front() {
        arrived.push(w.sides[1].m.receive(f).unwrap());
    }
    assert_eq!(arrived, [Arrived::Duplicate, Arrived::New]);
}

/// The loss is reported to the driver once, after the messages that came
/// before it.
#[test]
fn a_loss_is_reported_once_after_earlier_messages() {
    let mut w = World::new();
    w.apply(&Op::Send(0));
    let f = w.wire[1].pop_front().unwrap();
    w.sides[1].m.receive(f).unwrap();
    w.sides[1].m.down("reset by peer");
    assert!(matches!(w.sides[1].m.poll_message(), Ok(Some(F { payload: 1, .. }))));
    assert_eq!(w.sides[1].m.poll_message(), Err(Polled::Down("reset by peer".into())));
    assert_eq!(w.sides[1].m.poll_message(), Ok(None));
}

/// Every sixteenth message received without sending any is acknowledged
/// right away (a one-way stream must not make the sender keep everything
/// until the next heartbeat).
#[test]
fn a_one_way_stream_is_acknowledged_every_sixteen_messages() {
    let mut w = World::new();
    for _ in 0..16 {
        w.apply(&Op::Send(0));
    }
    w.apply(&Op::Deliver { to: 1, n: 16 });
    let acks: Vec<u64> = w.wire[0].iter().filter(|f| f.heartbeat).map(|f| f.ack).collect();
    assert_eq!(acks, [16]);
    w.apply(&Op::Deliver { to: 0, n: 1 });
    assert_eq!(w.sides[0].m.unacknowledged(), 0);
}

/// A heartbeat is due once per interval, and never while down.
#[test]
fn heartbeats_follow_the_interval() {
    let mut m = M::new("s".into(), "p".into(), 8, Duration::from_secs(1));
    let t = Instant::now();
    assert!(m.tick(t).is_some());
    assert!(m.tick(t + Duration::from_millis(999)).is_none());
    assert!(m.tick(t + Duration::from_secs(1)).is_some());
    m.down("cut");
    assert!(m.tick(t + Duration::from_secs(5)).is_none());
}

/// A peer that leaves `max_queue` messages unacknowledged is refused more
/// (while connected; during an outage messages wait).
#[test]
fn too_many_unacknowledged_messages_are_refused_while_connected() {
    let mut m = M::new("s".into(), "p".into(), 2, Duration::from_secs(1));
    m.send(msg("s", 1)).unwrap();
    m.send(msg("s", 2)).unwrap();
    assert!(matches!(
        m.send(msg("s", 3)),
        Err(LinkError::Unacknowledged { count: 2, max: 2, .. })
    ));
    m.down("cut");
    m.send(msg("s", 3)).unwrap();
}

/// A peer that sends `max_queue` messages the driver has not taken is cut.
#[test]
fn a_peer_far_ahead_is_an_error() {
    let mut m = M::new("s".into(), "p".into(), 2, Duration::from_secs(1));
    for seq in 1..=2 {
        m.receive(F { seq, ..msg("s", seq) }).unwrap();
    }
    assert!(matches!(
        m.receive(F { seq: 3, ..msg("s", 3) }),
        Err(LinkError::Ahead { max: 2, .. })
    ));
    // The error comes first, before the messages already delivered.
    assert!(matches!(m.poll_message(), Err(Polled::Fatal(LinkError::Ahead { .. }))));
}
