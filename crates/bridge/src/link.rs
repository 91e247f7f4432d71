//! A reliable session over a connection the network may cut.
//!
//! Every message carries a sequence number (per direction) and the highest
//! sequence number its sender has received. A sender keeps each message
//! until the peer acknowledges it; after a reconnect it resends all that are
//! unacknowledged, and the receiver drops those it already has. So each
//! message reaches the training driver exactly once, in order, however often
//! the connection drops. Both sides send heartbeats from a task of their own
//! (also while the driver computes); a peer silent for longer than the peer
//! timeout is taken as gone.
//!
//! On a lost connection the follower reconnects (with its session id and
//! the same process id) and the leader waits for it, each for up to the peer
//! timeout. A peer that comes back with a different process id restarted:
//! its unsaved state is gone, so the link reports
//! [`BridgeError::PeerRestarted`] and keeps the peer's new session for
//! [`LeaderLink::restart`] / [`FollowerLink::restart`]: the driver then starts
//! over from the newest checkpoint both parties hold.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use crate::pb::{
    self, FollowerMessage, HelloReply, LeaderMessage, follower_message::Msg as FMsg, leader_message::Msg as LMsg,
};
use crate::{BridgeError, Security, Settings, client, server};

pub mod machine;
pub use machine::{Conn, Frame, LinkError, Machine, Polled};

/// The sequence and acknowledgement rules of the link, without I/O: what
/// an arrived message is, which acknowledgements are valid, and the queue
/// of sent messages awaiting acknowledgement. [`Core`] applies them; the
/// fuzz target `link` drives them with arbitrary sequences.
pub mod seq {
    use std::collections::VecDeque;

    /// What an arrived message is, given the highest sequence number
    /// received so far.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Arrived {
        /// Not sequenced; only its acknowledgement counts.
        Heartbeat,
        /// Already received (resent after a reconnect): dropped.
        Duplicate,
        /// The next one: delivered.
        New,
        /// Messages between `last` and this one are missing.
        Gap { last: u64 },
    }

    pub fn classify(seq: u64, heartbeat: bool, last: u64) -> Arrived {
        if heartbeat {
            Arrived::Heartbeat
        } else if seq <= last {
            Arrived::Duplicate
        } else if Some(seq) == last.checked_add(1) {
            Arrived::New
        } else {
            Arrived::Gap { last }
        }
    }

    /// Messages sent and not yet acknowledged, in sequence order.
    #[derive(Debug)]
    pub struct Unacked<T> {
        next_seq: u64,
        queue: VecDeque<(u64, T)>,
    }

    impl<T> Default for Unacked<T> {
        fn default() -> Self {
            Self {
                next_seq: 1,
                queue: VecDeque::new(),
            }
        }
    }

    impl<T> Unacked<T> {
        /// The sequence number the next message gets.
        pub fn next_seq(&self) -> u64 {
            self.next_seq
        }

        /// Keeps `m` under the next sequence number; returns that number.
        pub fn push(&mut self, m: T) -> u64 {
            let seq = self.next_seq;
            self.next_seq += 1;
            self.queue.push_back((seq, m));
            seq
        }

        /// Drops what `ack` covers. An acknowledgement of a message never
        /// sent is an error (it would drop messages the peer lacks): the
        /// highest sequence number sent is returned then.
        pub fn acknowledge(&mut self, ack: u64) -> Result<(), u64> {
            if ack >= self.next_seq {
                return Err(self.next_seq - 1);
            }
            while self.queue.front().is_some_and(|(s, _)| *s <= ack) {
                self.queue.pop_front();
            }
            Ok(())
        }

        pub fn len(&self) -> usize {
            self.queue.len()
        }

        pub fn is_empty(&self) -> bool {
            self.queue.is_empty()
        }

        /// The waiting messages, oldest first (for the resend).
        pub fn iter(&self) -> impl Iterator<Item = &(u64, T)> {
            self.queue.iter()
        }
    }
}

