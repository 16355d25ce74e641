//! Per-thread scratch buffers, reused from call to call so that kernels never allocate or
//! page-fault in steady state.

use std::cell::RefCell;
use std::thread::LocalKey;

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static TILE_SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static STRIP_SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Run `f` on `len` floats of scratch space that this thread reuses from call to call, so the
/// gathered receptive fields never cost an allocation or a page fault in steady state.
pub(super) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    scratch_from(&SCRATCH, len, f)
}

/// As [`with_scratch`], a second space for the small per-tile buffers of kernels that run
/// inside the first.
pub(super) fn with_tile_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    scratch_from(&TILE_SCRATCH, len, f)
}

/// As [`with_scratch`], a third space for a strip of an activation that kernels using the
/// other two fill and read ([`super::fused`]).
pub(super) fn with_strip_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    scratch_from(&STRIP_SCRATCH, len, f)
}

fn scratch_from<R>(
    key: &'static LocalKey<RefCell<Vec<f32>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    key.with(|s| match s.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        // Re-entered (a thread waiting in one kernel ran another's task): a private buffer.
        Err(_) => f(&mut vec![0f32; len]),
    })
}
