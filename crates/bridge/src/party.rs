//! Transport of scale-out (`vfl.party.v1`): inside one party, a parameter
//! shard serves its party's workers and the leader's coordinator serves the
//! leader's workers, one long-lived stream each; across the parties, leader
//! worker i serves follower worker i. Every connection is RA-TLS. Inside a
//! party both ends admit only a peer the policy admits as **their own
//! role** (on the follower, the gradients on these links are derived from
//! the leader's labels and must reach no one else); across the parties only
//! the other party's role.
//!
//! This module only carries frames; what the messages mean is the
//! trainer's (`vfl_trainer::sharded`).

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};
use vfl_attest::PartyRole;

use crate::BridgeError;
use crate::party_pb::coordinator_client::CoordinatorClient;
use crate::party_pb::coordinator_server::{Coordinator, CoordinatorServer};
use crate::party_pb::pair_client::PairClient;
use crate::party_pb::pair_server::{Pair, PairServer};
use crate::party_pb::shard_client::ShardClient;
use crate::party_pb::shard_server::{Shard, ShardServer};
use crate::party_pb::{
    Assignment, FollowerWorkerMessage, LeaderWorkerMessage, ShardMessage, WorkerMessage, WorkerStatus,
};
use crate::secure::{self, PeerInfo, Security};

/// Whether `peer` is a process of our own party: admitted as `own`, and
/// by entries that admit it as nothing else. An enclave that the policy
/// admits as both roles (both parties share a signer and measurement)
/// cannot be told from the other party's processes, so it is not trusted
/// with the party's internal traffic (docs/scale-out.md, "Trust").
pub fn check_own_party(peer: &PeerInfo, own: PartyRole) -> Result<(), String> {
    peer.check_role(own)?;
    match &peer.report {
        Some(r) if r.admitted_as.iter().any(|&role| role != own) => Err(format!(
            "the policy admits this enclave as both leader and follower, so a process of the other party \
             could pass for one of ours; give each party its own signer ({})",
            r.admitted_as.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")
        )),
        _ => Ok(()),
    }
}

/// Whom a link admits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// A process of our own party ([`check_own_party`]).
    OwnParty(PartyRole),
    /// The other party's process, admitted as that role.
    Peer(PartyRole),
}

impl Admit {
    /// The role the peer's evidence must be admitted as.
    fn role(self) -> PartyRole {
        match self {
            Admit::OwnParty(r) | Admit::Peer(r) => r,
        }
    }

    /// Why `peer` may not use this link, if it may not.
    pub fn check(self, peer: &PeerInfo) -> Result<(), String> {
        match self {
            Admit::OwnParty(own) => check_own_party(peer, own),
            Admit::Peer(role) => peer.check_role(role),
        }
    }

    fn describe(self) -> String {
        match self {
            Admit::OwnParty(own) => format!("not a {own} process"),
            Admit::Peer(role) => format!("not the {role}"),
        }
    }
}

/// One client's stream, admitted: messages `In` from it, `Out` to it.
pub struct Incoming<In, Out> {
    pub peer: PeerInfo,
    pub inbound: Streaming<In>,
    pub outbound: mpsc::Sender<Result<Out, Status>>,
}

/// A worker's stream at its shard.
pub type WorkerStream = Incoming<WorkerMessage, ShardMessage>;
/// A worker's stream at the coordinator.
pub type StatusStream = Incoming<WorkerStatus, Assignment>;
/// The follower worker's stream at its leader worker.
pub type FollowerPairStream = Incoming<FollowerWorkerMessage, LeaderWorkerMessage>;

/// A listening service: admitted clients' streams arrive on `streams`.
pub struct Listener<In, Out> {
    pub local_addr: SocketAddr,
    pub streams: mpsc::Receiver<Incoming<In, Out>>,
    /// Verdicts on genuine evidence that was refused (RA-TLS only).
    pub rejections: mpsc::Receiver<String>,
    server: crate::server::Server,
}