/// Counts traffic and reconnects (for progress lines and metrics).
pub trait Meter: Send + Sync {
    fn sent(&self, _bytes: usize) {}
    fn received(&self, _bytes: usize) {}
    fn reconnected(&self) {}
    /// A message that arrived twice (resent after a reconnect) was dropped.
    fn duplicate(&self) {}
}

/// Timing and limits of a link.
#[derive(Clone)]
pub struct LinkOptions {
    /// A peer silent for this long is taken as gone; a lost peer gets as long
    /// again to come back.
    pub peer_timeout: Duration,
    /// How often each side sends a heartbeat.
    pub heartbeat: Duration,
    pub meter: Arc<dyn Meter>,
    /// Messages the peer may leave unacknowledged, and send ahead of this
    /// party; a peer that exceeds either is cut with an error.
    pub max_queue: usize,
    /// Restarts of the peer the session is started over for, at most.
    pub max_restarts: u32,
}

/// Default of [`LinkOptions::max_queue`]: far above what the protocol ever
/// has in flight (one message per step while training, 16 between
/// acknowledgements while evaluating).
pub const MAX_QUEUE: usize = 1024;

/// Default of [`LinkOptions::max_restarts`].
pub const MAX_RESTARTS: u32 = 10;

impl LinkOptions {
    /// Heartbeats every quarter of the peer timeout (50 ms to 5 s).
    pub fn new(peer_timeout: Duration, meter: Arc<dyn Meter>) -> Self {
        Self {
            peer_timeout,
            heartbeat: (peer_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(5)),
            meter,
            max_queue: MAX_QUEUE,
            max_restarts: MAX_RESTARTS,
        }
    }
}

/// How long a session that just lost its connection still counts as
/// healthy: the follower reconnects within this after a blip.
const DOWN_GRACE: Duration = Duration::from_secs(3);

/// Whether the leader's current session is alive: connected and heard
/// from within a few heartbeats. The server refuses another follower
/// process's hello while it is (a restarted follower's old link is down or
/// silent, so it is taken back).
#[derive(Debug, Default)]
pub struct Health {
    up: AtomicBool,
    /// The driver is waiting for the peer (so silence means something).
    reading: AtomicBool,
    /// When something last arrived, or the link last went down.
    heard: Mutex<Option<Instant>>,
    window_ms: AtomicU64,
}

impl Health {
    fn heard(&self) {
        *self.heard.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Release);
        // Up: heard just now. Down: the window runs from now, so a second
        // follower does not slip in during a blip of the running one.
        self.heard();
    }

    fn set_reading(&self, reading: bool) {
        self.reading.store(reading, Ordering::Release);
    }

    fn set_window(&self, w: Duration) {
        self.window_ms
            .store(u64::try_from(w.as_millis()).unwrap_or(u64::MAX), Ordering::Release);
    }

    /// Healthy: connected and either busy (the driver computes and does not
    /// read: silence says nothing) or heard from within the window; or
    /// down for less than the window (a blip, the follower reconnects).
    pub fn healthy(&self) -> bool {
        let window = Duration::from_millis(self.window_ms.load(Ordering::Acquire));
        let since = self
            .heard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|t| t.elapsed());
        if self.up.load(Ordering::Acquire) {
            !self.reading.load(Ordering::Acquire) || since.is_some_and(|e| e < window)
        } else {
            since.is_some_and(|e| e < window.min(DOWN_GRACE))
        }
    }

    /// How long a healthy session's silence must last before another
    /// process is taken for its restart.
    pub fn window(&self) -> Duration {
        Duration::from_millis(self.window_ms.load(Ordering::Acquire))
    }
}

/// One direction's message type, as the transport carries it.
trait Envelope: Frame + prost::Message + Send + 'static {
    /// What the stream's sender takes.
    type Wire: Send + 'static;
    fn wire(self) -> Self::Wire;
}

