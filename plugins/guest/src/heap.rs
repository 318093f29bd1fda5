//! Each plugin copy's own heap, so that unloading a copy frees everything it allocated — by
//! construction, not by auditing every dependency for statics that are never freed (a signal
//! registry, TLS root certificates, a tracing callsite list…: each copy has its own statics,
//! and the host loads a new copy on every swap).
//!
//! [`export_plugin!`](crate::export_plugin) makes [`CopyHeap`] the copy's global allocator. On
//! its first allocation the copy reserves one large range of address space (pages are only
//! backed once touched) and serves every Rust allocation from it, through
//! [`SHARDS`] independent heaps so threads rarely wait on each other; a thread keeps to one
//! shard, and a block is freed into the shard whose range holds it. Large blocks that are freed
//! give their pages back at once (`MADV_DONTNEED`), so the copy's resident size follows its use.
//!
//! The host asks a retired copy for the range ([`powerautomation_plugin_heap`], exported by the
//! macro), closes the library, and unmaps the range: whatever the copy's code left allocated —
//! in statics, in leaked boxes — is gone with it. That is sound because nothing a copy allocated
//! may outlive it (the host copies what it receives, and the copy's threads are joined before
//! it is closed), an invariant the loader already relies on.
//!
//! If the range cannot be reserved (a strict overcommit policy, a small address-space limit),
//! the copy falls back to the system allocator for good and its statics leak as before.
//!
//! This and the loader are the only places with `unsafe` code: an allocator cannot be written
//! without it.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    num::NonZeroUsize,
    ptr::{null_mut, NonNull},
    sync::atomic::{AtomicU8, AtomicUsize, Ordering},
};

use crossbeam_utils::CachePadded;
use nix::sys::mman::{MapFlags, MmapAdvise, ProtFlags};
use talc::{ErrOnOom, Span, Talc};

/// Independent heaps; a thread allocates from one of them.
pub const SHARDS: usize = 16;
/// Address space tried for the copy's heap, largest first.
const RESERVATIONS: [usize; 4] = [64 << 30, 16 << 30, 4 << 30, 1 << 30];
/// Blocks at least this large give their pages back to the system when freed.
const RELEASE_AT: usize = 128 * 1024;
/// Bytes at each end of a freed block that the heap may use for its own bookkeeping.
const BOOKKEEPING: usize = 64;

const UNSET: u8 = 0;
const SETTING_UP: u8 = 1;
const READY: u8 = 2;
const SYSTEM: u8 = 3;

static STATE: AtomicU8 = AtomicU8::new(UNSET);
static BASE: AtomicUsize = AtomicUsize::new(0);
static SIZE: AtomicUsize = AtomicUsize::new(0);
static PAGE: AtomicUsize = AtomicUsize::new(4096);
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

struct Shard {
    talc: Talc<ErrOnOom>,
    claimed: bool,
}

/// Each shard on cache lines of its own: a shard's lock and state are written by every
/// allocation of its threads, and unpadded, two shards shared a line (a shard is ~40 bytes), so
/// threads on different cores took each other's line on every allocation.
static HEAPS: [CachePadded<spin::Mutex<Shard>>; SHARDS] = [const {
    CachePadded::new(spin::Mutex::new(Shard {
        talc: Talc::new(ErrOnOom),
        claimed: false,
    }))
}; SHARDS];

thread_local! {
    /// The shard this thread allocates from (`usize::MAX` until its first allocation).
    static MY_SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

pub use plugin_api::PluginHeap;

/// The copy's reserved range; `size` 0 when it has none (nothing allocated yet, or the system
/// allocator is in use). Exported by [`export_plugin!`](crate::export_plugin) as
/// `powerautomation_plugin_heap`.
pub fn reserved() -> PluginHeap {
    if STATE.load(Ordering::Acquire) == READY {
        PluginHeap {
            base: BASE.load(Ordering::Relaxed),
            size: SIZE.load(Ordering::Relaxed),
        }
    } else {
        PluginHeap { base: 0, size: 0 }
    }
}

/// Reserves the range once; false when the system allocator must be used.
fn ready() -> bool {
    loop {
        match STATE.load(Ordering::Acquire) {
            READY => return true,
            SYSTEM => return false,
            UNSET => {
                if STATE
                    .compare_exchange(UNSET, SETTING_UP, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    let state = if reserve() { READY } else { SYSTEM };
                    STATE.store(state, Ordering::Release);
                    return state == READY;
                }
            }
            _ => std::hint::spin_loop(),
        }
    }
}

fn reserve() -> bool {
    if let Ok(Some(page)) = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE) {
        if let Ok(page) = usize::try_from(page) {
            PAGE.store(page, Ordering::Relaxed);
        }
    }
    for size in RESERVATIONS {
        let Some(length) = NonZeroUsize::new(size) else {
            continue;
        };
        // SAFETY: a fresh anonymous private mapping at an address the kernel picks overlaps
        // nothing; it belongs to this copy's heap alone until the host unmaps it after the copy
        // is closed.
        let mapped = unsafe {
            nix::sys::mman::mmap_anonymous(
                None,
                length,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_NORESERVE,
            )
        };
        if let Ok(base) = mapped {
            BASE.store(base.as_ptr() as usize, Ordering::Relaxed);
            SIZE.store(size, Ordering::Relaxed);
            return true;
        }
    }
    false
}

