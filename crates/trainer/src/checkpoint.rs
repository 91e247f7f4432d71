//! Coordinated checkpoints and exports of one party's model.
//!
//! A checkpoint `ckpt-<step>.safetensors` holds every weight and optimizer
//! state tensor plus, in its metadata, the role, the model fingerprint and
//! the run state (epoch, block order, data position, counters). The leader
//! decides the steps; both parties save at the same step, so after a crash
//! they resume from the newest step both hold. Files are written atomically
//! and verified (checksum, names, shapes) before anything is loaded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vfl_nn::Role;
use vfl_nn::split::TensorMut;

use crate::TrainError;
use crate::seal::Sealer;
use crate::store::{self, Sealing};

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

/// What an encrypted checkpoint file must be (authenticated with it).
pub fn checkpoint_context(role: Role, step: u64) -> String {
    format!("enclave-vfl checkpoint; {role}; step {step}")
}

/// What an encrypted exported model must be.
pub fn model_context(role: Role, fingerprint: &str) -> String {
    format!("enclave-vfl model; {role}; spec {fingerprint}")
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
    role: Role,
    fingerprint: &str,
    tensors: Vec<TensorMut<'_>>,
    state: &RunState,
    keep: usize,
    sealer: Option<&Sealer>,
) -> Result<(), TrainError> {
    std::fs::create_dir_all(dir).map_err(|e| TrainError::Store(format!("{}: {e}", dir.display())))?;
    let list: Vec<(String, Vec<usize>, &[f32])> = tensors
        .iter()
        .map(|t| (t.name.clone(), t.shape.clone(), &*t.data))
        .collect();
    let meta = BTreeMap::from([
        ("format".to_string(), "enclave-vfl checkpoint v1".to_string()),
        ("role".to_string(), role.to_string()),
        ("model_fingerprint".to_string(), fingerprint.to_string()),
        ("step".to_string(), step.to_string()),
        (
            "state".to_string(),
            serde_json::to_string(state).map_err(|e| TrainError::Store(e.to_string()))?,
        ),
    ]);
    let ctx = checkpoint_context(role, step);
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
    vfl_data::atomic::remove_stale_temps(dir, "ckpt-");
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
    role: Role,
    fingerprint: &str,
    tensors: Vec<TensorMut<'_>>,
    sealer: Option<&Sealer>,
) -> Result<RunState, TrainError> {
    let p = path(dir, step);
    let ctx = checkpoint_context(role, step);
    let s = store::read(&p, sealer.map(|sealer| Sealing { sealer, context: &ctx }))?;
    let bad = |why: String| TrainError::Store(format!("{}: {why}", p.display()));
    let meta = |k: &str| s.meta.get(k).cloned().unwrap_or_default();
    if meta("role") != role.as_str() {
        return Err(bad(format!("written by the {}, not the {role}", meta("role"))));
    }
    if meta("model_fingerprint") != fingerprint {
        return Err(bad("written for a different model spec".into()));
    }
    if meta("step") != step.to_string() {
        return Err(bad(format!("holds step {}, its name says {step}", meta("step"))));
    }
    let state: RunState = serde_json::from_str(&meta("state")).map_err(|e| bad(format!("bad run state: {e}")))?;
    // Check everything before changing anything.
    if s.tensors.len() != tensors.len() {
        return Err(bad(format!(
            "holds {} tensors, the model has {}",
            s.tensors.len(),
            tensors.len()
        )));
    }
    for t in &tensors {
        match s.tensors.get(&t.name) {
            None => return Err(bad(format!("tensor `{}` is missing", t.name))),
            Some(f) if f.shape != t.shape || f.data.len() != t.data.len() => {
                return Err(bad(format!(
                    "tensor `{}` has shape {:?}, the model needs {:?}",
                    t.name, f.shape, t.shape
                )));
            }
            Some(_) => {}
        }
    }
    for t in tensors {
        if let Some(f) = s.tensors.get(&t.name) {
            t.data.copy_from_slice(&f.data);
        }
    }
    Ok(state)
}

