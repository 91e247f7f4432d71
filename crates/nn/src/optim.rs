//! Optimizers: SGD, Adagrad and Adam, for dense parameters and for single
//! rows of embedding tables (sparse updates cost O(rows touched)).
//!
//! Sparse Adagrad/Adam follow the "lazy" convention (as TensorFlow's
//! LazyAdam and PyTorch's SparseAdam): only rows that received a gradient in
//! a step have their moments updated, while the bias correction uses the
//! global step count.

use serde::{Deserialize, Serialize};

fn default_initial_accumulator() -> f32 {
    0.1
}
fn default_adagrad_epsilon() -> f32 {
    1e-7
}
fn default_beta1() -> f32 {
    0.9
}
fn default_beta2() -> f32 {
    0.999
}
fn default_adam_epsilon() -> f32 {
    1e-8
}

/// Optimizer choice and hyper-parameters, as written in a model spec.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum OptimizerSpec {
    Sgd {
        learning_rate: f32,
    },
    Adagrad {
        learning_rate: f32,
        #[serde(default = "default_initial_accumulator")]
        initial_accumulator: f32,
        #[serde(default = "default_adagrad_epsilon")]
        epsilon: f32,
    },
    Adam {
        learning_rate: f32,
        #[serde(default = "default_beta1")]
        beta1: f32,
        #[serde(default = "default_beta2")]
        beta2: f32,
        #[serde(default = "default_adam_epsilon")]
        epsilon: f32,
    },
}

impl OptimizerSpec {
    pub fn learning_rate(&self) -> f32 {
        match self {
            OptimizerSpec::Sgd { learning_rate }
            | OptimizerSpec::Adagrad { learning_rate, .. }
            | OptimizerSpec::Adam { learning_rate, .. } => *learning_rate,
        }
    }

    /// Checks the hyper-parameters; the error names the offending field.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let lr = self.learning_rate();
        if !(lr.is_finite() && lr > 0.0) {
            return Err(("learning_rate".into(), format!("must be a positive number, got {lr}")));
        }
        match *self {
            OptimizerSpec::Sgd { .. } => {}
            OptimizerSpec::Adagrad {
                initial_accumulator,
                epsilon,
                ..
            } => {
                if !(initial_accumulator.is_finite() && initial_accumulator >= 0.0) {
                    return Err((
                        "initial_accumulator".into(),
                        format!("must be >= 0, got {initial_accumulator}"),
                    ));
                }
                if !(epsilon.is_finite() && epsilon > 0.0) {
                    return Err(("epsilon".into(), format!("must be > 0, got {epsilon}")));
                }
            }
            OptimizerSpec::Adam {
                beta1, beta2, epsilon, ..
            } => {
                for (name, b) in [("beta1", beta1), ("beta2", beta2)] {
                    if !(0.0..1.0).contains(&b) {
                        return Err((name.into(), format!("must be in [0, 1), got {b}")));
                    }
                }
                if !(epsilon.is_finite() && epsilon > 0.0) {
                    return Err(("epsilon".into(), format!("must be > 0, got {epsilon}")));
                }
            }
        }
        Ok(())
    }
}

/// Per-parameter optimizer state (Adagrad: accumulator in `a`; Adam: first
/// moment in `a`, second in `b`; SGD: none).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ParamState {
    pub a: Vec<f32>,
    pub b: Vec<f32>,
}

/// A running optimizer: the spec plus the step counter.
#[derive(Clone, Debug, PartialEq)]
pub struct Optimizer {
    spec: OptimizerSpec,
    step: u64,
    /// Adam's bias-corrected learning rate for the current step.
    lr_t: f32,
}

impl Optimizer {
    pub fn new(spec: OptimizerSpec) -> Self {
        let lr_t = spec.learning_rate();
        Optimizer { spec, step: 0, lr_t }
    }

    pub fn spec(&self) -> &OptimizerSpec {
        &self.spec
    }

    /// Number of steps begun so far.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Restores the step counter (from a checkpoint).
    pub fn set_step(&mut self, step: u64) {
        self.step = step;
        self.refresh();
    }

    /// Starts a new optimisation step; call once per training step, before
    /// any `apply_*`.
    pub fn begin_step(&mut self) {
        self.step += 1;
        self.refresh();
    }

    fn refresh(&mut self) {
        self.lr_t = match self.spec {
            OptimizerSpec::Adam {
                learning_rate,
                beta1,
                beta2,
                ..
            } => {
                let t = self.step.max(1) as i32;
                let (b1t, b2t) = (f64::from(beta1).powi(t), f64::from(beta2).powi(t));
                (f64::from(learning_rate) * (1.0 - b2t).sqrt() / (1.0 - b1t)) as f32
            }
            ref s => s.learning_rate(),
        };
    }

    /// Whether plain SGD (the only optimizer that can be fused into the
    /// weight-gradient product).
    pub fn sgd_rate(&self) -> Option<f32> {
        match self.spec {
            OptimizerSpec::Sgd { learning_rate } => Some(learning_rate),
            _ => None,
        }
    }

