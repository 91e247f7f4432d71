//! The transport's security: mutual RA-TLS (the default), or plaintext only
//! when the user asked for it explicitly (development builds). The client
//! uses a custom connector so tonic never adds its own TLS. No application
//! byte flows before the peer's evidence has been verified.
//!
//! The server's path before authentication is built so that nothing
//! unauthenticated can stop or starve the party: accepting and handshaking
//! run on a runtime of their own (never on the workers that train and send
//! heartbeats); handshakes are capped in total and per source address and
//! each has a deadline; accept errors (EMFILE) back off; only a verdict on
//! genuine evidence counts as a refusal (`--on-reject`), everything else is
//! logged at a limited rate; and at most a few attested connections are
//! kept at once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use vfl_attest::PartyRole;
use vfl_attest::tls::{self as ratls, HandshakeFailure, RaTlsVerifier};

/// How long one TLS handshake (including verification of the peer) may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Limits of the server's path before authentication.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Handshakes in progress at once, in total.
    pub handshakes: usize,
    /// Handshakes in progress at once from one source address.
    pub per_address: usize,
    /// Deadline of one handshake, verification included.
    pub deadline: Duration,
    /// Deadline of a connection's first TLS message (ClientHello): a
    /// connection that says nothing gives its slot back soon.
    pub hello_deadline: Duration,
    /// Handshake slots kept for addresses that attested before (a follower
    /// coming back while strangers fill the others).
    pub reserved: usize,
    /// Attested connections open at once (a follower needs one; a
    /// reconnect briefly two).
    pub connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            handshakes: 256,
            per_address: 8,
            deadline: HANDSHAKE_TIMEOUT,
            hello_deadline: Duration::from_secs(2),
            reserved: 16,
            connections: 8,
        }
    }
}

