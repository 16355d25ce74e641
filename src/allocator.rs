//! The process's allocator (installed by `src/main.rs`): the system one, but every large
//! block (activations, packed weights, scratch buffers) starts on a cache line.
//!
//! glibc aligns blocks to 16 bytes. A kernel's 32-byte (AVX2) or 64-byte (AVX-512) load
//! from a 16-byte-aligned buffer then straddles two cache lines half the time (AVX2) or
//! every time (AVX-512), and a split load takes a second load slot in kernels that loads
//! already bound. EfficientNet-Lite0's 3x3 depthwise convolutions, one thread on an AMD
//! Zen 3 (AVX2), ran 13-20% faster from an input on a 32- or 64-byte boundary than from one
//! 16 or 48 bytes past it (interleaved runs in one process; its 5x5 ones 0-13%).

use std::alloc::{GlobalAlloc, Layout, System};

/// A cache line.
pub const LINE: usize = 64;

/// Blocks from this size on are aligned to [`LINE`]; smaller ones (strings, small vectors)
/// keep the system's alignment, so they cost no padding.
pub const LARGE: usize = 4096;

/// [`System`], with blocks of at least [`LARGE`] bytes aligned to [`LINE`].
pub struct CacheAligned;

/// The layout actually asked of the system for `layout`: the same for every call about one
/// block (alloc, realloc, dealloc), since it depends only on the size and alignment.
pub fn adjusted(layout: Layout) -> Layout {
    if layout.size() >= LARGE && layout.align() < LINE {
        Layout::from_size_align(layout.size(), LINE).unwrap_or(layout)
    } else {
        layout
    }
}

// SAFETY: every call forwards to `System` with the adjusted layout, which has the caller's
// size and at least its alignment, and a block is always freed or grown with the layout it
// was allocated with (`adjusted` is a function of the caller's layout, which the caller
// must pass unchanged).
unsafe impl GlobalAlloc for CacheAligned {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, for a layout of the same size.
        unsafe { System.alloc(adjusted(layout)) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        unsafe { System.alloc_zeroed(adjusted(layout)) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` with this layout, so from `System` with the
        // adjusted one.
        unsafe { System.dealloc(ptr, adjusted(layout)) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = adjusted(layout);
        // SAFETY: the caller guarantees `new_size`, rounded up to the alignment, does not
        // overflow `isize`, and the alignment is the caller's, valid already.
        let new = adjusted(unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) });
        if new.align() == old.align() {
            // SAFETY: `ptr` is `System`'s block of layout `old`; the alignment is unchanged.
            return unsafe { System.realloc(ptr, old, new_size) };
        }
        // Crossing `LARGE` changes the alignment: a new block, the contents moved over.
        // SAFETY: `new_size` is non-zero (the caller's contract) and the alignment valid.
        let moved = unsafe { System.alloc(new) };
        if !moved.is_null() {
            // SAFETY: both blocks hold at least the smaller size and do not overlap; the
            // old one is freed with its own layout.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                System.dealloc(ptr, old);
            }
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_large_blocks_are_aligned_more() {
        let small = Layout::from_size_align(LARGE - 1, 4).unwrap();
        assert_eq!(adjusted(small), small);
        let large = Layout::from_size_align(LARGE, 4).unwrap();
        assert_eq!(adjusted(large).align(), LINE);
        assert_eq!(adjusted(large).size(), LARGE);
        let page = Layout::from_size_align(LARGE, 4096).unwrap();
        assert_eq!(adjusted(page), page, "a larger alignment is kept");
    }

    #[test]
    fn blocks_keep_their_contents_across_the_threshold() {
        let a = CacheAligned;
        let layout = Layout::array::<u32>(16).unwrap();
        // SAFETY: every block is used within its size and freed with its layout.
        unsafe {
            let p = a.alloc(layout).cast::<u32>();
            assert!(!p.is_null());
            for i in 0..16 {
                p.add(i).write(i as u32 * 3);
            }
            // Small -> large: moved to a cache-line boundary.
            let grown = a.realloc(p.cast(), layout, 3 * LARGE).cast::<u32>();
            assert_eq!(grown as usize % LINE, 0);
            assert!((0..16).all(|i| *grown.add(i) == i as u32 * 3));
            let large = Layout::from_size_align(3 * LARGE, layout.align()).unwrap();
            // Large -> larger, then back under the threshold.
            let grown = a.realloc(grown.cast(), large, 5 * LARGE).cast::<u32>();
            assert_eq!(grown as usize % LINE, 0);
            let larger = Layout::from_size_align(5 * LARGE, layout.align()).unwrap();
            let shrunk = a.realloc(grown.cast(), larger, 64).cast::<u32>();
            assert!((0..16).all(|i| *shrunk.add(i) == i as u32 * 3));
            a.dealloc(
                shrunk.cast(),
                Layout::from_size_align(64, layout.align()).unwrap(),
            );
            // Zeroed and aligned.
            let z = a.alloc_zeroed(large);
            assert_eq!(z as usize % LINE, 0);
            assert!(std::slice::from_raw_parts(z, 3 * LARGE)
                .iter()
                .all(|&b| b == 0));
            a.dealloc(z, large);
        }
    }
}
