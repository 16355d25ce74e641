//! The general GEMM (the `gemm` crate, which candle itself uses): the engine for products
//! no panel kernel applies to (channels not a multiple of the panel width, CPUs without AVX2).

/// `dst = lhs (m x k) * w (k x n)` by the `gemm` crate, `w` row-major; rows of `lhs`, `w` and
/// `dst` are `lhs_rs`, `w_rs` and `dst_rs` values apart. `threads`: let it split the work.
///
/// # Safety
/// The pointers must be valid for those rows, and `dst` not overlap the inputs.
#[allow(clippy::too_many_arguments)]
pub(in crate::model::kernels) unsafe fn general_gemm(
    m: usize,
    n: usize,
    k: usize,
    lhs: *const f32,
    lhs_rs: usize,
    w: *const f32,
    w_rs: usize,
    dst: *mut f32,
    dst_rs: usize,
    threads: Option<usize>,
) {
    // SAFETY: the caller guarantees the pointers cover these rows and do not overlap.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            false,
            lhs,
            1,
            lhs_rs as isize,
            w,
            1,
            w_rs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            threads.map_or(gemm::Parallelism::None, gemm::Parallelism::Rayon),
        )
    };
}
