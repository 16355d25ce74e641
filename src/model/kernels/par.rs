//! Parallel splitting, and the raw pointers that parallel sections share. Every
//! `unsafe impl Send/Sync` of the kernels is here, so they can be audited in one place: each
//! wrapped pointer is only used, as its users document, to read data that outlives the
//! parallel section or to write regions no other thread writes.

use rayon::prelude::*;

/// Run `f(start, len)` in parallel over `0..total` cut into ranges of about `block` (at
/// most), as many ranges for every thread.
pub(super) fn par_blocks(total: usize, block: usize, f: impl Fn(usize, usize) + Sync) {
    let threads = rayon::current_num_threads();
    let blocks = total.div_ceil(block).next_multiple_of(threads);
    let len = total.div_ceil(blocks);
    (0..blocks).into_par_iter().for_each(|b| {
        let start = b * len;
        let len = len.min(total.saturating_sub(start));
        if len > 0 {
            f(start, len);
        }
    });
}

/// A read-only pointer shared by threads (the left-hand matrix of a GEMM).
#[derive(Clone, Copy)]
pub(super) struct ReadPtr(pub *const f32);
// SAFETY: only read, and the data outlives every parallel section that uses it.
unsafe impl Send for ReadPtr {}
unsafe impl Sync for ReadPtr {}

/// The output pointer, shared by threads that write disjoint parts of it.
#[derive(Clone, Copy)]
pub(super) struct SendPtr(pub *mut f32);

impl SendPtr {
    /// The pointer (a method, so that a closure captures the whole `SendPtr`, not its field).
    pub(super) fn get(self) -> *mut f32 {
        self.0
    }
}
// SAFETY: only used to write disjoint regions, as each use documents.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
