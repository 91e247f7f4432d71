//! Sparse embedding bags: one table `[vocab, dim]` per slot; each example has
//! zero or more ids per slot, combined by mean, sum or sqrt-n.
//!
//! Backward passes touch only the rows that appear in the batch: the cost of
//! a step is O(ids in the batch), never O(table size). Work is split across
//! threads by example (forward) and by slot (backward), and each row receives
//! its updates in example order whatever the thread count, so results do not
//! depend on the number of threads.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::NnError;
use crate::aligned::AlignedVec;
use crate::compute::Compute;
use crate::dense::Update;
use crate::init::InitSpec;
use crate::optim::Optimizer;
use crate::tensor::Matrix;

/// How the embeddings of several ids in one slot are combined.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Combiner {
    #[default]
    Mean,
    Sum,
    /// Sum divided by the square root of the number of ids.
    Sqrtn,
}

/// What to do with an id outside `[0, vocab)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutOfRange {
    /// Refuse the batch with an error naming slot, example and id.
    #[default]
    Error,
    /// Hash the id into the table (any i64 is accepted).
    Hash,
}

/// One slot's table shape and behaviour.
#[derive(Clone, Debug, PartialEq)]
pub struct SlotConfig {
    pub name: String,
    pub vocab: usize,
    pub dim: usize,
    pub combiner: Combiner,
    pub out_of_range: OutOfRange,
}

/// Ids of a batch, example-major: the ids of example `b`, slot `s` are
/// `ids[offsets[b * slots + s] .. offsets[b * slots + s + 1]]`.
#[derive(Clone, Copy, Debug)]
pub struct SparseBatch<'a> {
    pub rows: usize,
    pub slots: usize,
    pub ids: &'a [i64],
    pub offsets: &'a [u32],
}

impl SparseBatch<'_> {
    fn check(&self) -> Result<(), NnError> {
        let want = self.rows * self.slots + 1;
        if self.offsets.len() != want {
            return Err(NnError::Input(format!(
                "sparse batch has {} offsets, expected rows*slots+1 = {want}",
                self.offsets.len()
            )));
        }
        // Branch-free over the whole array (it vectorizes); the position
        // is looked for only when something is wrong.
        let (head, tail) = (&self.offsets[..want - 1], &self.offsets[1..]);
        let decreasing = head.iter().zip(tail).fold(false, |d, (a, b)| d | (a > b));
        if self.offsets[0] != 0 || decreasing {
            let at = head.iter().zip(tail).position(|(a, b)| a > b).unwrap_or(0);
            let slots = self.slots.max(1);
            return Err(NnError::Input(format!(
                "sparse batch offsets are not non-decreasing from 0 (at example {}, slot {})",
                at / slots,
                at % slots
            )));
        }
        if self.offsets[want - 1] as usize != self.ids.len() {
            return Err(NnError::Input(format!(
                "sparse batch offsets end at {} but there are {} ids",
                self.offsets[want - 1],
                self.ids.len()
            )));
        }
        Ok(())
    }
}

/// A [`SparseBatch`] whose offsets were checked (by
/// [`EmbeddingBags::check_batch`]): every slot's ids lie inside `ids`.
#[derive(Clone, Copy, Debug)]
pub struct CheckedBatch<'a> {
    batch: SparseBatch<'a>,
}

#[derive(Clone, Debug)]
struct Slot {
    cfg: SlotConfig,
    /// First element of the slot's table in `tables`.
    elem_off: usize,
    /// First row of the slot's table, counting rows of all tables.
    row_off: usize,
    /// First output column.
    col_off: usize,
}