/// The shard whose range holds `ptr`, if the heap's range does.
fn shard_of(ptr: *mut u8) -> Option<usize> {
    if STATE.load(Ordering::Acquire) != READY {
        return None;
    }
    let base = BASE.load(Ordering::Relaxed);
    let size = SIZE.load(Ordering::Relaxed);
    let address = ptr as usize;
    (address >= base && address < base + size).then(|| (address - base) / (size / SHARDS))
}

fn my_shard() -> usize {
    MY_SHARD
        .try_with(|cell| {
            let mut shard = cell.get();
            if shard == usize::MAX {
                shard = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS;
                cell.set(shard);
            }
            shard
        })
        .unwrap_or(0)
}

/// Claims shard `index`'s part of the range the first time it is used.
fn claim(shard: &mut Shard, index: usize) -> bool {
    if !shard.claimed {
        let base = BASE.load(Ordering::Relaxed);
        let part = SIZE.load(Ordering::Relaxed) / SHARDS;
        let start = (base + index * part) as *mut u8;
        // SAFETY: the span lies inside the range reserved for this copy, belongs to this
        // shard only, and is readable and writable (pages are backed on first touch).
        shard.claimed = unsafe { shard.talc.claim(Span::from_base_size(start, part)) }.is_ok();
    }
    shard.claimed
}

/// Gives the whole pages strictly inside a freed block back to the system. The heap keeps its
/// bookkeeping for a free block at the block's two ends, never in between. Called with the
/// shard's lock held, so the block cannot be handed out again in the meantime.
fn release(ptr: *mut u8, size: usize) {
    let page = PAGE.load(Ordering::Relaxed);
    let start = (ptr as usize + BOOKKEEPING).next_multiple_of(page);
    let end = (ptr as usize + size).saturating_sub(BOOKKEEPING) / page * page;
    if end > start {
        let length = end - start;
        if let Some(start) = NonNull::new(start as *mut std::ffi::c_void) {
            // SAFETY: [start, end) lies inside a block just freed into the heap and not handed
            // out again (the caller holds the shard's lock), whose pages hold no bookkeeping
            // (see above); the kernel gives zero pages back on next touch, which the heap does
            // not rely on.
            let _ = unsafe { nix::sys::mman::madvise(start, length, MmapAdvise::MADV_DONTNEED) };
        }
    }
}

/// The copy's global allocator (see the module documentation).
pub struct CopyHeap;

