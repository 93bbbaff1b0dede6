//! The render queue: it owns the device. Requests wait in a bounded FIFO (a full queue answers
//! 429 with Retry-After, never an unbounded backlog); one worker renders them one at a time,
//! each with its own adapter set (merge and sample are one job, see `SampleJob`). A request is
//! cancelled when its client goes away, by `POST /sdapi/v1/interrupt`, when its deadline passes
//! or when a shutdown's grace time is over: a waiting one never starts, a running one stops at
//! the next sampling step.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use stylus_core::{Generation, GenerationRequest, StylusError};
use stylus_diffusion::sampler::{InterruptFn, ProgressFn, SamplingProgress};
use tokio::sync::{mpsc, oneshot};

use super::AppState;

/// Why a render stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    /// `POST /sdapi/v1/interrupt`.
    Interrupted,
    /// The client closed its connection.
    ClientGone,
    /// The request's deadline passed (`--request-timeout`).
    Deadline,
    /// The server is shutting down and the grace time is over.
    Shutdown,
}

impl CancelReason {
    pub fn label(self) -> &'static str {
        match self {
            Self::Interrupted => "interrupted",
            Self::ClientGone => "client_gone",
            Self::Deadline => "deadline",
            Self::Shutdown => "shutdown",
        }
    }

    fn code(self) -> u8 {
        match self {
            Self::Interrupted => 1,
            Self::ClientGone => 2,
            Self::Deadline => 3,
            Self::Shutdown => 4,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        [
            Self::Interrupted,
            Self::ClientGone,
            Self::Deadline,
            Self::Shutdown,
        ]
        .into_iter()
        .find(|r| r.code() == code)
    }
}

/// One request's cancellation state, shared by its handler, the queue and the sampler hook.
#[derive(Debug)]
pub struct JobControl {
    /// 0: running on; else a [`CancelReason`] code (the first reason wins).
    cancelled: std::sync::atomic::AtomicU8,
    deadline: Instant,
}

impl JobControl {
    fn new(deadline: Instant) -> Self {
        Self {
            cancelled: Default::default(),
            deadline,
        }
    }

