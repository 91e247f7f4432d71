//! The link layer over real gRPC on loopback, through a proxy that cuts or
//! freezes connections: every message arrives exactly once and in order,
//! silent connections are replaced, heartbeats keep a busy peer alive, and a
//! restarted peer (new process id) is told apart from a reconnect.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use vfl_bridge::link::LinkError;
use vfl_bridge::pb::{self, follower_message::Msg as FMsg, leader_message::Msg as LMsg};
use vfl_bridge::{BridgeError, Checkpoints, FollowerLink, LeaderLink, LinkOptions, Meter, Security, Settings, server};

#[path = "common/proxy.rs"]
mod proxy;
use proxy::Proxy;

#[derive(Default)]
struct Counts {
    reconnects: AtomicU64,
    duplicates: AtomicU64,
}

impl Meter for Counts {
    fn reconnected(&self) {
        self.reconnects.fetch_add(1, Ordering::SeqCst);
    }
    fn duplicate(&self) {
        self.duplicates.fetch_add(1, Ordering::SeqCst);
    }
}

impl Counts {
    fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::SeqCst)
    }
    fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::SeqCst)
    }
}

fn settings(process_id: &str) -> Settings {
    Settings {
        application_id: "link-test".into(),
        model_fingerprint: "f".into(),
        batch_size: 8,
        mode: "train".into(),
        process_id: process_id.into(),
        checkpoint_steps: Checkpoints::fixed(vec![]),
        resume_session: String::new(),
        release_exports: Vec::new(),
        allow_rollback: false,
    }
}

fn options(timeout_ms: u64, heartbeat_ms: u64, meter: Arc<Counts>) -> LinkOptions {
    LinkOptions {
        peer_timeout: Duration::from_millis(timeout_ms),
        heartbeat: Duration::from_millis(heartbeat_ms),
        ..LinkOptions::new(Duration::from_millis(timeout_ms), meter)
    }
}

async fn leader() -> server::Listener {
    server::listen("127.0.0.1:0", settings("leader-1"), 1 << 20, Security::Insecure)
        .await
        .unwrap()
}

/// The leader's link on the first session that arrives.
async fn admit(listener: &mut server::Listener, opts: LinkOptions) -> LeaderLink<'_> {
    let first = listener.sessions.recv().await.unwrap();
    LeaderLink::new(first, &mut listener.sessions, opts)
}

async fn follower(addr: std::net::SocketAddr, process_id: &str, opts: LinkOptions) -> FollowerLink {
    FollowerLink::connect(
        &addr.to_string(),
        settings(process_id),
        1 << 20,
        Security::Insecure,
        opts,
    )
    .await
    .unwrap()
}

fn ping(i: u32) -> FMsg {
    FMsg::PlanAck(pb::PlanAck { epoch: i })
}

fn pong(i: u32) -> LMsg {
    LMsg::Gradient(pb::Gradient {
        iteration: u64::from(i),
        tensor: None,
        checkpoint_step: 0,
    })
}

async fn expect_ping(l: &mut LeaderLink<'_>, i: u32) {
    match l.recv().await.unwrap() {
        FMsg::PlanAck(a) => assert_eq!(a.epoch, i, "the leader got message {} where {i} was due", a.epoch),
        other => panic!("expected ping {i}, got {other:?}"),
    }
}

async fn expect_pong(f: &mut FollowerLink, i: u32) {
    match f.recv().await.unwrap() {
        LMsg::Gradient(g) => assert_eq!(
            g.iteration,
            u64::from(i),
            "the follower got {} where {i} was due",
            g.iteration
        ),
        other => panic!("expected pong {i}, got {other:?}"),
    }
}

