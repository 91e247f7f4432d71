//! Fully connected layer `y = act(x W + b)`.

use crate::NnError;
use crate::activation::Activation;
use crate::compute::{Accumulate, Compute, Operand, gemm};
use crate::init::InitSpec;
use crate::optim::{Optimizer, ParamState};
use crate::tensor::Matrix;

/// What a backward pass does with the parameter gradients.
#[derive(Clone, Copy, Debug)]
pub enum Update<'a> {
    /// Apply them with the optimizer (SGD is fused into the product).
    Apply(&'a Optimizer),
    /// Only store them (readable through the layer's gradient accessors);
    /// used by gradient checks and by callers that post-process gradients.
    Collect,
}

/// A dense layer with its parameters, gradients, optimizer state and the
/// activations of the last forward pass.
#[derive(Clone, Debug)]
pub struct Dense {
    name: String,
    inputs: usize,
    units: usize,
    act: Activation,
    has_bias: bool,
    w: Vec<f32>,
    b: Vec<f32>,
    gw: Vec<f32>,
    gb: Vec<f32>,
    sw: ParamState,
    sb: ParamState,
    out: Matrix,
    dz: Matrix,
    /// One panel of the input gradient ([`Dense::backward_dx_panels`]).
    panel_dx: Matrix,
}

