//! The session handshake: what both parties must agree on.

use std::sync::Arc;

use crate::pb::HelloRequest;

/// Version of the protocol in `proto/vfl/bridge/v1`. Version 2 added
/// sequence numbers, acknowledgements, heartbeats and reconnects.
pub const PROTOCOL_VERSION: u32 = 2;

/// What a party holds of its run, read afresh at every handshake (a peer
/// that restarts mid-run must find the newest checkpoints).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Held {
    /// The run its checkpoints belong to (empty: none, a fresh start).
    pub run_id: String,
    /// The newest step this party knows both parties committed: it never
    /// resumes from an older one (rollback floor).
    pub committed_step: u64,
    /// Steps of its checkpoints of that run.
    pub steps: Vec<u64>,
}

/// How a party reads what it holds.
#[derive(Clone)]
pub struct Checkpoints(Arc<dyn Fn() -> Held + Send + Sync>);

impl Checkpoints {
    /// A fixed list of steps of an unnamed run (tests).
    pub fn fixed(steps: Vec<u64>) -> Self {
        Self::held(Held {
            run_id: if steps.is_empty() {
                String::new()
            } else {
                "fixed".into()
            },
            committed_step: 0,
            steps,
        })
    }

    /// A fixed state.
    pub fn held(h: Held) -> Self {
        Self(Arc::new(move || h.clone()))
    }

    /// A state read on demand (e.g. from the checkpoint directory).
    pub fn from_fn(f: impl Fn() -> Held + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    pub fn read(&self) -> Held {
        (self.0)()
    }
}

impl std::fmt::Debug for Checkpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.read().fmt(f)
    }
}

impl PartialEq for Checkpoints {
    fn eq(&self, other: &Self) -> bool {
        self.read() == other.read()
    }
}

impl Eq for Checkpoints {}

/// The leader's decision on a new session: the run and where to resume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub run_id: String,
    pub resume: Option<u64>,
}

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
    /// Roles whose export this party's policy lets out in plaintext (sorted).
    pub release_exports: Vec<String>,
    /// Resume from a checkpoint older than the committed step (operator's
    /// explicit decision; logged loudly).
    pub allow_rollback: bool,
}

impl Settings {
    /// The follower's hello message.
    pub fn hello(&self) -> HelloRequest {
        let held = self.checkpoint_steps.read();
        HelloRequest {
            protocol_version: PROTOCOL_VERSION,
            application_id: self.application_id.clone(),
            role: "follower".into(),
            model_fingerprint: self.model_fingerprint.clone(),
            batch_size: self.batch_size,
            mode: self.mode.clone(),
            process_id: self.process_id.clone(),
            checkpoint_steps: held.steps,
            resume_session: self.resume_session.clone(),
            run_id: held.run_id,
            committed_step: held.committed_step,
            release_exports: self.release_exports.clone(),
        }
    }

    /// The newest checkpoint step both parties hold of the same run.
    pub fn common_checkpoint(&self, h: &HelloRequest) -> Option<u64> {
        let ours = self.checkpoint_steps.read();
        if ours.run_id.is_empty() || ours.run_id != h.run_id {
            return None;
        }
        ours.steps.into_iter().filter(|s| h.checkpoint_steps.contains(s)).max()
    }

    /// The leader's decision on a follower's hello that starts a session:
    /// the run (the one either party's checkpoints belong to, or a new one
    /// from `new_run_id`) and the newest checkpoint both hold. Refused when
    /// the parties hold different runs, or (training) when that checkpoint
    /// is older than a step either party knows was committed, unless
    /// rollback is allowed.
    pub fn decide(&self, h: &HelloRequest, new_run_id: impl FnOnce() -> String) -> Result<Decision, String> {
        let ours = self.checkpoint_steps.read();
        if self.mode == "eval" && ours.run_id != h.run_id {
            return Err(format!(
                "run_id differs: leader has `{}`, follower has `{}`: evaluation pairs the two parties' models of \
                 one run only",
                ours.run_id, h.run_id
            ));
        }
        let run_id = match (ours.run_id.as_str(), h.run_id.as_str()) {
            ("", "") => new_run_id(),
            (a, "") => a.to_string(),
            ("", b) => b.to_string(),
            (a, b) if a == b => a.to_string(),
            (a, b) => {
                return Err(format!(
                    "run_id differs: leader has `{a}`, follower has `{b}`: their checkpoints belong to different runs \
                     (to start a new run, empty both parties' --checkpoint-path)"
                ));
            }
        };
        let resume = self.common_checkpoint(h);
        if self.mode == "train" {
            let start = resume.unwrap_or(0);
            let (floor, who) = if ours.committed_step >= h.committed_step {
                (ours.committed_step, "leader")
            } else {
                (h.committed_step, "follower")
            };
            if start < floor {
                let from = resume.map_or("the start".to_string(), |s| format!("step {s}"));
                if !self.allow_rollback {
                    return Err(format!(
                        "rollback refused: the {who} committed step {floor} of run {run_id}, but the newest checkpoint \
                         both parties hold is {from} (checkpoints were removed or replaced by older ones); \
                         --allow-rollback accepts it"
                    ));
                }
                tracing::warn!(
                    committed = floor, by = who, resume = %from,
                    "ROLLBACK ALLOWED (--allow-rollback): resuming from an older checkpoint than both parties committed"
                );
            }
        }
        Ok(Decision { run_id, resume })
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
        if h.release_exports != self.release_exports {
            return Err(format!(
                "release_exports (policy) differs: leader has `{}`, follower has `{}`",
                self.release_exports.join(","),
                h.release_exports.join(",")
            ));
        }
        if h.process_id.is_empty() {
            return Err("process_id is empty".into());
        }
        Ok(())
    }
}