    /// Fresh state for a parameter of `len` values.
    pub fn new_state(&self, len: usize) -> ParamState {
        match self.spec {
            OptimizerSpec::Sgd { .. } => ParamState::default(),
            OptimizerSpec::Adagrad {
                initial_accumulator, ..
            } => ParamState {
                a: vec![initial_accumulator; len],
                b: Vec::new(),
            },
            OptimizerSpec::Adam { .. } => ParamState {
                a: vec![0.0; len],
                b: vec![0.0; len],
            },
        }
    }

    /// Updates `w` with gradient `g`; `a`/`b` are the matching slices of the
    /// parameter's state (empty for SGD). Used for whole dense parameters and
    /// for single embedding rows alike.
    pub fn apply(&self, w: &mut [f32], g: &[f32], a: &mut [f32], b: &mut [f32]) {
        debug_assert_eq!(w.len(), g.len());
        match self.spec {
            OptimizerSpec::Sgd { learning_rate } => {
                for (w, g) in w.iter_mut().zip(g) {
                    *w -= learning_rate * g;
                }
            }
            OptimizerSpec::Adagrad {
                learning_rate, epsilon, ..
            } => {
                for ((w, g), acc) in w.iter_mut().zip(g).zip(a.iter_mut()) {
                    *acc += g * g;
                    *w -= learning_rate * g / (acc.sqrt() + epsilon);
                }
            }
            OptimizerSpec::Adam {
                beta1, beta2, epsilon, ..
            } => {
                let lr_t = self.lr_t;
                for (((w, g), m), v) in w.iter_mut().zip(g).zip(a.iter_mut()).zip(b.iter_mut()) {
                    *m = beta1 * *m + (1.0 - beta1) * g;
                    *v = beta2 * *v + (1.0 - beta2) * g * g;
                    *w -= lr_t * *m / (v.sqrt() + epsilon);
                }
            }
        }
    }

    /// Convenience wrapper of [`Optimizer::apply`] for a whole parameter.
    pub fn apply_param(&self, w: &mut [f32], g: &[f32], st: &mut ParamState) {
        let n = w.len();
        let a = if st.a.is_empty() { &mut [][..] } else { &mut st.a[..n] };
        let b = if st.b.is_empty() { &mut [][..] } else { &mut st.b[..n] };
        self.apply(w, g, a, b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Minimises f(w) = sum((w - 3)^2) and checks convergence.
    fn converges(spec: OptimizerSpec, steps: usize) -> Vec<f32> {
        let mut opt = Optimizer::new(spec);
        let mut w = vec![0.0f32, 10.0, -4.0];
        let mut st = opt.new_state(3);
        for _ in 0..steps {
            opt.begin_step();
            let g: Vec<f32> = w.iter().map(|w| 2.0 * (w - 3.0)).collect();
            opt.apply_param(&mut w, &g, &mut st);
        }
        w
    }

    #[test]
    fn sgd_adagrad_adam_converge() {
        for (spec, steps) in [
            (OptimizerSpec::Sgd { learning_rate: 0.1 }, 200),
            (
                OptimizerSpec::Adagrad {
                    learning_rate: 1.0,
                    initial_accumulator: 0.1,
                    epsilon: 1e-7,
                },
                500,
            ),
            (
                OptimizerSpec::Adam {
                    learning_rate: 0.1,
                    beta1: 0.9,
                    beta2: 0.999,
                    epsilon: 1e-8,
                },
                1000,
            ),
        ] {
            let w = converges(spec.clone(), steps);
            assert!(w.iter().all(|w| (w - 3.0).abs() < 1e-2), "{spec:?}: {w:?}");
        }
    }

    #[test]
    fn adam_first_step_moves_by_learning_rate() {
        // With bias correction, Adam's first step is lr * sign(g).
        let mut opt = Optimizer::new(OptimizerSpec::Adam {
            learning_rate: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
        });
        let mut st = opt.new_state(2);
        opt.begin_step();
        let mut w = vec![1.0, 1.0];
        opt.apply_param(&mut w, &[5.0, -0.1], &mut st);
        assert!((w[0] - 0.99).abs() < 1e-6 && (w[1] - 1.01).abs() < 1e-6, "{w:?}");
    }

    #[test]
    fn adagrad_matches_formula() {
        let mut opt = Optimizer::new(OptimizerSpec::Adagrad {
            learning_rate: 0.5,
            initial_accumulator: 0.1,
            epsilon: 1e-7,
        });
        let mut st = opt.new_state(1);
        opt.begin_step();
        let mut w = vec![1.0];
        opt.apply_param(&mut w, &[2.0], &mut st);
        let want = 1.0 - 0.5 * 2.0 / ((0.1f32 + 4.0).sqrt() + 1e-7);
        assert!((w[0] - want).abs() < 1e-6);
        assert!((st.a[0] - 4.1).abs() < 1e-6);
    }

    #[test]
    fn validation_names_the_field() {
        let bad = OptimizerSpec::Adam {
            learning_rate: 0.1,
            beta1: 1.5,
            beta2: 0.999,
            epsilon: 1e-8,
        };
        assert_eq!(bad.validate().unwrap_err().0, "beta1");
        let bad = OptimizerSpec::Sgd { learning_rate: -1.0 };
        assert_eq!(bad.validate().unwrap_err().0, "learning_rate");
    }
}
