//! Coordinated checkpoints and exports of one party's model.
//!
//! A checkpoint `ckpt-<step>.safetensors` holds every weight and optimizer
//! state tensor plus, in its metadata, the role, the model fingerprint and
//! the run state (epoch, block order, data position, counters). The leader
//! decides the steps; both parties save at the same step, so after a crash
//! they resume from the newest step both hold. Files are written atomically
//! and verified (checksum, names, shapes) before anything is loaded.
//!
//! Every file is bound to its job, party, model, policy and run (and a
//! checkpoint to its step): sealed, these are its authenticated context
//! ([`Binding`]); a file of another job, run or party is refused. The run
//! record (`run.sealed`) keeps the run's id and the newest step this party
//! knows both parties committed; the handshake refuses to resume from an
//! older checkpoint than that (rollback).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vfl_attest::seal::{Context, Sealer};
use vfl_nn::Role;
use vfl_nn::split::TensorMut;

use crate::TrainError;
use crate::store::{self, Sealing, StoreError};

/// What this party's files are bound to: the job (application id), the
/// party, the model spec and the policy that admits the peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    pub app: String,
    pub role: Role,
    /// The model spec's fingerprint.
    pub model: String,
    /// The policy's digest (`none` without RA-TLS).
    pub policy: String,
}

impl Binding {
    fn base(&self, kind: &str) -> Context {
        Context::new(kind)
            .with("app", &self.app)
            .with("role", self.role)
            .with("model", &self.model)
            .with("policy", &self.policy)
    }

    /// What checkpoint `step` of run `run` is.
    pub fn checkpoint(&self, run: &str, step: u64) -> Context {
        self.base("checkpoint").with("run", run).with("step", step)
    }

    /// What an exported model of run `run` is; `release`: the roles whose
    /// export both policies let out in plaintext.
    pub fn export(&self, run: &str, release: &[String]) -> Context {
        self.base("model").with("run", run).with("release", release.join(","))
    }

    /// What an export loaded for evaluation must be (of any run).
    pub fn export_of_any_run(&self) -> Context {
        self.base("model")
    }

    /// What the run record is.
    pub fn run_record(&self) -> Context {
        self.base("run record")
    }

    /// The metadata written into plaintext files (no sealing), checked on load.
    fn meta(&self, ctx: &Context) -> Vec<(String, String)> {
        ctx.fields
            .iter()
            .filter(|(k, _)| k.as_str() != "role" && k.as_str() != "model" && k.as_str() != "step")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// The run a party's checkpoints belong to, and the newest step it knows
/// both parties committed (kept in `<checkpoint dir>/run.sealed`, or
/// `run.json` without encryption at rest).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    pub committed_step: u64,
}

fn record_path(dir: &Path, sealed: bool) -> PathBuf {
    dir.join(if sealed { "run.sealed" } else { "run.json" })
}

/// Reads the run record; `Ok(None)` when there is none (a fresh start).
pub fn read_record(dir: &Path, bind: &Binding, sealer: Option<&Sealer>) -> Result<Option<RunRecord>, TrainError> {
    let p = record_path(dir, sealer.is_some());
    let bytes = match sealer {
        Some(s) => match s.open_from_file(&p, &bind.run_record())? {
            None => return Ok(None),
            Some((_, b)) => b,
        },
        None => match std::fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io(&p)(e)),
        },
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|source| {
        TrainError::Store(StoreError::Json {
            path: p.display().to_string(),
            what: "run record",
            source,
        })
    })
}

/// Writes the run record atomically.
pub fn write_record(dir: &Path, bind: &Binding, sealer: Option<&Sealer>, rec: &RunRecord) -> Result<(), TrainError> {
    std::fs::create_dir_all(dir).map_err(StoreError::io(dir))?;
    let p = record_path(dir, sealer.is_some());
    let json = serde_json::to_vec(rec).map_err(StoreError::encode("run record"))?;
    match sealer {
        Some(s) => s.seal_to_file(&p, &bind.run_record(), &json)?,
        None => vfl_fs::write_bytes(&p, &json, vfl_fs::Access::Private).map_err(StoreError::io(&p))?,
    }
    Ok(())
}

