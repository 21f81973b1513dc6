//! The scorer allocates nothing once its workspace has grown: a counting global
//! allocator (this test binary's own) sees no allocation in a second reconstruction
//! of a window, for every cell kind, stacked and bidirectional, nor in an
//! ensemble's members scored together, nor in members widened from four bits.

use std::alloc::{GlobalAlloc, Layout, System};

use anomalyd::nn::{Autoencoder, AutoencoderConfig, CellKind, NibbleScorer, NibbleWorkspace, ScoreWorkspace, Scorer};
use rand::SeedableRng;
use rand::rngs::StdRng;

struct Counting;

thread_local! {
    /// This thread's allocations: the tests run side by side, and the harness
    /// allocates on its own threads while they do.
    static MINE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn count() {
    let _ = MINE.try_with(|c| c.set(c.get() + 1));
}

/// Allocations made by the calling thread so far.
fn allocations() -> usize {
    MINE.with(|c| c.get())
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn a_warm_scorer_allocates_nothing() {
    let kinds = [
        CellKind::RnnTanh,
        CellKind::Lstm,
        CellKind::Gru,
        CellKind::GruResetBefore,
    ];
    for (i, kind) in kinds.into_iter().enumerate() {
        for (layers, bidirectional) in [(1, false), (2, true)] {
            let mut rng = StdRng::seed_from_u64(i as u64);
            let config = AutoencoderConfig {
                kind,
                d_input: 3,
                d_hidden: 16,
                n_layers: layers,
                bidirectional,
                dropout: 0.0,
            };
            let scorer = Autoencoder::<f32>::new(config, &mut rng).compile();
            let window: Vec<f32> = (0..32 * 3).map(|k| (k as f32 * 0.37).sin()).collect();
            let mut ws = ScoreWorkspace::default();
            let cold = allocations();
            let n = scorer.reconstruct(&window, &mut ws).len();
            assert!(allocations() > cold, "a cold workspace grows (the count works)");
            assert_eq!(n, 32 * 3);
            let first = scorer.reconstruct(&window, &mut ws).to_vec();
            let before = allocations();
            let again = scorer.reconstruct(&window, &mut ws)[0];
            let allocated = allocations() - before;
            assert_eq!(allocated, 0, "{kind:?}, {layers} layers, bidirectional {bidirectional}");
            assert_eq!(again, first[0], "the same window, the same reconstruction");
        }
    }
}

#[test]
fn a_warm_ensemble_allocates_nothing() {
    // Six members of the defaults' shape: two groups stepped together on AVX-512.
    let mut rng = StdRng::seed_from_u64(7);
    let config = AutoencoderConfig::new(CellKind::Lstm, 1, 16);
    let scorers: Vec<Scorer> = (0..6)
        .map(|_| Autoencoder::<f32>::new(config.clone(), &mut rng).compile())
        .collect();
    let window: Vec<f32> = (0..32).map(|k| (k as f32 * 0.37).sin()).collect();
    let mut wss = Vec::new();
    let mut sum = 0.0;
    Scorer::reconstruct_each(&scorers, &window, &mut wss, |y| sum += y[0]);
    let before = allocations();
    let mut again = 0.0;
    Scorer::reconstruct_each(&scorers, &window, &mut wss, |y| again += y[0]);
    assert_eq!(allocations() - before, 0);
    assert_eq!(again, sum, "the same window, the same reconstructions");
}

#[test]
fn a_warm_four_bit_ensemble_allocates_nothing() {
    let mut rng = StdRng::seed_from_u64(8);
    let config = AutoencoderConfig::new(CellKind::Lstm, 1, 16);
    let members: Vec<NibbleScorer> = (0..3)
        .map(|_| Autoencoder::<f32>::new(config.clone(), &mut rng).compile().to_nibbles())
        .collect();
    let window: Vec<f32> = (0..32).map(|k| (k as f32 * 0.37).sin()).collect();
    let mut ws = NibbleWorkspace::default();
    let mut sum = 0.0;
    NibbleScorer::reconstruct_each(&members, &window, &mut ws, |y| sum += y[0]);
    let before = allocations();
    let mut again = 0.0;
    NibbleScorer::reconstruct_each(&members, &window, &mut ws, |y| again += y[0]);
    assert_eq!(allocations() - before, 0);
    assert_eq!(again, sum, "the same window, the same reconstructions");
}
