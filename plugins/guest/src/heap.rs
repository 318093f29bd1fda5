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
//! Each shard is a TLSF heap (two-level segregated fit, the `rlsf` crate): free blocks sit in
//! lists by size class, found through two bitmaps, and a request is served from a list whose
//! every block fits it. Allocation, free and resize take the same few steps however many blocks
//! the heap holds. The heap this replaced (a first fit within coarser bins) walked its bins'
//! lists, and with tens of thousands of live blocks a walk cost more than the work it served
//! (10,000 environments in one deployment took two minutes; README has the figures).
//!
//! The host asks a retired copy for the range (`powerautomation_plugin_heap`, exported by the
//! macro), closes the library, and unmaps the range: whatever the copy's code left allocated —
//! in statics, in leaked boxes — is gone with it. That is sound because nothing a copy allocated
//! may outlive it (the host copies what it receives, and the copy's threads are joined before
//! it is closed), an invariant the loader already relies on.
//!
//! Small blocks (at most [`CACHED_UP_TO`] bytes, alignment at most 16) are rounded up to a size
//! class, and the plugin's own runtime threads keep a few freed blocks of each class in a
//! thread-local cache that serves their next allocations of that class without the shard's lock
//! (a locked instruction per allocation and per free was most of the heap's cost), at most
//! `CACHED_PER_CLASS` (16) blocks per class (~132 KiB per thread at most). A cache has no
//! destructor: the runtime's thread-stop hook ([`leave_thread`]) gives its blocks back to their
//! shards, and what the thread frees after it (its own teardown) goes straight to the shards;
//! threads the runtime did not start (host threads calling in) never cache. A block cached by a
//! thread that never ran the hook is still inside the copy's range and goes when it is unmapped.
//!
//! If the range cannot be reserved (a strict overcommit policy, a small address-space limit),
//! the copy falls back to the system allocator for good and its statics leak as before.
//!
//! This and the loader are the only places with `unsafe` code: an allocator cannot be written
//! without it.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::{Cell, UnsafeCell},
    num::NonZeroUsize,
    ptr::{null_mut, NonNull},
    sync::{
        atomic::{AtomicU8, AtomicUsize, Ordering},
        Mutex, MutexGuard, PoisonError,
    },
};

use crossbeam_utils::CachePadded;
use nix::sys::mman::{MapFlags, MmapAdvise, ProtFlags};
use rlsf::Tlsf;

/// Independent heaps; a thread allocates from one of them.
pub const SHARDS: usize = 16;
/// Address space tried for the copy's heap, largest first.
const RESERVATIONS: [usize; 4] = [64 << 30, 16 << 30, 4 << 30, 1 << 30];
/// Blocks at least this large give their pages back to the system when freed.
const RELEASE_AT: usize = 128 * 1024;
/// Bytes at each end of a freed block that the heap may use for its own bookkeeping (a free
/// block's header is 32 bytes at its start, which lies at most 16 bytes before the pointer for
/// alignments up to 16; the next block's header follows its end).
const BOOKKEEPING: usize = 64;
/// Size classes of small blocks: multiples of `CLASS_STEP` up to `CACHED_UP_TO` bytes.
const CLASS_STEP: usize = 16;
pub const CACHED_UP_TO: usize = 512;
const CLASSES: usize = CACHED_UP_TO / CLASS_STEP;
/// Freed blocks a thread keeps per class (4 KiB of pointers per thread in all).
const CACHED_PER_CLASS: usize = 16;

const UNSET: u8 = 0;
const SETTING_UP: u8 = 1;
const READY: u8 = 2;
const SYSTEM: u8 = 3;

static STATE: AtomicU8 = AtomicU8::new(UNSET);
static BASE: AtomicUsize = AtomicUsize::new(0);
static SIZE: AtomicUsize = AtomicUsize::new(0);
static PAGE: AtomicUsize = AtomicUsize::new(4096);
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