/// Raises the committed step of run `run_id` to `step` (never lowers it).
pub fn commit(dir: &Path, bind: &Binding, sealer: Option<&Sealer>, run_id: &str, step: u64) -> Result<(), TrainError> {
    let old = read_record(dir, bind, sealer)?.filter(|r| r.run_id == run_id);
    let committed = old.as_ref().map_or(0, |r| r.committed_step).max(step);
    if old.is_some_and(|r| r.committed_step == committed) {
        return Ok(());
    }
    write_record(
        dir,
        bind,
        sealer,
        &RunRecord {
            run_id: run_id.to_string(),
            committed_step: committed,
        },
    )
}

/// The run state stored with a checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunState {
    pub epoch: u32,
    pub plan: Vec<String>,
    /// Next record to read: block index in `plan`, record in that block.
    pub block: u64,
    pub record: u64,
    pub steps: u64,
    pub examples: u64,
    pub next_iteration: u64,
    pub opt_step: u64,
}

pub fn path(dir: &Path, step: u64) -> PathBuf {
    dir.join(format!("ckpt-{step:010}.safetensors"))
}

/// Steps of the checkpoint files in `dir`, ascending (names only; the
/// files are verified when loaded).
pub fn list(dir: &Path) -> Vec<u64> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut steps: Vec<u64> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_prefix("ckpt-")?.strip_suffix(".safetensors")?.parse().ok()
        })
        .collect();
    steps.sort_unstable();
    steps
}

/// Saves checkpoint `step` and removes all but the newest `keep`.
// Each argument is a separate input of one coordinated save; bundling them
// would only move the list elsewhere.
#[allow(clippy::too_many_arguments)]
pub fn save(
    dir: &Path,
    step: u64,
    bind: &Binding,
    run: &str,
    tensors: Vec<TensorMut<'_>>,
    state: &RunState,
    keep: usize,
    sealer: Option<&Sealer>,
) -> Result<(), TrainError> {
    std::fs::create_dir_all(dir).map_err(StoreError::io(dir))?;
    let list: Vec<(String, Vec<usize>, &[f32])> = tensors
        .iter()
        .map(|t| (t.name.clone(), t.shape.clone(), &*t.data))
        .collect();
    let ctx = bind.checkpoint(run, step);
    let mut meta = BTreeMap::from([
        ("format".to_string(), "enclave-vfl checkpoint v2".to_string()),
        ("role".to_string(), bind.role.to_string()),
        ("model_fingerprint".to_string(), bind.model.clone()),
        ("step".to_string(), step.to_string()),
        (
            "state".to_string(),
            serde_json::to_string(state).map_err(StoreError::encode("run state"))?,
        ),
    ]);
    meta.extend(bind.meta(&ctx));
    store::write(
        &path(dir, step),
        &list,
        &meta,
        sealer.map(|sealer| Sealing { sealer, context: &ctx }),
    )?;
    let steps = list_steps_to_prune(dir, keep);
    for s in steps {
        let _ = std::fs::remove_file(path(dir, s));
    }
    // A checkpoint directory belongs to one party: temporary files of other
    // processes were left by a write that was killed.
    vfl_fs::remove_stale_temps(dir, "ckpt-");
    Ok(())
}

fn list_steps_to_prune(dir: &Path, keep: usize) -> Vec<u64> {
    let steps = list(dir);
    let n = steps.len().saturating_sub(keep.max(1));
    steps[..n].to_vec()
}