    pub fn cancel(&self, reason: CancelReason) {
        let _ =
            self.cancelled
                .compare_exchange(0, reason.code(), Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Why the job must stop, if it must (a passed deadline counts).
    pub fn stop_reason(&self) -> Option<CancelReason> {
        if Instant::now() >= self.deadline {
            self.cancel(CancelReason::Deadline);
        }
        CancelReason::from_code(self.cancelled.load(Ordering::SeqCst))
    }
}

/// What the sampler hooks see: the running job and its progress (for `/sdapi/v1/progress`).
#[derive(Debug, Default)]
pub struct RenderStatus {
    current: Mutex<Option<Arc<JobControl>>>,
    cancel_all: AtomicBool,
    step: AtomicUsize,
    steps: AtomicUsize,
    job_no: AtomicU64,
    /// When the running job started, its A1111 timestamp and its A1111 job name.
    started: Mutex<Option<(Instant, String, &'static str)>>,
}

impl RenderStatus {
    /// Records sampling progress (called after every model evaluation).
    pub fn progress_fn(self: &Arc<Self>) -> ProgressFn {
        let status = Arc::clone(self);
        Arc::new(move |p: SamplingProgress| {
            status.step.store(p.step, Ordering::Relaxed);
            status.steps.store(p.steps, Ordering::Relaxed);
        })
    }

    /// Stops the running job when it was cancelled (asked between sampling steps).
    pub fn interrupt_fn(self: &Arc<Self>) -> InterruptFn {
        let status = Arc::clone(self);
        Arc::new(move || {
            if status.cancel_all.load(Ordering::SeqCst)
                && let Some(job) = status.current_job()
            {
                job.cancel(CancelReason::Shutdown);
            }
            status
                .current_job()
                .is_some_and(|job| job.stop_reason().is_some())
        })
    }

    fn current_job(&self) -> Option<Arc<JobControl>> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The running job, if any.
    pub fn running(&self) -> Option<RunningJob> {
        let started = self.started.lock().unwrap_or_else(|e| e.into_inner());
        started.as_ref().map(|(at, stamp, kind)| RunningJob {
            step: self.step.load(Ordering::Relaxed),
            steps: self.steps.load(Ordering::Relaxed),
            seconds: at.elapsed().as_secs_f64(),
            timestamp: stamp.clone(),
            kind,
        })
    }

    /// Jobs started since the server started.
    pub fn jobs_started(&self) -> u64 {
        self.job_no.load(Ordering::Relaxed)
    }
}

/// The running job as `/sdapi/v1/progress` reports it.
#[derive(Debug, Clone)]
pub struct RunningJob {
    pub step: usize,
    pub steps: usize,
    /// Seconds since it started.
    pub seconds: f64,
    /// A1111's `job_timestamp`.
    pub timestamp: String,
    /// A1111's job name: `txt2img` or `img2img`.
    pub kind: &'static str,
}

/// What the worker hands back.
#[derive(Debug)]
pub enum JobError {
    Cancelled(CancelReason),
    Failed(StylusError),
}

/// A finished render with its stage times.
#[derive(Debug)]
pub struct Rendered {
    pub generation: Generation,
    pub queue_seconds: f64,
    pub render_seconds: f64,
}

struct Job {
    request: GenerationRequest,
    control: Arc<JobControl>,
    reply: oneshot::Sender<Result<Rendered, JobError>>,
    enqueued: Instant,
}

/// The queue's sending side (in the shared state).
#[derive(Debug)]
pub struct RenderQueue {
    sender: Mutex<Option<mpsc::Sender<Job>>>,
    waiting: Arc<AtomicUsize>,
    status: Arc<RenderStatus>,
    /// Mean seconds of recent renders (an exponential average), for Retry-After.
    mean_seconds: Mutex<f64>,
}

/// A full queue: try again after about this many seconds.
#[derive(Debug, Clone, Copy)]
pub struct QueueFull {
    pub retry_after: u64,
}

/// A request in the queue. Dropping it before its answer came (the handler's future dropped:
/// the client went away) cancels the render.
#[derive(Debug)]
pub struct Ticket {
    control: Arc<JobControl>,
    reply: oneshot::Receiver<Result<Rendered, JobError>>,
    answered: bool,
}

impl Ticket {
    /// Waits for the render (the worker enforces the deadline).
    pub async fn wait(mut self) -> Result<Rendered, JobError> {
        let result = (&mut self.reply)
            .await
            .unwrap_or(Err(JobError::Cancelled(CancelReason::Shutdown)));
        self.answered = true;
        result
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.answered {
            self.control.cancel(CancelReason::ClientGone);
        }
    }
}

impl RenderQueue {
    /// A queue holding up to `depth` waiting requests, and the worker that drains it.
    pub fn new(depth: usize, status: Arc<RenderStatus>) -> (Self, Worker) {
        let (sender, receiver) = mpsc::channel(depth);
        let waiting = Arc::new(AtomicUsize::new(0));
        (
            Self {
                sender: Mutex::new(Some(sender)),
                waiting: waiting.clone(),
                status: status.clone(),
                mean_seconds: Mutex::new(10.0),
            },
            Worker {
                receiver,
                waiting,
                status,
            },
        )
    }

    /// Queues `request` to finish by `deadline`; a full queue is refused at once.
    pub fn submit(
        &self,
        request: GenerationRequest,
        deadline: Instant,
    ) -> Result<Ticket, QueueFull> {
        let control = Arc::new(JobControl::new(deadline));
        let (reply, receiver) = oneshot::channel();
        let job = Job {
            request,
            control: control.clone(),
            reply,
            enqueued: Instant::now(),
        };
        let full = QueueFull {
            retry_after: self.retry_after(),
        };
        let sender = self.sender.lock().unwrap_or_else(|e| e.into_inner());
        let sender = sender.as_ref().ok_or(full)?;
        // Counted before the send so the worker's decrement never runs first.
        self.waiting.fetch_add(1, Ordering::SeqCst);
        if sender.try_send(job).is_err() {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(full);
        }
        Ok(Ticket {
            control,
            reply: receiver,
            answered: false,
        })
    }

    /// Requests waiting (not the running one).
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    pub fn status(&self) -> &RenderStatus {
        &self.status
    }

    /// Stops the running render; `false` when none runs.
    pub fn interrupt(&self) -> bool {
        match self.status.current_job() {
            Some(job) => {
                job.cancel(CancelReason::Interrupted);
                true
            }
            None => false,
        }
    }

    /// Cancels the running render and every waiting one (shutdown).
    pub fn cancel_all(&self, why: &str) {
        tracing::info!(why, "cancelling renders");
        self.status.cancel_all.store(true, Ordering::SeqCst);
        if let Some(job) = self.status.current_job() {
            job.cancel(CancelReason::Shutdown);
        }
    }

    /// Accepts no more requests.
    pub fn close(&self) {
        self.sender.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Seconds until the queue likely has room: one mean render per request ahead.
    fn retry_after(&self) -> u64 {
        let mean = *self.mean_seconds.lock().unwrap_or_else(|e| e.into_inner());
        (mean * (self.waiting() + 1) as f64)
            .ceil()
            .clamp(1.0, 3600.0) as u64
    }

    fn record_render(&self, seconds: f64) {
        let mut mean = self.mean_seconds.lock().unwrap_or_else(|e| e.into_inner());
        *mean = 0.8 * *mean + 0.2 * seconds;
    }
}

/// The receiving side: renders jobs in order, one at a time.
#[derive(Debug)]
pub struct Worker {
    receiver: mpsc::Receiver<Job>,
    waiting: Arc<AtomicUsize>,
    status: Arc<RenderStatus>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").finish_non_exhaustive()
    }
}

impl Worker {
    /// Runs until the queue is closed.
    pub async fn run(mut self, state: AppState) {
        while let Some(job) = self.receiver.recv().await {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            if self.status.cancel_all.load(Ordering::SeqCst) {
                job.control.cancel(CancelReason::Shutdown);
            }
            let queue_seconds = job.enqueued.elapsed().as_secs_f64();
            if let Some(reason) = job.control.stop_reason() {
                state.metrics.cancelled(reason);
                let _ = job.reply.send(Err(JobError::Cancelled(reason)));
                continue;
            }
            *self
                .status
                .current
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(job.control.clone());
            let job_no = self.status.job_no.fetch_add(1, Ordering::Relaxed) + 1;
            self.status.step.store(0, Ordering::Relaxed);
            self.status
                .steps
                .store(job.request.sampling.steps, Ordering::Relaxed);
            *self
                .status
                .started
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some((
                Instant::now(),
                job_timestamp(job_no),
                if job.request.init_image.is_some() {
                    "img2img"
                } else {
                    "txt2img"
                },
            ));
            let started = Instant::now();
            let outcome = state.stylus.generate(&job.request).await;
            let render_seconds = started.elapsed().as_secs_f64();
            *self
                .status
                .current
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = None;
            *self
                .status
                .started
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = None;
            let result = match outcome {
                Ok(generation) => {
                    state.queue.record_render(render_seconds);
                    Ok(Rendered {
                        generation,
                        queue_seconds,
                        render_seconds,
                    })
                }
                Err(StylusError::Cancelled(_)) => {
                    let reason = job
                        .control
                        .stop_reason()
                        .unwrap_or(CancelReason::Interrupted);
                    state.metrics.cancelled(reason);
                    Err(JobError::Cancelled(reason))
                }
                Err(err) => Err(JobError::Failed(err)),
            };
            let _ = job.reply.send(result);
        }
    }
}

/// A1111's `job_timestamp` (`YYYYmmddHHMMSS`, UTC here) with the job number for uniqueness.
fn job_timestamp(job_no: u64) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}{m:02}{d:02}{:02}{:02}{:02}-{job_no}",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's civil_from_days).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(20_515), (2026, 3, 3));
    }

    #[test]
    fn the_first_cancel_reason_wins_and_deadlines_stop_jobs() {
        let control = JobControl::new(Instant::now() + std::time::Duration::from_secs(60));
        assert_eq!(control.stop_reason(), None);
        control.cancel(CancelReason::Interrupted);
        control.cancel(CancelReason::ClientGone);
        assert_eq!(control.stop_reason(), Some(CancelReason::Interrupted));
        let late = JobControl::new(Instant::now());
        assert_eq!(late.stop_reason(), Some(CancelReason::Deadline));
    }
}