/// First-level classes: powers of two from 32 bytes up to 8 GiB, more than a shard's part of
/// the largest range (64 GiB / 16), so a shard's whole part is one free block at first.
const FIRST_LEVELS: usize = 28;
/// Second-level classes per power of two: a request is rounded up by at most 1/32.
const SECOND_LEVELS: usize = 32;

/// One shard's heap: `u32` bitmaps hold both levels' classes.
type ShardHeap = Tlsf<'static, u32, u32, FIRST_LEVELS, SECOND_LEVELS>;

struct Shard {
    heap: ShardHeap,
    claimed: bool,
}

/// Each shard on cache lines of its own: a shard's lock and state are written by every
/// allocation of its threads, and unpadded, two shards shared a line (a shard is ~40 bytes), so
/// threads on different cores took each other's line on every allocation.
///
/// The lock is std's: a futex that spins briefly, then sleeps. A spin lock that never sleeps
/// burned whole time slices whenever the holder was preempted, which is the common case with
/// more threads than cores (a block is freed into the shard of the thread that allocated it, so
/// the store's blocking threads and the runtime's meet on one shard): 12 % of the host's CPU
/// during a 10,000-environment deployment on 2 cores. It allocates nothing and registers no
/// thread-local destructor.
static HEAPS: [CachePadded<Mutex<Shard>>; SHARDS] = [const {
    CachePadded::new(Mutex::new(Shard {
        heap: ShardHeap::new(),
        claimed: false,
    }))
}; SHARDS];

thread_local! {
    /// The shard this thread allocates from (`usize::MAX` until its first allocation).
    static MY_SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
    /// Freed small blocks this thread reuses, while it is one of the runtime's threads.
    static CACHE: UnsafeCell<ThreadCache> = const { UnsafeCell::new(ThreadCache::EMPTY) };
}

/// A thread's cache of freed small blocks, by size class. Plain data: no destructor, so using it
/// registers nothing that could run after the copy is closed.
struct ThreadCache {
    enabled: bool,
    counts: [usize; CLASSES],
    blocks: [[*mut u8; CACHED_PER_CLASS]; CLASSES],
}

impl ThreadCache {
    const EMPTY: ThreadCache = ThreadCache {
        enabled: false,
        counts: [0; CLASSES],
        blocks: [[null_mut(); CACHED_PER_CLASS]; CLASSES],
    };
}

/// Runs `f` on this thread's cache. `None` only if the thread-local cannot be reached, which a
/// thread-local without a destructor never is; the allocator then takes the shard path.
fn with_cache<R>(f: impl FnOnce(&mut ThreadCache) -> R) -> Option<R> {
    CACHE
        .try_with(|cache| {
            // SAFETY: the cache is this thread's alone, and `f` (the callers below) neither
            // allocates nor frees, so nothing re-enters it while the reference lives.
            f(unsafe { &mut *cache.get() })
        })
        .ok()
}

/// The size class of a small layout, and the layout every block of that class has in the heap
/// (its size rounded up to the class, 16-aligned). `None` for other layouts. Allocation, free
/// and resize all go through this one rounding, so the heap always sees a block with the layout
/// it served it with.
fn class_of(layout: Layout) -> Option<(usize, Layout)> {
    if layout.align() > CLASS_STEP || layout.size() == 0 || layout.size() > CACHED_UP_TO {
        return None;
    }
    let class = (layout.size() - 1) / CLASS_STEP;
    class_layout(class).map(|block| (class, block))
}

/// The layout every block of `class` has in the heap.
fn class_layout(class: usize) -> Option<Layout> {
    Layout::from_size_align((class + 1) * CLASS_STEP, CLASS_STEP).ok()
}

/// A cached block of `class`, if this thread caches and has one.
fn cache_take(class: usize) -> Option<*mut u8> {
    with_cache(|cache| {
        if !cache.enabled {
            return None;
        }
        let count = cache.counts.get_mut(class)?;
        let index = count.checked_sub(1)?;
        let block = *cache.blocks.get(class)?.get(index)?;
        *count = index;
        Some(block)
    })
    .flatten()
}

