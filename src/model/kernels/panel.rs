//! The GEMM every dense convolution runs on CPUs with AVX2 and FMA: the weight packed once,
//! at load, in panels of 8 output channels (each `k x 8` contiguous), and a 6-row x
//! 16-channel block of outputs kept in registers while it runs down `k`, so each weight
//! value is loaded once per six rows and each input value once per 16 channels.
//!
//! Bias and activation are applied to the block in registers before it is stored.
//!
//! A general GEMM (the `gemm` crate) copies the weight into its own packed layout on every
//! call: a pass over the whole weight for each block of rows, which hurts most where rows
//! are few (deep layers at batch 1, Winograd tiles; `perf` put it at 7-10% of ResNet time).
//! Reading the row-major weight in place instead thrashes the cache: its rows are thousands
//! of bytes apart. The `gemm` crate remains the engine where this kernel does not apply.

use super::Activation;

/// Whether [`gemm`] can compute products with `n` output channels on this CPU.
pub(super) fn applies(n: usize) -> bool {
    n.is_multiple_of(8) && super::has_avx2_fma()
}

/// What happens to each block of outputs in registers before it is stored: the bias and
/// activation of a convolution's epilogue, so that the output is written once and never
/// read back.
#[derive(Clone, Copy)]
pub(super) struct Finish {
    /// The bias of column 0 on.
    pub bias: Option<*const f32>,
    pub act: Activation,
}

impl Finish {
    /// Store the plain product.
    pub const NONE: Self = Self {
        bias: None,
        act: Activation::Identity,
    };

    /// The same finish from column `j` on.
    ///
    /// # Safety
    /// The bias must extend that far.
    #[cfg(target_arch = "x86_64")]
    unsafe fn skip_columns(self, j: usize) -> Self {
        Self {
            bias: self.bias.map(|b| b.add(j)),
            act: self.act,
        }
    }
}

/// A row-major `k x n` weight (`n` a multiple of 8) as panels of 8 columns, each `k x 8`
/// row-major, one after another.
pub(super) fn pack(weight: &[f32], k: usize, n: usize) -> Vec<f32> {
    let mut panels = Vec::with_capacity(k * n);
    for j in (0..n).step_by(8) {
        for row in weight.chunks_exact(n).take(k) {
            panels.extend_from_slice(&row[j..j + 8]);
        }
    }
    panels
}

/// [`pack`] undone: the row-major `k x n` weight.
pub(super) fn unpack(panels: &[f32], k: usize, n: usize) -> Vec<f32> {
    let mut weight = vec![0f32; k * n];
    for (j, panel) in panels.chunks_exact(k * 8).enumerate() {
        for (row, values) in weight.chunks_exact_mut(n).zip(panel.chunks_exact(8)) {
            row[j * 8..j * 8 + 8].copy_from_slice(values);
        }
    }
    weight
}

/// `dst[r][j] = finish(sum_k lhs[r][k] * w[k][j])` for `m` rows and `n` columns (a multiple
/// of 8), `w` the [`pack`]ed weight from the panel of column 0 on; rows of `lhs` and `dst`
/// are `lhs_rs` and `dst_rs` values apart.
///
/// # Safety
/// The CPU must have AVX2 and FMA ([`applies`]); the pointers must be valid for those rows
/// and panels, and `dst` not overlap the inputs.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn gemm(
    m: usize,
    n: usize,
    k: usize,
    lhs: *const f32,
    lhs_rs: usize,
    w: *const f32,
    dst: *mut f32,
    dst_rs: usize,
    finish: Finish,
) {
    debug_assert!(n.is_multiple_of(8));
    let mut j = 0;
    while j + 16 <= n {
        let (w, dst, finish) = (w.add(j * k), dst.add(j), finish.skip_columns(j));
        rows::<2>(m, k, lhs, lhs_rs, w, dst, dst_rs, finish);
        j += 16;
    }
    if j < n {
        let (w, dst, finish) = (w.add(j * k), dst.add(j), finish.skip_columns(j));
        rows::<1>(m, k, lhs, lhs_rs, w, dst, dst_rs, finish);
    }
}

/// All `m` rows of one `8 * V`-channel column block, six rows at a time.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows<const V: usize>(
    m: usize,
    k: usize,
    lhs: *const f32,
    lhs_rs: usize,
    w: *const f32,
    dst: *mut f32,
    dst_rs: usize,
    finish: Finish,
) {
    let mut r = 0;
    while r + 6 <= m {
        let (lhs, dst) = (lhs.add(r * lhs_rs), dst.add(r * dst_rs));
        block::<6, V>(k, lhs, lhs_rs, w, dst, dst_rs, finish);
        r += 6;
    }
    let (lhs, dst, f) = (lhs.add(r * lhs_rs), dst.add(r * dst_rs), finish);
    match m - r {
        0 => {}
        1 => block::<1, V>(k, lhs, lhs_rs, w, dst, dst_rs, f),
        2 => block::<2, V>(k, lhs, lhs_rs, w, dst, dst_rs, f),
        3 => block::<3, V>(k, lhs, lhs_rs, w, dst, dst_rs, f),
        4 => block::<4, V>(k, lhs, lhs_rs, w, dst, dst_rs, f),
        _ => block::<5, V>(k, lhs, lhs_rs, w, dst, dst_rs, f),
    }
}

