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
    pub fn weight_state_mut(&mut self) -> &mut ParamState {
        &mut self.sw
    }
    pub fn bias_state_mut(&mut self) -> &mut ParamState {
        &mut self.sb
    }
    pub fn weight_state(&self) -> &ParamState {
        &self.sw
    }
    pub fn bias_state(&self) -> &ParamState {
        &self.sb
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
        if self.has_bias {
            for r in 0..rows {
                self.out.row_mut(r).iter_mut().zip(&self.b).for_each(|(o, b)| *o += b);
            }
        }
        self.act.apply(self.out.as_mut_slice());
        Ok(&self.out)
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
        if dy.shape() != self.out.shape() || x.rows() != dy.rows() || x.cols() != self.inputs {
            return Err(NnError::Shape {
                what: format!("gradient of layer {}", self.name),
                expected: format!(
                    "{}x{} (input {}x{})",
                    self.out.rows(),
                    self.units,
                    self.out.rows(),
                    self.inputs
                ),
                got: format!("{}x{} (input {}x{})", dy.rows(), dy.cols(), x.rows(), x.cols()),
            });
        }
        self.dz.resize(dy.rows(), dy.cols());
        self.dz.as_mut_slice().copy_from_slice(dy.as_slice());
        self.act.backprop(self.out.as_slice(), self.dz.as_mut_slice());
        let dz = Operand::of(&self.dz);
        let w = Operand::new(&self.w, self.inputs, self.units);
        // dx = dz W^T, computed with the weights of the forward pass.
        if let Some(dx) = dx {
            dx.resize(x.rows(), self.inputs);
            gemm(cx, dx.as_mut_slice(), dz, w.t(), Accumulate::Overwrite, 1.0)?;
        }
        if self.has_bias {
            self.gb.fill(0.0);
            for r in 0..self.dz.rows() {
                self.gb.iter_mut().zip(self.dz.row(r)).for_each(|(g, d)| *g += d);
            }
        }
        let xt = Operand::of(x).t();
        match update {
            Update::Apply(opt) if opt.sgd_rate().is_some() => {
                let lr = opt.sgd_rate().unwrap_or_default();
                // Fused SGD: W += (-lr) * x^T dz, no gradient buffer.
                gemm(cx, &mut self.w, xt, dz, Accumulate::Add, -lr)?;
                opt.apply_param(&mut self.b, &self.gb, &mut self.sb);
            }
            _ => {
                self.gw.resize(self.w.len(), 0.0);
                gemm(cx, &mut self.gw, xt, dz, Accumulate::Overwrite, 1.0)?;
                if let Update::Apply(opt) = update {
                    apply_parallel(cx, opt, &mut self.w, &self.gw, &mut self.sw);
                    opt.apply_param(&mut self.b, &self.gb, &mut self.sb);
                }
            }
        }
        Ok(())
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
