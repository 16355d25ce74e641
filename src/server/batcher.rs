//! Dynamic batching: requests queue up and one worker thread runs them through the network
//! together, up to `max_batch_size` images or `max_batch_delay` after the first arrived
//! (by default no delay: a batch is whatever queued up while the previous one ran).
//! The queue is bounded; when it is full, `submit` refuses at once (the route answers 503)
//! instead of letting memory grow. Jobs whose client went away are dropped before they run.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::metrics::ModelMetrics;
use crate::engine::{Engine, Prediction};

/// Batches of every model of a server run one at a time, in the order they were ready
/// (a ticket lock: first come, first served). Each then has all the cores, so with several
/// models batches finish one after another instead of all late together; with one model
/// there is never a wait.
static TURNS: Turns = Turns::new();

struct Turns {
    state: std::sync::Mutex<(u64, u64)>,
    changed: std::sync::Condvar,
}

/// Held while a batch runs; the next ticket's turn comes when it drops.
struct Turn<'a>(&'a Turns);

impl Turns {
    const fn new() -> Self {
        Self {
            state: std::sync::Mutex::new((0, 0)),
            changed: std::sync::Condvar::new(),
        }
    }

    /// Take a ticket and wait until it is served.
    fn wait(&self) -> Turn<'_> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let ticket = state.0;
        state.0 += 1;
        while state.1 != ticket {
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        Turn(self)
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut state = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
        state.1 += 1;
        self.0.changed.notify_all();
    }
}

pub type JobResult = Result<Vec<Prediction>, InferenceFailed>;

/// The network failed on the batch a job was in (logged where it happened; clients get a
/// plain 500, without internals).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("inference failed")]
pub struct InferenceFailed;

/// One preprocessed image waiting for the network.
pub struct Job {
    pub image: Vec<f32>,
    pub top_k: usize,
    pub reply: oneshot::Sender<JobResult>,
}

#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    pub max_batch_size: usize,
    pub max_batch_delay: Duration,
    pub queue_capacity: usize,
}

/// The bounded queue is full (the route answers 503 with `Retry-After`).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the request queue is full")]
pub struct QueueFull;

/// The sending side; the worker thread ends when every `Batcher` is dropped.
#[derive(Clone)]
pub struct Batcher {
    tx: SyncSender<Job>,
    depth: Arc<AtomicUsize>,
}

impl Batcher {
    /// Start the worker thread for `engine`.
    pub fn start(engine: Arc<Engine>, cfg: BatchConfig, metrics: Arc<ModelMetrics>) -> Self {
        let (tx, rx) = mpsc::sync_channel::<Job>(cfg.queue_capacity.max(1));
        let depth = Arc::new(AtomicUsize::new(0));
        let worker_depth = depth.clone();
        std::thread::Builder::new()
            .name(
                format!("batcher-{}", engine.name())
                    .chars()
                    .take(15)
                    .collect(),
            )
            .spawn(move || {
                let take = |job: Job| {
                    worker_depth.fetch_sub(1, Ordering::Relaxed);
                    job
                };
                while let Ok(first) = rx.recv() {
                    let mut jobs = vec![take(first)];
                    let deadline = Instant::now() + cfg.max_batch_delay;
                    while jobs.len() < cfg.max_batch_size {
                        let left = deadline.saturating_duration_since(Instant::now());
                        match rx.recv_timeout(left) {
                            Ok(job) => jobs.push(take(job)),
                            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                                break
                            }
                        }
                    }
                    run_batch(&engine, jobs, &metrics);
                }
            })
            .expect("spawning the batch worker thread");
        Self { tx, depth }
    }

    /// Queue a job, or refuse at once if the queue is full.
    pub fn submit(&self, job: Job) -> Result<(), QueueFull> {
        self.depth.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.depth.fetch_sub(1, Ordering::Relaxed);
                Err(QueueFull)
            }
        }
    }

    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }
}

fn run_batch(engine: &Engine, jobs: Vec<Job>, metrics: &ModelMetrics) {
    // A client that disconnected dropped its receiver: skip its work.
    let jobs: Vec<Job> = jobs.into_iter().filter(|j| !j.reply.is_closed()).collect();
    if jobs.is_empty() {
        return;
    }
    let k = jobs.iter().map(|j| j.top_k).max().unwrap_or(1);
    type Reply = (usize, oneshot::Sender<JobResult>);
    let (images, replies): (Vec<Vec<f32>>, Vec<Reply>) = jobs
        .into_iter()
        .map(|j| (j.image, (j.top_k, j.reply)))
        .unzip();
    metrics.observe_batch(images.len());
    let outcome = {
        let _turn = TURNS.wait();
        engine.classify(&images, k)
    };
    match outcome {
        Ok(results) => {
            for ((top_k, reply), mut preds) in replies.into_iter().zip(results) {
                preds.truncate(top_k);
                let _ = reply.send(Ok(preds));
            }
        }
        Err(e) => {
            tracing::error!("inference failed: {e}");
            for (_, reply) in replies {
                let _ = reply.send(Err(InferenceFailed));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Turns;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// A turn blocks the next ticket until it drops, also when its holder panics.
    #[test]
    fn turns_are_taken_one_at_a_time_and_released_on_panic() {
        let turns: &'static Turns = Box::leak(Box::new(Turns::new()));
        let first = turns.wait();
        let ran = Arc::new(AtomicBool::new(false));
        let waiter = {
            let ran = ran.clone();
            std::thread::spawn(move || {
                let _turn = turns.wait();
                ran.store(true, Ordering::SeqCst);
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        assert!(!ran.load(Ordering::SeqCst), "the second ticket waits");
        drop(first);
        waiter.join().unwrap();
        assert!(ran.load(Ordering::SeqCst));
        let panicked = std::thread::spawn(move || {
            let _turn = turns.wait();
            panic!("inference panicked");
        })
        .join();
        assert!(panicked.is_err());
        // The panicking holder's turn was released: this does not hang.
        drop(turns.wait());
    }
}