impl Frame for LeaderMessage {
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
        matches!(self.msg, Some(LMsg::Heartbeat(_)))
    }
    fn heartbeat(_: &str, ack: u64) -> Self {
        LeaderMessage {
            seq: 0,
            ack,
            msg: Some(LMsg::Heartbeat(pb::Heartbeat {})),
        }
    }
    fn session(&self) -> Option<&str> {
        None
    }
}

impl Envelope for LeaderMessage {
    type Wire = Result<LeaderMessage, Status>;
    fn wire(self) -> Self::Wire {
        Ok(self)
    }
}

impl Frame for FollowerMessage {
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
        matches!(self.msg, Some(FMsg::Heartbeat(_)))
    }
    fn heartbeat(session_id: &str, ack: u64) -> Self {
        FollowerMessage {
            session_id: session_id.to_string(),
            seq: 0,
            ack,
            msg: Some(FMsg::Heartbeat(pb::Heartbeat {})),
        }
    }
    fn session(&self) -> Option<&str> {
        Some(&self.session_id)
    }
}

impl Envelope for FollowerMessage {
    type Wire = FollowerMessage;
    fn wire(self) -> Self::Wire {
        self
    }
}

/// What arrived on the current connection.
enum Arrival<In> {
    Msg(In),
    /// Nothing within the wait.
    Quiet,
    /// The connection is down (why).
    Down(String),
}

/// What a receive on the current connection gave.
enum Got<In> {
    Msg(In),
    /// The connection is down (why).
    Down(String),
}

type Outbox<W> = Arc<Mutex<Option<mpsc::Sender<W>>>>;
type Shared<Out, In> = Arc<Mutex<Machine<Out, In>>>;

/// Locks the machine; a panic elsewhere while holding it cannot leave it
/// half-updated in a way that matters more than the panic itself.
fn lock<Out: Frame, In: Frame>(m: &Shared<Out, In>) -> std::sync::MutexGuard<'_, Machine<Out, In>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Carries one session's [`Machine`] over tonic streams: writes the frames
/// it gives, feeds it what arrives, and runs its heartbeat timer in a task
/// of its own (also while the driver computes).
struct Core<Out: Envelope, In: Envelope> {
    machine: Shared<Out, In>,
    /// The current connection's sender (None while down); shared with the
    /// heartbeat task.
    out: Outbox<Out::Wire>,
    inbound: Option<Streaming<In>>,
    opts: LinkOptions,
    beat: tokio::task::JoinHandle<()>,
    /// The leader's view of the session's health, shared with its server.
    health: Option<Arc<Health>>,
}

impl<Out: Envelope, In: Envelope> Drop for Core<Out, In> {
    fn drop(&mut self) {
        self.beat.abort();
    }
}

async fn heartbeats<Out: Envelope, In: Envelope>(out: Outbox<Out::Wire>, machine: Shared<Out, In>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // The tick's own deadline, not the (jittery) time it fired: beats
        // then go out every interval, never every other one.
        let at = tick.tick().await.into_std();
        let tx = out.lock().ok().and_then(|g| g.clone());
        // Its own statement: the guard must be gone before the body locks
        // the machine again (a scrutinee's temporaries live through the
        // `if let` body, and std's mutex does not re-enter).
        let hb = lock(&machine).tick(at);
        if let (Some(tx), Some(hb)) = (tx, hb) {
            // A full queue carries data, which acknowledges and proves
            // liveness as well as a heartbeat would.
            let ack = hb.ack();
            if tx.try_send(hb.wire()).is_ok() {
                lock(&machine).ack_sent(ack);
            }
        }
    }
}

