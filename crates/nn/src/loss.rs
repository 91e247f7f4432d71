//! Losses over logits, with per-example weights (a loss mask).
//!
//! The loss is `sum_i w_i * l_i / B` over the `B` examples of the batch, as
//! in the original system (which multiplies per-example losses by
//! `1 - loss_mask` and takes the mean). Without weights every `w_i` is 1.

use serde::{Deserialize, Serialize};

use crate::NnError;
use crate::activation::sigmoid;
use crate::tensor::Matrix;

/// The loss attached to the head's logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    /// Softmax over `C >= 2` logits, labels are class indices `0..C`.
    SoftmaxCrossEntropy,
    /// One logit, labels in `[0, 1]`.
    SigmoidCrossEntropy,
}

impl LossKind {
    /// Number of logits the head must produce, or `None` if any `>= 2`.
    pub fn required_logits(self) -> Option<usize> {
        match self {
            LossKind::SoftmaxCrossEntropy => None,
            LossKind::SigmoidCrossEntropy => Some(1),
        }
    }
}

/// Result of a loss evaluation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossValue {
    /// `sum_i w_i l_i / B`, the value that is differentiated.
    pub loss: f32,
    /// Sum of the weights (examples that count).
    pub weight_sum: f32,
}

/// Computes the loss, its gradient w.r.t. the logits (into `grad`, same
/// shape as `logits`) and, per example, the score used by metrics: the
/// probability of class 1 (binary softmax or sigmoid).
pub fn loss_and_grad(
    kind: LossKind,
    logits: &Matrix,
    labels: &[f32],
    weights: Option<&[f32]>,
    grad: &mut Matrix,
    scores: &mut Vec<f32>,
) -> Result<LossValue, NnError> {
    let (b, c) = logits.shape();
    if labels.len() != b {
        return Err(NnError::Input(format!(
            "{} labels for a batch of {b} examples",
            labels.len()
        )));
    }
    if let Some(w) = weights
        && w.len() != b
    {
        return Err(NnError::Input(format!(
            "{} loss weights for a batch of {b} examples",
            w.len()
        )));
    }
    match (kind, c) {
        (LossKind::SoftmaxCrossEntropy, c) if c < 2 => {
            return Err(NnError::Input(format!(
                "softmax cross-entropy needs >= 2 logits, got {c}"
            )));
        }
        (LossKind::SigmoidCrossEntropy, c) if c != 1 => {
            return Err(NnError::Input(format!("sigmoid cross-entropy needs 1 logit, got {c}")));
        }
        _ => {}
    }
    grad.resize(b, c);
    scores.clear();
    let inv_b = if b == 0 { 0.0 } else { 1.0 / b as f64 };
    let mut total = 0.0f64;
    let mut wsum = 0.0f64;
    for i in 0..b {
        let w = weights.map_or(1.0, |w| w[i]);
        if !(w.is_finite() && w >= 0.0) {
            return Err(NnError::Input(format!(
                "example {i}: loss weight {w} is not a finite number >= 0"
            )));
        }
        let y = labels[i];
        let z = logits.row(i);
        let g = grad.row_mut(i);
        let l = match kind {
            LossKind::SoftmaxCrossEntropy => {
                if !(y >= 0.0 && y.fract() == 0.0 && (y as usize) < c) {
                    return Err(NnError::Input(format!(
                        "example {i}: label {y} is not a class index in [0, {c})"
                    )));
                }
                let k = y as usize;
                let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0f64;
                for (g, &z) in g.iter_mut().zip(z) {
                    let e = f64::from(z - max).exp();
                    *g = e as f32;
                    sum += e;
                }
                let scale = f64::from(w) * inv_b;
                for (j, g) in g.iter_mut().enumerate() {
                    let p = f64::from(*g) / sum;
                    *g = (scale * (p - if j == k { 1.0 } else { 0.0 })) as f32;
                    if j == 1 && c == 2 {
                        scores.push(p as f32);
                    }
                }
                sum.ln() - f64::from(z[k] - max)
            }
            LossKind::SigmoidCrossEntropy => {
                if !(0.0..=1.0).contains(&y) {
                    return Err(NnError::Input(format!("example {i}: label {y} is not in [0, 1]")));
                }
                let x = f64::from(z[0]);
                let p = f64::from(sigmoid(z[0]));
                g[0] = (f64::from(w) * inv_b * (p - f64::from(y))) as f32;
                scores.push(p as f32);
                // max(x, 0) - x*y + log(1 + exp(-|x|)), stable for any x.
                x.max(0.0) - x * f64::from(y) + (-x.abs()).exp().ln_1p()
            }
        };
        total += f64::from(w) * l;
        wsum += f64::from(w);
    }
    Ok(LossValue {
        loss: (total * inv_b) as f32,
        weight_sum: wsum as f32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn check_grad(kind: LossKind, c: usize, labels: &[f32], weights: Option<&[f32]>) {
        let b = labels.len();
        let mut rng = Rng::new(9);
        let data: Vec<f32> = (0..b * c).map(|_| rng.uniform(-2.0, 2.0)).collect();
        let logits = Matrix::from_vec(b, c, data).unwrap();
        let mut grad = Matrix::default();
        let mut scores = Vec::new();
        loss_and_grad(kind, &logits, labels, weights, &mut grad, &mut scores).unwrap();
        let h = 1e-2f32;
        for i in 0..b * c {
            let mut plus = logits.clone();
            plus.as_mut_slice()[i] += h;
            let mut minus = logits.clone();
            minus.as_mut_slice()[i] -= h;
            let f = |m: &Matrix| {
                loss_and_grad(kind, m, labels, weights, &mut Matrix::default(), &mut Vec::new())
                    .unwrap()
                    .loss
            };
            let numeric = (f(&plus) - f(&minus)) / (2.0 * h);
            let analytic = grad.as_slice()[i];
            assert!(
                (numeric - analytic).abs() < 2e-3,
                "{kind:?} elem {i}: {analytic} vs {numeric}"
            );
        }
    }

    #[test]
    fn softmax_gradient_matches_finite_differences() {
        check_grad(LossKind::SoftmaxCrossEntropy, 2, &[0.0, 1.0, 1.0], None);
        check_grad(LossKind::SoftmaxCrossEntropy, 4, &[3.0, 0.0], Some(&[1.0, 0.5]));
    }

    #[test]
    fn sigmoid_gradient_matches_finite_differences() {
        check_grad(LossKind::SigmoidCrossEntropy, 1, &[0.0, 1.0, 0.3], None);
        check_grad(LossKind::SigmoidCrossEntropy, 1, &[1.0, 0.0], Some(&[0.0, 2.0]));
    }

    #[test]
    fn softmax_value_for_known_logits() {
        let logits = Matrix::from_vec(1, 2, vec![0.0, 0.0]).unwrap();
        let v = loss_and_grad(
            LossKind::SoftmaxCrossEntropy,
            &logits,
            &[1.0],
            None,
            &mut Matrix::default(),
            &mut Vec::new(),
        )
        .unwrap();
        assert!((v.loss - std::f32::consts::LN_2).abs() < 1e-6);
    }

    #[test]
    fn masked_examples_contribute_nothing() {
        let logits = Matrix::from_vec(2, 1, vec![3.0, -1.0]).unwrap();
        let mut g = Matrix::default();
        let v = loss_and_grad(
            LossKind::SigmoidCrossEntropy,
            &logits,
            &[0.0, 1.0],
            Some(&[0.0, 1.0]),
            &mut g,
            &mut Vec::new(),
        )
        .unwrap();
        assert_eq!(g.get(0, 0), 0.0);
        assert_eq!(v.weight_sum, 1.0);
        // Only example 1 counts, divided by B = 2.
        let l1 = (1.0f64 + 1.0f64.exp()).ln() / 2.0;
        assert!((f64::from(v.loss) - l1).abs() < 1e-6);
    }

    #[test]
    fn stable_for_huge_logits() {
        let logits = Matrix::from_vec(1, 2, vec![1000.0, -1000.0]).unwrap();
        let v = loss_and_grad(
            LossKind::SoftmaxCrossEntropy,
            &logits,
            &[1.0],
            None,
            &mut Matrix::default(),
            &mut Vec::new(),
        )
        .unwrap();
        assert!(v.loss.is_finite() && (v.loss - 2000.0).abs() < 1e-2);
    }

    #[test]
    fn rejects_bad_labels_naming_the_example() {
        let logits = Matrix::zeros(2, 2);
        let err = loss_and_grad(
            LossKind::SoftmaxCrossEntropy,
            &logits,
            &[0.0, 2.0],
            None,
            &mut Matrix::default(),
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("example 1"), "{err}");
        let logits = Matrix::zeros(1, 1);
        let err = loss_and_grad(
            LossKind::SigmoidCrossEntropy,
            &logits,
            &[1.5],
            None,
            &mut Matrix::default(),
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("label 1.5"), "{err}");
    }
}
