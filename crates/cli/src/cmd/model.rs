//! `vfl model`: inspect model specs, and inspect or decrypt model and
//! checkpoint files.

use std::path::PathBuf;

use anyhow::Context;
use vfl_attest::seal::{self, Context as SealContext, KeySource, Sealer};
use vfl_nn::ModelSpec;
use vfl_nn::spec::PRESETS;
use vfl_trainer::store;

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Print a model spec (preset or file), resolved, as TOML, with its
    /// fingerprint and per-party shapes.
    Show {
        /// Preset name or spec file (TOML, or JSON by extension).
        #[arg(long, default_value = "wide_n_deep")]
        model: String,
    },
    /// List the built-in presets.
    Presets,
    /// Show what a model or checkpoint file holds (metadata, tensor names and
    /// shapes); encrypted files need their key.
    Inspect {
        /// A model.safetensors or ckpt-*.safetensors file.
        path: PathBuf,
        /// Key of an encrypted file: sgx-mrenclave, or file:PATH / env:VAR (development builds).
        #[arg(long)]
        model_key: Option<KeySource>,
        /// Gramine's attestation device (for the sgx-* keys).
        #[arg(long, default_value = vfl_attest::SgxAttester::DEVICE_ROOT)]
        attestation_device: PathBuf,
    },
    /// Decrypt an exported model into a plain safetensors file (written
    /// atomically), only if both parties' policies released that party's
    /// export (`release_exports`, recorded in the sealed file). Checkpoints
    /// and state records are never decrypted.
    Decrypt {
        /// The encrypted file.
        path: PathBuf,
        /// Where the plain safetensors file goes.
        #[arg(long)]
        out: PathBuf,
        /// The key: sgx-mrenclave, or file:PATH / env:VAR (development builds).
        #[arg(long)]
        model_key: KeySource,
        #[arg(long, default_value = vfl_attest::SgxAttester::DEVICE_ROOT)]
        attestation_device: PathBuf,
    },
}

pub fn run(c: Command) -> anyhow::Result<()> {
    match c {
        Command::Show { model } => {
            let spec = ModelSpec::resolve(&model)?;
            println!("# fingerprint: {}", spec.fingerprint());
            for (role, t) in [("leader", &spec.leader), ("follower", &spec.follower)] {
                println!(
                    "# {role}: {} sparse slots, {} dense columns, input {} -> output {}",
                    t.slots().len(),
                    t.dense_columns().len(),
                    t.input_dim(),
                    t.output_dim()
                );
            }
            print!("{}", spec.to_toml());
        }
        Command::Presets => PRESETS.iter().for_each(|p| println!("{p}")),
        Command::Inspect {
            path,
            model_key,
            attestation_device,
        } => {
            let raw = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let plain = if seal::is_sealed(&raw) {
                let (context, key_id) = seal::describe(&raw, &path)?;
                println!("encrypted: {context} (key id {key_id}; not authenticated until opened)");
                let Some(src) = model_key else {
                    anyhow::bail!("{}: encrypted; give --model-key to see its contents", path.display());
                };
                let expect = SealContext::new(&context.kind);
                Sealer::open(&src, &attestation_device)?
                    .open_file(&raw, &expect, &path)?
                    .1
            } else {
                println!("not encrypted");
                raw
            };
            let s = store::parse(&plain, &path)?;
            for (k, v) in &s.meta {
                if k != "state" {
                    println!("meta {k} = {v}");
                }
            }
            for (name, t) in &s.tensors {
                println!("tensor {name} {:?}", t.shape);
            }
        }
        Command::Decrypt {
            path,
            out,
            model_key,
            attestation_device,
        } => {
            let raw = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            anyhow::ensure!(seal::is_sealed(&raw), "{}: not an encrypted file", path.display());
            let (claimed, _) = seal::describe(&raw, &path)?;
            released(&claimed).map_err(|why| anyhow::anyhow!("{}: {why}", path.display()))?;
            let sealer = Sealer::open(&model_key, &attestation_device)?;
            // The claim is authenticated by opening: a file that says "released"
            // without being so is refused as altered.
            let (context, plain) = sealer.open_file(&raw, &claimed, &path)?;
            store::parse(&plain, &path)?;
            vfl_fs::write_atomic(&out, |w| w.write_all(&plain))
                .with_context(|| format!("writing {}", out.display()))?;
            println!("decrypted {} ({context}) to {}", path.display(), out.display());
        }
    }
    Ok(())
}

/// Whether a sealed file may be decrypted: only an exported model whose
/// party's export both policies released.
fn released(ctx: &SealContext) -> Result<(), String> {
    if ctx.kind != "model" {
        return Err(format!(
            "a sealed {} is never decrypted: only exported models can be released (what an enclave keeps for \
             itself stays sealed to it)",
            ctx.kind
        ));
    }
    let role = ctx.get("role").unwrap_or_default();
    let release = ctx.get("release").unwrap_or_default();
    if !release.split(',').any(|r| r == role) {
        return Err(format!(
            "the {role}'s export was not released: both parties' policies must list \"{role}\" in \
             release_exports (it was trained with release [{release}])"
        ));
    }
    Ok(())
}
