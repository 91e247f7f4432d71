//! `vfl selfcheck`: a short deterministic training run whose numbers can be
//! compared across machines and CPU kernels.

use vfl_data::SynthSource;
use vfl_data::synth::{Synth, SynthConfig};
use vfl_nn::ModelSpec;
use vfl_trainer::LocalTrainer;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Threads per party.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

const SPEC: &str = r#"
name = "selfcheck"
seed = 11
init = { kind = "uniform", limit = 0.1 }
optimizer = { kind = "adam", learning_rate = 0.01 }
[leader]
sparse = [{ prefix = "x_", count = 16, vocab = 101, dim = 8 }]
layers = [{ units = 64, activation = "relu" }, { units = 16 }]
[follower]
sparse = [{ prefix = "x_", count = 16, vocab = 101, dim = 8 }]
layers = [{ units = 16, activation = "relu" }]
[head]
layers = [{ units = 8, activation = "sigmoid" }, { units = 2, bias = false }]
loss = "softmax_cross_entropy"
"#;

pub fn run(a: Args) -> anyhow::Result<()> {
    let spec = ModelSpec::from_toml_str(SPEC, "selfcheck")?;
    let generator = Synth::new(SynthConfig {
        slots: 16,
        informative: 4,
        seed: 3,
        ..Default::default()
    });
    let mut t = LocalTrainer::new(&spec, a.threads)?;
    let mut l = SynthSource::new(&generator, true, 0, 2048);
    let mut f = SynthSource::new(&generator, false, 0, 2048);
    let train = t.run_pass(&mut l, &mut f, 64, true, |_| {})?;
    let mut l = SynthSource::new(&generator, true, 10_000, 11_024);
    let mut f = SynthSource::new(&generator, false, 10_000, 11_024);
    let eval = t.run_pass(&mut l, &mut f, 256, false, |_| {})?;
    let out = serde_json::json!({
        "kernel": super::cpu_kernel(),
        "threads": a.threads,
        "train_loss": train.mean_loss,
        "eval_loss": eval.mean_loss,
        "eval_auc": eval.metrics.auc,
    });
    println!("{out}");
    Ok(())
}