/// All embedding tables of one party's tower.
#[derive(Clone, Debug)]
pub struct EmbeddingBags {
    name: String,
    slots: Vec<Slot>,
    tables: AlignedVec,
    state_a: AlignedVec,
    state_b: AlignedVec,
    out_cols: usize,
    total_rows: usize,
    /// Table rows resolved during the last forward pass (parallel to ids).
    resolved: Vec<u32>,
    /// Gradient accumulators (allocated on first non-SGD or collect pass).
    acc: AlignedVec,
    stamp: Vec<u32>,
    generation: u32,
    /// Per slot: rows touched by the last backward pass (local row index).
    touched: Vec<Vec<u32>>,
}

impl EmbeddingBags {
    pub fn new(name: &str, slots: &[SlotConfig], init: &InitSpec, seed: u64, opt: &Optimizer) -> Self {
        let mut out = Vec::with_capacity(slots.len());
        let (mut elem, mut row, mut col) = (0, 0, 0);
        for cfg in slots {
            out.push(Slot {
                cfg: cfg.clone(),
                elem_off: elem,
                row_off: row,
                col_off: col,
            });
            elem += cfg.vocab * cfg.dim;
            row += cfg.vocab;
            col += cfg.dim;
        }
        let mut tables = AlignedVec::zeros(elem);
        for s in &out {
            let t = &mut tables.as_mut_slice()[s.elem_off..s.elem_off + s.cfg.vocab * s.cfg.dim];
            init.fill(seed, &format!("{name}/{}", s.cfg.name), s.cfg.vocab, s.cfg.dim, t);
        }
        let st = opt.new_state(elem);
        EmbeddingBags {
            name: name.to_string(),
            touched: vec![Vec::new(); out.len()],
            slots: out,
            tables,
            state_a: AlignedVec::from_slice(&st.a),
            state_b: AlignedVec::from_slice(&st.b),
            out_cols: col,
            total_rows: row,
            resolved: Vec::new(),
            acc: AlignedVec::default(),
            stamp: Vec::new(),
            generation: 0,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn num_slots(&self) -> usize {
        self.slots.len()
    }
    /// Width of the combined output: the sum of the slots' dims.
    pub fn out_cols(&self) -> usize {
        self.out_cols
    }
    pub fn slot_config(&self, s: usize) -> &SlotConfig {
        &self.slots[s].cfg
    }
    /// The table of slot `s`, `[vocab, dim]` row-major.
    pub fn table(&self, s: usize) -> &[f32] {
        let sl = &self.slots[s];
        &self.tables.as_slice()[sl.elem_off..sl.elem_off + sl.cfg.vocab * sl.cfg.dim]
    }
    /// All tables, concatenated in slot order.
    pub fn tables(&self) -> &[f32] {
        self.tables.as_slice()
    }
    pub fn tables_mut(&mut self) -> &mut [f32] {
        self.tables.as_mut_slice()
    }
    /// Tables and optimizer state (concatenated like the tables; empty for
    /// SGD), mutably (checkpoints).
    pub fn parts_mut(&mut self) -> (&mut [f32], &mut [f32], &mut [f32]) {
        (
            self.tables.as_mut_slice(),
            self.state_a.as_mut_slice(),
            self.state_b.as_mut_slice(),
        )
    }
    pub fn state(&self) -> (&[f32], &[f32]) {
        (self.state_a.as_slice(), self.state_b.as_slice())
    }

    /// The gradient of the last `Update::Collect` backward pass as a dense
    /// array shaped like [`EmbeddingBags::tables`] (for tests and tools; it
    /// costs O(table size)).
    pub fn collected_grad(&self) -> Vec<f32> {
        let mut g = vec![0.0; self.tables.len()];
        for (s, rows) in self.slots.iter().zip(&self.touched) {
            let dim = s.cfg.dim;
            for &r in rows {
                let e = s.elem_off + r as usize * dim;
                g[e..e + dim].copy_from_slice(&self.acc.as_slice()[e..e + dim]);
            }
        }
        g
    }

    /// The rows the last `Update::Collect` backward pass touched, slot by
    /// slot in first-touch order, each with its gradient (`dim` values).
    /// The order is a function of the batch only, not of the threads.
    pub fn touched_grads(&self) -> impl Iterator<Item = (usize, u32, &[f32])> + '_ {
        let acc = self.acc.as_slice();
        self.slots
            .iter()
            .zip(&self.touched)
            .enumerate()
            .flat_map(move |(s, (sl, rows))| {
                let dim = sl.cfg.dim;
                rows.iter().map(move |&r| {
                    let e = sl.elem_off + r as usize * dim;
                    (s, r, &acc[e..e + dim])
                })
            })
    }

    /// Row `row` of slot `s`'s table, if both exist.
    pub fn row(&self, s: usize, row: u32) -> Option<&[f32]> {
        let sl = self.slots.get(s)?;
        let r = row as usize;
        (r < sl.cfg.vocab).then(|| &self.tables.as_slice()[sl.elem_off + r * sl.cfg.dim..][..sl.cfg.dim])
    }

    /// Row `row` of slot `s`'s table, mutably, if both exist.
    pub fn row_mut(&mut self, s: usize, row: u32) -> Option<&mut [f32]> {
        let sl = self.slots.get(s)?;
        let (r, dim, off) = (row as usize, sl.cfg.dim, sl.elem_off);
        (r < sl.cfg.vocab).then(|| &mut self.tables.as_mut_slice()[off + r * dim..][..dim])
    }

    /// Checks a batch's offsets and slot count once, for the
    /// [`EmbeddingBags::forward_slots`] / [`EmbeddingBags::backward_slots`]
    /// calls that work on it slot range by slot range.
    pub fn check_batch<'a>(&self, batch: &SparseBatch<'a>) -> Result<CheckedBatch<'a>, NnError> {
        batch.check()?;
        if batch.slots != self.slots.len() {
            return Err(NnError::Input(format!(
                "{}: batch has {} slots, model expects {}",
                self.name,
                batch.slots,
                self.slots.len()
            )));
        }
        Ok(CheckedBatch { batch: *batch })
    }

    /// Looks up and combines the batch's ids, writing each example's
    /// `out_cols` values into `out` (`rows x out.cols()`) from column
    /// `col_off` on.
    pub fn forward(
        &mut self,
        cx: &Compute,
        batch: &SparseBatch<'_>,
        out: &mut Matrix,
        col_off: usize,
    ) -> Result<(), NnError> {
        let batch = self.check_batch(batch)?;
        self.forward_slots(cx, &batch, 0..self.slots.len(), out, col_off)
    }

    /// [`EmbeddingBags::forward`] for the slots `range` only: their
    /// combined embeddings go to `out` from column `col_off` on.
    pub fn forward_slots(
        &mut self,
        cx: &Compute,
        batch: &CheckedBatch<'_>,
        range: Range<usize>,
        out: &mut Matrix,
        col_off: usize,
    ) -> Result<(), NnError> {
        let batch = &batch.batch;
        let width = self.range_cols(batch, &range)?;
        if out.rows() != batch.rows || out.cols() < col_off + width {
            return Err(NnError::Shape {
                what: format!("{} output", self.name),
                expected: format!("{} rows, >= {} columns", batch.rows, col_off + width),
                got: format!("{}x{}", out.rows(), out.cols()),
            });
        }
        if self.resolved.len() != batch.ids.len() {
            self.resolved.resize(batch.ids.len(), 0);
        }
        let cols = out.cols();
        let rows_per = batch.rows.div_ceil(cx.threads()).max(1);
        let ns = self.slots.len();
        // Ids are resolved to table rows inside the gather, each part
        // resolving the ids of its own examples (in these slots).
        let id_bounds: Vec<usize> = (0..batch.rows)
            .step_by(rows_per)
            .chain([batch.rows])
            .map(|b| batch.offsets[b * ns] as usize)
            .collect();
        let mut errors: Vec<Option<NnError>> = (1..id_bounds.len()).map(|_| None).collect();
        let parts: Vec<_> = out
            .as_mut_slice()
            .chunks_mut(rows_per * cols.max(1))
            .zip(split_by(&mut self.resolved, &id_bounds))
            .zip(errors.iter_mut())
            .enumerate()
            .map(|(i, ((dst, res), err))| (i * rows_per, dst, res, err))
            .collect();
        let (slots, tables) = (&self.slots, self.tables.as_slice());
        cx.for_each_part(parts, |(b0, dst, res, err)| {
            let view = OutView {
                data: dst,
                cols,
                col_off,
            };
            if let Err(e) = gather(slots, range.clone(), tables, batch, b0, view, res) {
                *err = Some(e);
            }
        });
        // Parts cover examples in order: the first error is the earliest.
        match errors.into_iter().flatten().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Backward pass for the last forward pass on `batch`: `grad` holds the
    /// gradient w.r.t. the output columns starting at `col_off`.
    pub fn backward(
        &mut self,
        cx: &Compute,
        batch: &SparseBatch<'_>,
        grad: &Matrix,
        col_off: usize,
        update: Update<'_>,
    ) -> Result<(), NnError> {
        let batch = self.check_batch(batch)?;
        self.backward_slots(cx, &batch, 0..self.slots.len(), grad, col_off, update)
    }

    /// [`EmbeddingBags::backward`] for the slots `range` only: `grad` holds
    /// the gradient w.r.t. their output from column `col_off` on.
    pub fn backward_slots(
        &mut self,
        cx: &Compute,
        batch: &CheckedBatch<'_>,
        range: Range<usize>,
        grad: &Matrix,
        col_off: usize,
        update: Update<'_>,
    ) -> Result<(), NnError> {
        let batch = &batch.batch;
        let width = self.range_cols(batch, &range)?;
        if self.resolved.len() != batch.ids.len() || grad.rows() != batch.rows || grad.cols() < col_off + width {
            return Err(NnError::Input(format!(
                "{}: backward pass does not match the last forward pass",
                self.name
            )));
        }
        let sgd = match update {
            Update::Apply(opt) => opt.sgd_rate(),
            Update::Collect => None,
        };
        if sgd.is_none() && self.acc.len() != self.tables.len() {
            self.acc = AlignedVec::zeros(self.tables.len());
            self.stamp = vec![0; self.total_rows];
        }
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.stamp.fill(0);
            self.generation = 1;
        }
        // Output column of slot `s` is `col_off + slot.col_off - c0`.
        let cols = (col_off, self.col_at(range.start));
        // Split the slots into contiguous groups, one per thread.
        let per = range.len().div_ceil(cx.threads()).max(1);
        let bounds: Vec<usize> = range.clone().step_by(per).chain([range.end]).collect();
        let elem_b: Vec<usize> = bounds.iter().map(|&s| self.elem_at(s)).collect();
        let row_b: Vec<usize> = bounds.iter().map(|&s| self.row_at(s)).collect();
        let tables = split_by(self.tables.as_mut_slice(), &elem_b);
        let acc = split_by(self.acc.as_mut_slice(), if sgd.is_none() { &elem_b } else { &[0, 0] });
        let stamp = split_by(&mut self.stamp, if sgd.is_none() { &row_b } else { &[0, 0] });
        let (a_empty, b_empty) = (self.state_a.is_empty(), self.state_b.is_empty());
        let sa = split_by(self.state_a.as_mut_slice(), if a_empty { &[0, 0] } else { &elem_b });
        let sb = split_by(self.state_b.as_mut_slice(), if b_empty { &[0, 0] } else { &elem_b });
        let touched = split_by(&mut self.touched, &bounds);
        let mut parts = Vec::new();
        let mut its = (
            tables.into_iter(),
            acc.into_iter(),
            stamp.into_iter(),
            sa.into_iter(),
            sb.into_iter(),
        );
        for (i, touched) in touched.into_iter().enumerate() {
            parts.push(Part {
                s0: bounds[i],
                tables: its.0.next().unwrap_or_default(),
                acc: its.1.next().unwrap_or_default(),
                stamp: its.2.next().unwrap_or_default(),
                sa: its.3.next().unwrap_or_default(),
                sb: its.4.next().unwrap_or_default(),
                touched,
            });
        }
        let generation = self.generation;
        let (slots, resolved) = (&self.slots, &self.resolved);
        cx.for_each_part(parts, |part| {
            part.run(slots, resolved, batch, grad, cols, update, sgd, generation);
        });
        Ok(())
    }

    /// Output columns of the slots `range`, checking the range and that the
    /// batch has these tables' slot count.
    fn range_cols(&self, batch: &SparseBatch<'_>, range: &Range<usize>) -> Result<usize, NnError> {
        if batch.slots != self.slots.len() || range.start > range.end || range.end > self.slots.len() {
            return Err(NnError::Input(format!(
                "{}: slots {range:?} of a {}-slot batch do not fit {} slots",
                self.name,
                batch.slots,
                self.slots.len()
            )));
        }
        Ok(self.col_at(range.end) - self.col_at(range.start))
    }
    fn col_at(&self, s: usize) -> usize {
        self.slots.get(s).map_or(self.out_cols, |sl| sl.col_off)
    }
    fn elem_at(&self, s: usize) -> usize {
        self.slots.get(s).map_or(self.tables.len(), |sl| sl.elem_off)
    }
    fn row_at(&self, s: usize) -> usize {
        self.slots.get(s).map_or(self.total_rows, |sl| sl.row_off)
    }
}