/// The follower sends ping i, the leader answers pong i; the proxy cuts
/// every connection after the leader received ping i and before it answers,
/// for every i in `cut_at`. The follower has no acknowledgement of ping i
/// then (heartbeats are rare here), so it resends it: the leader must drop
/// that duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cuts_between_receive_and_reply_lose_and_repeat_nothing() {
    let mut listener = leader().await;
    let proxy = Proxy::start(listener.local_addr);
    let (lm, fm) = (Arc::new(Counts::default()), Arc::new(Counts::default()));
    let fopts = options(5_000, 3_600_000, fm.clone());
    let addr = proxy.addr;
    let f = tokio::spawn(async move {
        let mut f = follower(addr, "follower-1", fopts).await;
        for i in 1..=30 {
            f.send(ping(i)).await.unwrap();
            expect_pong(&mut f, i).await;
        }
        f
    });
    let mut l = admit(&mut listener, options(5_000, 3_600_000, lm.clone())).await;
    let cut_at = [3, 4, 10, 29];
    for i in 1..=30 {
        expect_ping(&mut l, i).await;
        if cut_at.contains(&i) {
            assert!(proxy.cut() >= 1, "nothing to cut at {i}");
        }
        l.send(pong(i)).await.unwrap();
    }
    let _f = f.await.unwrap();
    assert_eq!(lm.reconnects(), cut_at.len() as u64, "leader reconnects");
    assert_eq!(fm.reconnects(), cut_at.len() as u64, "follower reconnects");
    assert!(lm.duplicates() >= 1, "the leader never saw a resent ping");
}

/// A frozen connection (no bytes, no close) is noticed by the missing
/// heartbeats on both sides and replaced; nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_replaced_after_the_peer_timeout() {
    let mut listener = leader().await;
    let proxy = Proxy::start(listener.local_addr);
    let (lm, fm) = (Arc::new(Counts::default()), Arc::new(Counts::default()));
    let fopts = options(800, 100, fm.clone());
    let addr = proxy.addr;
    let f = tokio::spawn(async move {
        let mut f = follower(addr, "follower-1", fopts).await;
        for i in 1..=6 {
            f.send(ping(i)).await.unwrap();
            expect_pong(&mut f, i).await;
        }
        f
    });
    let mut l = admit(&mut listener, options(800, 100, lm.clone())).await;
    for i in 1..=6 {
        expect_ping(&mut l, i).await;
        if i == 3 {
            assert_eq!(proxy.freeze(), 1);
        }
        l.send(pong(i)).await.unwrap();
    }
    let _f = f.await.unwrap();
    assert_eq!(fm.reconnects(), 1, "follower reconnects");
    assert_eq!(lm.reconnects(), 1, "leader reconnects");
    assert_eq!(proxy.accepted(), 2);
}

/// A peer computing for longer than the peer timeout is not taken as gone:
/// its heartbeat task keeps talking while its driver is busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_a_busy_peer_alive() {
    let mut listener = leader().await;
    let addr = listener.local_addr;
    let (lm, fm) = (Arc::new(Counts::default()), Arc::new(Counts::default()));
    let fopts = options(500, 100, fm.clone());
    let f = tokio::spawn(async move {
        let mut f = follower(addr, "follower-1", fopts).await;
        // Four peer timeouts of blocking work, as in a slow training step.
        tokio::task::block_in_place(|| std::thread::sleep(Duration::from_millis(2_000)));
        f.send(ping(1)).await.unwrap();
        expect_pong(&mut f, 1).await;
        f
    });
    let mut l = admit(&mut listener, options(500, 100, lm.clone())).await;
    expect_ping(&mut l, 1).await;
    l.send(pong(1)).await.unwrap();
    let _f = f.await.unwrap();
    assert_eq!(lm.reconnects() + fm.reconnects(), 0, "a busy peer was taken as gone");
}

/// A follower that vanishes and never comes back: after its connection
/// ends the leader waits one peer timeout, then says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_does_not_come_back_is_reported_gone() {
    let mut listener = leader().await;
    let addr = listener.local_addr;
    let fm = Arc::new(Counts::default());
    let f = tokio::spawn(async move { follower(addr, "follower-1", options(500, 100, fm)).await });
    let mut l = admit(&mut listener, options(500, 100, Arc::new(Counts::default()))).await;
    drop(f.await.unwrap());
    match l.recv().await {
        Err(BridgeError::Gone {
            peer: "follower", secs, ..
        }) => assert_eq!(secs, 0.5),
        other => panic!("expected Gone, got {other:?}"),
    }
}

