//! The session handshake: what both parties must agree on.

use std::sync::Arc;

use crate::pb::HelloRequest;

/// Version of the protocol in `proto/vfl/bridge/v1`. Version 2 added
/// sequence numbers, acknowledgements, heartbeats and reconnects.
pub const PROTOCOL_VERSION: u32 = 2;

/// The steps of the checkpoints a party holds, read afresh at every
/// handshake (a peer that restarts mid-run must find the newest ones).
#[derive(Clone)]
pub struct Checkpoints(Arc<dyn Fn() -> Vec<u64> + Send + Sync>);

impl Checkpoints {
    /// A fixed list.
    pub fn fixed(steps: Vec<u64>) -> Self {
        Self(Arc::new(move || steps.clone()))
    }

    /// A list computed on demand (e.g. by scanning a directory).
    pub fn from_fn(f: impl Fn() -> Vec<u64> + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    pub fn list(&self) -> Vec<u64> {
        (self.0)()
    }
}

impl std::fmt::Debug for Checkpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.list()).finish()
    }
}

impl PartialEq for Checkpoints {
    fn eq(&self, other: &Self) -> bool {
        self.list() == other.list()
    }
}

impl Eq for Checkpoints {}

/// One party's session settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub application_id: String,
    pub model_fingerprint: String,
    pub batch_size: u32,
    pub mode: String,
    pub process_id: String,
    /// Steps of the checkpoints this party holds.
    pub checkpoint_steps: Checkpoints,
    /// Follower, reconnecting: the session to continue (empty: a new one).
    pub resume_session: String,
}

impl Settings {
    /// The follower's hello message.
    pub fn hello(&self) -> HelloRequest {
        HelloRequest {
            protocol_version: PROTOCOL_VERSION,
            application_id: self.application_id.clone(),
            role: "follower".into(),
            model_fingerprint: self.model_fingerprint.clone(),
            batch_size: self.batch_size,
            mode: self.mode.clone(),
            process_id: self.process_id.clone(),
            checkpoint_steps: self.checkpoint_steps.list(),
            resume_session: self.resume_session.clone(),
        }
    }

    /// The newest checkpoint step both parties hold.
    pub fn common_checkpoint(&self, h: &HelloRequest) -> Option<u64> {
        self.checkpoint_steps
            .list()
            .into_iter()
            .filter(|s| h.checkpoint_steps.contains(s))
            .max()
    }

    /// Checks a follower's hello against the leader's settings; the error
    /// names the first field that differs, with both values.
    pub fn check(&self, h: &HelloRequest) -> Result<(), String> {
        let differ = |field: &str, leader: &dyn std::fmt::Display, follower: &dyn std::fmt::Display| {
            Err(format!(
                "{field} differs: leader has `{leader}`, follower has `{follower}`"
            ))
        };
        if h.protocol_version != PROTOCOL_VERSION {
            return differ("protocol_version", &PROTOCOL_VERSION, &h.protocol_version);
        }
        if h.role != "follower" {
            return differ("role", &"follower (the peer of a leader)", &h.role);
        }
        if h.application_id != self.application_id {
            return differ("application_id", &self.application_id, &h.application_id);
        }
        if h.model_fingerprint != self.model_fingerprint {
            return differ(
                "model_fingerprint (model spec)",
                &self.model_fingerprint,
                &h.model_fingerprint,
            );
        }
        if h.batch_size != self.batch_size {
            return differ("batch_size", &self.batch_size, &h.batch_size);
        }
        if h.mode != self.mode {
            return differ("mode", &self.mode, &h.mode);
        }
        if h.process_id.is_empty() {
            return Err("process_id is empty".into());
        }
        Ok(())
    }
}

/// A process identity: unique per process start (time, pid and an address
/// mixed through SplitMix64); used to detect a peer restart, not a secret.
pub fn new_process_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let local = 0u8;
    let mut z = nanos ^ (u64::from(std::process::id()) << 32) ^ (&local as *const u8 as u64) ^ n.rotate_left(17);
    let mut out = String::new();
    for _ in 0..2 {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut x = z;
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.push_str(&format!("{:016x}", x ^ (x >> 31)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            application_id: "job".into(),
            model_fingerprint: "abc".into(),
            batch_size: 32,
            mode: "train".into(),
            process_id: "p1".into(),
            checkpoint_steps: Checkpoints::fixed(vec![10, 20, 30]),
            resume_session: String::new(),
        }
    }

    #[test]
    fn resume_point_is_the_newest_common_checkpoint() {
        let s = settings();
        let mut h = s.hello();
        h.checkpoint_steps = vec![20, 30, 40];
        assert_eq!(s.common_checkpoint(&h), Some(30));
        h.checkpoint_steps = vec![10, 20, 25];
        assert_eq!(s.common_checkpoint(&h), Some(20));
        h.checkpoint_steps = vec![];
        assert_eq!(s.common_checkpoint(&h), None);
    }

    #[test]
    fn matching_hello_is_accepted() {
        let s = settings();
        assert!(s.check(&s.hello()).is_ok());
    }

    #[test]
    fn each_mismatch_names_its_field() {
        let s = settings();
        type Change = Box<dyn Fn(&mut HelloRequest)>;
        let cases: Vec<(&str, Change)> = vec![
            ("application_id", Box::new(|h| h.application_id = "other".into())),
            ("model_fingerprint", Box::new(|h| h.model_fingerprint = "zzz".into())),
            ("batch_size", Box::new(|h| h.batch_size = 64)),
            ("mode", Box::new(|h| h.mode = "eval".into())),
            ("protocol_version", Box::new(|h| h.protocol_version = 9)),
            ("role", Box::new(|h| h.role = "leader".into())),
        ];
        for (field, change) in cases {
            let mut h = s.hello();
            change(&mut h);
            let e = s.check(&h).unwrap_err();
            assert!(e.starts_with(field), "{field}: {e}");
        }
        let e = s
            .check(&HelloRequest {
                batch_size: 64,
                ..s.hello()
            })
            .unwrap_err();
        assert!(e.contains("`32`") && e.contains("`64`"), "{e}");
    }

    #[test]
    fn process_ids_differ() {
        assert_ne!(new_process_id(), new_process_id());
        assert_eq!(new_process_id().len(), 32);
    }
}
