//! The saved state of a scale-out process (a shard's slice, the
//! coordinator's position) at the run's checkpoint steps: one file per
//! step under the process's own directory, written atomically, the newest
//! two kept, sealed when the party seals (`--model-key`; always in an
//! enclave build). A file is bound to its job, party, model, policy, the
//! process it belongs to (`shard-3`, `coordinator`) and its step, and a
//! shard's also to the run (the coordinator's run id, which its own
//! position holds), so one process's file cannot be loaded by another,
//! another run's by this one, or a file renamed to another step.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use vfl_attest::seal::{Context, Sealer};
use vfl_nn::Role;
use vfl_nn::optim::ParamState;

use super::ShardState;
use crate::TrainError;
use crate::store::{self, Sealing, StoreError};

/// Where and how a process saves its state.
#[derive(Clone)]
pub struct StateDir {
    dir: PathBuf,
    sealer: Option<Arc<Sealer>>,
    app: String,
    role: Role,
    model: String,
    policy: String,
    process: String,
}

impl std::fmt::Debug for StateDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StateDir({}, {})", self.dir.display(), self.process)
    }
}

/// What a process of a scale-out job knows of the job's end.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JobEnd {
    /// The run and its steps.
    pub run: String,
    pub steps: u64,
    /// This process's part of the ending is done too: started again, it
    /// ends at once. Otherwise it finishes that part (every wait bounded).
    pub complete: bool,
    /// A shard: the workers whose `Done` it took (started again, it waits
    /// only for the others').
    #[serde(default)]
    pub done: Vec<u32>,
}

/// Saved states kept per process: the coordinator's newest step is the
/// run's commit point, and the shards may be one checkpoint ahead of it.
pub const KEEP: usize = 2;

impl StateDir {
    /// Process `process` of party `role` saves under `root/<process>`.
    pub fn new(
        root: &Path,
        (app, role, model, policy): (&str, Role, &str, &str),
        process: &str,
        sealer: Option<Arc<Sealer>>,
    ) -> Self {
        StateDir {
            dir: root.join(process),
            sealer,
            app: app.to_string(),
            role,
            model: model.to_string(),
            policy: policy.to_string(),
            process: process.to_string(),
        }
    }

    fn context(&self, run: Option<&str>, step: u64) -> Context {
        let c = Context::new("scale-out state")
            .with("app", &self.app)
            .with("role", self.role)
            .with("model", &self.model)
            .with("policy", &self.policy)
            .with("process", &self.process);
        match run {
            Some(r) => c.with("run", r),
            None => c,
        }
        .with("step", step)
    }

    fn path(&self, run: Option<&str>, step: u64) -> PathBuf {
        match run {
            Some(r) => self.dir.join(format!("state-{r}-{step:012}.bin")),
            None => self.dir.join(format!("state-{step:012}.bin")),
        }
    }

