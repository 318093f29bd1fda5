//! The copy heap against the system allocator, at 10 K, 100 K and 1 M live blocks (a benchmark,
//! not a test): how the cost of an allocation grows with the number of blocks a heap holds.
//!
//! ```sh
//! cargo bench -p plugin-guest --bench heap            # every live count
//! cargo bench -p plugin-guest --bench heap -- 10000   # only these live counts
//! ```
//!
//! For each live count, each allocator:
//! - **fill**: allocates the live blocks;
//! - **churn**: a fixed number of steps, each freeing one random live block and allocating one
//!   of a new random size in its place, one step in ten resizing a live block instead
//!   (`realloc`), so the heap fragments as a long-lived plugin's does;
//! - **free**: frees every block.
//!
//! Sizes: 60 % of 16–128 bytes, 25 % 129–1,024, 14 % 1–8 KiB, 1 % 8–64 KiB, from one seeded
//! sequence, so both allocators get the same requests. The copy heap runs on a thread that caches
//! small blocks, as the plugin runtime's threads do. The figures are nanoseconds per operation,
//! and the last column is the copy heap's time over the system allocator's, in the same run.

// It drives the allocators through `GlobalAlloc`, whose calls are `unsafe` by nature.
#![allow(unsafe_code)]

use std::{
    alloc::{GlobalAlloc, Layout, System},
    time::Instant,
};

use plugin_guest::heap::{self, CopyHeap};

/// Steps of the churn phase at every live count, so the per-step figures compare.
const CHURN_STEPS: usize = 1_000_000;

/// A small deterministic generator (xorshift64*), so both allocators see the same sequence.
struct Sequence(u64);

impl Sequence {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }

    fn between(&mut self, low: usize, high: usize) -> usize {
        low + self.below(high - low + 1)
    }

    fn size(&mut self) -> usize {
        match self.below(100) {
            0..60 => self.between(16, 128),
            60..85 => self.between(129, 1024),
            85..99 => self.between(1025, 8192),
            _ => self.between(8193, 65536),
        }
    }
}

#[derive(Clone, Copy)]
struct Figures {
    fill_ns: f64,
    churn_ns: f64,
    free_ns: f64,
}

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap_or(Layout::new::<u64>())
}

/// Runs the three phases on `allocator` with `live` blocks.
fn measure(allocator: &dyn GlobalAlloc, live: usize) -> Figures {
    let mut sequence = Sequence(0x9E37_79B9_7F4A_7C15 ^ live as u64);
    let mut blocks: Vec<(*mut u8, usize)> = Vec::with_capacity(live);

    let began = Instant::now();
    for _ in 0..live {
        let size = sequence.size();
        // SAFETY: a non-zero layout; the block is kept with its size and freed with it.
        let block = unsafe { allocator.alloc(layout(size)) };
        assert!(!block.is_null(), "out of memory while filling");
        // Touch the block, as a program would.
        // SAFETY: the block has at least one byte.
        unsafe { block.write(1) };
        blocks.push((block, size));
    }
    let fill = began.elapsed();

    let began = Instant::now();
    for step in 0..CHURN_STEPS {
        let index = sequence.below(live);
        let (block, size) = blocks[index];
        let new_size = sequence.size();
        // SAFETY: `block` is live with `size`; it is resized or freed once, and its successor
        // takes its place.
        let replacement = unsafe {
            if step % 10 == 0 {
                allocator.realloc(block, layout(size), new_size)
            } else {
                allocator.dealloc(block, layout(size));
                allocator.alloc(layout(new_size))
            }
        };
        assert!(!replacement.is_null(), "out of memory while churning");
        // SAFETY: the block has at least one byte.
        unsafe { replacement.write(2) };
        blocks[index] = (replacement, new_size);
    }
    let churn = began.elapsed();

    let began = Instant::now();
    for (block, size) in blocks.drain(..) {
        // SAFETY: each block is live with its size and freed once.
        unsafe { allocator.dealloc(block, layout(size)) };
    }
    let free = began.elapsed();

    Figures {
        fill_ns: fill.as_nanos() as f64 / live as f64,
        churn_ns: churn.as_nanos() as f64 / CHURN_STEPS as f64,
        free_ns: free.as_nanos() as f64 / live as f64,
    }
}

fn main() {
    let requested: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|arg| arg.replace('_', "").parse().ok())
        .collect();
    let counts = if requested.is_empty() {
        vec![10_000, 100_000, 1_000_000]
    } else {
        requested
    };
    println!("ns per operation; churn = {CHURN_STEPS} steps of free + alloc (1 in 10 a realloc)\n");
    println!("| live blocks | phase | system | copy heap | copy / system |");
    println!("|---|---|---|---|---|");
    for live in counts {
        // Each allocator on a thread of its own; the copy heap's caches small blocks, as the
        // plugin runtime's threads do.
        let system = std::thread::spawn(move || measure(&System, live))
            .join()
            .unwrap_or_else(|_| panic!("the system allocator's run panicked"));
        let copy = std::thread::spawn(move || {
            heap::enter_thread();
            let figures = measure(&CopyHeap, live);
            heap::leave_thread();
            figures
        })
        .join()
        .unwrap_or_else(|_| panic!("the copy heap's run panicked"));
        for (phase, system, copy) in [
            ("fill", system.fill_ns, copy.fill_ns),
            ("churn", system.churn_ns, copy.churn_ns),
            ("free", system.free_ns, copy.free_ns),
        ] {
            println!(
                "| {live} | {phase} | {system:.1} | {copy:.1} | {:.2} |",
                copy / system
            );
        }
    }
}
