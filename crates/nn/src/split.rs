//! The split model: each party's tower, the leader's head, and the two
//! party models that drive them.
//!
//! The follower's tower turns its features into activations, which are sent
//! to the leader. The leader's head takes `concat(own tower output, follower
//! activations)`, computes the loss with the labels and returns the gradient
//! w.r.t. the follower's activations, which the follower applies to its
//! tower. Nothing else crosses the boundary.

use crate::NnError;
use crate::compute::Compute;
use crate::dense::{Dense, Update};
use crate::embedding::{EmbeddingBags, SparseBatch};
use crate::loss::{LossKind, LossValue, loss_and_grad};
use crate::optim::{Optimizer, ParamState};
use crate::spec::{LayerSpec, ModelSpec, Role};
use crate::tensor::Matrix;

/// A party's features for one batch.
#[derive(Clone, Copy, Debug)]
pub struct TowerInput<'a> {
    pub rows: usize,
    /// Sparse ids (required when the tower has sparse slots).
    pub sparse: Option<SparseBatch<'a>>,
    /// Dense features, `rows x dense columns` row-major (required when the
    /// tower has dense columns).
    pub dense: Option<&'a [f32]>,
}

/// A named tensor of model or optimizer state, for checkpoints and exports.
#[derive(Debug)]
pub struct TensorMut<'a> {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: &'a mut [f32],
}

fn build_layers(prefix: &str, inputs: usize, specs: &[LayerSpec], spec: &ModelSpec, opt: &Optimizer) -> Vec<Dense> {
    let mut layers = Vec::with_capacity(specs.len());
    let mut width = inputs;
    for (i, l) in specs.iter().enumerate() {
        layers.push(Dense::new(
            &format!("{prefix}/dense_{i}"),
            width,
            l.units,
            l.activation,
            l.bias,
            &spec.init,
            spec.seed,
            opt,
        ));
        width = l.units;
    }
    layers
}

fn layer_tensors<'a>(layers: &'a mut [Dense], out: &mut Vec<TensorMut<'a>>) {
    for l in layers {
        let (i, u, name) = (l.inputs(), l.units(), l.name().to_string());
        let has_bias = l.has_bias();
        let (w, b, sw, sb) = l.parts_mut();
        out.push(TensorMut {
            name: format!("{name}/w"),
            shape: vec![i, u],
            data: w,
        });
        if has_bias {
            out.push(TensorMut {
                name: format!("{name}/b"),
                shape: vec![u],
                data: b,
            });
        }
        state_tensors(&format!("{name}/w"), &[i, u], sw, out);
        if has_bias {
            state_tensors(&format!("{name}/b"), &[u], sb, out);
        }
    }
}

fn state_tensors<'a>(name: &str, shape: &[usize], st: &'a mut ParamState, out: &mut Vec<TensorMut<'a>>) {
    if !st.a.is_empty() {
        out.push(TensorMut {
            name: format!("{name}#opt_a"),
            shape: shape.to_vec(),
            data: &mut st.a,
        });
    }
    if !st.b.is_empty() {
        out.push(TensorMut {
            name: format!("{name}#opt_b"),
            shape: shape.to_vec(),
            data: &mut st.b,
        });
    }
}

/// Widest panel, in columns, in which the first layer hands its input
/// gradient to the embeddings: `rows x 256` floats (256 KiB at batch 256)
/// stay in L2 between the product that makes them and the table updates
/// that read them.
const PANEL_COLS: usize = 256;

/// Smallest input gradient worth handing over in panels: below it (2 MiB,
/// the L2 of our machines) the whole gradient stays in cache anyway and
/// the extra products cost more than they save.
const PANEL_MIN_DX_BYTES: usize = 2 << 20;

/// One party's tower: embeddings and dense columns, concatenated, then
/// dense layers.
#[derive(Debug)]
pub struct Tower {
    role: Role,
    emb: Option<EmbeddingBags>,
    dense_cols: usize,
    /// Column panels of the first layer's input (slot groups, then the
    /// dense columns) and the slots of each, for the backward pass.
    panels: Vec<std::ops::Range<usize>>,
    panel_slots: Vec<std::ops::Range<usize>>,
    /// Panel width chosen by [`Tower::set_backward_panel_cols`] (`None`:
    /// decided per pass, see [`Tower::backward`]).
    forced_panels: Option<usize>,
    input: Matrix,
    layers: Vec<Dense>,
    grad_a: Matrix,
    grad_b: Matrix,
}

