//! Optimisers over flat parameter lists, and global-norm gradient clipping.
//!
//! Every model exposes its parameters and gradients as lists of flat slices in the same
//! order (`tensors_mut()` / `tensors()`), so one optimiser serves every model. State
//! is allocated on the first step, matched by position.

use super::Scalar;

/// One update rule.
pub trait Optimizer<T> {
    /// Applies one update to `params` from `grads` (same order and lengths).
    ///
    /// # Panics
    /// If the lists differ in count or length, or from the first call's.
    fn step(&mut self, params: &mut [&mut [T]], grads: &[&[T]]);
}

fn check_shapes<T>(state: &mut Vec<Vec<T>>, params: &[&mut [T]], grads: &[&[T]], zero: T)
where
    T: Copy,
{
    assert_eq!(params.len(), grads.len(), "optimizer: params and grads differ in count");
    for (p, g) in params.iter().zip(grads) {
        assert_eq!(
            p.len(),
            g.len(),
            "optimizer: a gradient's length differs from its parameter"
        );
    }
    if state.is_empty() {
        *state = params.iter().map(|p| vec![zero; p.len()]).collect();
    }
    assert_eq!(
        state.len(),
        params.len(),
        "optimizer: parameter list changed between steps"
    );
}

/// Stochastic gradient descent with optional momentum, as `torch.optim.SGD`:
///
/// ```text
/// b = μ b + g   (b = g on the first step),   p -= lr · b
/// ```
#[derive(Clone, Debug)]
pub struct Sgd<T> {
    /// Learning rate.
    pub lr: T,
    /// Momentum μ (0 for plain SGD).
    pub momentum: T,
    velocity: Vec<Vec<T>>,
}

impl<T: Scalar> Sgd<T> {
    /// A new optimiser.
    pub fn new(lr: T, momentum: T) -> Self {
        Sgd {
            lr,
            momentum,
            velocity: Vec::new(),
        }
    }
}

impl<T: Scalar> Optimizer<T> for Sgd<T> {
    fn step(&mut self, params: &mut [&mut [T]], grads: &[&[T]]) {
        let first = self.velocity.is_empty();
        check_shapes(&mut self.velocity, params, grads, T::zero());
        for ((p, g), b) in params.iter_mut().zip(grads).zip(&mut self.velocity) {
            for i in 0..p.len() {
                b[i] = if first { g[i] } else { self.momentum * b[i] + g[i] };
                p[i] -= self.lr * if self.momentum == T::zero() { g[i] } else { b[i] };
            }
        }
    }
}

/// Hyper-parameters of Adam and AdamW (PyTorch's defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamParams {
    /// Learning rate.
    pub lr: f64,
    /// β1.
    pub beta1: f64,
    /// β2.
    pub beta2: f64,
    /// ε, added after bias correction.
    pub eps: f64,
    /// Decoupled weight decay (AdamW); 0 gives Adam.
    pub weight_decay: f64,
}

impl Default for AdamParams {
    fn default() -> Self {
        AdamParams {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// Adam (weight_decay 0) or AdamW (decoupled weight decay), exactly as PyTorch:
///
/// ```text
/// p *= 1 − lr·λ                      (AdamW only)
/// m = β1 m + (1−β1) g,   v = β2 v + (1−β2) g²
/// p -= lr/(1−β1^t) · m / (√v/√(1−β2^t) + ε)
/// ```
#[derive(Clone, Debug)]
pub struct Adam<T> {
    /// Hyper-parameters.
    pub params: AdamParams,
    t: i32,
    m: Vec<Vec<T>>,
    v: Vec<Vec<T>>,
}

impl<T: Scalar> Adam<T> {
    /// A new optimiser.
    ///
    /// # Panics
    /// If a hyper-parameter is out of range (lr ≤ 0, β outside [0, 1), ε < 0, λ < 0).
    pub fn new(params: AdamParams) -> Self {
        assert!(
            params.lr > 0.0 && params.eps >= 0.0 && params.weight_decay >= 0.0,
            "bad adam params {params:?}"
        );
        assert!(
            (0.0..1.0).contains(&params.beta1) && (0.0..1.0).contains(&params.beta2),
            "bad betas {params:?}"
        );
        Adam {
            params,
            t: 0,
            m: Vec::new(),
            v: Vec::new(),
        }
    }

    /// Steps taken so far.
    pub fn steps(&self) -> i32 {
        self.t
    }
}

impl<T: Scalar> Optimizer<T> for Adam<T> {
    fn step(&mut self, params: &mut [&mut [T]], grads: &[&[T]]) {
        check_shapes(&mut self.m, params, grads, T::zero());
        check_shapes(&mut self.v, params, grads, T::zero());
        self.t += 1;
        let hp = self.params;
        let (b1, b2) = (T::lit(hp.beta1), T::lit(hp.beta2));
        let lr = T::lit(hp.lr);
        let bc1 = T::one() - b1.powi(self.t);
        let bc2_sqrt = (T::one() - b2.powi(self.t)).sqrt();
        let step_size = lr / bc1;
        let eps = T::lit(hp.eps);
        let decay = T::one() - lr * T::lit(hp.weight_decay);
        for (((p, g), m), v) in params.iter_mut().zip(grads).zip(&mut self.m).zip(&mut self.v) {
            for i in 0..p.len() {
                if hp.weight_decay != 0.0 {
                    p[i] *= decay;
                }
                m[i] = b1 * m[i] + (T::one() - b1) * g[i];
                v[i] = b2 * v[i] + (T::one() - b2) * g[i] * g[i];
                let denom = v[i].sqrt() / bc2_sqrt + eps;
                p[i] -= step_size * m[i] / denom;
            }
        }
    }
}

/// Scales all gradients together so their global L2 norm is at most `max_norm`, as
/// `torch.nn.utils.clip_grad_norm_`; returns the norm before clipping.
///
/// ```text
/// n = √(Σ g²),   g *= min(max_norm / (n + 1e-6), 1)
/// ```
pub fn clip_grad_norm<T: Scalar>(grads: &mut [&mut [T]], max_norm: T) -> T {
    let total = grads.iter().flat_map(|g| g.iter()).map(|&x| x * x).sum::<T>().sqrt();
    let coef = max_norm / (total + T::lit(1e-6));
    if coef < T::one() {
        for g in grads.iter_mut() {
            for x in g.iter_mut() {
                *x *= coef;
            }
        }
    }
    total
}

/// One optimiser step on `params` from `grads` (same order), the gradients first
/// clipped to a global norm of `max_grad_norm` when one is given.
pub fn clipped_step<T: Scalar, O: Optimizer<T>>(
    opt: &mut O,
    params: &mut [&mut [T]],
    mut grads: Vec<&mut [T]>,
    max_grad_norm: Option<T>,
) {
    if let Some(max) = max_grad_norm {
        clip_grad_norm(&mut grads, max);
    }
    let grads: Vec<&[T]> = grads.into_iter().map(|g| &*g).collect();
    opt.step(params, &grads);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sgd_momentum_matches_hand_computation() {
        let mut p = vec![1.0f64, -2.0];
        let mut opt = Sgd::new(0.1, 0.9);
        opt.step(&mut [&mut p], &[&[1.0, 0.5]]);
        assert_eq!(p, vec![0.9, -2.05]);
        opt.step(&mut [&mut p], &[&[1.0, 0.5]]);
        // b = 0.9·1 + 1 = 1.9, 0.9·0.5 + 0.5 = 0.95
        assert!((p[0] - (0.9 - 0.19)).abs() < 1e-15 && (p[1] - (-2.05 - 0.095)).abs() < 1e-15);
    }
}
