//! Concurrent requests gathered into shared batches: the requests that arrive while one
//! batch runs go together in the next, so a busy vault pays a batch's fixed cost (a statement,
//! a round trip, a savepoint) once for many requests, and an idle vault runs each request at
//! once, alone. Reads' lookups and Puts go through one each.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::time::Instant;

/// A request, where its answer goes, and when it arrived.
type Job<Req, Resp> = (Req, oneshot::Sender<Resp>, Instant);

/// The handle requests are sent through; cloning it shares the batches.
pub(crate) struct Batcher<Req, Resp> {
    jobs: mpsc::Sender<Job<Req, Resp>>,
}

impl<Req, Resp> Clone for Batcher<Req, Resp> {
    fn clone(&self) -> Self {
        Self {
            jobs: self.jobs.clone(),
        }
    }
}

impl<Req, Resp> std::fmt::Debug for Batcher<Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").finish_non_exhaustive()
    }
}

impl<Req: Send + 'static, Resp: Send + 'static> Batcher<Req, Resp> {
    /// Starts the task that runs batches of at most `max` requests through `run`, one batch at
    /// a time (one at a time makes the largest batches, and measured best: the database and
    /// the vault share the machine's cores). `run` answers each request of its batch, in order.
    pub(crate) fn start<F, Fut>(max: usize, run: F) -> Self
    where
        F: Fn(Vec<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<Resp>> + Send + 'static,
    {
        Self::start_lingering(max, Duration::ZERO, run)
    }

    /// As [`Batcher::start`], and a batch waits up to `linger` for the callers the batch before
    /// answered: callers answered together come back together. Without the wait, the first
    /// one back runs a whole batch alone while the others queue behind it (Puts measured
    /// alternating batches of 31 and 1); waiting only for as many as the batch before, two
    /// groups of callers answered apart take turns for good, each batch paying its fixed cost
    /// for half of them (Puts measured batches of 20 and 12, +10-20 % merged). A request that
    /// queued before that answer does not count as one coming back, so a lone caller never
    /// waits.
    pub(crate) fn start_lingering<F, Fut>(max: usize, linger: Duration, run: F) -> Self
    where
        F: Fn(Vec<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<Resp>> + Send + 'static,
    {
        let (jobs, rx) = mpsc::channel(16 * max);
        tokio::spawn(gather(max, linger, rx, run));
        Self { jobs }
    }

    /// `req`'s answer, from a batch it may share; `None` if the batcher stopped (the process
    /// is stopping) or its batch gave no answer for it.
    pub(crate) async fn call(&self, req: Req) -> Option<Resp> {
        let (tx, rx) = oneshot::channel();
        self.jobs.send((req, tx, Instant::now())).await.ok()?;
        rx.await.ok()
    }
}

async fn gather<Req, Resp, F, Fut>(
    max: usize,
    linger: Duration,
    mut rx: mpsc::Receiver<Job<Req, Resp>>,
    run: F,
) where
    Req: Send + 'static,
    Resp: Send + 'static,
    F: Fn(Vec<Req>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Vec<Resp>> + Send + 'static,
{
    // Held by the running batch, one at a time; it holds when that batch was answered.
    let running = Arc::new(Mutex::new(Instant::now()));
    // The size of the batch before, whose callers come back together.
    let mut previous = 0;
    while let Some(first) = rx.recv().await {
        // Gathered only once the batch may start: whatever arrives while the running batch
        // waits for the database joins this one.
        let mut answered = running.clone().lock_owned().await;
        let mut batch = vec![first];
        while batch.len() < max {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if !linger.is_zero() {
            // Those who queued before the batch before was answered, and that batch's callers.
            let waiting = batch.iter().filter(|(_, _, at)| *at < *answered).count();
            let expected = (waiting + previous).min(max);
            let until = Instant::now() + linger;
            while batch.len() < expected {
                match tokio::time::timeout_at(until, rx.recv()).await {
                    Ok(Some(job)) => batch.push(job),
                    Ok(None) | Err(_) => break,
                }
            }
        }
        previous = batch.len();
        let (reqs, replies): (Vec<Req>, Vec<oneshot::Sender<Resp>>) = batch
            .into_iter()
            .map(|(req, reply, _)| (req, reply))
            .unzip();
        let answers = run(reqs);
        tokio::spawn(async move {
            let answers = answers.await;
            // Before the first answer goes: whoever queues after this may be one coming back.
            *answered = Instant::now();
            for (reply, answer) in replies.into_iter().zip(answers) {
                drop(reply.send(answer));
            }
            drop(answered);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_that_wait_share_a_batch_and_each_gets_its_own_answer() {
        let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let batcher = Batcher::start(8, move |reqs: Vec<u32>| {
            seen.lock().unwrap().push(reqs.len());
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                reqs.into_iter().map(|r| r * 10).collect::<Vec<_>>()
            }
        });
        let calls = (0..20).map(|i| {
            let batcher = batcher.clone();
            async move { batcher.call(i).await }
        });
        let answers = futures::future::join_all(calls).await;
        assert_eq!(answers, (0..20).map(|i| Some(i * 10)).collect::<Vec<_>>());
        let sizes = sizes.lock().unwrap().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 20);
        assert!(sizes.iter().all(|n| *n <= 8), "{sizes:?}");
        assert!(
            sizes.len() < 20,
            "no two requests shared a batch: {sizes:?}"
        );
    }

    /// Batch sizes, and a batcher that records them and answers each request with itself
    /// after `work` (of the paused test clock).
    fn recording(
        linger: Duration,
        work: Duration,
    ) -> (Arc<std::sync::Mutex<Vec<usize>>>, Batcher<u32, u32>) {
        let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let batcher = Batcher::start_lingering(32, linger, move |reqs: Vec<u32>| {
            seen.lock().unwrap().push(reqs.len());
            async move {
                tokio::time::sleep(work).await;
                reqs
            }
        });
        (sizes, batcher)
    }

    /// Caller `c` in a closed loop: `calls` calls, each after the answer to the one before and
    /// 0.1 ms for the answer's way back and the next request's way in.
    fn closed_loop(batcher: &Batcher<u32, u32>, c: u32, calls: u32) -> tokio::task::JoinHandle<()> {
        let batcher = batcher.clone();
        tokio::spawn(async move {
            for i in 0..calls {
                assert_eq!(batcher.call(c * 10 + i).await, Some(c * 10 + i));
                tokio::time::sleep(Duration::from_micros(100)).await;
            }
        })
    }

    /// Callers `first` in a closed loop of `calls` calls each, then 1 ms later callers `then`;
    /// the sizes of the batches once all are done.
    async fn two_waves(
        sizes: &std::sync::Mutex<Vec<usize>>,
        batcher: &Batcher<u32, u32>,
        first: std::ops::Range<u32>,
        then: std::ops::Range<u32>,
        calls: u32,
    ) -> Vec<usize> {
        let mut callers: Vec<_> = first.map(|c| closed_loop(batcher, c, calls)).collect();
        tokio::time::sleep(Duration::from_millis(1)).await;
        callers.extend(then.map(|c| closed_loop(batcher, c, calls)));
        for c in callers {
            c.await.unwrap();
        }
        sizes.lock().unwrap().clone()
    }

    #[tokio::test(start_paused = true)]
    async fn callers_answered_together_are_not_split_by_the_first_one_back() {
        let (sizes, batcher) = recording(Duration::from_millis(1), Duration::from_millis(5));
        // 16 callers in a closed loop, 4 calls each, 0.1 ms between an answer and the next
        // call; the first starts 1 ms before the others, so it comes back while their batch
        // runs and is the first in line when that batch ends.
        let sizes = two_waves(&sizes, &batcher, 0..1, 1..16, 4).await;
        assert_eq!(sizes.iter().sum::<usize>(), 64, "{sizes:?}");
        // The first caller runs alone (nothing came before it); from then on no batch but the
        // last (the callers' final calls) is less than half the one before it (without the
        // wait: 1, 15, 1, 15, ...).
        assert_eq!(sizes[0], 1, "{sizes:?}");
        assert!(
            sizes[..sizes.len() - 1]
                .windows(2)
                .skip(1)
                .all(|w| w[1] * 2 >= w[0]),
            "a batch was split: {sizes:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn two_groups_of_callers_merge_into_one_batch() {
        let (sizes, batcher) = recording(Duration::from_millis(1), Duration::from_millis(5));
        // Two groups of 8 callers in a closed loop, 8 calls each; the second starts while the
        // first one's batch runs, so the groups come back at different times.
        let sizes = two_waves(&sizes, &batcher, 0..8, 8..16, 8).await;
        assert_eq!(sizes.iter().sum::<usize>(), 128, "{sizes:?}");
        // From the second batch on, both groups share every batch but the last (the first
        // group's last calls are answered one batch before the second's). Taking turns, 8 and
        // 8, each batch would pay its fixed cost for half the callers.
        assert!(
            sizes[1..sizes.len() - 1].iter().all(|n| *n == 16),
            "the groups never merged: {sizes:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_caller_never_waits() {
        // A linger of an hour, on the paused clock: any wait would show as an hour gone.
        let (sizes, batcher) = recording(Duration::from_secs(3600), Duration::ZERO);
        let started = tokio::time::Instant::now();
        for i in 0..10 {
            assert_eq!(batcher.call(i).await, Some(i));
        }
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(*sizes.lock().unwrap(), [1; 10]);
    }

    #[tokio::test]
    async fn a_batch_that_answers_too_few_leaves_the_rest_without_an_answer() {
        let batcher = Batcher::start(4, |_reqs: Vec<u32>| async { Vec::<u32>::new() });
        assert_eq!(batcher.call(1).await, None);
    }
}