impl Tower {
    pub fn new(spec: &ModelSpec, role: Role, opt: &Optimizer) -> Self {
        let t = spec.tower(role);
        let slots = t.slots();
        let emb =
            (!slots.is_empty()).then(|| EmbeddingBags::new(&format!("{role}/emb"), &slots, &spec.init, spec.seed, opt));
        let layers = build_layers(role.as_str(), t.input_dim(), &t.layers, spec, opt);
        let dense_cols = t.dense_columns().len();
        let (panels, panel_slots) = emb
            .as_ref()
            .map(|e| plan_panels(e, dense_cols, PANEL_COLS))
            .unwrap_or_default();
        Tower {
            role,
            emb,
            dense_cols,
            panels,
            panel_slots,
            forced_panels: None,
            input: Matrix::default(),
            layers,
            grad_a: Matrix::default(),
            grad_b: Matrix::default(),
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// Makes every backward pass hand the first layer's input gradient to
    /// the embeddings in panels of `cols` columns, or as one matrix for 0,
    /// instead of deciding per pass. The result is the same either way
    /// (bitwise for widths that are multiples of 16; otherwise the matrix
    /// kernel may sum in another order); the setting exists to measure the
    /// difference and to test both paths.
    pub fn set_backward_panel_cols(&mut self, cols: usize) {
        self.forced_panels = Some(cols);
        if let Some(emb) = &self.emb {
            (self.panels, self.panel_slots) = plan_panels(emb, self.dense_cols, cols.max(1));
        }
    }

    fn emb_cols(&self) -> usize {
        self.emb.as_ref().map_or(0, |e| e.out_cols())
    }

    pub fn input_dim(&self) -> usize {
        self.emb_cols() + self.dense_cols
    }

    pub fn output_dim(&self) -> usize {
        self.layers.last().map_or(self.input_dim(), |l| l.units())
    }

    pub fn embeddings(&self) -> Option<&EmbeddingBags> {
        self.emb.as_ref()
    }

    pub fn embeddings_mut(&mut self) -> Option<&mut EmbeddingBags> {
        self.emb.as_mut()
    }

    pub fn layers(&self) -> &[Dense] {
        &self.layers
    }

    pub fn layers_mut(&mut self) -> &mut [Dense] {
        &mut self.layers
    }

    /// Output of the last forward pass.
    pub fn output(&self) -> &Matrix {
        self.layers.last().map_or(&self.input, |l| l.output())
    }

    /// Forward pass; the result stays readable through [`Tower::output`].
    pub fn forward(&mut self, cx: &Compute, inp: &TowerInput<'_>) -> Result<&Matrix, NnError> {
        let rows = inp.rows;
        let emb_cols = self.emb_cols();
        self.input.resize(rows, emb_cols + self.dense_cols);
        match (&mut self.emb, &inp.sparse) {
            (Some(emb), Some(sp)) => {
                if sp.rows != rows {
                    return Err(NnError::Input(format!(
                        "sparse batch has {} rows, expected {rows}",
                        sp.rows
                    )));
                }
                emb.forward(cx, sp, &mut self.input, 0)?;
            }
            (Some(_), None) => return Err(NnError::Input(format!("{} tower needs sparse features", self.role))),
            (None, _) => {}
        }
        if self.dense_cols > 0 {
            let Some(d) = inp.dense else {
                return Err(NnError::Input(format!("{} tower needs dense features", self.role)));
            };
            if d.len() != rows * self.dense_cols {
                return Err(NnError::Shape {
                    what: format!("{} dense features", self.role),
                    expected: format!("{rows}x{}", self.dense_cols),
                    got: format!("{} values", d.len()),
                });
            }
            for r in 0..rows {
                self.input.row_mut(r)[emb_cols..].copy_from_slice(&d[r * self.dense_cols..(r + 1) * self.dense_cols]);
            }
        }
        for i in 0..self.layers.len() {
            let (before, rest) = self.layers.split_at_mut(i);
            let x = before.last().map_or(&self.input, |l| l.output());
            rest[0].forward(cx, x)?;
        }
        Ok(self.output())
    }

    /// Backward pass for the last forward pass on `inp`, given the gradient
    /// w.r.t. the tower's output.
    pub fn backward(
        &mut self,
        cx: &Compute,
        inp: &TowerInput<'_>,
        grad_out: &Matrix,
        update: Update<'_>,
    ) -> Result<(), NnError> {
        let want = (self.output().rows(), self.output_dim());
        if grad_out.shape() != want {
            return Err(NnError::Shape {
                what: format!("{} tower output gradient", self.role),
                expected: format!("{}x{}", want.0, want.1),
                got: format!("{}x{}", grad_out.rows(), grad_out.cols()),
            });
        }
        let mut upstream = std::mem::take(&mut self.grad_a);
        let mut down = std::mem::take(&mut self.grad_b);
        let n = self.layers.len();
        let has_emb = self.emb.is_some();
        // Panels pay on one thread when the input gradient would not stay
        // in L2 anyway. With more threads, the whole-matrix path splits each
        // product and the table updates across them better (see
        // BENCHMARKS.md for the measurements).
        let dx_bytes = grad_out.rows() * self.input_dim() * std::mem::size_of::<f32>();
        let panelled = has_emb
            && n > 0
            && match self.forced_panels {
                Some(cols) => cols > 0,
                None => cx.threads() == 1 && dx_bytes > PANEL_MIN_DX_BYTES,
            };
        // With panels, the first layer's backward pass goes with the
        // embeddings' (below); otherwise every layer's runs here.
        let first = usize::from(panelled);
        for i in (first..n).rev() {
            let (before, rest) = self.layers.split_at_mut(i);
            let x = before.last().map_or(&self.input, |l| l.output());
            let dy = if i + 1 == n { grad_out } else { &upstream };
            let need_dx = i > 0 || has_emb;
            rest[0].backward(cx, x, dy, need_dx.then_some(&mut down), update)?;
            std::mem::swap(&mut upstream, &mut down);
        }
        let dy = if first == n { grad_out } else { &upstream };
        let result = if panelled {
            // The first layer hands its input gradient over panel by panel,
            // each applied to its slots' tables while it is in cache.
            self.backward_first_panelled(cx, inp, dy, update)
        } else {
            match (&mut self.emb, &inp.sparse) {
                (Some(emb), Some(sp)) => emb.backward(cx, sp, dy, 0, update),
                (Some(_), None) => Err(NnError::Input(format!("{} tower needs sparse features", self.role))),
                (None, _) => Ok(()),
            }
        };
        self.grad_a = upstream;
        self.grad_b = down;
        result
    }

    fn backward_first_panelled(
        &mut self,
        cx: &Compute,
        inp: &TowerInput<'_>,
        dy: &Matrix,
        update: Update<'_>,
    ) -> Result<(), NnError> {
        let (Some(emb), Some(sp), Some(first)) = (self.emb.as_mut(), inp.sparse.as_ref(), self.layers.first_mut())
        else {
            return Err(NnError::Input(format!("{} tower needs sparse features", self.role)));
        };
        let batch = emb.check_batch(sp)?;
        let slots = &self.panel_slots;
        let take = |i: usize, dx: &Matrix| match slots.get(i) {
            Some(r) if !r.is_empty() => emb.backward_slots(cx, &batch, r.clone(), dx, 0, update),
            _ => Ok(()),
        };
        first.backward_dx_panels(cx, &self.input, dy, &self.panels, take, update)
    }

    /// Every tensor of weights and optimizer state, by stable name.
    pub fn tensors_mut(&mut self) -> Vec<TensorMut<'_>> {
        let mut out = Vec::new();
        if let Some(emb) = &mut self.emb {
            let name = emb.name().to_string();
            let len = emb.tables().len();
            let (tables, a, b) = emb.parts_mut();
            out.push(TensorMut {
                name: format!("{name}/tables"),
                shape: vec![len],
                data: tables,
            });
            if !a.is_empty() {
                out.push(TensorMut {
                    name: format!("{name}/tables#opt_a"),
                    shape: vec![len],
                    data: a,
                });
            }
            if !b.is_empty() {
                out.push(TensorMut {
                    name: format!("{name}/tables#opt_b"),
                    shape: vec![len],
                    data: b,
                });
            }
        }
        layer_tensors(&mut self.layers, &mut out);
        out
    }
}

/// Groups the slots into column panels of at most `width` columns (a wider
/// slot gets a panel of its own), then one panel for the dense columns;
/// returns the panels' columns and slots (empty for the dense panel).
fn plan_panels(
    emb: &EmbeddingBags,
    dense_cols: usize,
    width: usize,
) -> (Vec<std::ops::Range<usize>>, Vec<std::ops::Range<usize>>) {
    let (mut cols, mut slots) = (Vec::new(), Vec::new());
    let (mut s0, mut c0, mut c) = (0, 0, 0);
    for s in 0..emb.num_slots() {
        let dim = emb.slot_config(s).dim;
        if c > c0 && c + dim - c0 > width {
            cols.push(c0..c);
            slots.push(s0..s);
            (s0, c0) = (s, c);
        }
        c += dim;
    }
    if c > c0 {
        cols.push(c0..c);
        slots.push(s0..emb.num_slots());
    }
    if dense_cols > 0 {
        cols.push(c..c + dense_cols);
        slots.push(0..0);
    }
    (cols, slots)
}

/// The leader's head: layers over the concatenated tower outputs, and the
/// loss.
#[derive(Debug)]
pub struct Head {
    layers: Vec<Dense>,
    loss: LossKind,
    own_cols: usize,
    peer_cols: usize,
    concat: Matrix,
    dlogits: Matrix,
    grad_a: Matrix,
    grad_b: Matrix,
    grad_own: Matrix,
    grad_peer: Matrix,
    scores: Vec<f32>,
}

impl Head {
    pub fn new(spec: &ModelSpec, opt: &Optimizer) -> Self {
        let own_cols = spec.leader.output_dim();
        let peer_cols = spec.follower.output_dim();
        Head {
            layers: build_layers("head", own_cols + peer_cols, &spec.head.layers, spec, opt),
            loss: spec.head.loss,
            own_cols,
            peer_cols,
            concat: Matrix::default(),
            dlogits: Matrix::default(),
            grad_a: Matrix::default(),
            grad_b: Matrix::default(),
            grad_own: Matrix::default(),
            grad_peer: Matrix::default(),
            scores: Vec::new(),
        }
    }