impl<Out: Envelope, In: Envelope> Core<Out, In> {
    fn new(
        session_id: String,
        peer_process: String,
        tx: mpsc::Sender<Out::Wire>,
        inbound: Streaming<In>,
        opts: LinkOptions,
    ) -> Self {
        let out = Arc::new(Mutex::new(Some(tx)));
        let machine = Arc::new(Mutex::new(Machine::new(
            session_id,
            peer_process,
            opts.max_queue,
            opts.heartbeat,
        )));
        let beat = tokio::spawn(heartbeats::<Out, In>(out.clone(), machine.clone(), opts.heartbeat));
        Self {
            machine,
            out,
            inbound: Some(inbound),
            opts,
            beat,
            health: None,
        }
    }

    /// Shares this session's health with the server (leader).
    fn with_health(mut self, health: Arc<Health>) -> Self {
        health.set_window((self.opts.heartbeat * 3).min(self.opts.peer_timeout / 2));
        health.set_up(true);
        self.health = Some(health);
        self
    }

    fn m(&self) -> std::sync::MutexGuard<'_, Machine<Out, In>> {
        lock(&self.machine)
    }

    fn session_id(&self) -> String {
        self.m().session_id().to_string()
    }

    fn sender(&self) -> Option<mpsc::Sender<Out::Wire>> {
        self.out.lock().ok().and_then(|g| g.clone())
    }

    fn set_sender(&self, tx: Option<mpsc::Sender<Out::Wire>>) {
        if let Ok(mut g) = self.out.lock() {
            *g = tx;
        }
    }

    /// Whether the connection is up as far as this side knows.
    fn is_up(&self) -> bool {
        self.sender().is_some() && *self.m().conn() == Conn::Up
    }

    /// Hands a message to the machine and writes what it gives. On a broken
    /// connection the message waits for the resend after the reconnect; the
    /// only error is a peer that leaves too many messages unacknowledged.
    async fn send(&mut self, m: Out) -> Result<(), BridgeError> {
        self.m().send(m)?;
        self.pump().await;
        self.drain().await;
        Ok(())
    }

    /// Writes the frames the machine gives: heartbeats only if the queue
    /// has room (never waits), data with the peer timeout.
    async fn pump(&mut self) {
        loop {
            let Some(f) = self.m().poll_transmit() else { return };
            let Some(tx) = self.sender() else { return };
            if f.is_heartbeat() {
                let ack = f.ack();
                if tx.try_send(f.wire()).is_ok() {
                    self.m().ack_sent(ack);
                }
                continue;
            }
            let bytes = f.encoded_len();
            match tokio::time::timeout(self.opts.peer_timeout, tx.send(f.wire())).await {
                Ok(Ok(())) => self.opts.meter.sent(bytes),
                _ => {
                    self.set_sender(None);
                    self.m().down("sending to the peer failed");
                    return;
                }
            }
        }
    }

    /// Reads what arrives on the current connection within `wait`.
    async fn arrival(&mut self, wait: Duration) -> Arrival<In> {
        let Some(inbound) = self.inbound.as_mut() else {
            return Arrival::Down("not connected".into());
        };
        if let Some(h) = self.health.as_ref().filter(|_| !wait.is_zero()) {
            h.set_reading(true);
        }
        let got = tokio::time::timeout(wait, inbound.message()).await;
        if let Some(h) = &self.health {
            h.set_reading(false);
        }
        match got {
            Err(_) => Arrival::Quiet,
            Ok(Ok(Some(m))) => {
                if let Some(h) = &self.health {
                    h.heard();
                }
                Arrival::Msg(m)
            }
            Ok(Err(status)) => Arrival::Down(status.message().to_string()),
            Ok(Ok(None)) => Arrival::Down("the peer closed the stream".into()),
        }
    }

    /// Feeds an arrived frame to the machine (counting it) and writes the
    /// acknowledgement it may owe. An error stays in the machine for the
    /// next [`Core::recv`]; false then.
    async fn take(&mut self, f: In) -> bool {
        let bytes = f.encoded_len();
        let arrived = self.m().receive(f);
        match arrived {
            Ok(seq::Arrived::New) => self.opts.meter.received(bytes),
            Ok(seq::Arrived::Duplicate) => {
                tracing::debug!("dropping a message received before the reconnect");
                self.opts.meter.duplicate();
            }
            Ok(_) => {}
            Err(_) => return false,
        }
        self.pump().await;
        true
    }

    /// The next new message; heartbeats and duplicates are consumed here.
    async fn recv(&mut self) -> Result<Got<In>, BridgeError> {
        loop {
            match self.m().poll_message() {
                Ok(Some(m)) => return Ok(Got::Msg(m)),
                Ok(None) => {}
                Err(Polled::Fatal(e)) => return Err(e.into()),
                Err(Polled::Down(why)) => return Ok(Got::Down(why)),
            }
            if !self.is_up() {
                return Ok(Got::Down("sending to the peer failed".into()));
            }
            match self.arrival(self.opts.peer_timeout).await {
                Arrival::Msg(m) => {
                    self.take(m).await;
                }
                Arrival::Quiet => {
                    return Ok(Got::Down(format!(
                        "no message or heartbeat for {} s",
                        self.opts.peer_timeout.as_secs_f64()
                    )));
                }
                Arrival::Down(why) => return Ok(Got::Down(why)),
            }
        }
    }

    /// Takes what already arrived, without waiting: acknowledgements (so a
    /// side that only sends, as the follower in eval, does not keep every
    /// message until the end) and messages for the next [`Core::recv`].
    async fn drain(&mut self) {
        while self.is_up() {
            // A zero wait polls the stream once: whatever is ready.
            match self.arrival(Duration::ZERO).await {
                Arrival::Msg(m) => {
                    if !self.take(m).await {
                        return;
                    }
                }
                Arrival::Quiet => return,
                Arrival::Down(why) => self.m().down(why),
            }
        }
    }

    /// Messages sent and not yet acknowledged.
    fn unacknowledged(&self) -> usize {
        self.m().unacknowledged()
    }

    fn detach(&mut self) {
        self.inbound = None;
        self.set_sender(None);
        self.m().down("detached");
        if let Some(h) = &self.health {
            h.set_up(false);
        }
    }

    /// Continues on a new connection to peer process `peer_process`:
    /// resends what the peer has not acknowledged (it drops what it already
    /// has). Returns how many; [`LinkError::PeerRestarted`] (nothing
    /// attached) if another process answers.
    async fn attach(
        &mut self,
        peer_process: &str,
        tx: mpsc::Sender<Out::Wire>,
        inbound: Streaming<In>,
    ) -> Result<usize, LinkError> {
        let n = self.m().up(peer_process)?;
        self.inbound = Some(inbound);
        self.set_sender(Some(tx));
        if let Some(h) = &self.health {
            h.set_up(true);
        }
        self.pump().await;
        self.opts.meter.reconnected();
        Ok(n)
    }

    /// Sends our acknowledgement now (not at the next heartbeat).
    async fn ack_now(&mut self) {
        if let Some(tx) = self.sender() {
            let hb = self.m().heartbeat();
            let ack = hb.ack();
            if let Ok(Ok(())) = tokio::time::timeout(self.opts.peer_timeout, tx.send(hb.wire())).await {
                self.m().ack_sent(ack);
            }
        }
    }

    /// Waits up to `wait` until the peer has acknowledged everything sent.
    /// False if it did not (the connection ended or time ran out).
    async fn flush(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        while self.unacknowledged() > 0 {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Arrival::Msg(m) = self.arrival(left).await else {
                return false;
            };
            if !self.take(m).await {
                return false;
            }
        }
        true
    }
}

