//! A global allocator that can count live heap bytes, so memory figures are exact rather
//! than noisy resident-set sizes.
//!
//! Counting is off by default: every allocation then costs one relaxed load of a flag
//! more than the system allocator, and the timed rows are not taxed by the shared
//! counter's cache-line traffic. A [`HeapPhase`] turns it on for the phases that
//! measure heap (and only those), and off again when dropped.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};

/// Live bytes allocated (minus those freed) while counting was on.
static LIVE: AtomicIsize = AtomicIsize::new(0);
/// Whether allocations are counted now.
static COUNTING: AtomicBool = AtomicBool::new(false);

/// The system allocator, counting only while a [`HeapPhase`] is active.
pub(crate) struct Counting;

// SAFETY: every call is forwarded unchanged to the system allocator; the counter is
// only bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if COUNTING.load(Ordering::Relaxed) {
            LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        }
        // SAFETY: `ptr` was allocated by `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// A heap-measuring phase: allocations are counted while it lives.
///
/// Blocks allocated before the phase and freed during it are subtracted although they
/// were never added, so a figure can read slightly low, never high; the phases measure
/// what a step *holds* (live after minus live before), where that error is small.
pub(crate) struct HeapPhase {
    _private: (),
}

impl HeapPhase {
    /// Start counting.
    pub(crate) fn start() -> HeapPhase {
        COUNTING.store(true, Ordering::SeqCst);
        HeapPhase { _private: () }
    }

    /// Live bytes counted so far in this process's counting phases.
    pub(crate) fn live_bytes(&self) -> f64 {
        LIVE.load(Ordering::Relaxed) as f64
    }
}

impl Drop for HeapPhase {
    fn drop(&mut self) {
        COUNTING.store(false, Ordering::SeqCst);
    }
}