// SAFETY: every block is served by exactly one shard, under that shard's lock, from memory of
// the copy's own range; a block is freed or resized in the shard whose range holds it, which is
// the one that served it. Blocks from before the range existed, or when it could not be
// reserved, are the system allocator's and go back to it.
unsafe impl GlobalAlloc for CopyHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !ready() {
            // SAFETY: forwarded as received.
            return unsafe { System.alloc(layout) };
        }
        let first = my_shard();
        for offset in 0..SHARDS {
            let index = (first + offset) % SHARDS;
            let mut shard = HEAPS[index].lock();
            if !claim(&mut shard, index) {
                continue;
            }
            // SAFETY: `layout` has a non-zero size (GlobalAlloc's contract).
            if let Ok(block) = unsafe { shard.talc.malloc(layout) } {
                return block.as_ptr();
            }
        }
        null_mut()
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match (shard_of(ptr), NonNull::new(ptr)) {
            (Some(index), Some(block)) => {
                let mut shard = HEAPS[index].lock();
                // SAFETY: `block` was served by this shard with `layout` (the caller's
                // contract, and the shard is the one whose range holds it).
                unsafe { shard.talc.free(block, layout) };
                if layout.size() >= RELEASE_AT {
                    // Still under the shard's lock: nobody can be handed these pages before
                    // they are released.
                    release(ptr, layout.size());
                }
                drop(shard);
            }
            // SAFETY: not from the range: the system allocator served it.
            _ => unsafe { System.dealloc(ptr, layout) },
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let (Some(index), Some(block)) = (shard_of(ptr), NonNull::new(ptr)) else {
            // SAFETY: not from the range: the system allocator served it.
            return unsafe { System.realloc(ptr, layout, new_size) };
        };
        if new_size <= layout.size() {
            // SAFETY: the block is this shard's, with `layout`; shrinking keeps it in place.
            unsafe { HEAPS[index].lock().talc.shrink(block, layout, new_size) };
            return ptr;
        }
        // SAFETY: as above; growing in place fails cleanly when the neighbour is in use.
        if let Ok(grown) = unsafe {
            HEAPS[index]
                .lock()
                .talc
                .grow_in_place(block, layout, new_size)
        } {
            return grown.as_ptr();
        }
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return null_mut();
        };
        // SAFETY: a fresh block of the new size; the old one is copied, then freed.
        unsafe {
            let moved = self.alloc(new_layout);
            if !moved.is_null() {
                std::ptr::copy_nonoverlapping(ptr, moved, layout.size());
                self.dealloc(ptr, layout);
            }
            moved
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test binary has its own allocator; this drives `CopyHeap` directly.
    #[test]
    fn blocks_come_from_the_range_and_go_back_to_it() {
        let heap = CopyHeap;
        let small = Layout::from_size_align(48, 8).unwrap_or(Layout::new::<u64>());
        let large = Layout::from_size_align(4 << 20, 64).unwrap_or(Layout::new::<u64>());
        // SAFETY: the layouts have non-zero sizes; every block is freed with its layout.
        unsafe {
            let a = heap.alloc(small);
            let b = heap.alloc(large);
            assert!(!a.is_null() && !b.is_null());
            assert!(
                shard_of(a).is_some() && shard_of(b).is_some(),
                "served from the range"
            );
            std::ptr::write_bytes(b, 7, large.size());
            let grown = heap.realloc(a, small, 4096);
            assert!(!grown.is_null());
            heap.dealloc(grown, Layout::from_size_align(4096, 8).unwrap_or(small));
            heap.dealloc(b, large);
            // A large block freed gives its pages back; the range still serves.
            let c = heap.alloc(large);
            assert!(!c.is_null());
            heap.dealloc(c, large);
        }
        let range = reserved();
        assert!(range.size >= 1 << 30 && range.base != 0, "{range:?}");
    }

    /// Large blocks freed on one thread give their pages back while other threads allocate from
    /// the same shard: no live block may ever lose its contents.
    #[test]
    fn released_pages_never_belong_to_a_live_block() {
        // More threads than shards, so several share one.
        let threads: Vec<_> = (0..(SHARDS * 3) as u8)
            .map(|seed| {
                std::thread::spawn(move || {
                    let heap = CopyHeap;
                    let mut damaged = 0usize;
                    for round in 0..300usize {
                        let size = RELEASE_AT * (1 + (round + seed as usize) % 4);
                        let Ok(layout) = Layout::from_size_align(size, 16) else {
                            continue;
                        };
                        let fill = seed.wrapping_mul(31).wrapping_add(round as u8) | 1;
                        // SAFETY: a non-zero layout; the block is written, read and freed here.
                        unsafe {
                            let block = heap.alloc(layout);
                            if block.is_null() {
                                continue;
                            }
                            std::ptr::write_bytes(block, fill, size);
                            std::thread::yield_now();
                            let bytes = std::slice::from_raw_parts(block, size);
                            damaged += bytes.iter().filter(|byte| **byte != fill).count();
                            heap.dealloc(block, layout);
                        }
                    }
                    damaged
                })
            })
            .collect();
        let damaged: usize = threads.into_iter().map(|t| t.join().unwrap_or(1)).sum();
        assert_eq!(damaged, 0, "bytes of live blocks were lost");
    }

    #[test]
    fn threads_spread_over_shards() {
        let shards: std::collections::HashSet<usize> = (0..8)
            .map(|_| std::thread::spawn(my_shard).join().unwrap_or(0))
            .collect();
        assert!(shards.len() > 1, "{shards:?}");
    }
}
