//! The global allocator: mimalloc, asked the way its fast path expects.
//!
//! The `mimalloc` crate hands every allocation to `mi_malloc_aligned`, whatever its
//! alignment. mimalloc's aligned entry takes its fast path only for blocks of at most 1 KiB
//! whose free slot happens to be aligned; anything larger goes through a generic path, and a
//! size that is not a power of two is over-allocated by `align - 1` bytes and so lands in a
//! larger size class. Each request allocates several such blocks (the boxed request future is
//! about 4 KiB), which cost some 220 instructions apiece that way. Every mimalloc block is
//! aligned to at least a machine word, so layouts that ask for no more than that go to the
//! plain entries; larger alignments keep the aligned ones.

use libmimalloc_sys::{
    mi_free, mi_malloc, mi_malloc_aligned, mi_realloc, mi_realloc_aligned, mi_zalloc,
    mi_zalloc_aligned,
};
use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

/// The alignment every mimalloc block has: its size classes are whole words.
const WORD: usize = std::mem::size_of::<usize>();

pub struct Mimalloc;

// SAFETY: each method forwards to the mimalloc entry that honours the layout's alignment:
// the plain entries when it is at most a word (which every mimalloc block meets), the
// aligned ones otherwise; `dealloc` frees either kind.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= WORD {
            unsafe { mi_malloc(layout.size()) as *mut u8 }
        } else {
            unsafe { mi_malloc_aligned(layout.size(), layout.align()) as *mut u8 }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= WORD {
            unsafe { mi_zalloc(layout.size()) as *mut u8 }
        } else {
            unsafe { mi_zalloc_aligned(layout.size(), layout.align()) as *mut u8 }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        unsafe { mi_free(ptr as *mut c_void) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= WORD {
            unsafe { mi_realloc(ptr as *mut c_void, new_size) as *mut u8 }
        } else {
            unsafe { mi_realloc_aligned(ptr as *mut c_void, new_size, layout.align()) as *mut u8 }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Allocates through [`Mimalloc`] (the global allocator of this binary) and checks what
    /// Rust relies on: the alignment asked for, zeroed memory, contents kept by `realloc`.
    #[test]
    fn blocks_meet_their_layouts() {
        let sizes = [1, 3, 8, 24, 40, 100, 1000, 1025, 4024, 70_000, 1 << 21];
        for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096] {
            for size in sizes {
                let layout = Layout::from_size_align(size, align).expect("layout");
                // SAFETY: the layout is non-zero in size; every block is freed with it.
                unsafe {
                    let zeroed = Mimalloc.alloc_zeroed(layout);
                    assert!(!zeroed.is_null() && (zeroed as usize).is_multiple_of(align));
                    assert!(std::slice::from_raw_parts(zeroed, size)
                        .iter()
                        .all(|b| *b == 0));
                    Mimalloc.dealloc(zeroed, layout);
                    let block = Mimalloc.alloc(layout);
                    assert!(
                        !block.is_null() && (block as usize).is_multiple_of(align),
                        "{size}/{align}"
                    );
                    block.write_bytes(0xa5, size);
                    let grown = Mimalloc.realloc(block, layout, size * 3);
                    assert!(!grown.is_null() && (grown as usize).is_multiple_of(align));
                    assert!(std::slice::from_raw_parts(grown, size)
                        .iter()
                        .all(|b| *b == 0xa5));
                    Mimalloc.dealloc(grown, Layout::from_size_align(size * 3, align).unwrap());
                }
            }
        }
    }
}