/// Loads checkpoint `step` into `tensors`: all or nothing.
pub fn load(
    dir: &Path,
    step: u64,
    bind: &Binding,
    run: &str,
    tensors: Vec<TensorMut<'_>>,
    sealer: Option<&Sealer>,
) -> Result<RunState, TrainError> {
    let p = path(dir, step);
    let ctx = bind.checkpoint(run, step);
    let s = store::read(&p, sealer.map(|sealer| Sealing { sealer, context: &ctx }))?;
    let path = p.display().to_string();
    let meta = |k: &str| s.meta.get(k).cloned().unwrap_or_default();
    if meta("step") != step.to_string() {
        return Err(StoreError::Step {
            path,
            found: meta("step"),
            expected: step,
        }
        .into());
    }
    check_binding(&s, &path, bind, &bind.meta(&ctx))?;
    let state: RunState = serde_json::from_str(&meta("state")).map_err(|source| StoreError::Json {
        path: path.clone(),
        what: "run state",
        source,
    })?;
    // Check everything before changing anything.
    check_tensors(&s, &path, &tensors)?;
    for t in tensors {
        if let Some(f) = s.tensors.get(&t.name) {
            t.data.copy_from_slice(&f.data);
        }
    }
    Ok(state)
}

/// Where an export goes and what it is: `<export_path>/<id>/<role>/`, of
/// run `run`; `release`: the roles whose export both parties' policies let
/// out in plaintext.
pub struct ExportPlan<'a> {
    pub export_path: &'a Path,
    pub id: &'a str,
    pub run: &'a str,
    pub release: &'a [String],
}

