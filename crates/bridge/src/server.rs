//! The leader's side: a gRPC server that admits one follower session whose
//! handshake matches, and hands its streams to the training driver.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::BridgeError;
use crate::handshake::Settings;
use crate::link::Health;
use crate::pb::bridge_server::{Bridge, BridgeServer};
use crate::pb::{FollowerMessage, HelloReply, HelloRequest, LeaderMessage};
use crate::secure::{self, PeerInfo, Security};

/// An admitted follower session.
pub struct Session {
    pub session_id: String,
    pub peer_process_id: String,
    /// The checkpoint step both parties resume from, if any.
    pub resume_step: Option<u64>,
    /// The run both parties train in.
    pub run_id: String,
    /// The follower's connection (for re-verification of its evidence).
    pub peer: PeerInfo,
    /// The session's health, kept by the link, read by the server.
    pub health: Arc<Health>,
    pub inbound: Streaming<FollowerMessage>,
    pub outbound: mpsc::Sender<Result<LeaderMessage, Status>>,
}

/// The accepted hello: what a Session call continues.
#[derive(Clone)]
struct Accepted {
    session_id: String,
    process_id: String,
    resume: Option<u64>,
    run_id: String,
    /// The connection that said hello (0: not attested, not checked).
    conn: u64,
}

struct State {
    settings: Settings,
    accepted: Option<Accepted>,
    health: Arc<Health>,
    sessions: Option<mpsc::Sender<Session>>,
    counter: u64,
}

#[derive(Clone)]
struct Service {
    state: Arc<Mutex<State>>,
}

type OutStream = Pin<Box<dyn Stream<Item = Result<LeaderMessage, Status>> + Send>>;

/// A hello that continues the accepted session: same session id and the
/// same follower process (a restarted follower starts a new session).
fn is_reattach(accepted: &Option<Accepted>, h: &HelloRequest) -> bool {
    !h.resume_session.is_empty()
        && accepted
            .as_ref()
            .is_some_and(|a| a.session_id == h.resume_session && a.process_id == h.process_id)
}

#[tonic::async_trait]
impl Bridge for Service {
    async fn hello(&self, req: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        let peer = req.extensions().get::<PeerInfo>().cloned().unwrap_or_default();
        let h = req.into_inner();
        let mut st = self.state.lock().map_err(|_| Status::internal("state poisoned"))?;
        let refuse = |st: &State, reason: String| {
            tracing::error!(%reason, follower = %h.process_id, "refusing follower");
            HelloReply {
                accepted: false,
                reason,
                process_id: st.settings.process_id.clone(),
                ..Default::default()
            }
        };
        // The peer's claimed role (follower, checked with the settings) must
        // be one its policy entries admit.
        let checked = peer
            .check_role(vfl_attest::PartyRole::Follower)
            .and_then(|()| st.settings.check(&h));
        let reply = match checked {
            Err(reason) => refuse(&st, reason),
            Ok(()) if is_reattach(&st.accepted, &h) => {
                tracing::info!(follower = %h.process_id, session = %h.resume_session, "follower reconnected");
                let run_id = st.accepted.as_ref().map(|a| a.run_id.clone()).unwrap_or_default();
                if let Some(a) = st.accepted.as_mut() {
                    a.conn = peer.conn;
                }
                HelloReply {
                    accepted: true,
                    process_id: st.settings.process_id.clone(),
                    session_id: h.resume_session.clone(),
                    reattached: true,
                    run_id,
                    release_exports: st.settings.release_exports.clone(),
                    ..Default::default()
                }
            }
            // Another follower process while the session is alive: not a
            // restart (a restarted follower's old link is down or quiet).
            Ok(()) if st.accepted.as_ref().is_some_and(|a| a.process_id != h.process_id) && st.health.healthy() => {
                let reason = format!(
                    "the leader is in a healthy session with another follower process; a restarted follower is \
                     taken back once that one has been silent for {:.1} s",
                    st.health.window().as_secs_f64()
                );
                HelloReply {
                    busy: true,
                    ..refuse(&st, reason)
                }
            }
            Ok(()) => match st.settings.decide(&h, crate::handshake::new_run_id) {
                Err(reason) => refuse(&st, reason),
                Ok(decision) => {
                    st.counter += 1;
                    let session_id = format!(
                        "{}-{}",
                        &st.settings.process_id[..8.min(st.settings.process_id.len())],
                        st.counter
                    );
                    tracing::info!(follower = %h.process_id, %session_id, run = %decision.run_id, "follower accepted");
                    st.accepted = Some(Accepted {
                        session_id: session_id.clone(),
                        process_id: h.process_id.clone(),
                        resume: decision.resume,
                        run_id: decision.run_id.clone(),
                        conn: peer.conn,
                    });
                    HelloReply {
                        accepted: true,
                        process_id: st.settings.process_id.clone(),
                        session_id,
                        resume: decision.resume.is_some(),
                        resume_step: decision.resume.unwrap_or(0),
                        reattached: false,
                        run_id: decision.run_id,
                        release_exports: st.settings.release_exports.clone(),
                        ..Default::default()
                    }
                }
            },
        };
        Ok(Response::new(reply))
    }

    type SessionStream = OutStream;

