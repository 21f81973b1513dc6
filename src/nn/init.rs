//! Seeded initialisers. The same seed gives the same numbers on every platform,
//! because `rand`'s `StdRng` and `random::<f64>()` are deterministic and the f64 → T
//! rounding is exact IEEE arithmetic.

use rand::Rng;

use super::Scalar;

/// Fills `xs` with independent draws from U(−bound, bound).
pub fn fill_uniform<T: Scalar, R: Rng + ?Sized>(xs: &mut [T], bound: f64, rng: &mut R) {
    for x in xs {
        *x = T::lit((rng.random::<f64>() * 2.0 - 1.0) * bound);
    }
}

/// Fills a weight of fan-in `fan_in` and fan-out `fan_out` with Glorot/Xavier uniform
/// values: U(−a, a), a = √(6 / (fan_in + fan_out)).
pub fn fill_xavier<T: Scalar, R: Rng + ?Sized>(xs: &mut [T], fan_in: usize, fan_out: usize, rng: &mut R) {
    fill_uniform(xs, (6.0 / (fan_in + fan_out) as f64).sqrt(), rng);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn same_seed_same_numbers_and_bounds_hold() {
        let mut a = vec![0.0f32; 1000];
        let mut b = vec![0.0f32; 1000];
        fill_uniform(&mut a, 0.25, &mut StdRng::seed_from_u64(7));
        fill_uniform(&mut b, 0.25, &mut StdRng::seed_from_u64(7));
        assert_eq!(a, b);
        assert!(a.iter().all(|v| v.abs() <= 0.25));
        let mean: f32 = a.iter().sum::<f32>() / 1000.0;
        assert!(mean.abs() < 0.03, "mean {mean}");
        fill_uniform(&mut b, 0.25, &mut StdRng::seed_from_u64(8));
        assert_ne!(a, b);
    }
}