/// Keeps a freed block of `class` in this thread's cache; false when the thread does not cache
/// or the class is full.
fn cache_keep(class: usize, block: *mut u8) -> bool {
    with_cache(|cache| {
        if !cache.enabled {
            return false;
        }
        let (Some(count), Some(slots)) = (cache.counts.get_mut(class), cache.blocks.get_mut(class))
        else {
            return false;
        };
        match slots.get_mut(*count) {
            Some(slot) => {
                *slot = block;
                *count += 1;
                true
            }
            None => false,
        }
    })
    .unwrap_or(false)
}

/// Lets this thread cache freed small blocks. Called by the runtime on each of its threads as
/// it starts; [`leave_thread`] must run before the thread ends.
pub fn enter_thread() {
    with_cache(|cache| cache.enabled = true);
}

/// Stops this thread's caching and gives every cached block back to its shard. Called by the
/// runtime on each of its threads as it stops.
pub fn leave_thread() {
    let mut cached = ThreadCache::EMPTY;
    with_cache(|cache| std::mem::swap(cache, &mut cached));
    for (class, (count, blocks)) in cached.counts.iter().zip(&cached.blocks).enumerate() {
        let Some(layout) = class_layout(class) else {
            continue;
        };
        for block in blocks.iter().take(*count) {
            let (Some(index), Some(block)) = (shard_of(*block), NonNull::new(*block)) else {
                continue;
            };
            // SAFETY: a cached block was served by the heap with its class's layout and is not
            // in use (it was freed into the cache and never handed out again).
            unsafe { free_in_shard(index, block, layout) };
        }
    }
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
        let Some(start) = NonNull::new((base + index * part) as *mut u8) else {
            return false;
        };
        let span = NonNull::slice_from_raw_parts(start, part);
        // SAFETY: the span lies inside the range reserved for this copy, belongs to this
        // shard only, is readable and writable (pages are backed on first touch), and lives
        // until the host unmaps the range after the copy is closed, when no heap is used again.
        shard.claimed = unsafe { shard.heap.insert_free_block_ptr(span) }.is_some();
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
// the one that served it. A small block always has its class's layout in the heap (`class_of`
// is the one rounding), and while it sits in a thread's cache it is in use as far as the heap
// knows, handed out again only by that thread. Blocks from before the range existed, or when it
// could not be reserved, are the system allocator's and go back to it; they are never cached.
unsafe impl GlobalAlloc for CopyHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !ready() {
            // SAFETY: forwarded as received.
            return unsafe { System.alloc(layout) };
        }
        match class_of(layout) {
            Some((class, block)) => cache_take(class).unwrap_or_else(|| alloc_in_shard(block)),
            None => alloc_in_shard(layout),
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let (Some(index), Some(block)) = (shard_of(ptr), NonNull::new(ptr)) else {
            // SAFETY: not from the range: the system allocator served it.
            return unsafe { System.dealloc(ptr, layout) };
        };
        let layout = match class_of(layout) {
            Some((class, block)) => {
                if cache_keep(class, ptr) {
                    return;
                }
                block
            }
            None => layout,
        };
        // SAFETY: the block is shard `index`'s and was served with `layout` (rounded to its
        // class as it was when served).
        unsafe { free_in_shard(index, block, layout) };
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let (Some(index), Some(block)) = (shard_of(ptr), NonNull::new(ptr)) else {
            // SAFETY: not from the range: the system allocator served it.
            return unsafe { System.realloc(ptr, layout, new_size) };
        };
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return null_mut();
        };
        match (class_of(layout), class_of(new_layout)) {
            // Same class: the block already has room for the new size.
            (Some((old, _)), Some((new, _))) if old == new => return ptr,
            // A small block is never resized in place: the heap knows it by its class layout.
            (Some(_), _) | (_, Some(_)) => {
                // SAFETY: a fresh block; the old one is copied, then freed with its layout.
                return unsafe { self.move_block(ptr, layout, new_layout) };
            }
            (None, None) => {}
        }
        // In its own shard first: shrinking is always in place; growing is in place when the
        // next block is free and large enough, else a move within the shard (under its lock,
        // which only this thread's neighbours on the shard ever wait for).
        // SAFETY: the block is this shard's, served with `layout`, whose alignment the new
        // layout keeps; on failure the heap leaves the block as it was.
        if let Some(resized) = unsafe { lock(index).heap.reallocate(block, new_layout) } {
            return resized.as_ptr();
        }
        // The shard is full: a block from another.
        // SAFETY: as above.
        unsafe { self.move_block(ptr, layout, new_layout) }
    }
}