    async fn session(&self, req: Request<Streaming<FollowerMessage>>) -> Result<Response<OutStream>, Status> {
        let peer = req.extensions().get::<PeerInfo>().cloned().unwrap_or_default();
        peer.check_role(vfl_attest::PartyRole::Follower)
            .map_err(Status::permission_denied)?;
        let inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let (accepted, sessions, health) = {
            let st = self.state.lock().map_err(|_| Status::internal("state poisoned"))?;
            (st.accepted.clone(), st.sessions.clone(), st.health.clone())
        };
        let Some(Accepted {
            session_id,
            process_id: peer_process_id,
            resume: resume_step,
            run_id,
            conn,
        }) = accepted
        else {
            return Err(Status::failed_precondition("no accepted hello: call Hello first"));
        };
        // The stream belongs to the connection that said hello.
        if peer.attested && peer.conn != conn {
            return Err(Status::failed_precondition(
                "this connection did not say Hello: open the session on the connection that did",
            ));
        }
        let Some(sessions) = sessions else {
            return Err(Status::unavailable("the leader is not accepting sessions"));
        };
        sessions
            .send(Session {
                session_id,
                peer_process_id,
                resume_step,
                run_id,
                peer,
                health,
                inbound,
                outbound: tx,
            })
            .await
            .map_err(|_| Status::unavailable("the leader is shutting down"))?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// A running leader endpoint.
pub struct Listener {
    pub local_addr: SocketAddr,
    pub sessions: mpsc::Receiver<Session>,
    /// Reasons of refused RA-TLS handshakes (ours of the peer, or the peer's of us).
    pub rejections: mpsc::Receiver<String>,
    server: Server,
}

impl Listener {
    /// Stops the server and waits for it.
    pub async fn shutdown(self) {
        self.server.stop().await;
    }
}

/// HTTP/2 flow-control window for streams and connections.
pub const WINDOW: u32 = 16 << 20;

/// Concurrent HTTP/2 streams per connection.
pub const MAX_STREAMS: u32 = 4;

/// Binds `addr` (port 0 picks a free port) and serves the bridge.
pub async fn listen(
    addr: &str,
    settings: Settings,
    max_message: usize,
    security: Security,
) -> Result<Listener, BridgeError> {
    let listen_err = |reason: String| BridgeError::Listen {
        addr: addr.to_string(),
        reason,
    };
    let tcp = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| listen_err(e.to_string()))?;
    let local_addr = tcp.local_addr().map_err(|e| listen_err(e.to_string()))?;
    let (stx, srx) = mpsc::channel(1);
    let state = State {
        settings,
        accepted: None,
        health: Arc::new(Health::default()),
        sessions: Some(stx),
        counter: 0,
    };
    let svc = BridgeServer::new(Service {
        state: Arc::new(Mutex::new(state)),
    })
    .max_decoding_message_size(max_message)
    .max_encoding_message_size(max_message);
    let serving = serve(builder().add_service(svc), tcp, security, secure::Limits::default());
    Ok(Listener {
        local_addr,
        sessions: srx,
        rejections: serving.rejections,
        server: serving.server,
    })
}

/// The gRPC server settings of every enclave-vfl endpoint.
pub(crate) fn builder() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        // Tensors of 64 KiB and more would stall on HTTP/2's default
        // 64 KiB flow-control window (one round trip per message).
        .initial_stream_window_size(WINDOW)
        .initial_connection_window_size(WINDOW)
        // A follower needs two streams (Hello, then Session); a peer that
        // opens more gets refused streams, not more memory.
        .max_concurrent_streams(Some(MAX_STREAMS))
        // A dead connection (a crashed host, a dropped NAT mapping) is
        // noticed and gives its place back.
        .http2_keepalive_interval(Some(crate::client::KEEPALIVE))
        .http2_keepalive_timeout(Some(crate::client::KEEPALIVE * 2))
}

/// A server started by [`serve`] and the verdicts on refused evidence
/// (RA-TLS only).
pub(crate) struct Serving {
    pub server: Server,
    pub rejections: mpsc::Receiver<String>,
}

/// A running gRPC server: its task and its stop switch.
pub(crate) struct Server {
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    shutdown: tokio::sync::oneshot::Sender<()>,
}

impl Server {
    /// Stops serving and waits for the server task.
    pub(crate) async fn stop(self) {
        let _ = self.shutdown.send(());
        let _ = self.task.await;
    }
}

/// Serves `router` on `tcp`: plaintext, or RA-TLS through the accept loop
/// and its `limits`.
pub(crate) fn serve(
    router: tonic::transport::server::Router,
    tcp: tokio::net::TcpListener,
    security: Security,
    limits: secure::Limits,
) -> Serving {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (rej_tx, rej_rx) = mpsc::channel(8);
    let stop = async {
        let _ = rx.await;
    };
    let task = match security {
        Security::Insecure => {
            // Disable Nagle on every accepted connection: a tensor message waits
            // otherwise for the peer's delayed ACK (tens of ms per step). The
            // builder's own tcp_nodelay applies only to listeners it binds itself.
            let incoming = tokio_stream::StreamExt::map(tokio_stream::wrappers::TcpListenerStream::new(tcp), |s| {
                s.and_then(|s| s.set_nodelay(true).map(|()| s))
            });
            drop(rej_tx);
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, stop))
        }
        Security::RaTls(tls) => {
            let incoming = ReceiverStream::new(secure::accept_loop(tcp, tls, rej_tx, limits));
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, stop))
        }
    };
    Serving {
        server: Server { task, shutdown: tx },
        rejections: rej_rx,
    }
}