    pub fn layers(&self) -> &[Dense] {
        &self.layers
    }

    pub fn layers_mut(&mut self) -> &mut [Dense] {
        &mut self.layers
    }

    /// Logits of the last forward pass.
    pub fn logits(&self) -> &Matrix {
        self.layers.last().map_or(&self.concat, |l| l.output())
    }

    /// Per-example scores (probability of class 1) of the last pass.
    pub fn scores(&self) -> &[f32] {
        &self.scores
    }

    /// Gradient w.r.t. the leader's own tower output (after a train step).
    pub fn grad_own(&self) -> &Matrix {
        &self.grad_own
    }

    /// Gradient w.r.t. the follower's activations (after a train step).
    pub fn grad_peer(&self) -> &Matrix {
        &self.grad_peer
    }

    /// Forward pass and loss; with `update`, also the backward pass, which
    /// leaves the input gradients in [`Head::grad_own`] and
    /// [`Head::grad_peer`].
    pub fn step(
        &mut self,
        cx: &Compute,
        own: &Matrix,
        peer: &Matrix,
        labels: &[f32],
        weights: Option<&[f32]>,
        update: Option<Update<'_>>,
    ) -> Result<LossValue, NnError> {
        if own.cols() != self.own_cols || peer.cols() != self.peer_cols || peer.rows() != own.rows() {
            return Err(NnError::Shape {
                what: "head input".into(),
                expected: format!(
                    "leader {}x{} and follower {}x{}",
                    own.rows(),
                    self.own_cols,
                    own.rows(),
                    self.peer_cols
                ),
                got: format!(
                    "leader {}x{} and follower {}x{}",
                    own.rows(),
                    own.cols(),
                    peer.rows(),
                    peer.cols()
                ),
            });
        }
        // Neither the position nor the value: both are about the peer's data.
        if peer.first_non_finite().is_some() {
            return Err(NnError::Input(
                "the follower's activations hold a non-finite value".into(),
            ));
        }
        Matrix::concat_cols_into(own, peer, &mut self.concat)?;
        for i in 0..self.layers.len() {
            let (before, rest) = self.layers.split_at_mut(i);
            let x = before.last().map_or(&self.concat, |l| l.output());
            rest[0].forward(cx, x)?;
        }
        let logits = self.layers.last().map_or(&self.concat, |l| l.output());
        let value = loss_and_grad(self.loss, logits, labels, weights, &mut self.dlogits, &mut self.scores)?;
        let Some(update) = update else { return Ok(value) };
        let mut upstream = std::mem::take(&mut self.grad_a);
        let mut down = std::mem::take(&mut self.grad_b);
        let n = self.layers.len();
        for i in (0..n).rev() {
            let (before, rest) = self.layers.split_at_mut(i);
            let x = before.last().map_or(&self.concat, |l| l.output());
            let dy = if i + 1 == n { &self.dlogits } else { &upstream };
            rest[0].backward(cx, x, dy, Some(&mut down), update)?;
            std::mem::swap(&mut upstream, &mut down);
        }
        let split = upstream.split_cols_into(self.own_cols, &mut self.grad_own, &mut self.grad_peer);
        self.grad_a = upstream;
        self.grad_b = down;
        split?;
        Ok(value)
    }