impl CopyHeap {
    /// Resizes by moving: a new block with `new_layout`, the smaller size copied, the old block
    /// freed.
    ///
    /// # Safety
    /// `ptr` is a live block this heap served with `layout`.
    unsafe fn move_block(&self, ptr: *mut u8, layout: Layout, new_layout: Layout) -> *mut u8 {
        // SAFETY: `new_layout` has a non-zero size (realloc's contract); the old block is live
        // with `layout` (the caller's contract) and freed only after its bytes were copied.
        unsafe {
            let moved = self.alloc(new_layout);
            if !moved.is_null() {
                std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_layout.size()));
                self.dealloc(ptr, layout);
            }
            moved
        }
    }
}

/// Shard `index`, locked. Nothing panics while a shard is locked, so a poisoned lock (which
/// cannot happen) would still guard a consistent heap.
fn lock(index: usize) -> MutexGuard<'static, Shard> {
    HEAPS[index % SHARDS]
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// A block from this thread's shard, or the next one with room.
fn alloc_in_shard(layout: Layout) -> *mut u8 {
    let first = my_shard();
    for offset in 0..SHARDS {
        let index = (first + offset) % SHARDS;
        let mut shard = lock(index);
        if !claim(&mut shard, index) {
            continue;
        }
        if let Some(block) = shard.heap.allocate(layout) {
            return block.as_ptr();
        }
    }
    null_mut()
}