/// The slots `[s0, s0 + touched.len())` and their slices of every buffer.
struct Part<'a> {
    s0: usize,
    tables: &'a mut [f32],
    acc: &'a mut [f32],
    stamp: &'a mut [u32],
    sa: &'a mut [f32],
    sb: &'a mut [f32],
    touched: &'a mut [Vec<u32>],
}

impl Part<'_> {
    /// Applies one example's gradient `g` for slot `s` (whose ids resolved
    /// to `rows`) to the rows' tables (fused SGD) or accumulators.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn update_one(
        &mut self,
        slot: &Slot,
        s: usize,
        rows: &[u32],
        g: &[f32],
        (e0, r0): (usize, usize),
        sgd: Option<f32>,
        generation: u32,
    ) {
        if rows.is_empty() {
            return;
        }
        let dim = slot.cfg.dim;
        let (se, sr) = (slot.elem_off - e0, slot.row_off - r0);
        let scale = combine_scale(slot.cfg.combiner, rows.len());
        for &r in rows {
            let e = se + r as usize * dim;
            if let Some(lr) = sgd {
                axpy(&mut self.tables[e..e + dim], g, -lr * scale);
                continue;
            }
            let row = sr + r as usize;
            let a = &mut self.acc[e..e + dim];
            if self.stamp[row] != generation {
                self.stamp[row] = generation;
                self.touched[s - self.s0].push(r);
                a.fill(0.0);
            }
            axpy(a, g, scale);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn run(
        mut self,
        slots: &[Slot],
        resolved: &[u32],
        batch: &SparseBatch<'_>,
        grad: &Matrix,
        (col_off, c0): (usize, usize),
        update: Update<'_>,
        sgd: Option<f32>,
        generation: u32,
    ) {
        let ns = slots.len();
        let s1 = self.s0 + self.touched.len();
        let (e0, r0) = (slots[self.s0].elem_off, slots[self.s0].row_off);
        for t in self.touched.iter_mut() {
            t.clear();
        }
        let gcols = grad.cols();
        let g_all = grad.as_slice();
        // Example by example, the part's slots in order: the gradient and
        // the ids are read sequentially, each table row receives its
        // updates in example order whatever the number of threads, and the
        // table row a few slots ahead is asked for early.
        for b in 0..batch.rows {
            let offs = &batch.offsets[b * ns..=(b + 1) * ns];
            for s in self.s0..s1 {
                let ahead = s + PREFETCH_SLOTS;
                if ahead < s1 && offs[ahead] < offs[ahead + 1] {
                    let next = &slots[ahead];
                    let r = resolved[offs[ahead] as usize] as usize;
                    let buf: &[f32] = if sgd.is_some() { self.tables } else { self.acc };
                    prefetch(&buf[next.elem_off - e0 + r * next.cfg.dim..]);
                }
                let (lo, hi) = (offs[s] as usize, offs[s + 1] as usize);
                let slot = &slots[s];
                let c = b * gcols + col_off + (slot.col_off - c0);
                let g = &g_all[c..c + slot.cfg.dim];
                self.update_one(slot, s, &resolved[lo..hi], g, (e0, r0), sgd, generation);
            }
        }
        let Update::Apply(opt) = update else { return };
        if sgd.is_some() {
            return;
        }
        for (slot, touched) in slots[self.s0..s1].iter().zip(self.touched.iter()) {
            let dim = slot.cfg.dim;
            for &r in touched {
                let e = slot.elem_off - e0 + r as usize * dim;
                let a = if self.sa.is_empty() {
                    &mut [][..]
                } else {
                    &mut self.sa[e..e + dim]
                };
                let b = if self.sb.is_empty() {
                    &mut [][..]
                } else {
                    &mut self.sb[e..e + dim]
                };
                opt.apply(&mut self.tables[e..e + dim], &self.acc[e..e + dim], a, b);
            }
        }
    }
}

/// Rows `b0 ..` of the forward output: `data` holds whole rows of `cols`
/// values, the tables' columns start at `col_off`.
struct OutView<'a> {
    data: &'a mut [f32],
    cols: usize,
    col_off: usize,
}