    /// The steps saved (of run `run`, for a shard), oldest first.
    fn steps_of(&self, run: Option<&str>) -> Vec<u64> {
        let prefix = match run {
            Some(r) => format!("state-{r}-"),
            None => "state-".to_string(),
        };
        let mut steps: Vec<u64> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                name.strip_prefix(&prefix)?.strip_suffix(".bin")?.parse().ok()
            })
            .collect();
        steps.sort_unstable();
        steps
    }

    /// The steps the coordinator saved, oldest first.
    pub fn steps(&self) -> Vec<u64> {
        self.steps_of(None)
    }

    /// The steps a shard saved of run `run`, oldest first.
    pub fn shard_steps(&self, run: &str) -> Vec<u64> {
        self.steps_of(Some(run))
    }

    /// Removes the files of every run but `run` (a new run starts).
    pub fn forget_other_runs(&self, run: &str) {
        let keep = format!("state-{run}-");
        for e in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("state-") && name.ends_with(".bin") && !name.starts_with(&keep) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// Saves a shard's state of run `run` (its step is the file's) and
    /// removes all but the run's newest [`KEEP`].
    pub fn save_shard(&self, run: &str, st: &ShardState) -> Result<(), TrainError> {
        std::fs::create_dir_all(&self.dir).map_err(StoreError::io(&self.dir))?;
        fn put(name: String, v: &[f32]) -> (String, Vec<usize>, &[f32]) {
            (name, vec![v.len()], v)
        }
        let mut tensors = vec![
            put("values".into(), &st.values),
            put("state.a".into(), &st.state.a),
            put("state.b".into(), &st.state.b),
        ];
        for (i, w, s) in &st.dense {
            tensors.push(put(format!("dense.{i}.w"), w));
            tensors.push(put(format!("dense.{i}.a"), &s.a));
            tensors.push(put(format!("dense.{i}.b"), &s.b));
        }
        let meta = std::collections::BTreeMap::from([
            ("format".to_string(), "enclave-vfl shard state v1".to_string()),
            ("process".to_string(), self.process.clone()),
            ("run".to_string(), run.to_string()),
            ("step".to_string(), st.steps.to_string()),
            (
                "dense".to_string(),
                st.dense
                    .iter()
                    .map(|(i, ..)| i.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
        ]);
        let ctx = self.context(Some(run), st.steps);
        store::write(
            &self.path(Some(run), st.steps),
            &tensors,
            &meta,
            self.sealer.as_deref().map(|sealer| Sealing { sealer, context: &ctx }),
        )?;
        self.prune(Some(run));
        Ok(())
    }

    /// Loads the shard state of run `run` saved at `step`, if there is one.
    pub fn load_shard(&self, run: &str, step: u64) -> Result<Option<ShardState>, TrainError> {
        let path = self.path(Some(run), step);
        if !path.is_file() {
            return Ok(None);
        }
        let ctx = self.context(Some(run), step);
        let stored = store::read(
            &path,
            self.sealer.as_deref().map(|sealer| Sealing { sealer, context: &ctx }),
        )?;
        let bad = |why: String| -> TrainError {
            StoreError::Binding {
                path: path.display().to_string(),
                key: "shard state".into(),
                found: why,
                expected: format!("the state of {} at step {step} of run {run}", self.process),
            }
            .into()
        };
        let meta = |k: &str| stored.meta.get(k).cloned().unwrap_or_default();
        if meta("process") != self.process || meta("step") != step.to_string() || meta("run") != run {
            return Err(bad(format!(
                "process {:?}, step {:?}, run {:?}",
                vfl_bridge::sanitize(&meta("process"), 64),
                vfl_bridge::sanitize(&meta("step"), 32),
                vfl_bridge::sanitize(&meta("run"), 64)
            )));
        }
        let take = |name: &str| -> Result<Vec<f32>, TrainError> {
            stored
                .tensors
                .get(name)
                .map(|t| t.data.clone())
                .ok_or_else(|| bad(format!("no tensor {name}")))
        };
        let mut dense = Vec::new();
        let list = meta("dense");
        for i in list.split(',').filter(|s| !s.is_empty()) {
            let index: u32 = i.parse().map_err(|_| bad(format!("dense index {i:?}")))?;
            dense.push((
                index,
                take(&format!("dense.{index}.w"))?,
                ParamState {
                    a: take(&format!("dense.{index}.a"))?,
                    b: take(&format!("dense.{index}.b"))?,
                },
            ));
        }
        Ok(Some(ShardState {
            steps: step,
            values: take("values")?,
            state: ParamState {
                a: take("state.a")?,
                b: take("state.b")?,
            },
            dense,
        }))
    }

    /// Saves `bytes` (the coordinator's position) as step `step`'s state.
    pub fn save_bytes(&self, step: u64, bytes: &[u8]) -> Result<(), TrainError> {
        self.write(&self.path(None, step), &self.context(None, step), bytes)?;
        self.prune(None);
        Ok(())
    }

    /// The bytes saved at `step`, if any.
    pub fn load_bytes(&self, step: u64) -> Result<Option<Vec<u8>>, TrainError> {
        self.read(&self.path(None, step), &self.context(None, step))
    }

    /// Writes `bytes` to `path` atomically, sealed under `ctx` when the
    /// party seals.
    fn write(&self, path: &Path, ctx: &Context, bytes: &[u8]) -> Result<(), TrainError> {
        std::fs::create_dir_all(&self.dir).map_err(StoreError::io(&self.dir))?;
        match &self.sealer {
            Some(s) => s.seal_to_file(path, ctx, bytes)?,
            None => vfl_fs::write_bytes(path, bytes, vfl_fs::Access::Private).map_err(StoreError::io(path))?,
        }
        Ok(())
    }

    /// What [`StateDir::write`] wrote to `path`, if anything (a sealed file
    /// without the sealer is refused).
    fn read(&self, path: &Path, ctx: &Context) -> Result<Option<Vec<u8>>, TrainError> {
        match &self.sealer {
            Some(s) => Ok(s.open_from_file(path, ctx)?.map(|(_, b)| b)),
            None => match std::fs::read(path) {
                Ok(b) if vfl_attest::seal::is_sealed(&b) => Err(StoreError::Encrypted {
                    path: path.display().to_string(),
                }
                .into()),
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(StoreError::io(path)(e)),
            },
        }
    }

    fn end_path(&self) -> PathBuf {
        self.dir.join("end.json")
    }

    fn end_context(&self) -> Context {
        Context::new("scale-out end")
            .with("app", &self.app)
            .with("role", self.role)
            .with("model", &self.model)
            .with("policy", &self.policy)
            .with("process", &self.process)
    }

    /// Records what this process knows of the job's end (written
    /// atomically, sealed when the party seals). A state directory holds
    /// one job: once its end is recorded the process does not train again.
    pub fn save_end(&self, end: &JobEnd) -> Result<(), TrainError> {
        let bytes = serde_json::to_vec(end).map_err(StoreError::encode("the job's end"))?;
        self.write(&self.end_path(), &self.end_context(), &bytes)
    }

    /// The job's end as this process recorded it, if it did.
    pub fn load_end(&self) -> Result<Option<JobEnd>, TrainError> {
        let path = self.end_path();
        let Some(bytes) = self.read(&path, &self.end_context())? else {
            return Ok(None);
        };
        let end: JobEnd = serde_json::from_slice(&bytes).map_err(|e| StoreError::Binding {
            path: path.display().to_string(),
            key: "the job's end".into(),
            found: vfl_bridge::sanitize(&e.to_string(), 200),
            expected: "a recorded end".into(),
        })?;
        Ok(Some(end))
    }

    fn prune(&self, run: Option<&str>) {
        let steps = self.steps_of(run);
        for s in &steps[..steps.len().saturating_sub(KEEP)] {
            let _ = std::fs::remove_file(self.path(run, *s));
        }
        vfl_fs::remove_stale_temps(&self.dir, "state-");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tmp: &Path, process: &str) -> StateDir {
        StateDir::new(tmp, ("app", Role::Follower, "m", "p"), process, None)
    }

    fn state(steps: u64) -> ShardState {
        ShardState {
            steps,
            values: vec![1.0, 2.0, steps as f32],
            state: ParamState {
                a: vec![0.5; 3],
                b: vec![],
            },
            dense: vec![(
                1,
                vec![3.0; 4],
                ParamState {
                    a: vec![1.0; 4],
                    b: vec![2.0; 4],
                },
            )],
        }
    }

    #[test]
    fn a_shard_state_round_trips_and_the_newest_two_are_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let d = dir(tmp.path(), "shard-1");
        for s in [5, 10, 15] {
            d.save_shard("r1", &state(s)).unwrap();
        }
        assert_eq!(d.shard_steps("r1"), vec![10, 15]);
        assert_eq!(d.load_shard("r1", 15).unwrap(), Some(state(15)));
        assert_eq!(d.load_shard("r1", 5).unwrap(), None);
        // Another run has none of them.
        assert_eq!(d.load_shard("r2", 15).unwrap(), None);
    }

    #[test]
    fn another_process_does_not_load_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        dir(tmp.path(), "shard-1").save_shard("r1", &state(5)).unwrap();
        std::fs::rename(tmp.path().join("shard-1"), tmp.path().join("shard-2")).unwrap();
        let e = dir(tmp.path(), "shard-2").load_shard("r1", 5).unwrap_err();
        assert!(matches!(e, TrainError::Store(StoreError::Binding { .. })), "{e}");
    }

    #[test]
    fn a_file_renamed_to_another_step_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let d = dir(tmp.path(), "shard-0");
        d.save_shard("r1", &state(5)).unwrap();
        std::fs::rename(d.path(Some("r1"), 5), d.path(Some("r1"), 10)).unwrap();
        let e = d.load_shard("r1", 10).unwrap_err();
        assert!(matches!(e, TrainError::Store(StoreError::Binding { .. })), "{e}");
    }

    #[test]
    fn a_file_of_another_run_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let d = dir(tmp.path(), "shard-0");
        d.save_shard("r1", &state(5)).unwrap();
        std::fs::rename(d.path(Some("r1"), 5), d.path(Some("r2"), 5)).unwrap();
        let e = d.load_shard("r2", 5).unwrap_err();
        assert!(matches!(e, TrainError::Store(StoreError::Binding { .. })), "{e}");
    }

    #[test]
    fn a_new_run_forgets_the_others() {
        let tmp = tempfile::tempdir().unwrap();
        let d = dir(tmp.path(), "shard-0");
        d.save_shard("r1", &state(5)).unwrap();
        d.save_shard("r2", &state(0)).unwrap();
        d.forget_other_runs("r2");
        assert_eq!((d.shard_steps("r1"), d.shard_steps("r2")), (vec![], vec![0]));
    }

    fn end() -> JobEnd {
        JobEnd {
            run: "r1".into(),
            steps: 96,
            complete: false,
            done: vec![0, 2],
        }
    }

    fn sealed(tmp: &Path, process: &str) -> StateDir {
        let sealer = Sealer::from_key([7; 32], "test").unwrap();
        StateDir::new(tmp, ("app", Role::Follower, "m", "p"), process, Some(Arc::new(sealer)))
    }

    #[test]
    fn an_end_record_round_trips_plain_and_sealed() {
        let tmp = tempfile::tempdir().unwrap();
        for d in [dir(tmp.path(), "worker-0"), sealed(tmp.path(), "worker-1")] {
            assert_eq!(d.load_end().unwrap(), None);
            d.save_end(&end()).unwrap();
            assert_eq!(d.load_end().unwrap(), Some(end()));
        }
        // An older record (without the workers' Done) still reads.
        std::fs::write(
            tmp.path().join("worker-0/end.json"),
            br#"{"run":"r1","steps":3,"complete":true}"#,
        )
        .unwrap();
        let old = dir(tmp.path(), "worker-0").load_end().unwrap().unwrap();
        assert!(old.complete && old.done.is_empty());
    }

    #[test]
    fn a_sealed_end_record_of_another_process_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        sealed(tmp.path(), "shard-1").save_end(&end()).unwrap();
        std::fs::rename(tmp.path().join("shard-1"), tmp.path().join("shard-2")).unwrap();
        let e = sealed(tmp.path(), "shard-2").load_end().unwrap_err();
        assert!(matches!(e, TrainError::Seal(_)), "{e}");
    }

    #[test]
    fn a_sealed_end_record_without_the_key_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        sealed(tmp.path(), "coordinator").save_end(&end()).unwrap();
        let e = dir(tmp.path(), "coordinator").load_end().unwrap_err();
        assert!(matches!(e, TrainError::Store(StoreError::Encrypted { .. })), "{e}");
    }

    #[test]
    fn a_malformed_end_record_is_refused_by_name() {
        let tmp = tempfile::tempdir().unwrap();
        let d = dir(tmp.path(), "worker-0");
        d.save_end(&end()).unwrap();
        std::fs::write(tmp.path().join("worker-0/end.json"), b"{\"run\":7}").unwrap();
        let e = d.load_end().unwrap_err();
        assert!(
            matches!(&e, TrainError::Store(StoreError::Binding { key, .. }) if key == "the job's end"),
            "{e}"
        );
    }

    proptest::proptest! {
        #[test]
        fn any_end_record_round_trips(
            run in "[a-z0-9-]{0,40}",
            steps in proptest::prelude::any::<u64>(),
            complete in proptest::prelude::any::<bool>(),
            done in proptest::collection::vec(proptest::prelude::any::<u32>(), 0..8),
        ) {
            let tmp = tempfile::tempdir().unwrap();
            let d = dir(tmp.path(), "shard-0");
            let e = JobEnd { run, steps, complete, done };
            d.save_end(&e).unwrap();
            proptest::prop_assert_eq!(d.load_end().unwrap(), Some(e));
        }
    }

    #[test]
    fn bytes_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let d = dir(tmp.path(), "coordinator");
        d.save_bytes(20, b"{}").unwrap();
        assert_eq!(d.load_bytes(20).unwrap().as_deref(), Some(&b"{}"[..]));
        assert_eq!(d.load_bytes(30).unwrap(), None);
    }
}