/// A follower that comes back as a new process is a restart, not a
/// reconnect: the leader reports it with both process ids and continues on
/// the new session, whose sequence numbers start over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_follower_is_told_apart_from_a_reconnect() {
    let mut listener = leader().await;
    let addr = listener.local_addr;
    let opts = || options(5_000, 100, Arc::new(Counts::default()));
    let mut a = {
        let o = opts();
        tokio::spawn(async move { follower(addr, "follower-a", o).await })
    };
    let mut l = admit(&mut listener, opts()).await;
    let first_session = l.session_id().to_string();
    let fa = (&mut a).await.unwrap();
    let mut fa = fa;
    fa.send(ping(1)).await.unwrap();
    expect_ping(&mut l, 1).await;
    drop(fa);
    let o = opts();
    let b = tokio::spawn(async move {
        let mut b = follower(addr, "follower-b", o).await;
        b.send(ping(7)).await.unwrap();
        expect_pong(&mut b, 7).await;
        b
    });
    match l.recv().await {
        Err(BridgeError::PeerRestarted {
            peer: "follower",
            was,
            now,
        }) => {
            assert_eq!((was.as_str(), now.as_str()), ("follower-a", "follower-b"));
        }
        other => panic!("expected PeerRestarted, got {other:?}"),
    }
    assert!(l.restart().unwrap(), "no new session to continue with");
    assert!(!l.restart().unwrap(), "the new session was handed out twice");
    assert_ne!(l.session_id(), first_session);
    assert_eq!(l.peer_process_id(), "follower-b");
    expect_ping(&mut l, 7).await;
    l.send(pong(7)).await.unwrap();
    b.await.unwrap();
}

/// A leader that comes back as a new process: the reconnecting follower
/// finds a leader that does not know its session and reports the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_leader_is_told_apart_from_a_reconnect() {
    let mut old = leader().await;
    let proxy = Proxy::start(old.local_addr);
    let addr = proxy.addr;
    let o = options(5_000, 100, Arc::new(Counts::default()));
    let f = tokio::spawn(async move { follower(addr, "follower-1", o).await });
    let first = old.sessions.recv().await.unwrap();
    let mut f = f.await.unwrap();
    let old_session = f.reply().session_id.clone();
    drop(first);
    old.shutdown().await;
    proxy.cut();
    let mut new = server::listen("127.0.0.1:0", settings("leader-2"), 1 << 20, Security::Insecure)
        .await
        .unwrap();
    proxy.set_upstream(new.local_addr);
    match f.recv().await {
        Err(BridgeError::PeerRestarted {
            peer: "leader",
            was,
            now,
        }) => {
            assert_eq!((was.as_str(), now.as_str()), ("leader-1", "leader-2"));
        }
        other => panic!("expected PeerRestarted, got {other:?}"),
    }
    assert!(f.restart().unwrap());
    assert_ne!(f.reply().session_id, old_session);
    let mut l = admit(&mut new, options(5_000, 100, Arc::new(Counts::default()))).await;
    f.send(ping(1)).await.unwrap();
    expect_ping(&mut l, 1).await;
    l.send(pong(1)).await.unwrap();
    expect_pong(&mut f, 1).await;
}

/// A side that only sends (the follower in eval) does not keep every
/// message until the end: the receiver acknowledges every few messages and
/// the sender takes those acknowledgements in while it sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_way_stream_keeps_few_messages_unacknowledged() {
    let mut listener = leader().await;
    let addr = listener.local_addr;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let f = tokio::spawn(async move {
        // Heartbeats off: only the receiver's own acknowledgements count.
        let mut f = follower(
            addr,
            "follower-1",
            options(5_000, 3_600_000, Arc::new(Counts::default())),
        )
        .await;
        for i in 1..=200 {
            f.send(ping(i)).await.unwrap();
        }
        done_rx.await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        f.send(ping(201)).await.unwrap();
        (f.unacknowledged(), f)
    });
    let mut l = admit(&mut listener, options(5_000, 3_600_000, Arc::new(Counts::default()))).await;
    for i in 1..=200 {
        expect_ping(&mut l, i).await;
    }
    done_tx.send(()).unwrap();
    expect_ping(&mut l, 201).await;
    let (unacked, _f) = f.await.unwrap();
    assert!(unacked <= 20, "{unacked} of 201 one-way messages still unacknowledged");
}

