//! The training queue: bounded, and a stream's first model before any retrain.
//!
//! A stream without a model is judged by its baselines alone; a stream with one
//! only refreshes it. So when a burst of new streams meets streams due for a
//! retrain, the first models go first. (Measured with 10,000 new streams at one
//! reading a second, the order made little difference, 666.9 s against 674 for
//! all first models: there, the first jobs' growing histories cost more.)
//! Retrains may fill at most half the places, so a burst of retrains (the jobs
//! that complete one-member first models, `training.first_members`) never keeps
//! a first model out.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// The queue the training threads take jobs from.
pub(super) struct JobQueue<T> {
    state: Mutex<Queues<T>>,
    ready: Condvar,
    capacity: usize,
}

struct Queues<T> {
    first: VecDeque<T>,
    later: VecDeque<T>,
    closed: bool,
}

impl<T> Queues<T> {
    fn len(&self) -> usize {
        self.first.len() + self.later.len()
    }

    /// Whether a job of the kind would be refused by a queue of `capacity`:
    /// retrains may take half of it, first models all.
    fn refuses(&self, first: bool, capacity: usize) -> bool {
        self.closed || self.len() >= capacity || (!first && self.later.len() >= capacity.div_ceil(2))
    }
}

/// The registry's side of the queue; dropping it closes the queue.
pub(super) struct JobSender<T>(Arc<JobQueue<T>>);

/// A queue of at most `capacity` jobs (at least 1).
pub(super) fn job_queue<T>(capacity: usize) -> (JobSender<T>, Arc<JobQueue<T>>) {
    let queue = Arc::new(JobQueue {
        state: Mutex::new(Queues {
            first: VecDeque::new(),
            later: VecDeque::new(),
            closed: false,
        }),
        ready: Condvar::new(),
        capacity: capacity.max(1),
    });
    (JobSender(queue.clone()), queue)
}

impl<T> JobQueue<T> {
    fn lock(&self) -> MutexGuard<'_, Queues<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for the next job, first models first, in arrival order within each;
    /// `None` once the sender is gone.
    pub(super) fn recv(&self) -> Option<T> {
        let mut q = self.lock();
        loop {
            if q.closed {
                return None;
            }
            if let Some(job) = q.first.pop_front().or_else(|| q.later.pop_front()) {
                return Some(job);
            }
            q = self.ready.wait(q).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl<T> JobSender<T> {
    /// Queues `job` (`first`: a stream's first model, served before every
    /// retrain); gives it back when the queue has no room for its kind.
    pub(super) fn try_send(&self, job: T, first: bool) -> Result<(), T> {
        let mut q = self.0.lock();
        if q.refuses(first, self.0.capacity) {
            return Err(job);
        }
        if first {
            q.first.push_back(job);
        } else {
            q.later.push_back(job);
        }
        drop(q);
        self.0.ready.notify_one();
        Ok(())
    }

    /// Whether a job of the kind (`first`: a first model) would be refused now.
    pub(super) fn is_full(&self, first: bool) -> bool {
        self.0.lock().refuses(first, self.0.capacity)
    }
}

impl<T> std::fmt::Debug for JobSender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let q = self.0.lock();
        f.debug_struct("JobSender")
            .field("first", &q.first.len())
            .field("later", &q.later.len())
            .field("capacity", &self.0.capacity)
            .finish()
    }
}

impl<T> Drop for JobSender<T> {
    fn drop(&mut self) {
        self.0.lock().closed = true;
        self.0.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_models_go_before_retrains_and_the_queue_is_bounded() {
        let (tx, rx) = job_queue(4);
        tx.try_send("retrain a", false).unwrap();
        tx.try_send("retrain b", false).unwrap();
        tx.try_send("first c", true).unwrap();
        tx.try_send("first d", true).unwrap();
        assert!(tx.is_full(true) && tx.is_full(false));
        assert_eq!(tx.try_send("first e", true), Err("first e"), "full");
        assert_eq!(rx.recv(), Some("first c"));
        tx.try_send("first e", true).unwrap();
        let order: Vec<_> = (0..4).map(|_| rx.recv().unwrap()).collect();
        assert_eq!(order, ["first d", "first e", "retrain a", "retrain b"]);
    }

    #[test]
    fn retrains_fill_at_most_half_the_queue_so_a_first_model_finds_room() {
        let (tx, rx) = job_queue(3);
        tx.try_send("retrain a", false).unwrap();
        tx.try_send("retrain b", false).unwrap();
        assert!(tx.is_full(false) && !tx.is_full(true));
        assert_eq!(tx.try_send("retrain c", false), Err("retrain c"));
        tx.try_send("first d", true).unwrap();
        assert_eq!(rx.recv(), Some("first d"));
    }

    #[test]
    fn dropping_the_sender_wakes_and_stops_the_receivers() {
        let (tx, rx) = job_queue::<u32>(4);
        let waiting = std::thread::spawn(move || rx.recv());
        std::thread::sleep(std::time::Duration::from_millis(50));
        drop(tx);
        assert_eq!(waiting.join().unwrap(), None);
    }
}
