//! Element-wise activations and their derivatives.

use serde::{Deserialize, Serialize};

/// Activation applied after a dense layer's affine map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    #[default]
    Identity,
    Relu,
    Sigmoid,
}

impl Activation {
    /// Applies the activation in place.
    pub fn apply(self, z: &mut [f32]) {
        match self {
            Activation::Identity => {}
            Activation::Relu => z.iter_mut().for_each(|v| *v = v.max(0.0)),
            Activation::Sigmoid => z.iter_mut().for_each(|v| *v = sigmoid(*v)),
        }
    }

    /// Turns `dy` (gradient w.r.t. the activation's output `y`) into the
    /// gradient w.r.t. its input, in place. Uses the output `y`, which is
    /// what the forward pass keeps.
    pub fn backprop(self, y: &[f32], dy: &mut [f32]) {
        match self {
            Activation::Identity => {}
            Activation::Relu => dy.iter_mut().zip(y).for_each(|(g, &y)| {
                if y <= 0.0 {
                    *g = 0.0
                }
            }),
            Activation::Sigmoid => dy.iter_mut().zip(y).for_each(|(g, &y)| *g *= y * (1.0 - y)),
        }
    }
}

/// Numerically stable logistic function.
pub fn sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivatives_match_finite_differences() {
        for act in [Activation::Identity, Activation::Relu, Activation::Sigmoid] {
            for &x in &[-2.0f32, -0.3, 0.4, 1.7] {
                let h = 1e-3f32;
                let f = |v: f32| {
                    let mut a = [v];
                    act.apply(&mut a);
                    a[0]
                };
                let numeric = (f(x + h) - f(x - h)) / (2.0 * h);
                let y = f(x);
                let mut g = [1.0];
                act.backprop(&[y], &mut g);
                assert!((g[0] - numeric).abs() < 1e-3, "{act:?} at {x}: {} vs {numeric}", g[0]);
            }
        }
    }

    #[test]
    fn sigmoid_is_stable_at_extremes() {
        assert_eq!(sigmoid(1000.0), 1.0);
        assert_eq!(sigmoid(-1000.0), 0.0);
        assert!((sigmoid(0.0) - 0.5).abs() < 1e-7);
    }
}
