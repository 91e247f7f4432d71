//! `vfl model`: inspect model specs, and inspect or decrypt model and
//! checkpoint files.

use std::path::PathBuf;

use anyhow::Context;
use vfl_nn::ModelSpec;
use vfl_nn::spec::PRESETS;
use vfl_trainer::seal::{self, KeySource, Sealer};
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
        /// Key of an encrypted file: sgx-mrenclave, sgx-mrsigner, file:PATH or env:VAR.
        #[arg(long)]
        model_key: Option<KeySource>,
        /// Gramine's attestation device (for the sgx-* keys).
        #[arg(long, default_value = "/dev/attestation")]
        attestation_device: PathBuf,
    },
    /// Decrypt an encrypted model or checkpoint file into a plain
    /// safetensors file (written atomically), for an authorised user.
    Decrypt {
        /// The encrypted file.
        path: PathBuf,
        /// Where the plain safetensors file goes.
        #[arg(long)]
        out: PathBuf,
        /// The key: sgx-mrenclave, sgx-mrsigner, file:PATH or env:VAR.
        #[arg(long)]
        model_key: KeySource,
        #[arg(long, default_value = "/dev/attestation")]
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
                let (context, key_id) = seal::describe(&raw).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                println!("encrypted: {context} (key id {key_id})");
                let Some(src) = model_key else {
                    anyhow::bail!("{}: encrypted; give --model-key to see its contents", path.display());
                };
                Sealer::open(&src, &attestation_device)?.open_file(&raw, None, &path)?.1
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
            let (context, plain) = Sealer::open(&model_key, &attestation_device)?.open_file(&raw, None, &path)?;
            store::parse(&plain, &path)?;
            vfl_data::atomic::write_atomic(&out, |w| w.write_all(&plain))
                .with_context(|| format!("writing {}", out.display()))?;
            println!("decrypted {} ({context}) to {}", path.display(), out.display());
        }
    }
    Ok(())
}
