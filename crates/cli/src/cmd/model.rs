//! `vfl model`: inspect model specs.

use vfl_nn::ModelSpec;
use vfl_nn::spec::PRESETS;

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
    }
    Ok(())
}