    pub fn tensors_mut(&mut self) -> Vec<TensorMut<'_>> {
        let mut out = Vec::new();
        layer_tensors(&mut self.layers, &mut out);
        out
    }
}

/// The leader's model: its tower (possibly empty), the head and the
/// optimizer.
#[derive(Debug)]
pub struct LeaderModel {
    pub tower: Tower,
    pub head: Head,
    pub opt: Optimizer,
}

impl LeaderModel {
    pub fn new(spec: &ModelSpec) -> Self {
        let opt = Optimizer::new(spec.optimizer.clone());
        LeaderModel {
            tower: Tower::new(spec, Role::Leader, &opt),
            head: Head::new(spec, &opt),
            opt,
        }
    }

    /// One training step on the leader's side: forward its tower, run the
    /// head with the follower's activations, update everything, and return
    /// the loss. The gradient for the follower is then in
    /// [`LeaderModel::grad_for_follower`].
    pub fn train_step(
        &mut self,
        cx: &Compute,
        inp: &TowerInput<'_>,
        follower_act: &Matrix,
        labels: &[f32],
        weights: Option<&[f32]>,
    ) -> Result<LossValue, NnError> {
        self.opt.begin_step();
        self.tower.forward(cx, inp)?;
        let value = self.head.step(
            cx,
            self.tower.output(),
            follower_act,
            labels,
            weights,
            Some(Update::Apply(&self.opt)),
        )?;
        self.tower
            .backward(cx, inp, self.head.grad_own(), Update::Apply(&self.opt))?;
        Ok(value)
    }