/// `R` rows x `V` panels of 8 channels, accumulated in registers over all of `k`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn block<const R: usize, const V: usize>(
    k: usize,
    lhs: *const f32,
    lhs_rs: usize,
    w: *const f32,
    dst: *mut f32,
    dst_rs: usize,
    finish: Finish,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_ps(); V]; R];
    for kk in 0..k {
        let mut wv = [_mm256_setzero_ps(); V];
        for (v, wv) in wv.iter_mut().enumerate() {
            *wv = _mm256_loadu_ps(w.add((v * k + kk) * 8));
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            let x = _mm256_broadcast_ss(&*lhs.add(r * lhs_rs + kk));
            for (a, &wv) in acc.iter_mut().zip(&wv) {
                *a = _mm256_fmadd_ps(x, wv, *a);
            }
        }
    }
    let (zero, six) = (_mm256_setzero_ps(), _mm256_set1_ps(6.0));
    for (r, acc) in acc.iter().enumerate() {
        for (v, &a) in acc.iter().enumerate() {
            let mut a = a;
            if let Some(bias) = finish.bias {
                a = _mm256_add_ps(a, _mm256_loadu_ps(bias.add(8 * v)));
            }
            a = match finish.act {
                Activation::Identity => a,
                Activation::Relu => _mm256_max_ps(a, zero),
                Activation::Relu6 => _mm256_min_ps(_mm256_max_ps(a, zero), six),
            };
            _mm256_storeu_ps(dst.add(r * dst_rs + 8 * v), a);
        }
    }
}

/// Never called: [`applies`] is false off x86-64.
#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm(
    _: usize,
    _: usize,
    _: usize,
    _: *const f32,
    _: usize,
    _: *const f32,
    _: *mut f32,
    _: usize,
    _: Finish,
) {
    unreachable!("the panel kernel needs x86-64 with AVX2 and FMA")
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    #[test]
    fn matches_a_naive_product_for_every_row_remainder() {
        if !applies(8) {
            eprintln!("no AVX2+FMA here: the panel kernel is never used");
            return;
        }
        let value = |i: usize| ((i * 7919) % 23) as f32 * 0.25 - 2.5;
        for (m, n, k) in [
            (1, 8, 5),
            (5, 16, 9),
            (6, 24, 17),
            (13, 40, 33),
            (64, 64, 64),
        ] {
            // Rows of the input and the output with spare columns, as convolutions have.
            let (lhs_rs, dst_rs) = (k + 3, n + 5);
            let lhs: Vec<f32> = (0..m * lhs_rs).map(value).collect();
            let w: Vec<f32> = (0..k * n).map(|i| value(i + 11)).collect();
            let panels = pack(&w, k, n);
            assert_eq!(unpack(&panels, k, n), w);
            let mut dst = vec![f32::NAN; m * dst_rs];
            // SAFETY: the CPU has AVX2 and FMA; every pointer covers the rows given.
            let (lhs_p, w_p) = (lhs.as_ptr(), panels.as_ptr());
            unsafe {
                gemm(
                    m,
                    n,
                    k,
                    lhs_p,
                    lhs_rs,
                    w_p,
                    dst.as_mut_ptr(),
                    dst_rs,
                    Finish::NONE,
                )
            };
            // The same product finished: + bias, then ReLU6.
            let bias: Vec<f32> = (0..n).map(|j| value(j + 3)).collect();
            let finish = Finish {
                bias: Some(bias.as_ptr()),
                act: Activation::Relu6,
            };
            let mut finished = vec![f32::NAN; m * n];
            // SAFETY: as above; the bias covers every column.
            unsafe {
                gemm(
                    m,
                    n,
                    k,
                    lhs_p,
                    lhs_rs,
                    w_p,
                    finished.as_mut_ptr(),
                    n,
                    finish,
                )
            };
            for r in 0..m {
                for j in 0..n {
                    let expect: f32 = (0..k).map(|i| lhs[r * lhs_rs + i] * w[i * n + j]).sum();
                    let got = dst[r * dst_rs + j];
                    assert!(
                        (got - expect).abs() <= 1e-4 * expect.abs().max(1.0),
                        "{m}x{n}x{k} [{r}][{j}]: {got} vs {expect}"
                    );
                }
                assert!(
                    dst[r * dst_rs + n..(r + 1) * dst_rs]
                        .iter()
                        .all(|v| v.is_nan()),
                    "spare columns untouched"
                );
                for j in 0..n {
                    let plain = dst[r * dst_rs + j];
                    let expect = (plain + bias[j]).clamp(0.0, 6.0);
                    assert_eq!(finished[r * n + j], expect, "finished [{r}][{j}]");
                }
            }
        }
    }
}