/// Resolves and combines the ids of the examples `b0 ..` whose output rows
/// `out` holds, example by example, writing each id's table row into `res`
/// (the part of the resolved rows that starts with example `b0`'s first id).
///
/// Example-major order writes each output row as one sequential stream;
/// the table rows it reads are independent loads the CPU overlaps.
fn gather(
    slots: &[Slot],
    range: Range<usize>,
    tables: &[f32],
    batch: &SparseBatch<'_>,
    b0: usize,
    out: OutView<'_>,
    res: &mut [u32],
) -> Result<(), NnError> {
    let ns = slots.len();
    let id0 = batch.offsets[b0 * ns] as usize;
    let c0 = slots.get(range.start).map_or(0, |s| s.col_off);
    for (i, row) in out.data.chunks_exact_mut(out.cols.max(1)).enumerate() {
        let b = b0 + i;
        let offs = &batch.offsets[b * ns..=(b + 1) * ns];
        let row = &mut row[out.col_off..];
        for (s, slot) in slots.iter().enumerate().take(range.end).skip(range.start) {
            let (lo, hi) = (offs[s] as usize, offs[s + 1] as usize);
            // Ask for the table row a few slots ahead (its first id only).
            let ahead = s + PREFETCH_SLOTS;
            if let Some(next) = slots[..range.end].get(ahead)
                && offs[ahead] < offs[ahead + 1]
                && let Some(&id) = batch.ids.get(offs[ahead] as usize)
                && (id as u64) < next.cfg.vocab as u64
            {
                prefetch(&tables[next.elem_off + id as usize * next.cfg.dim..]);
            }
            let dim = slot.cfg.dim;
            let table = &tables[slot.elem_off..slot.elem_off + slot.cfg.vocab * dim];
            let o = &mut row[slot.col_off - c0..slot.col_off - c0 + dim];
            let rows = &mut res[lo - id0..hi - id0];
            for (r, &id) in rows.iter_mut().zip(&batch.ids[lo..hi]) {
                *r = slot.row_of(id, b)?;
            }
            match &*rows {
                [] => o.fill(0.0),
                // One id: every combiner gives the row itself.
                [r] => copy(o, &table[*r as usize * dim..(*r as usize + 1) * dim]),
                rows => {
                    let scale = combine_scale(slot.cfg.combiner, rows.len());
                    o.fill(0.0);
                    for &r in rows {
                        axpy(o, &table[r as usize * dim..(r as usize + 1) * dim], 1.0);
                    }
                    o.iter_mut().for_each(|v| *v *= scale);
                }
            }
        }
    }
    Ok(())
}