impl Dense {
    /// A layer mapping `inputs` to `units`, weights drawn by `init` from a
    /// stream named after the layer, zero biases.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        inputs: usize,
        units: usize,
        act: Activation,
        has_bias: bool,
        init: &InitSpec,
        seed: u64,
        opt: &Optimizer,
    ) -> Self {
        let mut w = vec![0.0; inputs * units];
        init.fill(seed, &format!("{name}/w"), inputs, units, &mut w);
        let nb = if has_bias { units } else { 0 };
        Dense {
            name: name.to_string(),
            inputs,
            units,
            act,
            has_bias,
            sw: opt.new_state(w.len()),
            sb: opt.new_state(nb),
            gw: Vec::new(),
            gb: vec![0.0; nb],
            b: vec![0.0; nb],
            w,
            out: Matrix::default(),
            dz: Matrix::default(),
            panel_dx: Matrix::default(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn inputs(&self) -> usize {
        self.inputs
    }
    pub fn units(&self) -> usize {
        self.units
    }
    pub fn activation(&self) -> Activation {
        self.act
    }
    pub fn has_bias(&self) -> bool {
        self.has_bias
    }
    /// Weights, `inputs x units` row-major.
    pub fn weights(&self) -> &[f32] {
        &self.w
    }
    pub fn weights_mut(&mut self) -> &mut [f32] {
        &mut self.w
    }
    pub fn bias(&self) -> &[f32] {
        &self.b
    }
    pub fn bias_mut(&mut self) -> &mut [f32] {
        &mut self.b
    }
    /// Weight gradient of the last `Update::Collect` backward pass.
    pub fn weight_grad(&self) -> &[f32] {
        &self.gw
    }
    pub fn bias_grad(&self) -> &[f32] {
        &self.gb
    }
    /// Weights, bias and their optimizer states, mutably (checkpoints).
    pub fn parts_mut(&mut self) -> (&mut Vec<f32>, &mut Vec<f32>, &mut ParamState, &mut ParamState) {
        (&mut self.w, &mut self.b, &mut self.sw, &mut self.sb)
    }
    /// Output of the last forward pass.
    pub fn output(&self) -> &Matrix {
        &self.out
    }

    /// Forward pass; the output is kept for the backward pass.
    pub fn forward(&mut self, cx: &Compute, x: &Matrix) -> Result<&Matrix, NnError> {
        if x.cols() != self.inputs {
            return Err(NnError::Shape {
                what: format!("input of layer {}", self.name),
                expected: format!("{} columns", self.inputs),
                got: format!("{} columns", x.cols()),
            });
        }
        let rows = x.rows();
        self.out.resize(rows, self.units);
        let w = Operand::new(&self.w, self.inputs, self.units);
        gemm(
            cx,
            self.out.as_mut_slice(),
            Operand::of(x),
            w,
            Accumulate::Overwrite,
            1.0,
        )?;
        self.finish_forward();
        Ok(&self.out)
    }

    /// Bias and activation on the product in `out`.
    fn finish_forward(&mut self) {
        if self.has_bias {
            for r in 0..self.out.rows() {
                self.out.row_mut(r).iter_mut().zip(&self.b).for_each(|(o, b)| *o += b);
            }
        }
        self.act.apply(self.out.as_mut_slice());
    }

    /// Backward pass for the forward pass on `x`, given `dy`, the gradient
    /// of the loss w.r.t. this layer's output. Writes the gradient w.r.t. `x`
    /// into `dx` when asked, then updates or collects the parameter
    /// gradients.
    pub fn backward(
        &mut self,
        cx: &Compute,
        x: &Matrix,
        dy: &Matrix,
        dx: Option<&mut Matrix>,
        update: Update<'_>,
    ) -> Result<(), NnError> {
        self.check_backward(x, dy)?;
        self.prepare_dz(dy);
        let dz = Operand::of(&self.dz);
        let w = Operand::new(&self.w, self.inputs, self.units);
        // dx = dz W^T, computed with the weights of the forward pass.
        if let Some(dx) = dx {
            dx.resize(x.rows(), self.inputs);
            gemm(cx, dx.as_mut_slice(), dz, w.t(), Accumulate::Overwrite, 1.0)?;
        }
        self.weight_step(cx, Operand::of(x).t(), 0..self.inputs, update)?;
        self.finish_step(cx, update);
        Ok(())
    }

    /// [`Dense::backward`] handing the input gradient over in column panels
    /// instead of as one matrix: for each panel of consecutive input
    /// columns, `take(i, dx)` receives `dx[:, panels[i]]` (computed with the
    /// weights of the forward pass) while it is still in cache. The panels
    /// must cover the inputs in order.
    pub fn backward_dx_panels(
        &mut self,
        cx: &Compute,
        x: &Matrix,
        dy: &Matrix,
        panels: &[std::ops::Range<usize>],
        mut take: impl FnMut(usize, &Matrix) -> Result<(), NnError>,
        update: Update<'_>,
    ) -> Result<(), NnError> {
        self.check_backward(x, dy)?;
        let mut next = 0;
        for p in panels {
            if p.start != next || p.end < p.start {
                break;
            }
            next = p.end;
        }
        if next != self.inputs || panels.iter().any(|p| p.end < p.start) {
            return Err(NnError::Shape {
                what: format!("input panels of layer {}", self.name),
                expected: format!("consecutive column ranges covering 0..{}", self.inputs),
                got: format!("{panels:?}"),
            });
        }
        self.prepare_dz(dy);
        let mut dx = std::mem::take(&mut self.panel_dx);
        let result = (|| {
            for (i, p) in panels.iter().enumerate() {
                let w = &self.w[p.start * self.units..p.end * self.units];
                let wt = Operand::new(w, p.len(), self.units).t();
                dx.resize(x.rows(), p.len());
                gemm(
                    cx,
                    dx.as_mut_slice(),
                    Operand::of(&self.dz),
                    wt,
                    Accumulate::Overwrite,
                    1.0,
                )?;
                take(i, &dx)?;
            }
            Ok(())
        })();
        self.panel_dx = dx;
        result?;
        self.weight_step(cx, Operand::of(x).t(), 0..self.inputs, update)?;
        self.finish_step(cx, update);
        Ok(())
    }

    fn check_backward(&self, x: &Matrix, dy: &Matrix) -> Result<(), NnError> {
        if dy.shape() != self.out.shape() || x.rows() != dy.rows() || x.cols() != self.inputs {
            Err(NnError::Shape {
                what: format!("gradient of layer {}", self.name),
                expected: format!(
                    "{}x{} (input {}x{})",
                    self.out.rows(),
                    self.units,
                    self.out.rows(),
                    self.inputs
                ),
                got: format!("{}x{} (input {}x{})", dy.rows(), dy.cols(), x.rows(), x.cols()),
            })
        } else {
            Ok(())
        }
    }

    /// `dz`: the gradient `dy` through the activation; the bias gradient.
    fn prepare_dz(&mut self, dy: &Matrix) {
        self.dz.resize(dy.rows(), dy.cols());
        self.dz.as_mut_slice().copy_from_slice(dy.as_slice());
        self.act.backprop(self.out.as_slice(), self.dz.as_mut_slice());
        if self.has_bias {
            self.gb.fill(0.0);
            for r in 0..self.dz.rows() {
                self.gb.iter_mut().zip(self.dz.row(r)).for_each(|(g, d)| *g += d);
            }
        }
    }

    /// The weight rows `cols` given their input `xt` (transposed,
    /// `cols.len() x rows`): fused SGD, or the gradient into `gw`.
    fn weight_step(
        &mut self,
        cx: &Compute,
        xt: Operand<'_>,
        cols: std::ops::Range<usize>,
        update: Update<'_>,
    ) -> Result<(), NnError> {
        let (lo, hi) = (cols.start * self.units, cols.end * self.units);
        let dz = Operand::of(&self.dz);
        match update {
            Update::Apply(opt) if opt.sgd_rate().is_some() => {
                let lr = opt.sgd_rate().unwrap_or_default();
                // Fused SGD: W += (-lr) * x^T dz, no gradient buffer.
                gemm(cx, &mut self.w[lo..hi], xt, dz, Accumulate::Add, -lr)
            }
            _ => {
                self.gw.resize(self.w.len(), 0.0);
                gemm(cx, &mut self.gw[lo..hi], xt, dz, Accumulate::Overwrite, 1.0)
            }
        }
    }

    /// After every weight row was handled: the optimizer step for the
    /// collected weight gradient (non-SGD) and for the bias.
    fn finish_step(&mut self, cx: &Compute, update: Update<'_>) {
        let Update::Apply(opt) = update else { return };
        if opt.sgd_rate().is_none() {
            apply_parallel(cx, opt, &mut self.w, &self.gw, &mut self.sw);
        }
        opt.apply_param(&mut self.b, &self.gb, &mut self.sb);
    }
}

/// [`Optimizer::apply_param`] split into one contiguous chunk per thread
/// (element-wise updates: the result does not depend on the split).
fn apply_parallel(cx: &Compute, opt: &Optimizer, w: &mut [f32], g: &[f32], st: &mut ParamState) {
    let n = w.len();
    let chunk = n.div_ceil(cx.threads()).max(4096);
    let mut a_chunks = st.a.chunks_mut(chunk);
    let mut b_chunks = st.b.chunks_mut(chunk);
    let parts: Vec<_> = w
        .chunks_mut(chunk)
        .zip(g.chunks(chunk))
        .map(|(w, g)| {
            (
                w,
                g,
                a_chunks.next().unwrap_or_default(),
                b_chunks.next().unwrap_or_default(),
            )
        })
        .collect();
    cx.for_each_part(parts, |(w, g, a, b)| opt.apply(w, g, a, b));
}