/// A listening shard.
pub type ShardListener = Listener<WorkerMessage, ShardMessage>;
/// A listening coordinator.
pub type CoordinatorListener = Listener<WorkerStatus, Assignment>;
/// A leader worker listening for its follower worker.
pub type PairListener = Listener<FollowerWorkerMessage, LeaderWorkerMessage>;

impl<In, Out> Listener<In, Out> {
    /// Stops serving and waits for the server task.
    pub async fn shutdown(self) {
        self.server.stop().await;
    }
}

struct Acceptor<In, Out> {
    admit: Admit,
    /// RA-TLS: every connection must come with a verified report.
    attested_only: bool,
    streams: mpsc::Sender<Incoming<In, Out>>,
}

impl<In, Out> Clone for Acceptor<In, Out> {
    fn clone(&self) -> Self {
        Acceptor {
            admit: self.admit,
            attested_only: self.attested_only,
            streams: self.streams.clone(),
        }
    }
}

type OutStream<Out> = Pin<Box<dyn Stream<Item = Result<Out, Status>> + Send>>;

impl<In: Send + 'static, Out: Send + 'static> Acceptor<In, Out> {
    async fn accept(&self, req: Request<Streaming<In>>) -> Result<Response<OutStream<Out>>, Status> {
        let peer = req.extensions().get::<PeerInfo>().cloned().unwrap_or_default();
        if self.attested_only && !peer.attested {
            return Err(Status::permission_denied("no attested connection"));
        }
        // The policy admits both parties' enclaves; each link only one.
        if let Err(why) = self.admit.check(&peer) {
            tracing::error!(%why, "refusing a connection: {}", self.admit.describe());
            return Err(Status::permission_denied(format!("{}: {why}", self.admit.describe())));
        }
        let (tx, rx) = mpsc::channel(4);
        let stream = Incoming {
            peer,
            inbound: req.into_inner(),
            outbound: tx,
        };
        // Never waits: a process that does not take its streams must not
        // pile up connections here.
        self.streams.try_send(stream).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => Status::unavailable("too many streams waiting"),
            mpsc::error::TrySendError::Closed(_) => Status::unavailable("the service is stopping"),
        })?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[tonic::async_trait]
impl Shard for Acceptor<WorkerMessage, ShardMessage> {
    type StepsStream = OutStream<ShardMessage>;
    async fn steps(&self, req: Request<Streaming<WorkerMessage>>) -> Result<Response<Self::StepsStream>, Status> {
        self.accept(req).await
    }
}

#[tonic::async_trait]
impl Coordinator for Acceptor<WorkerStatus, Assignment> {
    type StepsStream = OutStream<Assignment>;
    async fn steps(&self, req: Request<Streaming<WorkerStatus>>) -> Result<Response<Self::StepsStream>, Status> {
        self.accept(req).await
    }
}

#[tonic::async_trait]
impl Pair for Acceptor<FollowerWorkerMessage, LeaderWorkerMessage> {
    type StepsStream = OutStream<LeaderWorkerMessage>;
    async fn steps(
        &self,
        req: Request<Streaming<FollowerWorkerMessage>>,
    ) -> Result<Response<Self::StepsStream>, Status> {
        self.accept(req).await
    }
}

/// Binds `addr` and serves what `router` makes of the acceptor, to at most
/// `connections` attested connections.
async fn listen<In, Out>(
    addr: &str,
    admit: Admit,
    connections: usize,
    security: Security,
    router: impl FnOnce(Acceptor<In, Out>) -> tonic::transport::server::Router,
) -> Result<Listener<In, Out>, BridgeError> {
    let listen_err = |reason: String| BridgeError::Listen {
        addr: addr.to_string(),
        reason,
    };
    let tcp = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| listen_err(e.to_string()))?;
    let local_addr = tcp.local_addr().map_err(|e| listen_err(e.to_string()))?;
    let (stx, srx) = mpsc::channel(8);
    let acceptor = Acceptor {
        admit,
        attested_only: matches!(security, Security::RaTls(_)),
        streams: stx,
    };
    let limits = secure::Limits {
        connections,
        ..secure::Limits::default()
    };
    let serving = crate::server::serve(router(acceptor), tcp, security, limits);
    Ok(Listener {
        local_addr,
        streams: srx,
        rejections: serving.rejections,
        server: serving.server,
    })
}