/// Whether `id` is one safe path component (letters, digits, `.`, `_`,
/// `-`; not `.` or `..`): export ids come from the leader.
pub fn is_safe_component(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Writes the party's model (weights only, no optimizer state), its spec
/// and a manifest under `<export_path>/<id>/<role>/`. With encryption at
/// rest the model is sealed (usable by `vfl` itself, e.g. for evaluation);
/// only when both policies release this role's export is a plaintext copy
/// `model.plain.safetensors` written beside it.
pub fn export(
    plan: &ExportPlan<'_>,
    bind: &Binding,
    spec: &vfl_nn::ModelSpec,
    tensors: Vec<TensorMut<'_>>,
    manifest: serde_json::Value,
    sealer: Option<&Sealer>,
) -> Result<PathBuf, TrainError> {
    if !is_safe_component(plan.id) {
        return Err(TrainError::UnsafeExportId {
            id: sanitize(plan.id, 64),
        });
    }
    let dir = plan.export_path.join(plan.id).join(bind.role.as_str());
    std::fs::create_dir_all(&dir).map_err(StoreError::io(&dir))?;
    let list: Vec<(String, Vec<usize>, &[f32])> = tensors
        .iter()
        .filter(|t| !t.name.contains('#'))
        .map(|t| (t.name.clone(), t.shape.clone(), &*t.data))
        .collect();
    let ctx = bind.export(plan.run, plan.release);
    let mut meta = BTreeMap::from([
        ("format".to_string(), "enclave-vfl model v2".to_string()),
        ("role".to_string(), bind.role.to_string()),
        ("model_fingerprint".to_string(), spec.fingerprint()),
    ]);
    meta.extend(bind.meta(&ctx));
    store::write(
        &dir.join("model.safetensors"),
        &list,
        &meta,
        sealer.map(|sealer| Sealing { sealer, context: &ctx }),
    )?;
    if sealer.is_some() && plan.release.iter().any(|r| r == bind.role.as_str()) {
        store::write(&dir.join(PLAIN_EXPORT), &list, &meta, None)?;
        tracing::warn!(
            dir = %dir.display(),
            "both parties' policies release this party's export: model.plain.safetensors is NOT encrypted"
        );
    }
    let toml = dir.join("model.toml");
    vfl_fs::write_atomic(&toml, |w| w.write_all(spec.to_toml().as_bytes())).map_err(StoreError::io(&toml))?;
    let text = serde_json::to_string_pretty(&manifest).map_err(StoreError::encode("export manifest"))?;
    let mpath = dir.join("manifest.json");
    vfl_fs::write_atomic(&mpath, |w| w.write_all(text.as_bytes())).map_err(StoreError::io(&mpath))?;
    Ok(dir)
}

/// The plaintext copy of a released export.
pub const PLAIN_EXPORT: &str = "model.plain.safetensors";

pub use vfl_bridge::sanitize;

/// Loads an exported model (`model.safetensors` of `<export>/<id>/<role>/`
/// or of the given directory) into the weights of `tensors` (optimizer
/// state is not exported and is left alone). All or nothing.
/// The run an exported model was trained in (read and verified like a load,
/// without loading): both parties evaluate exports of the same run.
pub fn export_run(dir: &Path, bind: &Binding, sealer: Option<&Sealer>) -> Result<String, TrainError> {
    let p = export_file(dir, bind.role);
    let ctx = bind.export_of_any_run();
    let s = store::read(&p, sealer.map(|sealer| Sealing { sealer, context: &ctx }))?;
    Ok(s.meta.get("run").cloned().unwrap_or_default())
}

fn export_file(dir: &Path, role: Role) -> PathBuf {
    if dir.join(role.as_str()).join("model.safetensors").exists() {
        dir.join(role.as_str()).join("model.safetensors")
    } else {
        dir.join("model.safetensors")
    }
}

/// Loads an exported model; returns the run it was trained in.
pub fn load_export(
    dir: &Path,
    bind: &Binding,
    tensors: Vec<TensorMut<'_>>,
    sealer: Option<&Sealer>,
) -> Result<String, TrainError> {
    let p = export_file(dir, bind.role);
    let ctx = bind.export_of_any_run();
    let s = store::read(&p, sealer.map(|sealer| Sealing { sealer, context: &ctx }))?;
    let path = p.display().to_string();
    let bound: Vec<(String, String)> = ["app", "policy"]
        .into_iter()
        .map(|k| (k.to_string(), ctx.get(k).unwrap_or_default().to_string()))
        .collect();
    check_binding(&s, &path, bind, &bound)?;
    let weights: Vec<TensorMut<'_>> = tensors.into_iter().filter(|t| !t.name.contains('#')).collect();
    check_tensors(&s, &path, &weights)?;
    for t in weights {
        if let Some(f) = s.tensors.get(&t.name) {
            t.data.copy_from_slice(&f.data);
        }
    }
    Ok(s.meta.get("run").cloned().unwrap_or_default())
}

/// Checks that a read file was written by this role for this model and
/// carries the metadata `bound` expects.
fn check_binding(s: &store::Stored, path: &str, bind: &Binding, bound: &[(String, String)]) -> Result<(), TrainError> {
    let meta = |k: &str| s.meta.get(k).cloned().unwrap_or_default();
    let path = || path.to_string();
    if meta("role") != bind.role.as_str() {
        return Err(StoreError::Role {
            path: path(),
            found: meta("role"),
            expected: bind.role.as_str(),
        }
        .into());
    }
    if meta("model_fingerprint") != bind.model {
        return Err(StoreError::Model { path: path() }.into());
    }
    for (k, v) in bound {
        if &meta(k) != v {
            return Err(StoreError::Binding {
                path: path(),
                key: k.clone(),
                found: meta(k),
                expected: v.clone(),
            }
            .into());
        }
    }
    Ok(())
}

/// Checks that a read file holds exactly the model's tensors, each with
/// its shape.
fn check_tensors(s: &store::Stored, path: &str, tensors: &[TensorMut<'_>]) -> Result<(), TrainError> {
    if s.tensors.len() != tensors.len() {
        return Err(StoreError::TensorCount {
            path: path.to_string(),
            found: s.tensors.len(),
            expected: tensors.len(),
        }
        .into());
    }
    for t in tensors {
        match s.tensors.get(&t.name) {
            Some(f) if f.shape == t.shape && f.data.len() == t.data.len() => {}
            found => {
                return Err(StoreError::TensorShape {
                    path: path.to_string(),
                    name: t.name.clone(),
                    found: found.map(|f| f.shape.clone()),
                    expected: t.shape.clone(),
                }
                .into());
            }
        }
    }
    Ok(())
}