/// A follower speaking the protocol by hand (raw gRPC), to send what the
/// link never would: the sender of its messages and its connection.
/// The leader's link to a [`raw_follower`] that has just said hello, and
/// that follower's message sender and inbound stream.
async fn admit_raw(
    listener: &mut server::Listener,
) -> (
    LeaderLink<'_>,
    tokio::sync::mpsc::Sender<pb::FollowerMessage>,
    tonic::Streaming<pb::LeaderMessage>,
) {
    admit_raw_with(listener, options(5_000, 100, Arc::new(Counts::default()))).await
}

/// [`admit_raw`] with the leader's link options.
async fn admit_raw_with(
    listener: &mut server::Listener,
    opts: LinkOptions,
) -> (
    LeaderLink<'_>,
    tokio::sync::mpsc::Sender<pb::FollowerMessage>,
    tonic::Streaming<pb::LeaderMessage>,
) {
    let raw_peer = tokio::spawn(raw_follower(listener.local_addr));
    let l = admit(listener, opts).await;
    let (tx, inbound) = raw_peer.await.unwrap();
    (l, tx, inbound)
}

/// Link options with queues of 8 and no heartbeats to speak of.
fn small_queues() -> LinkOptions {
    LinkOptions {
        max_queue: 8,
        ..options(5_000, 3_600_000, Arc::new(Counts::default()))
    }
}

async fn raw_follower(
    addr: std::net::SocketAddr,
) -> (
    tokio::sync::mpsc::Sender<pb::FollowerMessage>,
    tonic::Streaming<pb::LeaderMessage>,
) {
    let mut client = pb::bridge_client::BridgeClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let reply = client
        .hello(settings("raw-follower").hello())
        .await
        .unwrap()
        .into_inner();
    assert!(reply.accepted, "{}", reply.reason);
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let inbound = client
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    (tx, inbound)
}

fn raw(session: &str, seq: u64, ack: u64, m: FMsg) -> pb::FollowerMessage {
    pb::FollowerMessage {
        session_id: session.to_string(),
        seq,
        ack,
        msg: Some(m),
    }
}

/// A message missing from the sequence (2 never came) stops the session
/// with an error: a lost message must never go unnoticed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_in_the_sequence_is_a_protocol_error() {
    let mut listener = leader().await;
    let (mut l, tx, _inbound) = admit_raw(&mut listener).await;
    let s = l.session_id().to_string();
    tx.send(raw(&s, 1, 0, ping(1))).await.unwrap();
    tx.send(raw(&s, 3, 0, ping(3))).await.unwrap();
    expect_ping(&mut l, 1).await;
    match l.recv().await {
        Err(BridgeError::Link(LinkError::Gap { seq: 3, last: 1, .. })) => {}
        other => panic!("expected a protocol error, got {other:?}"),
    }
}

/// An acknowledgement of a message that was never sent stops the session
/// with an error (it would make the sender drop messages the peer lacks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledgement_of_an_unsent_message_is_a_protocol_error() {
    let mut listener = leader().await;
    let (mut l, tx, _inbound) = admit_raw(&mut listener).await;
    let s = l.session_id().to_string();
    tx.send(raw(&s, 1, 5, ping(1))).await.unwrap();
    match l.recv().await {
        Err(BridgeError::Link(LinkError::AckOfUnsent { ack: 5, sent: 0, .. })) => {}
        other => panic!("expected a protocol error, got {other:?}"),
    }
}

