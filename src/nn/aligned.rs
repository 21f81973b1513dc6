//! A buffer of `f32` that starts on a cache line (64 bytes), for the scorer's
//! weights and scratch space: a row of 16 values is then exactly one line, and
//! where the allocator happens to place a buffer no longer decides how many
//! loads and copies straddle two lines.

use std::ops::{Deref, DerefMut};

/// One cache line of values.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(C, align(64))]
struct Line([f32; 16]);

/// A resizable, zero-initialised `f32` buffer aligned to 64 bytes; derefs to
/// `[f32]`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AlignedVec {
    lines: Vec<Line>,
    len: usize,
}

impl AlignedVec {
    /// The values of `xs`.
    pub fn from_slice(xs: &[f32]) -> Self {
        let mut v = AlignedVec::default();
        v.resize(xs.len());
        v.copy_from_slice(xs);
        v
    }

    /// Sets the length to `n`; values past the old length are 0.
    pub fn resize(&mut self, n: usize) {
        let keep = self.len.min(n);
        self.lines.resize(n.div_ceil(16), Line::default());
        self.len = n;
        // Values beyond `keep` in the last kept line may hold old data.
        self[keep..].fill(0.0);
    }
}

impl Deref for AlignedVec {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        // SAFETY: `Line` is `repr(C)` over `[f32; 16]` with no padding (64 bytes,
        // align 64), so `lines` is `16 × lines.len()` contiguous initialised f32,
        // and `len ≤ 16 × lines.len()`.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<f32>(), self.len) }
    }
}

impl DerefMut for AlignedVec {
    fn deref_mut(&mut self) -> &mut [f32] {
        // SAFETY: as in `deref`, with the unique borrow of `lines`.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<f32>(), self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_resizes_with_zeros_and_keeps_values() {
        let mut v = AlignedVec::from_slice(&[1.0, 2.0, 3.0]);
        assert_eq!(v.as_ptr() as usize % 64, 0);
        v.resize(40);
        assert_eq!(&v[..4], &[1.0, 2.0, 3.0, 0.0]);
        assert!(v[3..].iter().all(|&x| x == 0.0) && v.len() == 40);
        v[39] = 5.0;
        v.resize(2);
        v.resize(40);
        assert_eq!(&v[..3], &[1.0, 2.0, 0.0]);
        assert_eq!(v[39], 0.0, "values past a shrink come back as 0");
        assert_eq!(v.as_ptr() as usize % 64, 0);
    }
}
