//! Transport inside one party: a parameter shard serves its party's
//! workers, one long-lived stream each (`vfl.party.v1.Shard`). Every
//! connection is RA-TLS, and both ends admit only a peer the policy admits
//! as **their own role**: on the follower, the gradients on these links are
//! derived from the leader's labels and must reach no one else.
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
use crate::party_pb::shard_client::ShardClient;
use crate::party_pb::shard_server::{Shard, ShardServer};
use crate::party_pb::{ShardMessage, WorkerMessage};
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

/// One worker's stream, admitted.
pub struct WorkerStream {
    pub peer: PeerInfo,
    pub inbound: Streaming<WorkerMessage>,
    pub outbound: mpsc::Sender<Result<ShardMessage, Status>>,
}

/// A listening shard: admitted workers' streams arrive on `streams`.
pub struct ShardListener {
    pub local_addr: SocketAddr,
    pub streams: mpsc::Receiver<WorkerStream>,
    /// Verdicts on genuine evidence that was refused (RA-TLS only).
    pub rejections: mpsc::Receiver<String>,
    server: crate::server::Server,
}

impl ShardListener {
    /// Stops serving and waits for the server task.
    pub async fn shutdown(self) {
        self.server.stop().await;
    }
}

#[derive(Clone)]
struct Service {
    own: PartyRole,
    /// RA-TLS: every connection must come with a verified report.
    attested_only: bool,
    streams: mpsc::Sender<WorkerStream>,
}

type OutStream = Pin<Box<dyn Stream<Item = Result<ShardMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Shard for Service {
    type StepsStream = OutStream;

    async fn steps(&self, req: Request<Streaming<WorkerMessage>>) -> Result<Response<OutStream>, Status> {
        let peer = req.extensions().get::<PeerInfo>().cloned().unwrap_or_default();
        if self.attested_only && !peer.attested {
            return Err(Status::permission_denied("no attested connection"));
        }
        // Only our own party's processes: the other party's enclave is
        // admitted by the policy too, but as the other role.
        if let Err(why) = check_own_party(&peer, self.own) {
            tracing::error!(%why, "refusing a worker: not of this party");
            return Err(Status::permission_denied(format!("not a {} process: {why}", self.own)));
        }
        let (tx, rx) = mpsc::channel(4);
        let stream = WorkerStream {
            peer,
            inbound: req.into_inner(),
            outbound: tx,
        };
        self.streams
            .send(stream)
            .await
            .map_err(|_| Status::unavailable("the shard is stopping"))?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
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
    let listen_err = |reason: String| BridgeError::Listen {
        addr: addr.to_string(),
        reason,
    };
    let tcp = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| listen_err(e.to_string()))?;
    let local_addr = tcp.local_addr().map_err(|e| listen_err(e.to_string()))?;
    let (stx, srx) = mpsc::channel(8);
    let svc = ShardServer::new(Service {
        own,
        attested_only: matches!(security, Security::RaTls(_)),
        streams: stx,
    })
    .max_decoding_message_size(max_message)
    .max_encoding_message_size(max_message);
    let limits = secure::Limits {
        connections: workers + 2,
        ..secure::Limits::default()
    };
    let serving = crate::server::serve(crate::server::builder().add_service(svc), tcp, security, limits);
    Ok(ShardListener {
        local_addr,
        streams: srx,
        rejections: serving.rejections,
        server: serving.server,
    })
}

/// A worker's stream to one shard.
pub struct ShardStream {
    pub peer: PeerInfo,
    pub inbound: Streaming<ShardMessage>,
    pub outbound: mpsc::Sender<WorkerMessage>,
}

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
    let start = Instant::now();
    let mut backoff = Duration::from_millis(20);
    loop {
        let last = match attempt(addr, own, max_message, security).await {
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

async fn attempt(
    addr: &str,
    own: PartyRole,
    max_message: usize,
    security: &Security,
) -> Result<ShardStream, BridgeError> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| BridgeError::Protocol(format!("bad shard address {addr:?}: {e}")))?
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
            let (addr, tls) = (addr.to_string(), tls.clone());
            let (f, s) = (failure.clone(), slot.clone());
            endpoint
                .connect_with_connector(tower::service_fn(move |_uri| {
                    secure::dial(own, addr.clone(), tls.clone(), f.clone(), s.clone(), Default::default())
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
    let mut client = ShardClient::new(channel)
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    let (tx, rx) = mpsc::channel(4);
    let inbound = client
        .steps(ReceiverStream::new(rx))
        .await
        .map_err(|s| match s.code() {
            tonic::Code::PermissionDenied => BridgeError::Rejected(s.message().to_string()),
            _ => BridgeError::Lost(s.message().to_string()),
        })?
        .into_inner();
    let peer = slot.lock().ok().and_then(|mut s| s.take()).unwrap_or_default();
    check_own_party(&peer, own).map_err(BridgeError::Rejected)?;
    Ok(ShardStream {
        peer,
        inbound,
        outbound: tx,
    })
}