enum Event<In> {
    Got(Got<In>),
    Session(Option<Box<server::Session>>),
}

/// The leader's end of a session with the follower.
pub struct LeaderLink<'a> {
    core: Core<LeaderMessage, FollowerMessage>,
    peer_process_id: String,
    resume_step: Option<u64>,
    run_id: String,
    peer: crate::secure::PeerInfo,
    sessions: &'a mut mpsc::Receiver<server::Session>,
    /// A restarted follower's new session, kept for [`LeaderLink::restart`].
    fresh: Option<server::Session>,
    restarts: u32,
}

impl<'a> LeaderLink<'a> {
    /// Starts on an admitted session; later sessions (reconnects, restarts)
    /// arrive on `sessions`.
    pub fn new(s: server::Session, sessions: &'a mut mpsc::Receiver<server::Session>, opts: LinkOptions) -> Self {
        Self {
            core: Core::new(s.session_id, s.peer_process_id.clone(), s.outbound, s.inbound, opts).with_health(s.health),
            peer_process_id: s.peer_process_id,
            resume_step: s.resume_step,
            run_id: s.run_id,
            peer: s.peer,
            sessions,
            fresh: None,
            restarts: 0,
        }
    }

    pub fn session_id(&self) -> String {
        self.core.session_id()
    }

