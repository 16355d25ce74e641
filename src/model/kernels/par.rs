//! Parallel splitting, and the raw pointers that parallel sections share. Every
//! `unsafe impl Send/Sync` of the kernels is here, so they can be audited in one place: each
//! wrapped pointer is only used, as its users document, to read data that outlives the
//! parallel section or to write regions no other thread writes.

use std::ops::Range;

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

/// `0..columns` cut into at most `parts` ranges of whole panels of `width` columns (the last
/// range may end inside one), in order, none empty: how output channels are split between
/// threads so that each range begins a panel of the packed weight.
pub(super) fn panel_parts(columns: usize, parts: usize, width: usize) -> Vec<Range<usize>> {
    let part = columns
        .div_ceil(parts.max(1))
        .next_multiple_of(width)
        .max(1);
    (0..columns)
        .step_by(part)
        .map(|start| start..(start + part).min(columns))
        .collect()
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

/// Run `f` (a forward pass) with the pool's other threads kept awake: each spins, picking
/// up the jobs `f`'s parallel sections push, instead of going to sleep between them. A
/// network runs hundreds of short parallel sections; a sleeping thread takes 50-100 us to
/// wake (a `rayon::join` of two 50 us tasks measured 124-158 us once its helper had gone to
/// sleep, 61-71 us with it kept awake, on a 2-vCPU VM; `docs/speed.md`). `f` runs on a
/// pool thread, so its sections are started from there (no cross-thread hand-off per
/// section). The spinning stops when `f` returns.
pub fn with_workers_awake<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let done = AtomicBool::new(false);
    let owner = AtomicUsize::new(usize::MAX);
    rayon::scope(|s| {
        for _ in 1..rayon::current_num_threads() {
            s.spawn(|_| {
                while !done.load(Ordering::Acquire) {
                    // The thread running `f` may pick this up while it waits for one of
                    // `f`'s sections: it must go back to waiting, not spin over `f`.
                    if rayon::current_thread_index() == Some(owner.load(Ordering::Acquire)) {
                        return;
                    }
                    if rayon::yield_now() != Some(rayon::Yield::Executed) {
                        std::hint::spin_loop();
                    }
                }
            });
        }
        owner.store(
            rayon::current_thread_index().unwrap_or(usize::MAX),
            Ordering::Release,
        );
        let out = f();
        done.store(true, Ordering::Release);
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panel_parts_cover_the_columns_in_whole_panels() {
        for columns in [0, 1, 8, 15, 16, 24, 1000, 1008] {
            for parts in [1, 2, 3, 7, 200] {
                for width in [8, 16] {
                    let split = panel_parts(columns, parts, width);
                    let case = format!("{columns} columns, {parts} parts of {width}: {split:?}");
                    assert!(split.len() <= parts, "{case}");
                    assert!(split.iter().all(|r| !r.is_empty()), "{case}");
                    assert!(split.iter().all(|r| r.start % width == 0), "{case}");
                    let ends: Vec<usize> = split.iter().map(|r| r.end).collect();
                    let starts: Vec<usize> = split.iter().map(|r| r.start).collect();
                    assert_eq!(starts.first().copied().unwrap_or(0), 0, "{case}");
                    assert_eq!(ends.last().copied().unwrap_or(0), columns, "{case}");
                    assert_eq!(
                        &starts[1.min(starts.len())..],
                        &ends[..ends.len().saturating_sub(1)],
                        "{case}"
                    );
                    // More than one panel is never left to one thread.
                    if parts >= 2 && columns > width {
                        assert!(split.len() >= 2, "{case}");
                    }
                }
            }
        }
    }
}
