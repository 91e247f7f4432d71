//! The worker's side of a sharded step: its collected gradients split by
//! owning shard, and the shards' new values written into its replica.

use vfl_nn::Replica;

use super::{Contribution, Params, Placement, ShardError};

/// The gradients of the replica's last collected step (see
/// [`vfl_nn::LeaderModel::collect_step`]), one contribution per shard, over
/// `examples` examples. Dense tensors come in index order, rows in the
/// order the batch first touched them.
pub fn contributions(model: &dyn Replica, placement: &Placement, examples: u32) -> Vec<Contribution> {
    let mut out: Vec<Contribution> = (0..placement.shards())
        .map(|_| Contribution {
            examples,
            grads: Params::default(),
        })
        .collect();
    for (l, layer) in model.dense_layers().into_iter().enumerate() {
        let mut tensors = vec![(2 * l, layer.weight_grad())];
        if layer.has_bias() {
            tensors.push((2 * l + 1, layer.bias_grad()));
        }
        for (i, g) in tensors {
            out[placement.dense(i)].grads.dense.push((i as u32, g.to_vec()));
        }
    }
    if let Some(emb) = model.embeddings() {
        for (s, r, g) in emb.touched_grads() {
            let c = &mut out[placement.row(s, r)].grads;
            c.rows.push((s as u32, r));
            c.values.extend_from_slice(g);
        }
    }
    out
}

/// Writes a shard's new values into the replica of worker `worker`.
pub fn apply(model: &mut dyn Replica, worker: usize, changes: &Params) -> Result<(), ShardError> {
    let missing = |what: String| ShardError::NoSuchParam { worker, what };
    let mut layers = model.dense_layers_mut();
    for (i, v) in &changes.dense {
        let layer = layers
            .get_mut(*i as usize / 2)
            .ok_or_else(|| missing(format!("dense tensor {i}")))?;
        let dst = if i % 2 == 0 {
            layer.weights_mut()
        } else {
            layer.bias_mut()
        };
        if dst.len() != v.len() {
            return Err(missing(format!("dense tensor {i} of {} values", v.len())));
        }
        dst.copy_from_slice(v);
    }
    drop(layers);
    if changes.rows.is_empty() {
        return Ok(());
    }
    let emb = model.embeddings_mut().ok_or_else(|| missing("embedding rows".into()))?;
    let mut at = 0;
    for &(s, r) in &changes.rows {
        let row = emb
            .row_mut(s as usize, r)
            .ok_or_else(|| missing(format!("slot {s} row {r}")))?;
        let dim = row.len();
        let v = changes
            .values
            .get(at..at + dim)
            .ok_or_else(|| missing(format!("slot {s} row {r} (values end early)")))?;
        row.copy_from_slice(v);
        at += dim;
    }
    if at != changes.values.len() {
        return Err(missing(format!("{} values beyond the rows", changes.values.len() - at)));
    }
    Ok(())
}

/// SHA-256 of a replica's parameters (embedding tables, then every dense
/// layer's weights and bias, as little-endian f32 bits): equal digests are
/// bitwise-equal models, and the digest says nothing about the values.
pub fn digest(model: &dyn Replica) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut put = |v: &[f32]| {
        for x in v {
            h.update(x.to_le_bytes());
        }
    };
    if let Some(e) = model.embeddings() {
        put(e.tables());
    }
    for layer in model.dense_layers() {
        put(layer.weights());
        put(layer.bias());
    }
    hex::encode(h.finalize())
}
