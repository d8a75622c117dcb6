//! A per-connection timer: the deadlines of one HTTP/1 connection (hyper's
//! header-read timeout, the upstream attempt timeouts of requests served on
//! the connection's own task) share one tokio timer instead of arming one each.
//!
//! hyper arms the header-read timeout at the start of every request head
//! (`Timer::sleep_until`) and drops it once the head is parsed, and each
//! upstream attempt waits under a timeout. With a tokio sleep each, every
//! request inserts two entries into tokio's timer wheel and removes them
//! again: ~2.2k instructions per proxied request (`bench/instructions.sh`,
//! measured by removing both), a third of what Ficus adds to a bare hyper
//! proxy.
//!
//! [`ConnTimer`] is made once per connection. Its sleeps share one tokio
//! [`tokio::time::Sleep`], armed lazily: a sleep polled for a deadline at or
//! after the shared one's leaves it alone, an earlier deadline pulls it in,
//! and when the shared sleep fires before the polled sleep's own deadline it
//! is re-armed for that deadline. A busy keep-alive connection thus touches
//! the timer wheel about once per timeout period, not once per request, and
//! every deadline still fires on time.
//!
//! All sleeps of one `ConnTimer` must be polled by one task (the
//! connection's): the shared sleep keeps the waker of its last poll. hyper's
//! HTTP/1 server polls its timers and the service future from the
//! connection's task; HTTP/2 streams and pipelines on tasks of their own do
//! not use it.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// The deadlines of one HTTP/1 connection; also hyper's
/// [`Timer`](hyper::rt::Timer) for it.
#[derive(Clone, Debug, Default)]
pub struct ConnTimer {
    shared: Arc<Mutex<Shared>>,
}

/// The connection's one tokio sleep, armed on first use.
#[derive(Debug, Default)]
struct Shared {
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The waker the armed sleep will wake (`None`: not polled since it was
    /// last armed): a poll with the same waker need not poll it again.
    waker: Option<Waker>,
}

impl ConnTimer {
    /// A timer for one new connection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Run `fut` until it completes (`Some`) or `timeout` passes (`None`).
    /// Must be awaited on the connection's task (see the module docs).
    pub async fn timeout<F: Future>(&self, timeout: Duration, fut: F) -> Option<F::Output> {
        let sleep = self.sleep_at(tokio::time::Instant::now() + timeout);
        tokio::select! {
            biased;
            out = fut => Some(out),
            () = sleep => None,
        }
    }

    fn sleep_at(&self, deadline: tokio::time::Instant) -> ConnSleep {
        ConnSleep {
            deadline,
            shared: self.shared.clone(),
        }
    }
}

impl hyper::rt::Timer for ConnTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(self.now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(self.sleep_at(deadline.into()))
    }

    /// tokio's clock, so that deadlines and the sleeps agree (also when a
    /// test pauses time).
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }
}

/// One deadline: resolves at `deadline`, woken by the shared sleep.
struct ConnSleep {
    deadline: tokio::time::Instant,
    shared: Arc<Mutex<Shared>>,
}

impl hyper::rt::Sleep for ConnSleep {}

impl Future for ConnSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = self.deadline;
        // The lock is only ever taken by the connection's own task; it is
        // here because hyper requires its sleeps to be `Sync`.
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        let Shared { sleep, waker } = &mut *shared;
        let sleep = sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        // The shared sleep never fires later than the deadline it serves.
        if sleep.deadline() > deadline {
            sleep.as_mut().reset(deadline);
            *waker = None;
        }
        // Armed, not fired, and it will wake this task: nothing to do. This
        // spares polling tokio's sleep on every poll of a busy connection.
        if !sleep.is_elapsed() && waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            return Poll::Pending;
        }
        loop {
            match sleep.as_mut().poll(cx) {
                Poll::Pending => {
                    *waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                // It fired at its deadline, which is ours: ours has passed.
                Poll::Ready(()) if sleep.deadline() >= deadline => {
                    *waker = None;
                    return Poll::Ready(());
                }
                // It fired for an earlier request's deadline: follow ours.
                Poll::Ready(()) => sleep.as_mut().reset(deadline),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Timer;

    /// A sleep resolves at its own deadline, not at an earlier one left armed
    /// in the shared sleep by a previous (dropped) sleep.
    #[tokio::test(start_paused = true)]
    async fn a_later_sleep_outlives_the_earlier_deadline_left_armed() {
        let timer = ConnTimer::new();
        let start = tokio::time::Instant::now();
        // The first request's head arrives in time: its sleep is polled once
        // (arming the shared sleep at +1 s) and dropped.
        let mut first = timer.sleep(Duration::from_secs(1));
        assert!(futures_poll_once(&mut first).is_pending());
        drop(first);
        tokio::time::advance(Duration::from_millis(500)).await;
        // The next head's deadline is +1.5 s; the shared sleep fires at +1 s
        // and must be re-armed, not taken for this deadline.
        timer.sleep(Duration::from_secs(1)).await;
        assert_eq!(start.elapsed(), Duration::from_millis(1500));
    }

    /// An earlier deadline pulls the shared sleep in.
    #[tokio::test(start_paused = true)]
    async fn an_earlier_sleep_fires_at_its_own_deadline() {
        let timer = ConnTimer::new();
        let start = tokio::time::Instant::now();
        let mut long = timer.sleep(Duration::from_secs(30));
        assert!(futures_poll_once(&mut long).is_pending());
        drop(long);
        timer.sleep(Duration::from_millis(200)).await;
        assert_eq!(start.elapsed(), Duration::from_millis(200));
    }

    /// A sleep that is never polled arms nothing; the one polled resolves.
    #[tokio::test(start_paused = true)]
    async fn sleep_until_a_past_deadline_is_ready() {
        let timer = ConnTimer::new();
        let past = timer.now();
        tokio::time::advance(Duration::from_millis(10)).await;
        let mut sleep = timer.sleep_until(past);
        assert!(futures_poll_once(&mut sleep).is_ready());
    }

    /// A timeout fires at its own deadline, after an earlier timeout left
    /// the shared sleep armed, and does not cut a future that completes.
    #[tokio::test(start_paused = true)]
    async fn timeouts_share_the_timer_and_keep_their_deadlines() {
        let timer = ConnTimer::new();
        let start = tokio::time::Instant::now();
        let quick = timer.timeout(Duration::from_secs(1), async { 7 }).await;
        assert_eq!(quick, Some(7));
        let slow = timer
            .timeout(Duration::from_secs(2), std::future::pending::<()>())
            .await;
        assert_eq!(slow, None);
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        let done = timer
            .timeout(
                Duration::from_secs(2),
                tokio::time::sleep(Duration::from_millis(1500)),
            )
            .await;
        assert_eq!(done, Some(()));
    }

    /// Re-polls with the waker the shared sleep already holds skip tokio's
    /// sleep; they still see it fire.
    #[tokio::test(start_paused = true)]
    async fn a_repoll_with_the_same_waker_still_sees_the_deadline() {
        let timer = ConnTimer::new();
        let mut sleep = timer.sleep(Duration::from_secs(1));
        assert!(futures_poll_once(&mut sleep).is_pending());
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(futures_poll_once(&mut sleep).is_pending());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(futures_poll_once(&mut sleep).is_ready());
    }

    fn futures_poll_once(sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>) -> Poll<()> {
        let waker = std::task::Waker::noop();
        sleep.as_mut().poll(&mut Context::from_waker(waker))
    }
}
