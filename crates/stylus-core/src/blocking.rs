//! Running CPU work from async code without stalling the runtime.
//!
//! The pipeline's async stages call in-process CPU work (a search index, a locator hashing a
//! file) and heavy compute (merge + sample). Inside a multi-threaded tokio runtime, short CPU work
//! runs through [`tokio::task::block_in_place`] (the worker hands its other tasks to another thread
//! first) and heavy compute on the blocking pool ([`spawn_compute`]); anywhere else it simply runs.

/// Runs `work` (CPU-bound, milliseconds) on this thread, telling a multi-threaded tokio runtime
/// first so its other tasks move to another worker. Outside such a runtime it just runs.
pub fn run_cpu<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

/// Runs `work` (seconds to minutes of CPU/GPU compute) on tokio's blocking thread pool and awaits
/// it; outside a tokio runtime it runs on this thread. A panic in `work` comes back as a panic
/// here, as if it had run inline.
pub async fn spawn_compute<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => match handle.spawn_blocking(work).await {
            Ok(value) => value,
            Err(err) => match err.try_into_panic() {
                Ok(payload) => std::panic::resume_unwind(payload),
                // Cancelled: only when the runtime shuts down under us.
                Err(err) => panic!("compute task cancelled: {err}"),
            },
        },
        Err(_) => work(),
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use super::*;

    #[test]
    fn runs_outside_a_runtime() {
        assert_eq!(run_cpu(|| 2 + 2), 4);
        let value = futures_lite_block_on(spawn_compute(|| 7));
        assert_eq!(value, 7);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_off_the_worker_in_a_runtime() {
        let worker = std::thread::current().id();
        let ran_on = spawn_compute(|| std::thread::current().id()).await;
        assert_ne!(worker, ran_on);
        assert_eq!(run_cpu(|| 5), 5);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn current_thread_runtime_runs_inline() {
        assert_eq!(run_cpu(|| 3), 3);
        assert_eq!(spawn_compute(|| 4).await, 4);
    }

    /// Polls a future that is ready without waking (no runtime needed).
    fn futures_lite_block_on<F: Future>(future: F) -> F::Output {
        let mut future = std::pin::pin!(future);
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        match future.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(value) => value,
            std::task::Poll::Pending => panic!("not ready"),
        }
    }
}