/// Binds `addr` and serves a shard of party `own` to at most `workers`
/// workers (attested connections beyond them, plus two for reconnects, are
/// closed).
pub async fn listen_shard(
    addr: &str,
    own: PartyRole,
    (max_message, workers): (usize, usize),
    security: Security,
) -> Result<ShardListener, BridgeError> {
    listen(addr, Admit::OwnParty(own), workers + 2, security, |a| {
        let svc = ShardServer::new(a)
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message);
        crate::server::builder().add_service(svc)
    })
    .await
}

/// Binds `addr` and serves the leader's coordinator to at most `workers`
/// workers (plus two for reconnects).
pub async fn listen_coordinator(
    addr: &str,
    workers: usize,
    security: Security,
) -> Result<CoordinatorListener, BridgeError> {
    listen(addr, Admit::OwnParty(PartyRole::Leader), workers + 2, security, |a| {
        let svc = CoordinatorServer::new(a)
            .max_decoding_message_size(CONTROL_LIMIT)
            .max_encoding_message_size(CONTROL_LIMIT);
        crate::server::builder().add_service(svc)
    })
    .await
}

/// Binds `addr` and serves a leader worker to its follower worker (one
/// connection, plus two for reconnects).
pub async fn listen_pair(addr: &str, max_message: usize, security: Security) -> Result<PairListener, BridgeError> {
    listen(addr, Admit::Peer(PartyRole::Follower), 3, security, |a| {
        let svc = PairServer::new(a)
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message);
        crate::server::builder().add_service(svc)
    })
    .await
}

/// How long an attested server may take to answer a stream's opening.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// The coordinator's messages are small: block ids and worker indices.
pub const CONTROL_LIMIT: usize = 1 << 20;

/// A client's stream to a service: messages `In` from it, `Out` to it.
pub struct Outgoing<In, Out> {
    pub peer: PeerInfo,
    pub inbound: Streaming<In>,
    pub outbound: mpsc::Sender<Out>,
}

/// A worker's stream to one shard.
pub type ShardStream = Outgoing<ShardMessage, WorkerMessage>;
/// A leader worker's stream to its coordinator.
pub type CoordinatorStream = Outgoing<Assignment, WorkerStatus>;
/// A follower worker's stream to its leader worker.
pub type LeaderPairStream = Outgoing<LeaderWorkerMessage, FollowerWorkerMessage>;

/// Dials the shard at `addr` as a process of party `own`, retrying until
/// `wait` has passed; the shard must be admitted as `own` too. A verdict
/// on its evidence is final.
pub async fn dial_shard(
    addr: &str,
    own: PartyRole,
    max_message: usize,
    security: &Security,
    wait: Duration,
) -> Result<ShardStream, BridgeError> {
    dial(addr, Admit::OwnParty(own), security, wait, |channel, rx| async move {
        ShardClient::new(channel)
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message)
            .steps(rx)
            .await
    })
    .await
}

/// Dials the leader's coordinator at `addr` (a leader worker).
pub async fn dial_coordinator(
    addr: &str,
    security: &Security,
    wait: Duration,
) -> Result<CoordinatorStream, BridgeError> {
    dial(
        addr,
        Admit::OwnParty(PartyRole::Leader),
        security,
        wait,
        |channel, rx| async move {
            CoordinatorClient::new(channel)
                .max_decoding_message_size(CONTROL_LIMIT)
                .max_encoding_message_size(CONTROL_LIMIT)
                .steps(rx)
                .await
        },
    )
    .await
}

/// Dials the leader worker at `addr` (a follower worker); it must be
/// admitted as the leader.
pub async fn dial_pair(
    addr: &str,
    max_message: usize,
    security: &Security,
    wait: Duration,
) -> Result<LeaderPairStream, BridgeError> {
    dial(
        addr,
        Admit::Peer(PartyRole::Leader),
        security,
        wait,
        |channel, rx| async move {
            PairClient::new(channel)
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message)
                .steps(rx)
                .await
        },
    )
    .await
}

