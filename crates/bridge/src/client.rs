//! The follower's side: connect with retry and backoff, handshake, and
//! open the session stream.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::{Channel, Endpoint};

use crate::BridgeError;
use crate::handshake::Settings;
use crate::pb::bridge_client::BridgeClient;
use crate::pb::{FollowerMessage, HelloReply, LeaderMessage};
use crate::secure::{self, OnReject, PeerInfo, Security};

/// An open session seen from the follower.
pub struct Session {
    pub reply: HelloReply,
    /// The leader's connection (for re-verification of its evidence).
    pub peer: PeerInfo,
    pub outbound: mpsc::Sender<FollowerMessage>,
    pub inbound: Streaming<LeaderMessage>,
}

/// Connects to the leader at `addr` (host:port), says hello and opens the
/// session stream, retrying the whole sequence with exponential backoff
/// (50 ms doubling to 1 s) until `wait` has passed. Only a verdict ends it
/// early: ours on the leader's evidence, or the leader's alert refusing
/// ours (with `--on-reject exit`), or the leader's refusal of our hello. A
/// connection that ends for any other reason (a proxy without backend, a
/// busy leader, a network blip) is retried.
pub async fn connect(
    addr: &str,
    settings: &Settings,
    wait: Duration,
    max_message: usize,
    security: &Security,
) -> Result<Session, BridgeError> {
    let url = format!("http://{addr}");
    let endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| BridgeError::Protocol(format!("bad peer address `{addr}`: {e}")))?
        .tcp_nodelay(true)
        .initial_stream_window_size(crate::server::WINDOW)
        .initial_connection_window_size(crate::server::WINDOW)
        .http2_keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE * 2)
        .connect_timeout(Duration::from_secs(5));
    let start = Instant::now();
    let mut backoff = Duration::from_millis(50);
    let last_failure = secure::LastFailure::default();
    let peer_slot = secure::PeerSlot::default();
    let closed = secure::LastFailure::default();
    let exit_on_reject = matches!(security, Security::RaTls(t) if t.on_reject == OnReject::Exit);
    // Connections closed right after our handshake, in a row: one is a blip
    // (the leader's deadline, its connection limit); several mean the leader
    // refuses our evidence (TLS does not always surface its alert here).
    let mut closed_after_handshake = 0;
    let mut ever_closed: Option<String> = None;
    loop {
        let slots = Slots {
            last_failure: &last_failure,
            peer: &peer_slot,
            closed: &closed,
        };
        let outcome = attempt(&endpoint, addr, settings, max_message, security, slots).await;
        let outcome = match outcome {
            Err(Attempt::Closed(why)) => {
                closed_after_handshake += 1;
                ever_closed = Some(why.clone());
                match security {
                    Security::RaTls(tls) if closed_after_handshake >= CLOSED_MEANS_REFUSED => {
                        Err(Attempt::Rejected(format!(
                            "the leader closed the connection right after the RA-TLS handshake {closed_after_handshake} \
                             times ({why}): it did not accept our evidence ({}); its log names the reason",
                            tls.ours
                        )))
                    }
                    _ => Err(Attempt::Retry(why)),
                }
            }
            other => {
                closed_after_handshake = 0;
                other
            }
        };
        let last = match outcome {
            Ok(session) => return Ok(session),
            Err(Attempt::Refused(e)) => return Err(e),
            Err(Attempt::Rejected(reason)) if exit_on_reject || start.elapsed() >= wait => {
                return Err(BridgeError::Rejected(reason));
            }
            Err(Attempt::Rejected(reason)) => {
                tracing::warn!(%addr, %reason, "the leader or its evidence was refused; retrying (--on-reject retry)");
                reason
            }
            Err(Attempt::Retry(why) | Attempt::Closed(why)) => {
                tracing::debug!(%addr, reason = %why, "leader not reachable yet, retrying");
                why
            }
        };
        if start.elapsed() >= wait {
            // The leader we had attested closed on us, then went away: the
            // likeliest story is that it refused our evidence and stopped.
            if let (Some(why), Security::RaTls(tls)) = (&ever_closed, security) {
                return Err(BridgeError::Rejected(format!(
                    "the leader closed the connection right after the RA-TLS handshake ({why}) and was not \
                     reachable again within {} s: it did not accept our evidence ({}), its log names the reason",
                    wait.as_secs(),
                    tls.ours
                )));
            }
            return Err(BridgeError::Unreachable {
                addr: addr.to_string(),
                secs: wait.as_secs(),
                last,
            });
        }
        tokio::time::sleep(backoff.min(wait.saturating_sub(start.elapsed()))).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// HTTP/2 keepalive: a dead connection is noticed within a few of these.
pub const KEEPALIVE: Duration = Duration::from_secs(5);

/// Closures right after our handshake, in a row, taken for a refusal.
const CLOSED_MEANS_REFUSED: u32 = 3;

/// Why one attempt did not give a session.
enum Attempt {
    /// A verdict on evidence (ours on the leader's, or the leader's on ours).
    Rejected(String),
    /// The leader answered and refused (e.g. settings differ): final.
    Refused(BridgeError),
    /// The connection closed right after our handshake, without an alert.
    Closed(String),
    /// Anything else: try again.
    Retry(String),
}

/// What the connector reports back from its dials.
#[derive(Clone, Copy)]
struct Slots<'a> {
    /// Our verdict on the leader's evidence.
    last_failure: &'a secure::LastFailure,
    /// The attested leader of the newest connection.
    peer: &'a secure::PeerSlot,
    /// The leader closed on us after we had verified it.
    closed: &'a secure::LastFailure,
}

