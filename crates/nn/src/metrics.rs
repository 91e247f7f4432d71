//! Binary classification metrics, streamed over many batches: exact AUC
//! (ties count one half), log loss and the Kolmogorov-Smirnov statistic.
//!
//! Exact AUC and KS need every (score, label) pair; they are kept in memory
//! (8 bytes per example) and sorted once when the metrics are read.

/// Metrics read from a [`BinaryMetrics`] accumulator.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct MetricValues {
    pub count: u64,
    pub positives: u64,
    /// `None` when only one class has been seen.
    pub auc: Option<f64>,
    pub log_loss: f64,
    /// `None` when only one class has been seen.
    pub ks: Option<f64>,
}

/// Accumulates scores (probabilities of the positive class) and labels.
#[derive(Clone, Debug, Default)]
pub struct BinaryMetrics {
    pairs: Vec<(f32, bool)>,
    log_loss_sum: f64,
}

impl BinaryMetrics {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    pub fn clear(&mut self) {
        self.pairs.clear();
        self.log_loss_sum = 0.0;
    }

    /// Adds a batch. Labels >= 0.5 are positive; examples whose weight is 0
    /// (masked out) are skipped.
    pub fn update(&mut self, scores: &[f32], labels: &[f32], weights: Option<&[f32]>) {
        for (i, (&p, &y)) in scores.iter().zip(labels).enumerate() {
            if weights.is_some_and(|w| w[i] == 0.0) {
                continue;
            }
            let pos = y >= 0.5;
            let pc = f64::from(p).clamp(1e-7, 1.0 - 1e-7);
            self.log_loss_sum -= if pos { pc.ln() } else { (1.0 - pc).ln() };
            self.pairs.push((p, pos));
        }
    }

    /// Computes the metrics (sorts a copy of the pairs: O(n log n)).
    pub fn values(&self) -> MetricValues {
        let mut pairs = self.pairs.clone();
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let n = pairs.len() as u64;
        let p = pairs.iter().filter(|x| x.1).count() as u64;
        let neg = n - p;
        let log_loss = if n == 0 { 0.0 } else { self.log_loss_sum / n as f64 };
        if p == 0 || neg == 0 {
            return MetricValues {
                count: n,
                positives: p,
                auc: None,
                log_loss,
                ks: None,
            };
        }
        // Walk groups of equal score from the lowest up.
        let (mut neg_below, mut pos_below) = (0u64, 0u64);
        let mut auc_num = 0.0f64;
        let mut ks = 0.0f64;
        let mut i = 0;
        while i < pairs.len() {
            let mut j = i;
            let (mut gp, mut gn) = (0u64, 0u64);
            while j < pairs.len() && pairs[j].0.total_cmp(&pairs[i].0).is_eq() {
                if pairs[j].1 {
                    gp += 1
                } else {
                    gn += 1
                }
                j += 1;
            }
            auc_num += gp as f64 * (neg_below as f64 + 0.5 * gn as f64);
            neg_below += gn;
            pos_below += gp;
            // Threshold just above this group: CDFs of both classes.
            let d = (neg_below as f64 / neg as f64 - pos_below as f64 / p as f64).abs();
            ks = ks.max(d);
            i = j;
        }
        MetricValues {
            count: n,
            positives: p,
            auc: Some(auc_num / (p as f64 * neg as f64)),
            log_loss,
            ks: Some(ks),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// O(n^2) definition of AUC: P(score_pos > score_neg) + 0.5 P(equal).
    fn brute_auc(s: &[f32], y: &[f32]) -> f64 {
        let (mut num, mut den) = (0.0, 0.0);
        for i in 0..s.len() {
            for j in 0..s.len() {
                if y[i] == 1.0 && y[j] == 0.0 {
                    den += 1.0;
                    num += if s[i] > s[j] {
                        1.0
                    } else if s[i] == s[j] {
                        0.5
                    } else {
                        0.0
                    };
                }
            }
        }
        num / den
    }

    #[test]
    fn auc_matches_definition_with_ties() {
        let s = [0.1, 0.4, 0.4, 0.35, 0.8, 0.8, 0.8, 0.2];
        let y = [0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0];
        let mut m = BinaryMetrics::new();
        m.update(&s[..3], &y[..3], None);
        m.update(&s[3..], &y[3..], None);
        let v = m.values();
        assert!((v.auc.unwrap() - brute_auc(&s, &y)).abs() < 1e-12);
        assert_eq!(v.count, 8);
        assert_eq!(v.positives, 4);
    }

    #[test]
    fn perfect_and_inverted_and_constant_scores() {
        let y = [0.0, 0.0, 1.0, 1.0];
        let mut m = BinaryMetrics::new();
        m.update(&[0.1, 0.2, 0.8, 0.9], &y, None);
        assert_eq!(m.values().auc, Some(1.0));
        assert_eq!(m.values().ks, Some(1.0));
        let mut m = BinaryMetrics::new();
        m.update(&[0.9, 0.8, 0.2, 0.1], &y, None);
        assert_eq!(m.values().auc, Some(0.0));
        let mut m = BinaryMetrics::new();
        m.update(&[0.5; 4], &y, None);
        assert_eq!(m.values().auc, Some(0.5));
        assert_eq!(m.values().ks, Some(0.0));
    }

    #[test]
    fn ks_is_max_cdf_gap() {
        // Negatives at 0.1, 0.3; positives at 0.2, 0.4: best threshold after
        // 0.1 separates 1/2 of negatives and 0 positives -> 0.5.
        let mut m = BinaryMetrics::new();
        m.update(&[0.1, 0.3, 0.2, 0.4], &[0.0, 0.0, 1.0, 1.0], None);
        assert!((m.values().ks.unwrap() - 0.5).abs() < 1e-12);
    }

    #[test]
    fn log_loss_and_single_class() {
        let mut m = BinaryMetrics::new();
        m.update(&[0.5, 0.5], &[1.0, 1.0], None);
        let v = m.values();
        assert!((v.log_loss - std::f64::consts::LN_2).abs() < 1e-9);
        assert_eq!(v.auc, None);
        assert_eq!(v.ks, None);
    }

    #[test]
    fn masked_examples_are_skipped() {
        let mut m = BinaryMetrics::new();
        m.update(&[0.9, 0.1, 0.95], &[0.0, 1.0, 1.0], Some(&[0.0, 1.0, 1.0]));
        assert_eq!(m.len(), 2);
        assert_eq!(m.values().auc, None);
    }
}
