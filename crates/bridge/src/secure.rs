//! The transport's security: mutual RA-TLS (the default), or plaintext only
//! when the user asked for it explicitly. The server handshakes each
//! connection in its own task with a deadline; the client uses a custom
//! connector so tonic never adds its own TLS. No application byte flows
//! before the peer's evidence has been verified.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use vfl_attest::PartyRole;
use vfl_attest::tls::{self as ratls, RaTlsVerifier};

/// How long one TLS handshake (including verification of the peer) may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);

/// What to do when the peer's evidence is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnReject {
    /// Stop with an error naming the reason (default).
    Exit,
    /// Keep waiting for an acceptable peer until the peer timeout.
    Retry,
}

/// Mutual RA-TLS settings of one process.
pub struct RaTls {
    pub server: Arc<rustls::ServerConfig>,
    pub client: Arc<rustls::ClientConfig>,
    pub verifier: Arc<RaTlsVerifier>,
    /// One line describing our own evidence, logged when the peer refuses us.
    pub ours: String,
    pub on_reject: OnReject,
}

/// The security of the bridge connection.
#[derive(Clone)]
pub enum Security {
    RaTls(Arc<RaTls>),
    /// Plaintext, unauthenticated (`--insecure-no-tls`).
    Insecure,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Security::RaTls(t) => write!(f, "RaTls({})", t.ours),
            Security::Insecure => f.write_str("Insecure"),
        }
    }
}

impl Security {
    pub fn is_tls(&self) -> bool {
        matches!(self, Security::RaTls(_))
    }

    /// The digest of the policy that admits peers (`none` without RA-TLS),
    /// bound into every sealed file.
    pub fn policy_digest(&self) -> String {
        match self {
            Security::RaTls(t) => t.verifier.verifier().policy().digest_hex(),
            Security::Insecure => "none".into(),
        }
    }

    /// The roles whose export the policy lets out in plaintext (sorted).
    /// Without RA-TLS there is no policy and nothing is protected anyway.
    pub fn release_exports(&self) -> Vec<String> {
        match self {
            Security::RaTls(t) => t
                .verifier
                .verifier()
                .policy()
                .release_exports
                .iter()
                .map(|r| r.as_str().to_string())
                .collect(),
            Security::Insecure => vec!["follower".into(), "leader".into()],
        }
    }
}

impl RaTls {
    /// Verifies the peer's certificate again, now (current collateral,
    /// current time, current high-water marks), and that the policy still
    /// admits it as `role`: a platform revoked mid-run stops being trusted.
    pub fn reverify(&self, peer: &PeerInfo, role: PartyRole) -> Result<vfl_attest::PeerReport, String> {
        let Some(cert) = &peer.cert else {
            return Err("no peer certificate recorded for this connection".into());
        };
        let report = self
            .verifier
            .verifier()
            .verify_cert(cert)
            .map_err(|r| format!("peer rejected on re-verification: {r}"))?;
        report.check_role(role)?;
        Ok(report)
    }
}

/// What is known about the peer of one connection.
#[derive(Clone, Debug, Default)]
pub struct PeerInfo {
    /// Unique per accepted connection of this process (0: unknown).
    pub conn: u64,
    /// An RA-TLS connection (its peer must have a verified report).
    pub attested: bool,
    /// The peer's verified RA-TLS report (none without TLS).
    pub report: Option<Arc<vfl_attest::PeerReport>>,
    /// The peer's certificate (DER), for re-verification.
    pub cert: Option<Arc<Vec<u8>>>,
}

impl PeerInfo {
    /// Why the peer may not play `role`, if the policy does not admit it
    /// as that role (no report: no RA-TLS, nothing to check).
    pub fn check_role(&self, role: PartyRole) -> Result<(), String> {
        match (&self.report, self.attested) {
            (Some(r), _) => r.check_role(role),
            (None, true) => Err("no verified attestation report for this connection".into()),
            (None, false) => Ok(()),
        }
    }
}

/// A server-side TLS stream handed to tonic, with what is known of its peer.
pub struct ServerIo(pub tokio_rustls::server::TlsStream<TcpStream>, pub PeerInfo);

impl tonic::transport::server::Connected for ServerIo {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.1.clone()
    }
}

impl AsyncRead for ServerIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for ServerIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// What the verifier found about the peer of a finished handshake.
fn peer_info<D>(tls: &RaTls, conn: &rustls::ConnectionCommon<D>, id: u64) -> PeerInfo {
    let cert = conn.peer_certificates().and_then(|c| c.first());
    // The verifier remembers its last reports; one evicted meanwhile (many
    // handshakes at once) is computed again from the same certificate.
    let report = cert.and_then(|c| {
        tls.verifier
            .report_for(c)
            .or_else(|| tls.verifier.verifier().verify_cert(c).ok())
    });
    PeerInfo {
        conn: id,
        attested: true,
        report: report.map(Arc::new),
        cert: cert.map(|c| Arc::new(c.as_ref().to_vec())),
    }
}

static CONNECTIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn next_conn_id() -> u64 {
    CONNECTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
}

