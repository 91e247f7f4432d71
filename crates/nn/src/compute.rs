//! Compute context: the thread budget and the matrix product kernel.
//!
//! Matrix products go through the `gemm` crate (AVX-512 when the CPU has it,
//! AVX2/FMA or scalar otherwise, chosen at run time). With more than one
//! thread, the product is split here into disjoint blocks of the output, each
//! computed by a single-threaded `gemm` call on its own worker: measurements
//! showed gemm's own per-call threading gains little at our shapes, and a
//! fixed split keeps results bitwise reproducible for a given thread count.

use crate::NnError;
use crate::tensor::Matrix;

/// Below this many multiply-adds a product is not worth splitting.
const SPLIT_THRESHOLD: usize = 1 << 18;
/// Column blocks are multiples of this many floats (one AVX-512 register).
const COL_ALIGN: usize = 16;

/// The thread budget of one party's computation.
pub struct Compute {
    threads: usize,
    pool: Option<rayon::ThreadPool>,
}

impl std::fmt::Debug for Compute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compute").field("threads", &self.threads).finish()
    }
}

impl Compute {
    /// A context using `threads` threads (at least 1). One thread runs
    /// everything on the caller's thread, with no pool.
    pub fn new(threads: usize) -> Result<Self, NnError> {
        let threads = threads.max(1);
        let pool = if threads > 1 {
            Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .thread_name(|i| format!("vfl-compute-{i}"))
                    .build()
                    .map_err(|e| NnError::Runtime(format!("cannot start {threads} compute threads: {e}")))?,
            )
        } else {
            None
        };
        Ok(Compute { threads, pool })
    }

    /// Single-threaded context.
    pub fn single() -> Self {
        Compute { threads: 1, pool: None }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f(0) .. f(n-1)`, in parallel when the context has threads.
    /// Each call must touch disjoint data.
    pub fn for_each<F>(&self, n: usize, f: F)
    where
        F: Fn(usize) + Sync,
    {
        match (&self.pool, n) {
            (_, 0) => {}
            (None, _) | (_, 1) => (0..n).for_each(f),
            (Some(pool), _) => pool.scope(|s| {
                let f = &f;
                for i in 0..n {
                    s.spawn(move |_| f(i));
                }
            }),
        }
    }
}

impl Compute {
    /// Runs `f` on each part, in parallel when the context has threads.
    /// Parts carry their own (disjoint) mutable borrows.
    pub fn for_each_part<T, F>(&self, parts: Vec<T>, f: F)
    where
        T: Send,
        F: Fn(T) + Sync,
    {
        match &self.pool {
            Some(pool) if parts.len() > 1 => pool.scope(|s| {
                let f = &f;
                for p in parts {
                    s.spawn(move |_| f(p));
                }
            }),
            _ => parts.into_iter().for_each(f),
        }
    }
}

/// A read-only operand of a product: a row-major matrix, optionally used
/// transposed. `rows`/`cols` are the stored shape.
#[derive(Clone, Copy, Debug)]
pub struct Operand<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    trans: bool,
}

impl<'a> Operand<'a> {
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        debug_assert_eq!(data.len(), rows * cols);
        Operand {
            data,
            rows,
            cols,
            trans: false,
        }
    }

    pub fn of(m: &'a Matrix) -> Self {
        Operand::new(m.as_slice(), m.rows(), m.cols())
    }

    /// The transposed operand (no copy: strides are swapped).
    pub fn t(self) -> Self {
        Operand {
            trans: !self.trans,
            ..self
        }
    }

    /// Logical shape after the optional transposition.
    fn shape(&self) -> (usize, usize) {
        if self.trans {
            (self.cols, self.rows)
        } else {
            (self.rows, self.cols)
        }
    }

    /// (column stride, row stride) of the logical matrix, in elements.
    fn strides(&self) -> (isize, isize) {
        if self.trans {
            (self.cols as isize, 1)
        } else {
            (1, self.cols as isize)
        }
    }
}

/// How the product is combined with the destination.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Accumulate {
    /// `dst = beta * a * b`
    Overwrite,
    /// `dst = dst + beta * a * b`
    Add,
}

/// `dst[m x n] (=|+=) beta * a[m x k] * b[k x n]`, with `dst` row-major.
///
/// Shapes are checked; a mismatch is a bug in the caller and is reported as
/// an error rather than a panic.
pub fn gemm(
    cx: &Compute,
    dst: &mut [f32],
    a: Operand<'_>,
    b: Operand<'_>,
    acc: Accumulate,
    beta: f32,
) -> Result<(), NnError> {
    let (m, k) = a.shape();
    let (k2, n) = b.shape();
    if k != k2 || dst.len() != m * n || a.data.len() != a.rows * a.cols || b.data.len() != b.rows * b.cols {
        return Err(NnError::Shape {
            what: "matrix product".into(),
            expected: format!("[{m}x{k}] * [{k}x?] into {m}x? destination"),
            got: format!("[{m}x{k}] * [{k2}x{n}] into {} values", dst.len()),
        });
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if acc == Accumulate::Overwrite {
            dst.fill(0.0);
        }
        return Ok(());
    }
    let chunks = cx.threads();
    let work = m * n * k;
    let dst_ptr = SendPtr(dst.as_mut_ptr());
    if chunks <= 1 || work < SPLIT_THRESHOLD {
        // SAFETY: all shapes and buffer lengths were checked above; the
        // strides describe in-bounds row-major storage.
        unsafe { raw_gemm(dst_ptr.0, n, a, b, (0, m), (0, n), k, acc, beta) };
        return Ok(());
    }
    if n >= m {
        let block = n.div_ceil(chunks).next_multiple_of(COL_ALIGN);
        let blocks = n.div_ceil(block);
        cx.for_each(blocks, |i| {
            let c0 = i * block;
            let c1 = (c0 + block).min(n);
            // SAFETY: each block writes columns [c0, c1) of dst only; blocks
            // are disjoint and dst outlives the scope of `for_each`.
            unsafe { raw_gemm(dst_ptr.get(), n, a, b, (0, m), (c0, c1), k, acc, beta) };
        });
    } else {
        let block = m.div_ceil(chunks);
        let blocks = m.div_ceil(block);
        cx.for_each(blocks, |i| {
            let r0 = i * block;
            let r1 = (r0 + block).min(m);
            // SAFETY: each block writes rows [r0, r1) of dst only; disjoint.
            unsafe { raw_gemm(dst_ptr.get(), n, a, b, (r0, r1), (0, n), k, acc, beta) };
        });
    }
    Ok(())
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: the pointer is only used to write disjoint blocks of one buffer
// from threads joined before the buffer's borrow ends.
unsafe impl Send for SendPtr {}
// SAFETY: as for Send: shared references only copy the pointer out, and the
// blocks written through it are disjoint.
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// One single-threaded gemm call on the block rows `r`, columns `c` of dst.
///
/// # Safety
/// `dst` must point to an `m x ldd` row-major buffer containing the block;
/// `a` and `b` must be consistent with the logical shapes used by `gemm`.
#[allow(clippy::too_many_arguments)]
unsafe fn raw_gemm(
    dst: *mut f32,
    ldd: usize,
    a: Operand<'_>,
    b: Operand<'_>,
    r: (usize, usize),
    c: (usize, usize),
    k: usize,
    acc: Accumulate,
    beta: f32,
) {
    let (a_cs, a_rs) = a.strides();
    let (b_cs, b_rs) = b.strides();
    let (m, n) = (r.1 - r.0, c.1 - c.0);
    // SAFETY: the offsets select row r.0 of `a`, column c.0 of `b` and the
    // block's first element of dst; all lie inside their buffers because the
    // block lies inside the checked logical shapes.
    unsafe {
        let dst = dst.add(r.0 * ldd + c.0);
        let lhs = a.data.as_ptr().offset(r.0 as isize * a_rs);
        let rhs = b.data.as_ptr().offset(c.0 as isize * b_cs);
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            ldd as isize,
            acc == Accumulate::Add,
            lhs,
            a_cs,
            a_rs,
            rhs,
            b_cs,
            b_rs,
            1.0,
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Reference product of stored matrices `(data, transposed, rows, cols)`.
    fn naive(a: (&[f32], bool, usize, usize), b: (&[f32], bool, usize, usize)) -> Vec<f64> {
        let ((a, at, ar, ac), (b, bt, br, bc)) = (a, b);
        let get =
            |d: &[f32], t: bool, cols: usize, i: usize, j: usize| if t { d[j * cols + i] } else { d[i * cols + j] };
        let (m, k) = if at { (ac, ar) } else { (ar, ac) };
        let n = if bt { br } else { bc };
        let mut out = vec![0.0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0f64;
                for p in 0..k {
                    s += f64::from(get(a, at, ac, i, p)) * f64::from(get(b, bt, bc, p, j));
                }
                out[i * n + j] = s;
            }
        }
        out
    }

    fn random(rng: &mut Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect()
    }

    #[test]
    fn matches_naive_in_all_transpositions_and_thread_counts() {
        let mut rng = Rng::new(11);
        // Large enough to be split across threads.
        let (m, k, n) = (70, 130, 90);
        for threads in [1, 2, 3] {
            let cx = Compute::new(threads).unwrap();
            for (at, bt) in [(false, false), (true, false), (false, true), (true, true)] {
                let (ar, ac) = if at { (k, m) } else { (m, k) };
                let (br, bc) = if bt { (n, k) } else { (k, n) };
                let a = random(&mut rng, ar * ac);
                let b = random(&mut rng, br * bc);
                let mut oa = Operand::new(&a, ar, ac);
                if at {
                    oa = oa.t();
                }
                let mut ob = Operand::new(&b, br, bc);
                if bt {
                    ob = ob.t();
                }
                let base = random(&mut rng, m * n);
                let mut dst = base.clone();
                gemm(&cx, &mut dst, oa, ob, Accumulate::Add, -0.5).unwrap();
                let want = naive((&a, at, ar, ac), (&b, bt, br, bc));
                for i in 0..m * n {
                    let w = f64::from(base[i]) - 0.5 * want[i];
                    assert!(
                        (f64::from(dst[i]) - w).abs() < 1e-4,
                        "t={threads} at={at} bt={bt} i={i}"
                    );
                }
                let mut dst2 = vec![7.0; m * n];
                gemm(&cx, &mut dst2, oa, ob, Accumulate::Overwrite, 1.0).unwrap();
                for i in 0..m * n {
                    assert!((f64::from(dst2[i]) - want[i]).abs() < 1e-4);
                }
            }
        }
    }

    #[test]
    fn split_product_is_deterministic_for_a_thread_count() {
        let mut rng = Rng::new(5);
        let (m, k, n) = (64, 512, 256);
        let a = random(&mut rng, m * k);
        let b = random(&mut rng, k * n);
        let cx = Compute::new(2).unwrap();
        let run = || {
            let mut d = vec![0.0; m * n];
            gemm(
                &cx,
                &mut d,
                Operand::new(&a, m, k),
                Operand::new(&b, k, n),
                Accumulate::Overwrite,
                1.0,
            )
            .unwrap();
            d
        };
        let (x, y) = (run(), run());
        assert!(x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()));
    }

    #[test]
    fn rejects_mismatched_shapes() {
        let cx = Compute::single();
        let a = vec![0.0; 6];
        let b = vec![0.0; 6];
        let mut d = vec![0.0; 4];
        let err = gemm(
            &cx,
            &mut d,
            Operand::new(&a, 2, 3),
            Operand::new(&b, 2, 3),
            Accumulate::Overwrite,
            1.0,
        )
        .unwrap_err();
        assert!(err.to_string().contains("matrix product"), "{err}");
    }

    #[test]
    fn zero_inner_dimension_overwrites_with_zeros() {
        let cx = Compute::single();
        let mut d = vec![3.0; 4];
        gemm(
            &cx,
            &mut d,
            Operand::new(&[], 2, 0),
            Operand::new(&[], 0, 2),
            Accumulate::Overwrite,
            1.0,
        )
        .unwrap();
        assert_eq!(d, vec![0.0; 4]);
    }
}