    pub fn peer_process_id(&self) -> &str {
        &self.peer_process_id
    }

    /// The checkpoint step both parties resume from, if any.
    pub fn resume_step(&self) -> Option<u64> {
        self.resume_step
    }

    /// The run both parties train in.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// The follower's current connection.
    pub fn peer(&self) -> &crate::secure::PeerInfo {
        &self.peer
    }

    pub async fn send(&mut self, m: LMsg) -> Result<(), BridgeError> {
        self.core
            .send(LeaderMessage {
                seq: 0,
                ack: 0,
                msg: Some(m),
            })
            .await
    }

    /// The follower's next message, reconnecting as needed.
    pub async fn recv(&mut self) -> Result<FMsg, BridgeError> {
        loop {
            let got = tokio::select! {
                biased;
                r = self.core.recv() => Event::Got(r?),
                s = self.sessions.recv() => Event::Session(s.map(Box::new)),
            };
            match got {
                Event::Got(Got::Msg(m)) => {
                    return m.msg.ok_or_else(|| BridgeError::Protocol("an empty message".into()));
                }
                Event::Got(Got::Down(why)) => self.reattach(why).await?,
                // The follower reconnected before this side noticed the loss.
                Event::Session(Some(s)) => self.adopt(*s).await?,
                Event::Session(None) => return Err(BridgeError::Lost("the leader's endpoint stopped".into())),
            }
        }
    }

    async fn reattach(&mut self, why: String) -> Result<(), BridgeError> {
        self.core.detach();
        let wait = self.core.opts.peer_timeout;
        tracing::warn!(reason = %why, wait_secs = wait.as_secs_f64(), "lost the follower; waiting for it to reconnect");
        match tokio::time::timeout(wait, self.sessions.recv()).await {
            Ok(Some(s)) => self.adopt(s).await,
            Ok(None) => Err(BridgeError::Lost("the leader's endpoint stopped".into())),
            Err(_) => Err(BridgeError::Gone {
                peer: "follower",
                why,
                secs: wait.as_secs_f64(),
            }),
        }
    }

    async fn adopt(&mut self, s: server::Session) -> Result<(), BridgeError> {
        if s.session_id != self.core.session_id() || s.peer_process_id != self.peer_process_id {
            let err = BridgeError::PeerRestarted {
                peer: "follower",
                was: self.peer_process_id.clone(),
                now: s.peer_process_id.clone(),
            };
            self.fresh = Some(s);
            return Err(err);
        }
        let resent = self.core.attach(&s.peer_process_id, s.outbound, s.inbound).await?;
        self.peer = s.peer;
        tracing::info!(session = %self.core.session_id(), resent, "the follower reconnected; session continues");
        Ok(())
    }

