//! The one early-stopping loop both networks train with (the recurrent
//! autoencoder's members, `train.rs`; the change model, `changes.rs`): shuffle,
//! one epoch of steps, the held-out loss, keep the best weights, stop after
//! `patience` epochs without a better one, or when the budget is spent.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;

/// How one epoch of steps ended.
pub(super) enum Epoch {
    /// Every step ran: the epoch's mean training loss.
    Trained(f64),
    /// The caller's budget ran out within the epoch (its mean training loss so
    /// far): this is the last epoch.
    OutOfBudget(f64),
    /// A training loss became non-finite or exploded.
    Diverged,
}

/// When the loop stops.
pub(super) struct Schedule<'a> {
    /// Epochs at most.
    pub max_epochs: usize,
    /// Epochs without a better held-out loss before stopping.
    pub patience: usize,
    /// A non-finite held-out loss abandons training (`true`), or ends it with the
    /// best weights so far (`false`).
    pub non_finite_diverges: bool,
    /// Asked after each epoch: stop now (a budget checked between epochs; at
    /// least one epoch runs).
    pub stop: &'a dyn Fn() -> bool,
}

/// A finished run: the best held-out weights and how it went.
pub(super) struct Fitted<M> {
    /// The weights with the lowest held-out loss.
    pub model: M,
    /// Their held-out loss.
    pub val_loss: f64,
    /// The last epoch's mean training loss.
    pub train_loss: f64,
    /// Epochs run.
    pub epochs: usize,
    /// Patience ended it.
    pub stopped_early: bool,
    /// The budget ended it within an epoch.
    pub out_of_budget: bool,
}

/// Trains `model` by `epoch` (one pass over `order`, shuffled before each epoch
/// with `rng`, which `epoch` may use too), judged by `held_out` after each epoch.
/// `Err(epochs run)` when training diverged.
pub(super) fn fit<M: Clone>(
    mut model: M,
    order: &mut [usize],
    rng: &mut StdRng,
    schedule: &Schedule<'_>,
    held_out: impl Fn(&M) -> f64,
    mut epoch: impl FnMut(&mut M, &[usize], &mut StdRng) -> Epoch,
) -> Result<Fitted<M>, usize> {
    let mut best = (held_out(&model), model.clone());
    let (mut since_best, mut epochs, mut train_loss) = (0, 0, f64::NAN);
    let (mut stopped_early, mut out_of_budget) = (false, false);
    for _ in 0..schedule.max_epochs {
        order.shuffle(rng);
        let outcome = epoch(&mut model, order, rng);
        epochs += 1;
        match outcome {
            Epoch::Diverged => return Err(epochs),
            Epoch::Trained(loss) => train_loss = loss,
            Epoch::OutOfBudget(loss) => (train_loss, out_of_budget) = (loss, true),
        }
        let v = held_out(&model);
        if !v.is_finite() {
            if schedule.non_finite_diverges {
                return Err(epochs);
            }
            break;
        }
        if v < best.0 {
            best = (v, model.clone());
            since_best = 0;
        } else {
            since_best += 1;
            if since_best >= schedule.patience {
                stopped_early = true;
                break;
            }
        }
        if out_of_budget || (schedule.stop)() {
            break;
        }
    }
    Ok(Fitted {
        model: best.1,
        val_loss: best.0,
        train_loss,
        epochs,
        stopped_early,
        out_of_budget,
    })
}