/// Accept TCP connections, handshake each in its own task, and yield the
/// verified ones. Refusals are logged and sent to `rejections`.
pub fn accept_loop(
    tcp: tokio::net::TcpListener,
    tls: Arc<RaTls>,
    rejections: mpsc::Sender<String>,
) -> mpsc::Receiver<Result<ServerIo, std::io::Error>> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        loop {
            let (sock, peer) = match tcp.accept().await {
                Ok(x) => x,
                Err(e) => {
                    if tx.send(Err(e)).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let _ = sock.set_nodelay(true);
            let (tx, tls, rejections) = (tx.clone(), tls.clone(), rejections.clone());
            tokio::spawn(async move {
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.server.clone());
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(sock)).await {
                    Ok(Ok(stream)) => {
                        let info = peer_info(&tls, stream.get_ref().1, next_conn_id());
                        if let Some(report) = &info.report {
                            tracing::info!(%peer, conn = info.conn, peer_identity = %report, "RA-TLS: peer attested");
                        }
                        let _ = tx.send(Ok(ServerIo(stream, info))).await;
                    }
                    Ok(Err(e)) => {
                        let reason = ratls::describe_error(&e);
                        tracing::error!(%peer, %reason, ours = %tls.ours, "RA-TLS handshake failed");
                        let _ = rejections.try_send(reason);
                    }
                    Err(_) => {
                        tracing::warn!(%peer, "RA-TLS handshake timed out after {:?}", HANDSHAKE_TIMEOUT);
                    }
                }
            });
        }
    });
    rx
}

/// The last handshake failure a client connector saw.
pub type LastFailure = Arc<Mutex<Option<String>>>;

/// The peer of the client connector's newest connection.
pub type PeerSlot = Arc<Mutex<Option<PeerInfo>>>;

/// Dial `addr` (the leader) and handshake as a client; verified streams of
/// a peer the policy admits as the leader only.
pub async fn dial(
    addr: String,
    tls: Arc<RaTls>,
    last_failure: LastFailure,
    peer_slot: PeerSlot,
) -> Result<hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>, std::io::Error> {
    let sock = TcpStream::connect(&addr).await?;
    sock.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from(ratls::SERVER_NAME)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let connector = tokio_rustls::TlsConnector::from(tls.client.clone());
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, sock)).await {
        Ok(Ok(stream)) => {
            let info = peer_info(&tls, stream.get_ref().1, next_conn_id());
            if let Some(report) = &info.report {
                tracing::info!(peer = %addr, peer_identity = %report, "RA-TLS: peer attested");
            }
            if let Err(why) = info.check_role(PartyRole::Leader) {
                let reason = format!("peer rejected: {why}");
                tracing::error!(peer = %addr, %reason, "RA-TLS peer refused");
                if let Ok(mut slot) = last_failure.lock() {
                    *slot = Some(reason.clone());
                }
                return Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, reason));
            }
            if let Ok(mut slot) = peer_slot.lock() {
                *slot = Some(info);
            }
            Ok(hyper_util::rt::TokioIo::new(stream))
        }
        // The connection ended before TLS said anything (e.g. a proxy or load
        // balancer whose backend is not up yet): not a verdict, retry.
        Ok(Err(e)) if !e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) => {
            tracing::debug!(peer = %addr, error = %e, "TLS handshake interrupted; retrying");
            Err(e)
        }
        Ok(Err(e)) => {
            let reason = ratls::describe_error(&e);
            tracing::error!(peer = %addr, %reason, ours = %tls.ours, "RA-TLS handshake failed");
            if let Ok(mut slot) = last_failure.lock() {
                *slot = Some(reason.clone());
            }
            Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, reason))
        }
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "RA-TLS handshake timed out",
        )),
    }
}

/// One mutual RA-TLS handshake over loopback between a server and a client
/// both configured by `tls` (each verifies the other), including one byte
/// each way so the server's verdict on the client is known. For benchmarks.
pub async fn loopback_handshake(tls: &RaTls) -> Result<Duration, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server.clone());
    let connector = tokio_rustls::TlsConnector::from(tls.client.clone());
    let start = std::time::Instant::now();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let mut s = acceptor.accept(tcp).await.map_err(|e| ratls::describe_error(&e))?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.map_err(|e| ratls::describe_error(&e))?;
        s.write_all(&b).await.map_err(|e| e.to_string())?;
        s.flush().await.map_err(|e| e.to_string())
    });
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from(ratls::SERVER_NAME).map_err(|e| e.to_string())?;
    let mut c = connector
        .connect(name, tcp)
        .await
        .map_err(|e| ratls::describe_error(&e))?;
    c.write_all(&[1]).await.map_err(|e| e.to_string())?;
    c.flush().await.map_err(|e| e.to_string())?;
    let mut b = [0u8; 1];
    c.read_exact(&mut b).await.map_err(|e| ratls::describe_error(&e))?;
    let elapsed = start.elapsed();
    server.await.map_err(|e| e.to_string())??;
    Ok(elapsed)
}