/// Writes the party's model (weights only, no optimizer state), its spec
/// and a manifest under `<export_path>/<id>/<role>/`.
pub fn export(
    export_path: &Path,
    id: &str,
    role: Role,
    spec: &vfl_nn::ModelSpec,
    tensors: Vec<TensorMut<'_>>,
    manifest: serde_json::Value,
    sealer: Option<&Sealer>,
) -> Result<PathBuf, TrainError> {
    let dir = export_path.join(id).join(role.as_str());
    let io = |e: std::io::Error| TrainError::Store(format!("{}: {e}", dir.display()));
    std::fs::create_dir_all(&dir).map_err(io)?;
    let list: Vec<(String, Vec<usize>, &[f32])> = tensors
        .iter()
        .filter(|t| !t.name.contains('#'))
        .map(|t| (t.name.clone(), t.shape.clone(), &*t.data))
        .collect();
    let meta = BTreeMap::from([
        ("format".to_string(), "enclave-vfl model v1".to_string()),
        ("role".to_string(), role.to_string()),
        ("model_fingerprint".to_string(), spec.fingerprint()),
    ]);
    let ctx = model_context(role, &spec.fingerprint());
    store::write(
        &dir.join("model.safetensors"),
        &list,
        &meta,
        sealer.map(|sealer| Sealing { sealer, context: &ctx }),
    )?;
    vfl_data::atomic::write_atomic(&dir.join("model.toml"), |w| w.write_all(spec.to_toml().as_bytes())).map_err(io)?;
    let text = serde_json::to_string_pretty(&manifest).map_err(|e| TrainError::Store(e.to_string()))?;
    vfl_data::atomic::write_atomic(&dir.join("manifest.json"), |w| w.write_all(text.as_bytes())).map_err(io)?;
    Ok(dir)
}

/// Loads an exported model (`model.safetensors` of `<export>/<id>/<role>/`
/// or of the given directory) into the weights of `tensors` (optimizer
/// state is not exported and is left alone). All or nothing.
pub fn load_export(
    dir: &Path,
    role: Role,
    fingerprint: &str,
    tensors: Vec<TensorMut<'_>>,
    sealer: Option<&Sealer>,
) -> Result<(), TrainError> {
    let p = if dir.join(role.as_str()).join("model.safetensors").exists() {
        dir.join(role.as_str()).join("model.safetensors")
    } else {
        dir.join("model.safetensors")
    };
    let ctx = model_context(role, fingerprint);
    let s = store::read(&p, sealer.map(|sealer| Sealing { sealer, context: &ctx }))?;
    let bad = |why: String| TrainError::Store(format!("{}: {why}", p.display()));
    let meta = |k: &str| s.meta.get(k).cloned().unwrap_or_default();
    if meta("role") != role.as_str() {
        return Err(bad(format!("exported by the {}, not the {role}", meta("role"))));
    }
    if meta("model_fingerprint") != fingerprint {
        return Err(bad("exported for a different model spec".into()));
    }
    let weights: Vec<TensorMut<'_>> = tensors.into_iter().filter(|t| !t.name.contains('#')).collect();
    if s.tensors.len() != weights.len() {
        return Err(bad(format!(
            "holds {} tensors, the model has {}",
            s.tensors.len(),
            weights.len()
        )));
    }
    for t in &weights {
        match s.tensors.get(&t.name) {
            Some(f) if f.shape == t.shape && f.data.len() == t.data.len() => {}
            _ => return Err(bad(format!("tensor `{}` is missing or has the wrong shape", t.name))),
        }
    }
    for t in weights {
        if let Some(f) = s.tensors.get(&t.name) {
            t.data.copy_from_slice(&f.data);
        }
    }
    Ok(())
}
