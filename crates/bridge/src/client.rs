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

/// Connects to the leader at `addr` (host:port), retrying with exponential
/// backoff (50 ms doubling to 1 s) until `wait` has passed; then says hello
/// and opens the session stream.
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
        .connect_timeout(Duration::from_secs(5));
    let start = Instant::now();
    let mut backoff = Duration::from_millis(50);
    let last_failure = secure::LastFailure::default();
    let peer_slot = secure::PeerSlot::default();
    let channel: Channel = loop {
        let attempt = match security {
            Security::Insecure => endpoint.connect().await,
            Security::RaTls(tls) => {
                let (addr, tls, lf, ps) = (addr.to_string(), tls.clone(), last_failure.clone(), peer_slot.clone());
                endpoint
                    .connect_with_connector(tower::service_fn(move |_uri| {
                        secure::dial(addr.clone(), tls.clone(), lf.clone(), ps.clone())
                    }))
                    .await
            }
        };
        match attempt {
            Ok(c) => break c,
            Err(e) => {
                let refused = last_failure.lock().ok().and_then(|mut s| s.take());
                if let (Some(reason), Security::RaTls(tls)) = (refused, security)
                    && (tls.on_reject == OnReject::Exit || start.elapsed() >= wait)
                {
                    return Err(BridgeError::Rejected(reason));
                }
                if start.elapsed() >= wait {
                    return Err(BridgeError::Unreachable {
                        addr: addr.to_string(),
                        secs: wait.as_secs(),
                        last: format!(
                            "{e}: {}",
                            std::error::Error::source(&e).map_or(String::new(), |s| s.to_string())
                        ),
                    });
                }
                tracing::debug!(%addr, error = %e, "leader not reachable yet, retrying");
                tokio::time::sleep(backoff.min(wait.saturating_sub(start.elapsed()))).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    };
    // A busy leader (in a healthy session with another follower process:
    // our own previous process, if we restarted, until it goes quiet) is
    // asked again until the wait is over.
    let reply = loop {
        let mut client = BridgeClient::new(channel.clone())
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message);
        let reply = hello(&mut client, settings, security).await?;
        if reply.accepted || !reply.busy || start.elapsed() >= wait {
            break (client, reply);
        }
        tracing::info!(reason = %reply.reason, "the leader is busy; asking again");
        tokio::time::sleep(Duration::from_millis(250).min(wait.saturating_sub(start.elapsed()))).await;
    };
    let (mut client, reply) = reply;
    if !reply.accepted {
        return Err(BridgeError::Refused(reply.reason));
    }
    let (tx, rx) = mpsc::channel(16);
    let inbound = client
        .session(ReceiverStream::new(rx))
        .await
        .map_err(|s| BridgeError::Lost(s.message().to_string()))?
        .into_inner();
    let peer = peer_slot.lock().ok().and_then(|mut s| s.take()).unwrap_or_default();
    Ok(Session {
        reply,
        peer,
        outbound: tx,
        inbound,
    })
}

async fn hello(
    client: &mut BridgeClient<Channel>,
    settings: &Settings,
    security: &Security,
) -> Result<HelloReply, BridgeError> {
    Ok(client
        .hello(settings.hello())
        .await
        .map_err(|s| match security {
            // In TLS 1.3 the server judges our certificate after our side of
            // the handshake is done: its refusal shows up on the first call.
            // Depending on timing the closed connection surfaces as
            // Unavailable, Unknown or Cancelled.
            Security::RaTls(tls)
                if matches!(
                    s.code(),
                    tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
                ) =>
            {
                BridgeError::Rejected(format!(
                    "the leader closed the connection after the RA-TLS handshake ({}): it did not accept our evidence \
                     ({}); its log names the reason",
                    s.message(),
                    tls.ours
                ))
            }
            _ => BridgeError::Lost(s.message().to_string()),
        })?
        .into_inner())
}
