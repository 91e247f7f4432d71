//! Training progress: counters shared by the training loop, the terminal
//! progress line, periodic log lines, and the Prometheus endpoint
//! (`--metrics-addr`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Counters of one party's run. Cheap to update from the training loop.
#[derive(Debug)]
pub struct Progress {
    role: &'static str,
    started: Instant,
    steps: AtomicU64,
    examples: AtomicU64,
    epoch: AtomicU64,
    /// f64 bits.
    loss: AtomicU64,
    auc: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    reconnects: AtomicU64,
    /// Progress through the whole run in [0, 1], f64 bits (leader only).
    fraction: AtomicU64,
}

/// The transport reports its traffic and reconnects here.
impl vfl_bridge::Meter for Progress {
    fn sent(&self, bytes: usize) {
        self.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn received(&self, bytes: usize) {
        self.bytes_received.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn reconnected(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }
}

impl Progress {
    pub fn new(role: &'static str) -> Arc<Self> {
        Arc::new(Self {
            role,
            started: Instant::now(),
            steps: AtomicU64::new(0),
            examples: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            loss: AtomicU64::new(f64::NAN.to_bits()),
            auc: AtomicU64::new(f64::NAN.to_bits()),
            bytes_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            fraction: AtomicU64::new(0f64.to_bits()),
        })
    }

    pub fn step(&self, rows: u64, loss: f32) {
        self.steps.fetch_add(1, Ordering::Relaxed);
        self.examples.fetch_add(rows, Ordering::Relaxed);
        self.loss.store(f64::from(loss).to_bits(), Ordering::Relaxed);
    }

    pub fn set_epoch(&self, epoch: u64) {
        self.epoch.store(epoch, Ordering::Relaxed);
    }

    pub fn set_auc(&self, auc: Option<f64>) {
        self.auc.store(auc.unwrap_or(f64::NAN).to_bits(), Ordering::Relaxed);
    }

    pub fn set_fraction(&self, f: f64) {
        self.fraction.store(f.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
    }

    fn f(a: &AtomicU64) -> f64 {
        f64::from_bits(a.load(Ordering::Relaxed))
    }

    pub fn steps(&self) -> u64 {
        self.steps.load(Ordering::Relaxed)
    }

    pub fn examples(&self) -> u64 {
        self.examples.load(Ordering::Relaxed)
    }

    /// Examples per second since the start.
    pub fn rate(&self) -> f64 {
        self.examples() as f64 / self.started.elapsed().as_secs_f64().max(1e-9)
    }

    /// One status line: examples, examples/s, loss, ETA (when known).
    pub fn line(&self) -> String {
        let frac = Self::f(&self.fraction);
        let elapsed = self.started.elapsed().as_secs_f64();
        let eta = if frac > 0.01 && frac < 1.0 {
            format!(", ETA {:.0} s", elapsed * (1.0 - frac) / frac)
        } else {
            String::new()
        };
        let loss = Self::f(&self.loss);
        format!(
            "{}: epoch {} step {} | {} examples | {:.0} ex/s | loss {}{}",
            self.role,
            self.epoch.load(Ordering::Relaxed) + 1,
            self.steps(),
            self.examples(),
            self.rate(),
            if loss.is_nan() {
                "n/a".to_string()
            } else {
                format!("{loss:.4}")
            },
            eta
        )
    }

    /// The Prometheus text exposition of the counters.
    pub fn prometheus(&self) -> String {
        let role = self.role;
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            out.push_str(&format!(
                "# HELP vfl_{name} {help}\n# TYPE vfl_{name} {kind}\nvfl_{name}{{role=\"{role}\"}} {value}\n"
            ));
        };
        let num = |v: f64| if v.is_nan() { "NaN".to_string() } else { format!("{v}") };
        metric(
            "steps_total",
            "counter",
            "Training steps done.",
            self.steps().to_string(),
        );
        metric(
            "examples_total",
            "counter",
            "Examples trained on.",
            self.examples().to_string(),
        );
        metric(
            "examples_per_second",
            "gauge",
            "Examples per second since the start.",
            num(self.rate()),
        );
        metric(
            "epoch",
            "gauge",
            "Current epoch (0-based).",
            self.epoch.load(Ordering::Relaxed).to_string(),
        );
        metric("loss", "gauge", "Loss of the last batch.", num(Self::f(&self.loss)));
        metric(
            "auc",
            "gauge",
            "AUC of the last finished epoch (leader).",
            num(Self::f(&self.auc)),
        );
        metric(
            "bytes_sent_total",
            "counter",
            "Protocol bytes sent to the peer.",
            self.bytes_sent.load(Ordering::Relaxed).to_string(),
        );
        metric(
            "bytes_received_total",
            "counter",
            "Protocol bytes received from the peer.",
            self.bytes_received.load(Ordering::Relaxed).to_string(),
        );
        metric(
            "reconnects_total",
            "counter",
            "Reconnections to the peer.",
            self.reconnects.load(Ordering::Relaxed).to_string(),
        );
        out
    }
}

/// Serve `GET /metrics` (Prometheus text format) on `addr` until the process
/// ends; returns the bound address.
pub async fn serve_metrics(addr: &str, progress: Arc<Progress>) -> Result<std::net::SocketAddr, crate::TrainError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let err = |e: std::io::Error| crate::TrainError::Protocol(format!("--metrics-addr {addr}: {e}"));
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(err)?;
    let local = listener.local_addr().map_err(err)?;
    tokio::spawn(async move {
        let mut backoff = std::time::Duration::from_millis(10);
        // At most this many requests at once; more are closed at once (the
        // metrics port may be reachable by anyone who can reach the host).
        let slots = Arc::new(tokio::sync::Semaphore::new(32));
        loop {
            let mut sock = match listener.accept().await {
                Ok((sock, _)) => {
                    backoff = std::time::Duration::from_millis(10);
                    sock
                }
                // Out of file descriptors (EMFILE) and the like: wait
                // instead of spinning.
                Err(_) => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(1));
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                continue;
            };
            let p = progress.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let mut buf = Vec::with_capacity(1024);
                let mut chunk = [0u8; 1024];
                // Read the request head (bounded in size and time).
                let head = tokio::time::timeout(std::time::Duration::from_secs(2), async {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 << 10 {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return false,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    true
                })
                .await;
                if !matches!(head, Ok(true)) {
                    return;
                }
                let line = String::from_utf8_lossy(&buf);
                let target = line.split_whitespace().nth(1).unwrap_or("");
                let (status, body) = if !line.starts_with("GET ") {
                    ("404 Not Found", "not found: try /metrics or /healthz\n".to_string())
                } else if target == "/metrics" || target == "/" {
                    ("200 OK", p.prometheus())
                } else if target == "/healthz" {
                    // Liveness for Kubernetes probes: this process serves.
                    // (Probes must not use the RA-TLS port.)
                    ("200 OK", "ok\n".to_string())
                } else {
                    ("404 Not Found", "not found: try /metrics or /healthz\n".to_string())
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    Ok(local)
}