impl Slot {
    /// The table row of `id` (seen in example `example`), or the error
    /// naming slot, example and id.
    #[inline(always)]
    fn row_of(&self, id: i64, example: usize) -> Result<u32, NnError> {
        let vocab = self.cfg.vocab as u64;
        if (id as u64) < vocab {
            Ok(id as u32)
        } else if self.cfg.out_of_range == OutOfRange::Hash {
            Ok((hash_id(id) % vocab) as u32)
        } else {
            Err(NnError::IdOutOfRange {
                slot: self.cfg.name.clone(),
                example,
                id,
                vocab: self.cfg.vocab,
            })
        }
    }
}

/// How many slots ahead the gather and scatter loops ask for table rows.
const PREFETCH_SLOTS: usize = 16;

/// `o += a * t`, in fixed chunks of 16 so that the compiler emits straight
/// vector code for the common embedding widths.
#[inline(always)]
fn axpy(o: &mut [f32], t: &[f32], a: f32) {
    let (oc, or) = o.as_chunks_mut::<16>();
    let (tc, tr) = t.as_chunks::<16>();
    for (o, t) in oc.iter_mut().zip(tc) {
        let mut r = *o;
        for i in 0..16 {
            r[i] += a * t[i];
        }
        *o = r;
    }
    for (o, t) in or.iter_mut().zip(tr) {
        *o += a * t;
    }
}

