//! Weight initialisers.

use serde::{Deserialize, Serialize};

use crate::rng::{Rng, derive_seed};

/// How weights and embedding tables are initialised. Biases start at zero.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum InitSpec {
    /// Uniform in `[-limit, limit)`; the original wide_n_deep uses 0.01.
    Uniform { limit: f32 },
    /// Normal with mean 0 and standard deviation `std`.
    Normal { std: f32 },
    /// Glorot/Xavier uniform: limit = sqrt(6 / (fan_in + fan_out)).
    GlorotUniform,
}

impl Default for InitSpec {
    fn default() -> Self {
        InitSpec::Uniform { limit: 0.01 }
    }
}

impl InitSpec {
    pub fn validate(&self) -> Result<(), (String, String)> {
        match *self {
            InitSpec::Uniform { limit } if !(limit.is_finite() && limit >= 0.0) => {
                Err(("limit".into(), format!("must be a finite number >= 0, got {limit}")))
            }
            InitSpec::Normal { std } if !(std.is_finite() && std >= 0.0) => {
                Err(("std".into(), format!("must be a finite number >= 0, got {std}")))
            }
            _ => Ok(()),
        }
    }

    /// Fills `w` (a `fan_in x fan_out` parameter) from a stream seeded by the
    /// model seed and the parameter's name.
    pub fn fill(&self, seed: u64, name: &str, fan_in: usize, fan_out: usize, w: &mut [f32]) {
        let mut rng = Rng::new(derive_seed(seed, name));
        match *self {
            InitSpec::Uniform { limit } => w.iter_mut().for_each(|v| *v = rng.uniform(-limit, limit)),
            InitSpec::Normal { std } => w.iter_mut().for_each(|v| *v = std * rng.normal()),
            InitSpec::GlorotUniform => {
                let limit = (6.0 / (fan_in + fan_out).max(1) as f32).sqrt();
                w.iter_mut().for_each(|v| *v = rng.uniform(-limit, limit))
            }
        }
    }
}