/// Dials `addr`, retrying until `wait` has passed, and opens the stream
/// `open` makes of the channel; the peer must pass `admit`. A verdict on
/// its evidence is final.
async fn dial<In, Out, F, Fut>(
    addr: &str,
    admit: Admit,
    security: &Security,
    wait: Duration,
    open: F,
) -> Result<Outgoing<In, Out>, BridgeError>
where
    F: Fn(Channel, ReceiverStream<Out>) -> Fut,
    Fut: std::future::Future<Output = Result<Response<Streaming<In>>, Status>>,
{
    let start = Instant::now();
    let mut backoff = Duration::from_millis(20);
    loop {
        let last = match attempt(addr, admit, security, &open).await {
            Ok(s) => return Ok(s),
            Err(e @ BridgeError::Rejected(_)) => return Err(e),
            Err(e) => e.to_string(),
        };
        if start.elapsed() >= wait {
            return Err(BridgeError::Unreachable {
                addr: addr.to_string(),
                secs: wait.as_secs(),
                last,
            });
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(500));
    }
}

async fn attempt<In, Out, F, Fut>(
    addr: &str,
    admit: Admit,
    security: &Security,
    open: &F,
) -> Result<Outgoing<In, Out>, BridgeError>
where
    F: Fn(Channel, ReceiverStream<Out>) -> Fut,
    Fut: std::future::Future<Output = Result<Response<Streaming<In>>, Status>>,
{
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| BridgeError::Protocol(format!("bad address {addr:?}: {e}")))?
        .tcp_nodelay(true)
        .initial_stream_window_size(crate::server::WINDOW)
        .initial_connection_window_size(crate::server::WINDOW)
        .http2_keep_alive_interval(crate::client::KEEPALIVE)
        .keep_alive_timeout(crate::client::KEEPALIVE * 2);
    let failure: secure::LastFailure = Default::default();
    let slot: secure::PeerSlot = Default::default();
    let channel: Channel = match security {
        Security::Insecure => endpoint.connect().await,
        Security::RaTls(tls) => {
            let (addr, tls, role) = (addr.to_string(), tls.clone(), admit.role());
            let (f, s) = (failure.clone(), slot.clone());
            endpoint
                .connect_with_connector(tower::service_fn(move |_uri| {
                    secure::dial(
                        role,
                        addr.clone(),
                        tls.clone(),
                        f.clone(),
                        s.clone(),
                        Default::default(),
                    )
                }))
                .await
        }
    }
    .map_err(|e| match failure.lock().ok().and_then(|mut f| f.take()) {
        Some(reason) => BridgeError::Rejected(reason),
        None => BridgeError::Lost(format!(
            "{e}: {}",
            std::error::Error::source(&e).map_or(String::new(), |s| s.to_string())
        )),
    })?;
    let (tx, rx) = mpsc::channel(4);
    let inbound = tokio::time::timeout(OPEN_TIMEOUT, open(channel, ReceiverStream::new(rx)))
        .await
        .map_err(|_| BridgeError::Lost(format!("{addr}: no answer to opening the stream")))?
        .map_err(|s| match s.code() {
            tonic::Code::PermissionDenied => BridgeError::Rejected(s.message().to_string()),
            _ => BridgeError::Lost(s.message().to_string()),
        })?
        .into_inner();
    let peer = slot.lock().ok().and_then(|mut s| s.take()).unwrap_or_default();
    // Under RA-TLS a peer without a verified report is refused, whatever
    // the admission check would make of it.
    if matches!(security, Security::RaTls(_)) && peer.report.is_none() {
        return Err(BridgeError::Rejected(
            "no verified attestation report for this connection".into(),
        ));
    }
    admit.check(&peer).map_err(BridgeError::Rejected)?;
    Ok(Outgoing {
        peer,
        inbound,
        outbound: tx,
    })
}
