//! Training progress: counters shared by the training loop, the terminal
//! progress line, periodic log lines, and the Prometheus endpoint
//! (`--metrics-addr`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Counters of one party's run. Cheap to update from the training loop;
/// [`Progress::registry`] exposes them to Prometheus (served by the binary,
/// `--metrics-addr`).
#[derive(Debug)]
pub struct Progress {
    role: &'static str,
    started: Instant,
    steps: Counter,
    examples: Counter,
    epoch: Gauge,
    loss: Gauge<f64, AtomicU64>,
    auc: Gauge<f64, AtomicU64>,
    rate: Gauge<f64, AtomicU64>,
    bytes_sent: Counter,
    bytes_received: Counter,
    reconnects: Counter,
    duplicates: Counter,
    /// Progress through the whole run in [0, 1], f64 bits (leader only).
    fraction: AtomicU64,
}

/// The transport reports its traffic and reconnects here.
impl vfl_bridge::Meter for Progress {
    fn sent(&self, bytes: usize) {
        self.bytes_sent.inc_by(bytes as u64);
    }

    fn received(&self, bytes: usize) {
        self.bytes_received.inc_by(bytes as u64);
    }

    fn reconnected(&self) {
        self.reconnects.inc();
    }

    fn duplicate(&self) {
        self.duplicates.inc();
    }
}

impl Progress {
    pub fn new(role: &'static str) -> Arc<Self> {
        let nan = || {
            let g = Gauge::<f64, AtomicU64>::default();
            g.set(f64::NAN);
            g
        };
        Arc::new(Self {
            role,
            started: Instant::now(),
            steps: Counter::default(),
            examples: Counter::default(),
            epoch: Gauge::default(),
            loss: nan(),
            auc: nan(),
            rate: Gauge::default(),
            bytes_sent: Counter::default(),
            bytes_received: Counter::default(),
            reconnects: Counter::default(),
            duplicates: Counter::default(),
            fraction: AtomicU64::new(0f64.to_bits()),
        })
    }

    /// A registry of these metrics, named `vfl_*` and labelled with the
    /// role (the metrics are shared: the registry reads them live).
    pub fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix_and_labels("vfl", [("role".into(), self.role.into())].into_iter());
        r.register("steps", "Training steps done", self.steps.clone());
        r.register("examples", "Examples trained on", self.examples.clone());
        r.register(
            "examples_per_second",
            "Examples per second since the start",
            self.rate.clone(),
        );
        r.register("epoch", "Current epoch (0-based)", self.epoch.clone());
        r.register("loss", "Loss of the last batch", self.loss.clone());
        r.register("auc", "AUC of the last finished epoch (leader)", self.auc.clone());
        r.register("bytes_sent", "Protocol bytes sent to the peer", self.bytes_sent.clone());
        r.register(
            "bytes_received",
            "Protocol bytes received from the peer",
            self.bytes_received.clone(),
        );
        r.register("reconnects", "Reconnections to the peer", self.reconnects.clone());
        r.register(
            "duplicates",
            "Messages received twice (resent after a reconnect) and dropped",
            self.duplicates.clone(),
        );
        r
    }

    pub fn step(&self, rows: u64, loss: f32) {
        self.steps.inc();
        self.examples.inc_by(rows);
        self.loss.set(f64::from(loss));
        self.rate.set(self.rate());
    }

    pub fn set_epoch(&self, epoch: u64) {
        self.epoch.set(i64::try_from(epoch).unwrap_or(i64::MAX));
    }

    pub fn set_auc(&self, auc: Option<f64>) {
        self.auc.set(auc.unwrap_or(f64::NAN));
    }

    pub fn set_fraction(&self, f: f64) {
        self.fraction.store(f.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
    }

    fn f(a: &AtomicU64) -> f64 {
        f64::from_bits(a.load(Ordering::Relaxed))
    }

    pub fn steps(&self) -> u64 {
        self.steps.get()
    }

    pub fn examples(&self) -> u64 {
        self.examples.get()
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
        let loss = self.loss.get();
        format!(
            "{}: epoch {} step {} | {} examples | {:.0} ex/s | loss {}{}",
            self.role,
            self.epoch.get() + 1,
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
}