/// Asks the CPU to bring the cache line holding `row[0]` into L1.
#[inline(always)]
fn prefetch(row: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is part of the x86_64 baseline, and a prefetch is only a
    // hint that never faults; the pointer comes from a live slice anyway.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(row.as_ptr().cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = row;
}

/// `o = t`, like [`axpy`] without a call to `memcpy` for short rows.
#[inline(always)]
fn copy(o: &mut [f32], t: &[f32]) {
    let (oc, or) = o.as_chunks_mut::<16>();
    let (tc, tr) = t.as_chunks::<16>();
    for (o, t) in oc.iter_mut().zip(tc) {
        *o = *t;
    }
    for (o, t) in or.iter_mut().zip(tr) {
        *o = *t;
    }
}

fn combine_scale(c: Combiner, n: usize) -> f32 {
    match (c, n) {
        (_, 0) | (Combiner::Sum, _) => 1.0,
        (Combiner::Mean, n) => 1.0 / n as f32,
        (Combiner::Sqrtn, n) => 1.0 / (n as f32).sqrt(),
    }
}

/// Hash used by [`OutOfRange::Hash`] (SplitMix64 finaliser of the id).
pub fn hash_id(id: i64) -> u64 {
    vfl_mix::splitmix64_mix((id as u64).wrapping_add(vfl_mix::GOLDEN_GAMMA))
}

/// Splits `s[bounds[0] .. bounds[last]]` at the (non-decreasing) bounds.
/// A bounds list `[0, 0]` on an empty slice yields empty parts on demand.
fn split_by<'a, T>(s: &'a mut [T], bounds: &[usize]) -> Vec<&'a mut [T]> {
    let mut out = Vec::with_capacity(bounds.len().saturating_sub(1));
    let (Some(&first), Some(&last)) = (bounds.first(), bounds.last()) else {
        return out;
    };
    let mut s = &mut s[first..last];
    let mut prev = first;
    for &b in &bounds[1..] {
        let (head, tail) = std::mem::take(&mut s).split_at_mut(b - prev);
        out.push(head);
        s = tail;
        prev = b;
    }
    out
}
