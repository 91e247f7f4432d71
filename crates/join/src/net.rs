//! The join's connection: one mutually attested TLS 1.3 connection through
//! the same accept path (limits, deadlines, verdicts) and dialer (retry,
//! role check) as training, and the tag key from its TLS exporter.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use vfl_attest::PartyRole;
use vfl_bridge::secure::{self, Limits, ServerIo};
use vfl_bridge::{OnReject, RaTls};

use crate::JoinError;
use crate::tags::TagKey;

/// Listens on `addr` and returns the first connection of a peer the policy
/// admits as the follower, with its tag key. Connections that come later
/// are closed (one join at a time); a verdict on a peer's evidence ends the
/// wait with `--on-reject exit`, anything unauthenticated never does.
pub async fn accept(
    addr: &str,
    tls: Arc<RaTls>,
    wait: Duration,
    on_listening: impl FnOnce(std::net::SocketAddr),
) -> Result<(ServerIo, TagKey), JoinError> {
    let listen_err = |source| JoinError::Listen {
        addr: addr.to_string(),
        source,
    };
    let tcp = tokio::net::TcpListener::bind(addr).await.map_err(listen_err)?;
    on_listening(tcp.local_addr().map_err(listen_err)?);
    let (rej_tx, mut rej_rx) = tokio::sync::mpsc::channel(8);
    let on_reject = tls.on_reject;
    let mut conns = secure::accept_loop(tcp, tls, rej_tx, Limits::default());
    let deadline = tokio::time::Instant::now() + wait;
    let io = loop {
        tokio::select! {
            c = conns.recv() => match c {
                None => return Err(JoinError::PeerGone("the listener stopped".into())),
                Some(Err(e)) => tracing::warn!(error = %e, "join: accept failed"),
                Some(Ok(io)) => match io.1.check_role(PartyRole::Follower) {
                    Ok(()) => break io,
                    Err(why) if on_reject == OnReject::Exit => return Err(JoinError::Attestation(format!("peer rejected: {why}"))),
                    Err(why) => tracing::warn!(%why, "join: a peer that may not be the follower; waiting on"),
                },
            },
            Some(reason) = rej_rx.recv() => {
                if on_reject == OnReject::Exit {
                    return Err(JoinError::Attestation(reason));
                }
                tracing::warn!(%reason, "join: peer refused; waiting on (--on-reject retry)");
            }
            _ = tokio::time::sleep_until(deadline) => return Err(JoinError::Timeout(wait.as_secs())),
        }
    };
    // Later connections: closed at once.
    tokio::spawn(async move {
        while let Some(c) = conns.recv().await {
            if let Ok(io) = c {
                tracing::warn!(conn = io.1.conn, "join: another peer connected during the join; closed");
            }
        }
    });
    tokio::spawn(async move { while rej_rx.recv().await.is_some() {} });
    let key =
        TagKey::from_connection(io.0.get_ref().1).map_err(|e| JoinError::Attestation(format!("TLS exporter: {e}")))?;
    Ok((io, key))
}

/// Dials the leader at `addr` until it admits us or `wait` passes; the
/// stream and its tag key.
pub async fn connect(
    addr: &str,
    tls: Arc<RaTls>,
    wait: Duration,
) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, TagKey), JoinError> {
    let start = Instant::now();
    let mut backoff = Duration::from_millis(50);
    loop {
        let failure: secure::LastFailure = Default::default();
        let slot: secure::PeerSlot = Default::default();
        let closed: secure::LastFailure = Default::default();
        let last = match secure::dial(
            vfl_attest::PartyRole::Leader,
            addr.to_string(),
            tls.clone(),
            failure,
            slot,
            closed,
        )
        .await
        {
            Ok(io) => {
                let stream = io.into_inner();
                let key = TagKey::from_connection(stream.get_ref().1)
                    .map_err(|e| JoinError::Attestation(format!("TLS exporter: {e}")))?;
                return Ok((stream, key));
            }
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied && tls.on_reject == OnReject::Exit => {
                return Err(JoinError::Attestation(e.to_string()));
            }
            Err(e) => e.to_string(),
        };
        if start.elapsed() + backoff > wait {
            return Err(JoinError::Unreachable {
                addr: addr.to_string(),
                secs: wait.as_secs(),
                last,
            });
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}