/// One dial, hello and session open.
async fn attempt(
    endpoint: &Endpoint,
    addr: &str,
    settings: &Settings,
    max_message: usize,
    security: &Security,
    slots: Slots<'_>,
) -> Result<Session, Attempt> {
    let channel: Channel = match security {
        Security::Insecure => endpoint.connect().await,
        Security::RaTls(tls) => {
            let (addr, tls) = (addr.to_string(), tls.clone());
            let (lf, ps, cl) = (slots.last_failure.clone(), slots.peer.clone(), slots.closed.clone());
            endpoint
                .connect_with_connector(tower::service_fn(move |_uri| {
                    secure::dial(
                        vfl_attest::PartyRole::Leader,
                        addr.clone(),
                        tls.clone(),
                        lf.clone(),
                        ps.clone(),
                        cl.clone(),
                    )
                }))
                .await
        }
    }
    .map_err(|e| {
        let take = |slot: &secure::LastFailure| slot.lock().ok().and_then(|mut s| s.take());
        match (take(slots.last_failure), take(slots.closed)) {
            (Some(reason), _) => Attempt::Rejected(reason),
            (None, Some(why)) => Attempt::Closed(why),
            (None, None) => Attempt::Retry(format!(
                "{e}: {}",
                std::error::Error::source(&e).map_or(String::new(), |s| s.to_string())
            )),
        }
    })?;
    let mut client = BridgeClient::new(channel)
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    let reply = client
        .hello(settings.hello())
        .await
        .map_err(|s| call_failed(&s, security))?
        .into_inner();
    if !reply.accepted {
        // A busy leader (in a healthy session with another follower
        // process: our own previous one, if we restarted) is asked again.
        return Err(if reply.busy {
            tracing::info!(reason = %reply.reason, "the leader is busy; asking again");
            Attempt::Retry(reply.reason)
        } else {
            Attempt::Refused(BridgeError::Refused(reply.reason))
        });
    }
    let (tx, rx) = mpsc::channel(16);
    let inbound = client
        .session(ReceiverStream::new(rx))
        .await
        .map_err(|s| call_failed(&s, security))?
        .into_inner();
    let peer = slots.peer.lock().ok().and_then(|mut s| s.take()).unwrap_or_default();
    Ok(Session {
        reply,
        peer,
        outbound: tx,
        inbound,
    })
}

/// A failed call right after the handshake. In TLS 1.3 the leader judges
/// our certificate after our side of the handshake is done: a refusal
/// arrives as its alert on the first call. Only that alert is a verdict;
/// a connection closed for any other reason (its handshake deadline, its
/// connection limit, the network) is retried.
fn call_failed(s: &tonic::Status, security: &Security) -> Attempt {
    let alert = {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(s);
        let mut found = false;
        while let Some(e) = cur {
            let r = e.downcast_ref::<rustls::Error>().or_else(|| {
                e.downcast_ref::<std::io::Error>()
                    .and_then(|io| io.get_ref())
                    .and_then(|i| i.downcast_ref::<rustls::Error>())
            });
            // tokio-rustls hands rustls' error to hyper as an io::Error
            // carrying only its text: "received fatal alert: ...".
            if matches!(r, Some(rustls::Error::AlertReceived(_))) || e.to_string().starts_with("received fatal alert") {
                found = true;
                break;
            }
            cur = e.source();
        }
        found
    };
    match security {
        Security::RaTls(tls) if alert => Attempt::Rejected(format!(
            "the leader closed the connection with a TLS alert after the RA-TLS handshake ({}): it did not \
             accept our evidence ({}); its log names the reason",
            s.message(),
            tls.ours
        )),
        Security::RaTls(_)
            if matches!(
                s.code(),
                tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
            ) =>
        {
            Attempt::Closed(format!("the call failed: {}", s.message()))
        }
        _ => Attempt::Retry(format!("the call failed: {}", s.message())),
    }
}
