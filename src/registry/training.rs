//! The training pool: a bounded queue of jobs, served by threads of its own (never
//! the async runtime's); each outcome is installed whole under the stream's lock,
//! and a trained model is written to disk at once.

use std::sync::{Arc, Weak};
use std::time::Instant;

use super::queue::JobQueue;
use super::stream::Stream;
use super::{Registry, RegistryError};
use crate::detector::{Detector, TrainJob, TrainOutcome};

/// A job in the training queue: its stream, the job, and when it was queued.
pub(super) type QueuedJob = (Weak<Stream>, TrainJob, Instant);

/// The nice value of a training thread. Training may use every core, but the
/// scheduler gives a thread at nice 0 (scoring, HTTP) about nine times the CPU
/// of one at nice 10 when they contend: a burst of new streams' first models
/// takes the cores the scoring leaves idle.
pub const TRAINING_NICE: i32 = 10;

/// Lowers the calling thread's CPU priority to [`TRAINING_NICE`] (Linux, where
/// the nice value belongs to a thread; elsewhere nothing changes).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain system calls on the calling thread; they touch no memory of ours.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        if libc::setpriority(libc::PRIO_PROCESS, tid, TRAINING_NICE) != 0 {
            tracing::warn!(
                "cannot lower the training thread's priority: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

impl Registry {
    /// Starts `config.training_threads` threads serving the training queue `rx`;
    /// each stops when the queue or the registry is gone.
    pub(super) fn start_training_threads(self: &Arc<Self>, rx: Arc<JobQueue<QueuedJob>>) -> Result<(), String> {
        for i in 0..self.config.training_threads.max(1) {
            let rx = rx.clone();
            let weak = Arc::downgrade(self);
            std::thread::Builder::new()
                .name(format!("anomalyd-train-{i}"))
                .spawn(move || {
                    lower_priority();
                    loop {
                        let Some((stream, job, queued)) = rx.recv() else { break };
                        let Some(reg) = weak.upgrade() else { break };
                        reg.metrics.training.wait.observe(queued.elapsed().as_secs_f64());
                        reg.run_job(stream, job);
                    }
                })
                .map_err(|e| format!("cannot start training thread: {e}"))?;
        }
        Ok(())
    }

    /// Runs one job and installs its outcome. A panic inside training is caught
    /// and counted (`outcome="panicked"`): the thread goes on serving the queue and
    /// the stream may ask again.
    pub(super) fn run_job(&self, stream: Weak<Stream>, job: TrainJob) {
        self.metrics.training.queue_depth.dec();
        let start = Instant::now();
        let budget = self.config.training_budget;
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            crate::detector::train::train(&job, &|| start.elapsed() > budget)
        }));
        let seconds = start.elapsed().as_secs_f64();
        self.metrics.training.duration.observe(seconds);
        self.metrics
            .training
            .seconds
            .with_label_values(&[job.kind.name()])
            .inc_by(seconds);
        let (outcome, label) = match caught {
            Ok(outcome) => {
                let label = match &outcome {
                    TrainOutcome::Trained(m) => {
                        tracing::info!(
                            version = m.version,
                            val_loss = m.report.val_loss,
                            seconds = start.elapsed().as_secs_f64(),
                            "model trained"
                        );
                        "completed"
                    }
                    TrainOutcome::Diverged(_) => "diverged",
                    TrainOutcome::NotEnoughData => "skipped",
                };
                (outcome, label)
            }
            Err(_) => {
                tracing::error!(version = job.version, "training job panicked");
                (TrainOutcome::NotEnoughData, "panicked")
            }
        };
        self.metrics.training.jobs.with_label_values(&[label]).inc();
        if let Some(stream) = stream.upgrade() {
            let mut st = stream.state.lock().unwrap_or_else(|p| p.into_inner());
            if !st.deleted {
                if st.detector.install_job(&job.config, outcome) {
                    st.touch(u64::MAX);
                    stream.note_phase(&st);
                    let trained = st.detector.model().is_some_and(|m| m.version == job.version);
                    drop(st);
                    if trained {
                        self.save_now(&stream);
                    }
                } else {
                    self.metrics.training.jobs.with_label_values(&["stale"]).inc();
                }
            }
        }
    }

    /// Queues a retraining job for a stream now.
    pub fn retrain(&self, id: &str) -> Result<(), RegistryError> {
        let stream = self.get(id).ok_or_else(|| self.missing(id))?;
        let mut st = stream.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.detector.readings_seen() <= st.detector.config().window as u64 {
            return Err(RegistryError::NotEnoughData(id.into()));
        }
        // One job per stream: a second request while one is out queues nothing more.
        if st.detector.job_in_flight() {
            return Ok(());
        }
        if self.submit(&stream, &mut st.detector, true) {
            Ok(())
        } else {
            Err(RegistryError::TrainingBusy)
        }
    }

    /// Takes a job from `detector` and queues it, a first model ahead of the
    /// retrains (`queue.rs`). Returns whether it was queued.
    ///
    /// While the queue is full no job is taken: the stream stays due and asks
    /// again at its next reading, for the price of this check. (Taking the job
    /// and dropping it told the detector a job had run, and a stream whose first
    /// job met a full queue waited `retrain.every_readings` more readings: with
    /// 10,000 new streams and 1,024 places, most of them, 768 scrapes each.) A
    /// job that still finds the queue full, raced by another thread, is dropped.
    pub(super) fn submit_job(&self, stream: &Arc<Stream>, detector: &mut Detector) -> bool {
        self.submit(stream, detector, false)
    }

    /// As [`Registry::submit_job`]; `requested`: a client asked for the job, so
    /// it retrains on the whole buffer (`JobKind::Requested`).
    fn submit(&self, stream: &Arc<Stream>, detector: &mut Detector, requested: bool) -> bool {
        let first = detector.model().is_none();
        if self.trainer.is_full(first) {
            return false;
        }
        if requested {
            detector.request_retrain();
        }
        let job = detector.training_job();
        let kind = job.kind.name();
        match self
            .trainer
            .try_send((Arc::downgrade(stream), job, Instant::now()), first)
        {
            Ok(()) => {
                self.metrics.training.queue_depth.inc();
                self.metrics.training.queued.with_label_values(&[kind]).inc();
                true
            }
            Err(_) => {
                detector.install(TrainOutcome::NotEnoughData);
                self.metrics.training.jobs.with_label_values(&["dropped"]).inc();
                false
            }
        }
    }
}