    /// After [`BridgeError::PeerRestarted`]: continues with the restarted
    /// follower's new session, all sequence state starting over. False if
    /// there is none; an error once the follower restarted more than
    /// [`LinkOptions::max_restarts`] times.
    pub fn restart(&mut self) -> Result<bool, BridgeError> {
        let Some(s) = self.fresh.take() else { return Ok(false) };
        self.restarts += 1;
        if self.restarts > self.core.opts.max_restarts {
            return Err(BridgeError::TooManyRestarts {
                peer: "follower",
                max: self.core.opts.max_restarts,
            });
        }
        self.core = Core::new(
            s.session_id,
            s.peer_process_id.clone(),
            s.outbound,
            s.inbound,
            self.core.opts.clone(),
        )
        .with_health(s.health);
        self.peer_process_id = s.peer_process_id;
        self.resume_step = s.resume_step;
        self.run_id = s.run_id;
        self.peer = s.peer;
        Ok(true)
    }

    /// Messages sent and not yet acknowledged by the follower.
    pub fn unacknowledged(&self) -> usize {
        self.core.unacknowledged()
    }

    /// Waits up to `wait` until the follower has acknowledged everything.
    pub async fn flush(&mut self, wait: Duration) -> bool {
        self.core.flush(wait).await
    }
}

/// How the follower reaches the leader again.
struct Dial {
    addr: String,
    settings: Settings,
    max_message: usize,
    security: Security,
}

/// The follower's end of a session with the leader.
pub struct FollowerLink {
    core: Core<FollowerMessage, LeaderMessage>,
    reply: HelloReply,
    peer: crate::secure::PeerInfo,
    dial: Dial,
    fresh: Option<client::Session>,
    restarts: u32,
}

impl FollowerLink {
    /// Connects to the leader (retrying until the peer timeout) and opens a
    /// session.
    pub async fn connect(
        addr: &str,
        settings: Settings,
        max_message: usize,
        security: Security,
        opts: LinkOptions,
    ) -> Result<Self, BridgeError> {
        let s = client::connect(addr, &settings, opts.peer_timeout, max_message, &security).await?;
        Ok(Self {
            core: Core::new(
                s.reply.session_id.clone(),
                s.reply.process_id.clone(),
                s.outbound,
                s.inbound,
                opts,
            ),
            reply: s.reply,
            peer: s.peer,
            dial: Dial {
                addr: addr.to_string(),
                settings,
                max_message,
                security,
            },
            fresh: None,
            restarts: 0,
        })
    }

    /// The leader's answer to the current session's hello.
    pub fn reply(&self) -> &HelloReply {
        &self.reply
    }

    /// The leader's current connection.
    pub fn peer(&self) -> &crate::secure::PeerInfo {
        &self.peer
    }

    pub async fn send(&mut self, m: FMsg) -> Result<(), BridgeError> {
        // A side that only sends (evaluation) notices a lost connection
        // here, and reconnects before it goes on.
        if !self.core.is_up() {
            let why = self
                .core
                .m()
                .take_loss()
                .unwrap_or_else(|| "sending to the leader failed".into());
            self.reattach(why).await?;
        }
        let session_id = self.core.session_id();
        self.core
            .send(FollowerMessage {
                session_id,
                seq: 0,
                ack: 0,
                msg: Some(m),
            })
            .await
    }

    /// The leader's next message, reconnecting as needed.
    pub async fn recv(&mut self) -> Result<LMsg, BridgeError> {
        loop {
            match self.core.recv().await? {
                Got::Msg(m) => return m.msg.ok_or_else(|| BridgeError::Protocol("an empty message".into())),
                Got::Down(why) => self.reattach(why).await?,
            }
        }
    }