/// Frees a block into shard `index`, the one whose range holds it.
///
/// # Safety
/// `block` is a live block that shard `index` served with `layout`.
unsafe fn free_in_shard(index: usize, block: NonNull<u8>, layout: Layout) {
    let mut shard = lock(index);
    // SAFETY: `block` was served by this shard with `layout` (the caller's contract, and the
    // shard is the one whose range holds it).
    unsafe { shard.heap.deallocate(block, layout.align()) };
    if layout.size() >= RELEASE_AT {
        // Still under the shard's lock: nobody can be handed these pages before they are
        // released.
        release(block.as_ptr(), layout.size());
    }
    drop(shard);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A block of `size` bytes with alignment `align`, every byte set to `fill`.
    fn filled_block(
        heap: &CopyHeap,
        size: usize,
        align: usize,
        fill: u8,
    ) -> Option<(*mut u8, Layout)> {
        let layout = Layout::from_size_align(size, align).ok()?;
        // SAFETY: a non-zero layout (every caller asks for at least a byte); `size` bytes of
        // the fresh block are written.
        unsafe {
            let block = heap.alloc(layout);
            if block.is_null() {
                return None;
            }
            std::ptr::write_bytes(block, fill, size);
            Some((block, layout))
        }
    }

    /// How many bytes of a filled block lost their `fill`; frees the block.
    ///
    /// # Safety
    /// `block` is a live block of `heap` served with `layout`, its bytes written with `fill`.
    unsafe fn check_and_free(heap: &CopyHeap, block: *mut u8, layout: Layout, fill: u8) -> usize {
        // SAFETY: the caller's contract.
        unsafe {
            let bytes = std::slice::from_raw_parts(block, layout.size());
            let damaged = bytes.iter().filter(|byte| **byte != fill).count();
            heap.dealloc(block, layout);
            damaged
        }
    }

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
                        let fill = seed.wrapping_mul(31).wrapping_add(round as u8) | 1;
                        let Some((block, layout)) = filled_block(&heap, size, 16, fill) else {
                            continue;
                        };
                        std::thread::yield_now();
                        // SAFETY: the block was just filled here and is freed once.
                        damaged += unsafe { check_and_free(&heap, block, layout, fill) };
                    }
                    damaged
                })
            })
            .collect();
        let damaged: usize = threads.into_iter().map(|t| t.join().unwrap_or(1)).sum();
        assert_eq!(damaged, 0, "bytes of live blocks were lost");
    }

    #[test]
    fn a_caching_thread_reuses_its_small_blocks_and_gives_them_back_when_it_leaves() {
        let outcome = std::thread::spawn(|| {
            let heap = CopyHeap;
            let small = Layout::from_size_align(40, 8).unwrap_or(Layout::new::<u64>());
            let same_class = Layout::from_size_align(33, 1).unwrap_or(Layout::new::<u8>());
            enter_thread();
            // SAFETY: non-zero layouts; every block is freed with the layout it was served with.
            let (first, again, cached_before, cached_after) = unsafe {
                let first = heap.alloc(small);
                heap.dealloc(first, small);
                let again = heap.alloc(same_class);
                heap.dealloc(again, same_class);
                let cached_before = with_cache(|cache| cache.counts.iter().sum::<usize>());
                leave_thread();
                let cached_after = with_cache(|cache| cache.counts.iter().sum::<usize>());
                (first as usize, again as usize, cached_before, cached_after)
            };
            (first, again, cached_before, cached_after)
        })
        .join();
        let Ok((first, again, cached_before, cached_after)) = outcome else {
            panic!("the thread panicked");
        };
        assert_eq!(
            first, again,
            "a block of the same class comes from the cache"
        );
        assert_eq!(cached_before, Some(1));
        assert_eq!(
            cached_after,
            Some(0),
            "leaving gives the cached blocks back"
        );
    }

    #[test]
    fn resizing_across_classes_keeps_the_contents_with_and_without_a_cache() {
        for caching in [true, false] {
            let damaged = std::thread::spawn(move || {
                let heap = CopyHeap;
                if caching {
                    enter_thread();
                }
                let mut damaged = 0usize;
                // Small, the same class, another class, large, larger, smaller, back to small.
                let sizes = [10usize, 16, 100, 1000, 5000, 3000, 20, 7];
                let Ok(mut layout) = Layout::from_size_align(sizes[0], 8) else {
                    return 1;
                };
                // SAFETY: non-zero layouts; the block is resized with its current layout and
                // freed with the last one.
                unsafe {
                    let mut block = heap.alloc(layout);
                    for (step, window) in sizes.windows(2).enumerate() {
                        let fill = step as u8 + 1;
                        std::ptr::write_bytes(block, fill, window[0]);
                        block = heap.realloc(block, layout, window[1]);
                        if block.is_null() {
                            return 1;
                        }
                        let kept = window[0].min(window[1]);
                        let bytes = std::slice::from_raw_parts(block, kept);
                        damaged += bytes.iter().filter(|byte| **byte != fill).count();
                        let Ok(next) = Layout::from_size_align(window[1], 8) else {
                            return 1;
                        };
                        layout = next;
                    }
                    heap.dealloc(block, layout);
                }
                if caching {
                    leave_thread();
                }
                damaged
            })
            .join()
            .unwrap_or(1);
            assert_eq!(damaged, 0, "caching: {caching}");
        }
    }

    /// Checks and frees blocks a producer filled: `(address, size, fill)`, alignment 8.
    fn release_checked(heap: &CopyHeap, blocks: impl Iterator<Item = (usize, usize, u8)>) -> usize {
        let mut damaged = 0;
        for (address, size, fill) in blocks {
            let Ok(layout) = Layout::from_size_align(size, 8) else {
                continue;
            };
            // SAFETY: the producer filled `size` bytes at `address` with `fill`, served with
            // this layout, and no longer touches the block; it is freed once, here.
            damaged += unsafe { check_and_free(heap, address as *mut u8, layout, fill) };
        }
        damaged
    }

    /// Blocks allocated on one thread and freed on another, caching and not, of every class and
    /// some large ones: a block handed out twice would show as a damaged pattern.
    #[test]
    fn blocks_passed_between_caching_and_other_threads_stay_whole() {
        let (sender, receiver) = std::sync::mpsc::sync_channel::<(usize, usize, u8)>(256);
        let consumer = std::thread::spawn(move || {
            let heap = CopyHeap;
            enter_thread();
            let mut damaged = 0usize;
            let mut live: Vec<(usize, usize, u8)> = Vec::new();
            for (address, size, fill) in receiver {
                // Keep some blocks alive a while, and allocate in between, so reused blocks
                // would overwrite live ones if the heap handed a block out twice.
                live.push((address, size, fill));
                let Ok(layout) = Layout::from_size_align(size, 8) else {
                    continue;
                };
                // SAFETY: a non-zero layout; freed at once with it.
                unsafe {
                    let mine = heap.alloc(layout);
                    if !mine.is_null() {
                        std::ptr::write_bytes(mine, 0xEE, size);
                        heap.dealloc(mine, layout);
                    }
                }
                if live.len() > 64 {
                    damaged += release_checked(&heap, live.drain(..32));
                }
            }
            damaged += release_checked(&heap, live.drain(..));
            leave_thread();
            damaged
        });
        let producers: Vec<_> = (0..4u8)
            .map(|seed| {
                let sender = sender.clone();
                std::thread::spawn(move || {
                    let heap = CopyHeap;
                    if seed % 2 == 0 {
                        enter_thread();
                    }
                    for round in 0..3000usize {
                        let size = if round % 50 == 0 {
                            4096 + round
                        } else {
                            1 + (round * 7 + seed as usize * 13) % CACHED_UP_TO
                        };
                        let fill = seed.wrapping_mul(61).wrapping_add(round as u8) | 1;
                        let Some((block, layout)) = filled_block(&heap, size, 8, fill) else {
                            continue;
                        };
                        // The consumer checks and frees it.
                        if sender.send((block as usize, size, fill)).is_err() {
                            // SAFETY: the block was filled here and never sent.
                            unsafe { heap.dealloc(block, layout) };
                        }
                    }
                    if seed % 2 == 0 {
                        leave_thread();
                    }
                })
            })
            .collect();
        drop(sender);
        for producer in producers {
            assert!(producer.join().is_ok());
        }
        assert_eq!(
            consumer.join().unwrap_or(1),
            0,
            "bytes of live blocks were lost"
        );
    }

    #[test]
    fn class_layouts_round_up_and_others_are_left_alone() {
        let layout = |size, align| Layout::from_size_align(size, align).ok();
        let class = |size, align| layout(size, align).and_then(class_of);
        assert_eq!(
            class(1, 1).map(|(c, l)| (c, l.size(), l.align())),
            Some((0, 16, 16))
        );
        assert_eq!(class(16, 8).map(|(c, l)| (c, l.size())), Some((0, 16)));
        assert_eq!(class(17, 8).map(|(c, l)| (c, l.size())), Some((1, 32)));
        assert_eq!(
            class(CACHED_UP_TO, 16).map(|(c, l)| (c, l.size())),
            Some((CLASSES - 1, CACHED_UP_TO))
        );
        assert!(class(CACHED_UP_TO + 1, 8).is_none());
        assert!(class(64, 32).is_none(), "alignment above 16 is not a class");
    }

    #[test]
    fn threads_spread_over_shards() {
        let shards: std::collections::HashSet<usize> = (0..8)
            .map(|_| std::thread::spawn(my_shard).join().unwrap_or(0))
            .collect();
        assert!(shards.len() > 1, "{shards:?}");
    }
}