    /// [`LeaderModel::train_step`] without the optimizer: the parameter
    /// gradients are collected (readable through [`Replica`]) for whoever
    /// applies them (the parameter shards of a sharded run); the weights
    /// and the optimizer's state and step are left as they were.
    pub fn collect_step(
        &mut self,
        cx: &Compute,
        inp: &TowerInput<'_>,
        follower_act: &Matrix,
        labels: &[f32],
        weights: Option<&[f32]>,
    ) -> Result<LossValue, NnError> {
        self.tower.forward(cx, inp)?;
        let value = self.head.step(
            cx,
            self.tower.output(),
            follower_act,
            labels,
            weights,
            Some(Update::Collect),
        )?;
        self.tower.backward(cx, inp, self.head.grad_own(), Update::Collect)?;
        Ok(value)
    }

    /// Forward only (evaluation): the loss; scores in `head.scores()`.
    pub fn eval_step(
        &mut self,
        cx: &Compute,
        inp: &TowerInput<'_>,
        follower_act: &Matrix,
        labels: &[f32],
        weights: Option<&[f32]>,
    ) -> Result<LossValue, NnError> {
        self.tower.forward(cx, inp)?;
        self.head
            .step(cx, self.tower.output(), follower_act, labels, weights, None)
    }

    pub fn grad_for_follower(&self) -> &Matrix {
        self.head.grad_peer()
    }

