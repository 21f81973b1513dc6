//! Which vector instructions the kernels use, chosen at run time.
//!
//! The cell and scoring kernels are written once and compiled three times: for
//! AVX-512 (16 lanes of f32), for AVX2 with FMA (8 lanes), and portably (the
//! target's baseline: SSE2 on x86-64, NEON on aarch64); the AVX-512 path's LSTM
//! step is written in intrinsics besides (`avx512.rs`). The widest path this CPU
//! supports is used unless a caller caps it: process-wide with [`limit`] (the
//! binary does so from `ANOMALYD_ISA`), or on one thread with [`scoped`] (tests
//! run every path side by side). A training step's small matrix products (a batch
//! of at most 64 rows) take an AVX-512 kernel of ours on that path; the larger
//! products of training and batch scoring, and the small ones on the narrower
//! paths, go through `gemm`, which dispatches by itself (to its AVX-512 kernels
//! too) and ignores the cap.

use std::cell::Cell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};

/// An instruction-set path of the kernels, narrowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// The target's baseline instructions, vectorised by the compiler.
    Portable = 0,
    /// AVX2 and FMA (x86-64).
    Avx2 = 1,
    /// AVX-512 F and VL, with AVX2 and FMA (x86-64).
    Avx512 = 2,
}

impl Isa {
    /// Every path, narrowest first.
    pub const ALL: [Isa; 3] = [Isa::Portable, Isa::Avx2, Isa::Avx512];

    /// The name used by `ANOMALYD_ISA`, logs and benchmarks.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// Parses a [`name`](Isa::name).
    pub fn parse(s: &str) -> Option<Isa> {
        Isa::ALL.into_iter().find(|i| i.name() == s.trim().to_ascii_lowercase())
    }

    /// Whether this CPU can run the path.
    pub fn supported(self) -> bool {
        self <= widest()
    }

    fn from_u8(v: u8) -> Isa {
        Isa::ALL.get(usize::from(v)).copied().unwrap_or(Isa::Avx512)
    }
}

/// The widest path this CPU supports (detected once).
pub fn widest() -> Isa {
    static WIDEST: OnceLock<Isa> = OnceLock::new();
    *WIDEST.get_or_init(detect)
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Isa {
    use std::arch::is_x86_feature_detected as has;
    if has!("avx512f") && has!("avx512vl") && has!("avx2") && has!("fma") {
        Isa::Avx512
    } else if has!("avx2") && has!("fma") {
        Isa::Avx2
    } else {
        Isa::Portable
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Isa {
    Isa::Portable
}

/// The process-wide cap (`u8::MAX`: none).
static LIMIT: AtomicU8 = AtomicU8::new(u8::MAX);

thread_local! {
    /// This thread's cap, set by [`scoped`] (`u8::MAX`: none).
    static SCOPED: Cell<u8> = const { Cell::new(u8::MAX) };
}

/// Caps the path used from now on, process-wide (a narrower path for comparisons);
/// a path wider than the CPU supports is never taken.
pub fn limit(isa: Isa) {
    LIMIT.store(isa as u8, Ordering::Relaxed);
}

/// The path the kernels take on this thread now: the widest the CPU supports,
/// within the process-wide and this thread's caps.
#[inline]
pub fn active() -> Isa {
    let cap = LIMIT.load(Ordering::Relaxed).min(SCOPED.with(Cell::get));
    widest().min(Isa::from_u8(cap))
}

/// Runs `f` with this thread's kernels capped at `isa` (the cap before is restored,
/// also when `f` panics).
pub fn scoped<R>(isa: Isa, f: impl FnOnce() -> R) -> R {
    struct Restore(u8);
    impl Drop for Restore {
        fn drop(&mut self) {
            SCOPED.with(|s| s.set(self.0));
        }
    }
    let _restore = Restore(SCOPED.with(|s| s.replace(isa as u8)));
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for isa in Isa::ALL {
            assert_eq!(Isa::parse(isa.name()), Some(isa));
        }
        assert_eq!(Isa::parse(" AVX2 "), Some(Isa::Avx2));
        assert_eq!(Isa::parse("sse9"), None);
    }

    #[test]
    fn a_scoped_cap_narrows_only_its_thread_and_is_restored() {
        let top = active();
        scoped(Isa::Portable, || {
            assert_eq!(active(), Isa::Portable);
            // Another thread is not capped.
            assert_eq!(std::thread::spawn(active).join().unwrap(), top);
            // A wider cap than the CPU's is the CPU's.
            scoped(Isa::Avx512, || assert_eq!(active(), widest()));
        });
        assert_eq!(active(), top);
        let _ = std::panic::catch_unwind(|| scoped(Isa::Portable, || panic!("inside")));
        assert_eq!(active(), top);
    }
}