/// A process identity: 128 random bits from the operating system (inside
/// an enclave, the CPU's), unique per process start; used to detect a peer
/// restart, not a secret.
pub fn new_process_id() -> String {
    vfl_attest::random_hex(16)
}

/// A new run identity (128 random bits), bound into every checkpoint.
pub fn new_run_id() -> String {
    vfl_attest::random_hex(16)
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
            release_exports: Vec::new(),
            allow_rollback: false,
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
        // Checkpoints of another run do not count.
        h.checkpoint_steps = vec![20, 30, 40];
        h.run_id = "other".into();
        assert_eq!(s.common_checkpoint(&h), None);
    }

    fn held(run: &str, committed: u64, steps: Vec<u64>) -> Checkpoints {
        Checkpoints::held(Held {
            run_id: run.into(),
            committed_step: committed,
            steps,
        })
    }

    #[test]
    fn a_fresh_pair_gets_a_new_run() {
        let s = Settings {
            checkpoint_steps: held("", 0, vec![]),
            ..settings()
        };
        let d = s.decide(&s.hello(), || "new".into()).unwrap();
        assert_eq!(
            d,
            Decision {
                run_id: "new".into(),
                resume: None
            }
        );
    }

    #[test]
    fn a_follower_without_state_joins_the_leaders_run_when_nothing_was_committed() {
        let s = Settings {
            checkpoint_steps: held("r1", 0, vec![]),
            ..settings()
        };
        let f = Settings {
            checkpoint_steps: held("", 0, vec![]),
            ..settings()
        };
        let d = s.decide(&f.hello(), || unreachable!()).unwrap();
        assert_eq!(d.run_id, "r1");
    }

    #[test]
    fn different_runs_are_refused() {
        let s = Settings {
            checkpoint_steps: held("r1", 10, vec![10]),
            ..settings()
        };
        let f = Settings {
            checkpoint_steps: held("r2", 10, vec![10]),
            ..settings()
        };
        let e = s.decide(&f.hello(), || unreachable!()).unwrap_err();
        assert!(
            e.starts_with("run_id differs") && e.contains("`r1`") && e.contains("`r2`"),
            "{e}"
        );
    }

    #[test]
    fn resuming_below_the_leaders_committed_step_is_a_refused_rollback() {
        let s = Settings {
            checkpoint_steps: held("r1", 30, vec![20, 30]),
            ..settings()
        };
        // The follower's newest checkpoints were removed by its host.
        let f = Settings {
            checkpoint_steps: held("r1", 20, vec![20]),
            ..settings()
        };
        let e = s.decide(&f.hello(), || unreachable!()).unwrap_err();
        assert!(
            e.starts_with("rollback refused: the leader committed step 30") && e.contains("step 20"),
            "{e}"
        );
        let allowed = Settings {
            allow_rollback: true,
            ..s
        };
        assert_eq!(allowed.decide(&f.hello(), || unreachable!()).unwrap().resume, Some(20));
    }

    #[test]
    fn a_follower_whose_state_vanished_cannot_restart_a_committed_run() {
        let s = Settings {
            checkpoint_steps: held("", 0, vec![]),
            ..settings()
        };
        let f = Settings {
            checkpoint_steps: held("r1", 40, vec![40]),
            ..settings()
        };
        let e = s.decide(&f.hello(), || unreachable!()).unwrap_err();
        assert!(e.starts_with("rollback refused: the follower committed step 40"), "{e}");
    }

    #[test]
    fn eval_pairs_models_of_one_run_only() {
        let s = Settings {
            checkpoint_steps: held("r1", 0, vec![]),
            mode: "eval".into(),
            ..settings()
        };
        let f = Settings {
            checkpoint_steps: held("r2", 0, vec![]),
            mode: "eval".into(),
            ..settings()
        };
        let e = s.decide(&f.hello(), || unreachable!()).unwrap_err();
        assert!(e.starts_with("run_id differs") && e.contains("one run only"), "{e}");
        // Nor with a peer that names no run.
        let none = Settings {
            checkpoint_steps: held("", 0, vec![]),
            ..f
        };
        assert!(s.decide(&none.hello(), || unreachable!()).is_err());
    }

    #[test]
    fn eval_reads_any_checkpoint_without_a_rollback_check() {
        let s = Settings {
            checkpoint_steps: held("r1", 30, vec![20]),
            mode: "eval".into(),
            ..settings()
        };
        let f = Settings {
            checkpoint_steps: held("r1", 30, vec![20]),
            mode: "eval".into(),
            ..settings()
        };
        assert_eq!(s.decide(&f.hello(), || unreachable!()).unwrap().resume, Some(20));
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
            (
                "release_exports",
                Box::new(|h| h.release_exports = vec!["follower".into()]),
            ),
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