    pub fn tensors_mut(&mut self) -> Vec<TensorMut<'_>> {
        let mut t = self.tower.tensors_mut();
        t.extend(self.head.tensors_mut());
        t
    }
}

/// The follower's model: its tower and the optimizer.
#[derive(Debug)]
pub struct FollowerModel {
    pub tower: Tower,
    pub opt: Optimizer,
}

impl FollowerModel {
    pub fn new(spec: &ModelSpec) -> Self {
        let opt = Optimizer::new(spec.optimizer.clone());
        FollowerModel {
            tower: Tower::new(spec, Role::Follower, &opt),
            opt,
        }
    }

    /// Forward pass: the activations to send to the leader.
    pub fn forward(&mut self, cx: &Compute, inp: &TowerInput<'_>) -> Result<&Matrix, NnError> {
        self.tower.forward(cx, inp)
    }

    /// Applies the leader's gradient for the activations of the last
    /// forward pass.
    pub fn backward(&mut self, cx: &Compute, inp: &TowerInput<'_>, grad: &Matrix) -> Result<(), NnError> {
        // Neither the position nor the value: which row went non-finite (and
        // how) says something about that row's label.
        if grad.first_non_finite().is_some() {
            return Err(NnError::Input("the leader's gradient holds a non-finite value".into()));
        }
        self.opt.begin_step();
        self.tower.backward(cx, inp, grad, Update::Apply(&self.opt))
    }

    /// [`FollowerModel::backward`] without the optimizer: the gradients
    /// are collected (see [`LeaderModel::collect_step`]).
    pub fn backward_collect(&mut self, cx: &Compute, inp: &TowerInput<'_>, grad: &Matrix) -> Result<(), NnError> {
        if grad.first_non_finite().is_some() {
            return Err(NnError::Input("the leader's gradient holds a non-finite value".into()));
        }
        self.tower.backward(cx, inp, grad, Update::Collect)
    }

    pub fn tensors_mut(&mut self) -> Vec<TensorMut<'_>> {
        self.tower.tensors_mut()
    }
}

/// A party's trainable parameters as a sharded run addresses them: dense
/// tensors by index (layer `l`'s weights at `2l`, its bias at `2l + 1`,
/// counting the tower's layers, then the head's), embedding rows by slot
/// and row.
pub trait Replica {
    /// The dense layers, tower first, then (leader) the head.
    fn dense_layers(&self) -> Vec<&Dense>;
    fn dense_layers_mut(&mut self) -> Vec<&mut Dense>;
    fn embeddings(&self) -> Option<&EmbeddingBags>;
    fn embeddings_mut(&mut self) -> Option<&mut EmbeddingBags>;
}

impl Replica for LeaderModel {
    fn dense_layers(&self) -> Vec<&Dense> {
        self.tower.layers().iter().chain(self.head.layers()).collect()
    }
    fn dense_layers_mut(&mut self) -> Vec<&mut Dense> {
        self.tower
            .layers
            .iter_mut()
            .chain(self.head.layers.iter_mut())
            .collect()
    }
    fn embeddings(&self) -> Option<&EmbeddingBags> {
        self.tower.embeddings()
    }
    fn embeddings_mut(&mut self) -> Option<&mut EmbeddingBags> {
        self.tower.embeddings_mut()
    }
}

impl Replica for FollowerModel {
    fn dense_layers(&self) -> Vec<&Dense> {
        self.tower.layers().iter().collect()
    }
    fn dense_layers_mut(&mut self) -> Vec<&mut Dense> {
        self.tower.layers.iter_mut().collect()
    }
    fn embeddings(&self) -> Option<&EmbeddingBags> {
        self.tower.embeddings()
    }
    fn embeddings_mut(&mut self) -> Option<&mut EmbeddingBags> {
        self.tower.embeddings_mut()
    }
}