/// While a session is healthy, a hello from another follower process is
/// refused as busy (not taken for a restart that would displace the
/// running follower); the running pair carries on undisturbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_follower_is_refused_while_the_session_is_healthy() {
    let mut listener = leader().await;
    let addr = listener.local_addr;
    let opts = || options(5_000, 100, Arc::new(Counts::default()));
    let o = opts();
    let a = tokio::spawn(async move { follower(addr, "follower-a", o).await });
    let mut l = admit(&mut listener, opts()).await;
    let mut fa = a.await.unwrap();
    fa.send(ping(1)).await.unwrap();
    expect_ping(&mut l, 1).await;
    let mut client = pb::bridge_client::BridgeClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let reply = client.hello(settings("intruder").hello()).await.unwrap().into_inner();
    assert!(!reply.accepted && reply.busy, "{reply:?}");
    assert!(
        reply.reason.contains("healthy session with another follower process"),
        "{}",
        reply.reason
    );
    // Both still talk, in the same session.
    let session = l.session_id().to_string();
    l.send(pong(1)).await.unwrap();
    expect_pong(&mut fa, 1).await;
    fa.send(ping(2)).await.unwrap();
    expect_ping(&mut l, 2).await;
    assert_eq!(l.session_id(), session);
    assert_eq!(l.peer_process_id(), "follower-a");
}

/// A message naming another session on the session's stream is a protocol
/// error (streams belong to the session that opened them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_of_another_session_is_a_protocol_error() {
    let mut listener = leader().await;
    let (mut l, tx, _inbound) = admit_raw(&mut listener).await;
    tx.send(raw("someone-else-1", 1, 0, ping(1))).await.unwrap();
    match l.recv().await {
        Err(BridgeError::Link(LinkError::WrongSession { got, .. })) => assert_eq!(got, "someone-else-1"),
        other => panic!("expected a protocol error, got {other:?}"),
    }
}

/// A peer that never acknowledges is cut once `max_queue` messages wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_acknowledges_is_cut() {
    let mut listener = leader().await;
    let (mut l, _tx, _inbound) = admit_raw_with(&mut listener, small_queues()).await;
    for i in 0..8 {
        l.send(pong(i)).await.unwrap();
    }
    match l.send(pong(8)).await {
        Err(BridgeError::Link(LinkError::Unacknowledged { count: 8, max: 8, .. })) => {}
        other => panic!("expected an overrun, got {other:?}"),
    }
}

/// A peer that sends far ahead of this party (while it only sends) is cut
/// once `max_queue` messages wait to be read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_floods_is_cut() {
    let mut listener = leader().await;
    let (mut l, tx, _inbound) = admit_raw_with(&mut listener, small_queues()).await;
    let session = l.session_id().to_string();
    for seq in 1..=20 {
        tx.send(raw(&session, seq, 0, ping(seq as u32))).await.unwrap();
    }
    // Let them arrive; this party only sends (taking acknowledgements in).
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..3 {
        let _ = l.send(pong(i)).await;
    }
    match l.recv().await {
        Err(BridgeError::Link(LinkError::Ahead { max: 8, .. })) => {}
        other => panic!("expected an overrun, got {other:?}"),
    }
}

/// Restarts are taken back at most `max_restarts` times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_are_capped() {
    let mut listener = leader().await;
    let addr = listener.local_addr;
    let opts = || LinkOptions {
        max_restarts: 0,
        ..options(5_000, 100, Arc::new(Counts::default()))
    };
    let o = opts();
    let a = tokio::spawn(async move { follower(addr, "follower-a", o).await });
    let mut l = admit(&mut listener, opts()).await;
    drop(a.await.unwrap());
    let o = opts();
    let _b = tokio::spawn(async move { follower(addr, "follower-b", o).await });
    assert!(matches!(l.recv().await, Err(BridgeError::PeerRestarted { .. })));
    match l.restart() {
        Err(BridgeError::TooManyRestarts {
            peer: "follower",
            max: 0,
        }) => {}
        other => panic!("expected TooManyRestarts, got {other:?}"),
    }
}

/// Re-verification of a connected peer (its own file, one test binary).
#[path = "cases/reverify.rs"]
mod reverify;

#[path = "cases/link_machine.rs"]
mod link_machine;