    async fn reattach(&mut self, why: String) -> Result<(), BridgeError> {
        self.core.detach();
        let wait = self.core.opts.peer_timeout;
        tracing::warn!(reason = %why, wait_secs = wait.as_secs_f64(), "lost the leader; reconnecting");
        let settings = Settings {
            resume_session: self.core.session_id(),
            ..self.dial.settings.clone()
        };
        let s = client::connect(
            &self.dial.addr,
            &settings,
            wait,
            self.dial.max_message,
            &self.dial.security,
        )
        .await
        .map_err(|e| match e {
            BridgeError::Unreachable { .. } => BridgeError::Gone {
                peer: "leader",
                why,
                secs: wait.as_secs_f64(),
            },
            e => e,
        })?;
        if !s.reply.reattached || s.reply.process_id != self.reply.process_id {
            let err = BridgeError::PeerRestarted {
                peer: "leader",
                was: self.reply.process_id.clone(),
                now: s.reply.process_id.clone(),
            };
            self.fresh = Some(s);
            return Err(err);
        }
        let resent = self.core.attach(&s.reply.process_id, s.outbound, s.inbound).await?;
        self.peer = s.peer;
        tracing::info!(session = %self.core.session_id(), resent, "reconnected to the leader; session continues");
        Ok(())
    }

    /// After [`BridgeError::PeerRestarted`]: continues with the new session
    /// the restarted leader opened. False if there is none; an error once
    /// the leader restarted more than [`LinkOptions::max_restarts`] times.
    pub fn restart(&mut self) -> Result<bool, BridgeError> {
        let Some(s) = self.fresh.take() else { return Ok(false) };
        self.restarts += 1;
        if self.restarts > self.core.opts.max_restarts {
            return Err(BridgeError::TooManyRestarts {
                peer: "leader",
                max: self.core.opts.max_restarts,
            });
        }
        self.core = Core::new(
            s.reply.session_id.clone(),
            s.reply.process_id.clone(),
            s.outbound,
            s.inbound,
            self.core.opts.clone(),
        );
        self.reply = s.reply;
        self.peer = s.peer;
        Ok(true)
    }

    /// Acknowledges what was received right away (e.g. the leader's Finish,
    /// before a slow export).
    pub async fn ack_now(&mut self) {
        self.core.ack_now().await;
    }

    /// Messages sent and not yet acknowledged by the leader.
    pub fn unacknowledged(&self) -> usize {
        self.core.unacknowledged()
    }

    /// Waits up to `wait` until the leader has acknowledged everything.
    pub async fn flush(&mut self, wait: Duration) -> bool {
        self.core.flush(wait).await
    }
}

#[cfg(test)]
mod tests {
    use super::seq::{Arrived, Unacked, classify};
    use proptest::prelude::*;

    #[test]
    fn arrivals_are_classified() {
        assert_eq!(classify(1, false, 0), Arrived::New);
        assert_eq!(classify(1, false, 1), Arrived::Duplicate);
        assert_eq!(classify(3, false, 1), Arrived::Gap { last: 1 });
        assert_eq!(classify(0, true, 7), Arrived::Heartbeat);
        assert_eq!(classify(u64::MAX, false, u64::MAX), Arrived::Duplicate);
    }

    proptest! {
        /// Against a model: after any sends and acknowledgements, exactly
        /// the messages above the highest valid acknowledgement wait, in
        /// order; an acknowledgement of an unsent message changes nothing.
        #[test]
        fn unacked_matches_a_model(ops in proptest::collection::vec((any::<bool>(), 0u64..40), 0..200)) {
            let mut q: Unacked<u64> = Unacked::default();
            let (mut sent, mut acked) = (0u64, 0u64);
            for (send, v) in ops {
                if send {
                    q.push(v);
                    sent += 1;
                } else if v > sent {
                    prop_assert_eq!(q.acknowledge(v), Err(sent));
                } else {
                    prop_assert_eq!(q.acknowledge(v), Ok(()));
                    acked = acked.max(v);
                }
                let waiting: Vec<u64> = q.iter().map(|(s, _)| *s).collect();
                let expected: Vec<u64> = (acked + 1..=sent).collect();
                prop_assert_eq!(waiting, expected);
            }
        }
    }
}
