//! Mean squared error.

use ndarray::{ArrayD, ArrayViewD, Zip};

use super::Scalar;

/// ```text
/// L = (1/N) Σ (y − target)²        N = number of elements
/// ```
/// Returns `(L, dL/dy)`.
///
/// # Panics
/// If the shapes differ or are empty.
pub fn mse<T: Scalar>(y: ArrayViewD<T>, target: ArrayViewD<T>) -> (T, ArrayD<T>) {
    assert_eq!(y.shape(), target.shape(), "mse: shapes differ");
    assert!(!y.is_empty(), "mse of nothing");
    let n = T::lit(y.len() as f64);
    let mut grad = ArrayD::zeros(y.raw_dim());
    let mut sum = T::zero();
    Zip::from(&mut grad).and(&y).and(&target).for_each(|g, &a, &b| {
        let d = a - b;
        sum += d * d;
        *g = T::lit(2.0) * d / n;
    });
    (sum / n, grad)
}