/// A log line at most every `every`, counting the ones it swallowed: for
/// events anyone can cause (probes, scans, floods).
pub struct RateLimitedLog {
    every: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl RateLimitedLog {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(suppressed)` when a line may be written now.
    pub fn allow(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match s.0 {
            Some(t) if t.elapsed() < self.every => {
                s.1 += 1;
                None
            }
            _ => {
                let n = s.1;
                *s = (Some(Instant::now()), 0);
                Some(n)
            }
        }
    }
}

/// The runtime that runs the handshakes: one thread of its own, so that
/// handshake work (verification included) never takes the workers that
/// train and send heartbeats. The sockets stay registered with the caller's
/// runtime (which accepts them), so their readiness never waits on this
/// thread either.
fn handshake_runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("vfl-handshake")
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("cannot start the handshake runtime: {e}"))
    })
}

/// The source a per-address limit counts: the IPv4 address, or the /64 of
/// an IPv6 address (one host has a whole /64).
fn source_group(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

/// Addresses that attested before (at most [`KNOWN_MAX`] remembered).
#[derive(Default)]
struct Known(Mutex<std::collections::VecDeque<IpAddr>>);

const KNOWN_MAX: usize = 1024;

impl Known {
    fn contains(&self, ip: IpAddr) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).contains(&ip)
    }

    fn add(&self, ip: IpAddr) {
        let mut k = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if !k.contains(&ip) {
            if k.len() >= KNOWN_MAX {
                k.pop_front();
            }
            k.push_back(ip);
        }
    }
}

/// Counts of what each source address holds (see [`AddressSlot`]).
pub type AddressCounts = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// One slot of a source address (a handshake here, a connection of the
/// binary's metrics endpoint), given back when dropped.
pub struct AddressSlot {
    counts: AddressCounts,
    ip: IpAddr,
}

impl AddressSlot {
    /// A slot of `ip`, unless it holds `max` already.
    pub fn take(counts: &AddressCounts, ip: IpAddr, max: usize) -> Option<Self> {
        let mut c = counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = c.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Self {
            counts: counts.clone(),
            ip,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = c.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.remove(&self.ip);
            }
        }
    }
}

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

/// A server-side TLS stream handed to tonic, with what is known of its peer
/// (and its place among the attested connections, freed when it closes).
pub struct ServerIo(
    pub tokio_rustls::server::TlsStream<TcpStream>,
    pub PeerInfo,
    pub Option<OwnedSemaphorePermit>,
);

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

/// Accepts TCP connections and handshakes each (on the handshake runtime,
/// within [`Limits`]), and yields the attested ones. Only verdicts on
/// genuine evidence go to `rejections`; every other failure is logged at a
/// limited rate and changes nothing.
pub fn accept_loop(
    tcp: tokio::net::TcpListener,
    tls: Arc<RaTls>,
    rejections: mpsc::Sender<String>,
    limits: Limits,
) -> mpsc::Receiver<Result<ServerIo, std::io::Error>> {
    let (tx, rx) = mpsc::channel(4);
    // Accepting is cheap and stays on the caller's runtime (so are the
    // sockets' registrations); each handshake runs on the handshake runtime.
    tokio::spawn(async move {
        let gate = Arc::new(Admission::new(limits));
        let mut backoff = Duration::from_millis(10);
        loop {
            let accepted = tokio::select! {
                a = tcp.accept() => a,
                () = tx.closed() => return,
            };
            let (sock, peer) = match accepted {
                Ok(x) => {
                    backoff = Duration::from_millis(10);
                    x
                }
                Err(e) => {
                    if let Some(n) = gate.logs.accept.allow() {
                        tracing::warn!(error = %e, suppressed = n, "accepting a connection failed; backing off");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            let Some(held) = gate.admit(peer) else { continue };
            let _ = sock.set_nodelay(true);
            let out = (tx.clone(), rejections.clone());
            handshake_runtime().spawn(handshake(sock, peer, held, gate.clone(), tls.clone(), out));
        }
    });
    rx
}

/// The accept loop's shared admission state: handshake slots (with a
/// reserve for addresses that attested before), per-address counts, the
/// attested connections' slots, and the rate-limited logs.
struct Admission {
    limits: Limits,
    handshakes: Arc<Semaphore>,
    reserved: Arc<Semaphore>,
    known: Known,
    connections: Arc<Semaphore>,
    per_address: AddressCounts,
    logs: Logs,
}

/// What a handshake in progress holds (given back when it ends).
type Held = (OwnedSemaphorePermit, AddressSlot);

impl Admission {
    fn new(limits: Limits) -> Self {
        Admission {
            handshakes: Arc::new(Semaphore::new(limits.handshakes)),
            reserved: Arc::new(Semaphore::new(limits.reserved)),
            known: Known::default(),
            connections: Arc::new(Semaphore::new(limits.connections)),
            per_address: Arc::default(),
            logs: Logs::default(),
            limits,
        }
    }

    /// A handshake slot for a connection from `peer`, or None (the
    /// connection is closed at once, logged at a limited rate).
    fn admit(&self, peer: std::net::SocketAddr) -> Option<Held> {
        let group = source_group(peer.ip());
        let permit = self.handshakes.clone().try_acquire_owned().or_else(|_| {
            if self.known.contains(group) {
                self.reserved.clone().try_acquire_owned()
            } else {
                Err(tokio::sync::TryAcquireError::NoPermits)
            }
        });
        let Ok(permit) = permit else {
            if let Some(n) = self.logs.busy.allow() {
                tracing::warn!(%peer, suppressed = n, limit = self.limits.handshakes, "too many handshakes at once; connection closed");
            }
            return None;
        };
        let Some(slot) = AddressSlot::take(&self.per_address, group, self.limits.per_address) else {
            if let Some(n) = self.logs.busy.allow() {
                tracing::warn!(%peer, suppressed = n, limit = self.limits.per_address, "too many handshakes from one address; connection closed");
            }
            return None;
        };
        Some((permit, slot))
    }
}

/// One connection's RA-TLS handshake (ClientHello within the hello
/// deadline, the whole handshake within the deadline); an attested
/// connection goes to `tx`, a verdict on genuine evidence to `rejections`.
async fn handshake(
    sock: TcpStream,
    peer: std::net::SocketAddr,
    held: Held,
    gate: Arc<Admission>,
    tls: Arc<RaTls>,
    (tx, rejections): (mpsc::Sender<Result<ServerIo, std::io::Error>>, mpsc::Sender<String>),
) {
    let limits = &gate.limits;
    let started = tokio::time::Instant::now();
    // A connection that does not say ClientHello soon gives its slot back;
    // then the whole handshake has its deadline.
    let lazy = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), sock);
    let outcome = match tokio::time::timeout(limits.hello_deadline, lazy).await {
        Ok(Ok(start)) => {
            let left = limits.deadline.saturating_sub(started.elapsed());
            tokio::time::timeout(left, start.into_stream(tls.server.clone())).await
        }
        Ok(Err(e)) => Ok(Err(e)),
        Err(elapsed) => Err(elapsed),
    };
    drop(held);
    let logs = &gate.logs;
    match outcome {
        Ok(Ok(stream)) => {
            let Ok(place) = gate.connections.clone().try_acquire_owned() else {
                if let Some(n) = logs.busy.allow() {
                    tracing::warn!(%peer, suppressed = n, limit = limits.connections, "too many attested connections; connection closed");
                }
                return;
            };
            let info = peer_info(&tls, stream.get_ref().1, next_conn_id());
            if let Some(report) = &info.report {
                tracing::info!(%peer, conn = info.conn, peer_identity = %report, "RA-TLS: peer attested");
                gate.known.add(source_group(peer.ip()));
            }
            let _ = tx.send(Ok(ServerIo(stream, info, Some(place)))).await;
        }
        Ok(Err(e)) => match ratls::classify(&e) {
            HandshakeFailure::Refused(reason) => {
                if let Some(n) = logs.refused.allow() {
                    tracing::error!(%peer, %reason, suppressed = n, ours = %tls.ours, "RA-TLS: peer refused");
                }
                let _ = rejections.try_send(reason);
            }
            HandshakeFailure::Unauthenticated(reason) => {
                if let Some(n) = logs.failed.allow() {
                    tracing::warn!(%peer, %reason, suppressed = n, "a connection failed before authentication (ignored)");
                }
            }
        },
        Err(_) => {
            if let Some(n) = logs.failed.allow() {
                tracing::warn!(%peer, suppressed = n, "RA-TLS handshake did not finish within {:?}; connection closed", limits.deadline);
            }
        }
    }
}

/// The server's rate-limited log lines, by kind.
struct Logs {
    accept: RateLimitedLog,
    busy: RateLimitedLog,
    failed: RateLimitedLog,
    refused: RateLimitedLog,
}

impl Default for Logs {
    fn default() -> Self {
        let every = Duration::from_secs(10);
        Self {
            accept: RateLimitedLog::new(every),
            busy: RateLimitedLog::new(every),
            failed: RateLimitedLog::new(every),
            refused: RateLimitedLog::new(Duration::from_secs(1)),
        }
    }
}

/// The last handshake failure a client connector saw.
pub type LastFailure = Arc<Mutex<Option<String>>>;

/// The peer of the client connector's newest connection.
pub type PeerSlot = Arc<Mutex<Option<PeerInfo>>>;

/// The name a client sends in its ClientHello (SNI) when it dials `addr`:
/// the host when it is a DNS name, so that a TLS passthrough can route by
/// it (one name per worker index, deploy/k8s), else the RA-TLS
/// placeholder. The name authenticates nothing: the peer is admitted by
/// its evidence and the policy alone.
pub fn server_name(addr: &str) -> Result<rustls::pki_types::ServerName<'static>, std::io::Error> {
    let host = match addr.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host,
        _ => addr,
    };
    match rustls::pki_types::ServerName::try_from(host.to_string()) {
        Ok(n @ rustls::pki_types::ServerName::DnsName(_)) => Ok(n),
        _ => rustls::pki_types::ServerName::try_from(ratls::SERVER_NAME)
            .map_err(|e| std::io::Error::other(e.to_string())),
    }
}

/// Dial `addr` and handshake as a client; verified streams of a peer the
/// policy admits as `role` only (the leader, for the follower; our own
/// role, inside a party).
pub async fn dial(
    role: PartyRole,
    addr: String,
    tls: Arc<RaTls>,
    last_failure: LastFailure,
    peer_slot: PeerSlot,
    closed: LastFailure,
) -> Result<hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>, std::io::Error> {
    let verified_before = tls.verifier.verified_count();
    let sock = TcpStream::connect(&addr).await?;
    sock.set_nodelay(true)?;
    let name = server_name(&addr)?;
    let connector = tokio_rustls::TlsConnector::from(tls.client.clone());
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, sock)).await {
        Ok(Ok(stream)) => {
            let info = peer_info(&tls, stream.get_ref().1, next_conn_id());
            if let Some(report) = &info.report {
                tracing::info!(peer = %addr, peer_identity = %report, "RA-TLS: peer attested");
            }
            if let Err(why) = info.check_role(role) {
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
        Ok(Err(e)) => match ratls::classify(&e) {
            // Our verdict on the leader's genuine evidence.
            HandshakeFailure::Refused(reason) => {
                tracing::error!(peer = %addr, %reason, ours = %tls.ours, "RA-TLS handshake failed");
                if let Ok(mut slot) = last_failure.lock() {
                    *slot = Some(reason.clone());
                }
                Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, reason))
            }
            // The connection ended before TLS said anything (a proxy whose
            // backend is not up yet), collateral still being fetched, or
            // something that is not an attested leader: not a verdict, retry.
            HandshakeFailure::Unauthenticated(reason) => {
                // We had verified the leader when it closed on us: it did
                // so after our certificate (its verdict, or its limits).
                if tls.verifier.verified_count() > verified_before
                    && let Ok(mut slot) = closed.lock()
                {
                    *slot = Some(reason.clone());
                }
                tracing::warn!(peer = %addr, %reason, "RA-TLS handshake failed before the leader accepted us; retrying");
                Err(std::io::Error::other(reason))
            }
        },
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "RA-TLS handshake timed out",
        )),
    }
}

/// Serves RA-TLS on `tcp` through the real [`accept_loop`] (handshake
/// runtime, limits, classification) and echoes one byte on each attested
/// connection. For benchmarks of the path before authentication.
pub fn serve_echo(tcp: tokio::net::TcpListener, tls: Arc<RaTls>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (rej_tx, mut rej_rx) = mpsc::channel(16);
    let mut conns = accept_loop(tcp, tls, rej_tx, Limits::default());
    tokio::spawn(async move { while rej_rx.recv().await.is_some() {} });
    tokio::spawn(async move {
        while let Some(Ok(mut io)) = conns.recv().await {
            tokio::spawn(async move {
                let mut b = [0u8; 1];
                if io.0.read_exact(&mut b).await.is_ok() {
                    let _ = io.0.write_all(&b).await;
                    let _ = io.0.flush().await;
                }
            });
        }
    });
}

/// Dials `addr`, handshakes as a client and exchanges one byte (so the
/// server's verdict on us is in): the time a follower needs to be admitted.
pub async fn echo_handshake(tls: &RaTls, addr: std::net::SocketAddr) -> Result<Duration, String> {
    let start = Instant::now();
    client_echo(tls, addr).await?;
    Ok(start.elapsed())
}

/// The client side of [`echo_handshake`] and [`loopback_handshake`].
async fn client_echo(tls: &RaTls, addr: std::net::SocketAddr) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from(ratls::SERVER_NAME).map_err(|e| e.to_string())?;
    let mut c = tokio_rustls::TlsConnector::from(tls.client.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| ratls::describe_error(&e))?;
    c.write_all(&[1]).await.map_err(|e| e.to_string())?;
    c.flush().await.map_err(|e| e.to_string())?;
    let mut b = [0u8; 1];
    c.read_exact(&mut b).await.map_err(|e| ratls::describe_error(&e))?;
    Ok(())
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
    client_echo(tls, addr).await?;
    let elapsed = start.elapsed();
    server.await.map_err(|e| e.to_string())??;
    Ok(elapsed)
}

#[cfg(test)]
mod sni_tests {
    use super::server_name;

    fn name(addr: &str) -> String {
        match server_name(addr).unwrap() {
            rustls::pki_types::ServerName::DnsName(n) => n.as_ref().to_string(),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn a_dns_host_is_sent_for_passthrough_routing() {
        assert_eq!(name("worker-1.leader.vfl.example:443"), "worker-1.leader.vfl.example");
        assert_eq!(name("localhost:50051"), "localhost");
    }

    #[test]
    fn addresses_without_a_dns_name_send_the_placeholder() {
        for addr in ["127.0.0.1:50051", "[::1]:50051", "10.0.0.7:443", "not a name:1", ""] {
            assert_eq!(name(addr), "RATLS", "{addr}");
        }
    }
}
