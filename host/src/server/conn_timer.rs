//! A per-connection timer for hyper's HTTP/1 header-read timeout that keeps
//! one tokio timer per connection instead of one per request.
//!
//! hyper arms the header-read timeout at the start of every request head
//! (`Timer::sleep_until`) and drops it once the head is parsed. With
//! hyper-util's `TokioTimer` every request therefore inserts an entry into
//! tokio's timer wheel and removes it again: ~1.5k instructions per proxied
//! request on the keep-alive path (measured with `bench/instructions.sh`),
//! about a fifth of what Ficus adds to a bare hyper proxy.
//!
//! [`ConnTimer`] is made once per connection. Its sleeps share one tokio
//! [`tokio::time::Sleep`], armed lazily: a sleep polled for a deadline at or
//! after the shared one's leaves it alone; only when the shared sleep fires
//! before the polled sleep's own deadline is it re-armed. A busy keep-alive
//! connection thus touches the timer wheel about once per timeout period,
//! not once per request, and a head that does not arrive in time still ends
//! the connection at its deadline, as hyper's own timer would.
//!
//! Only hyper's HTTP/1 server uses it, whose timers are all polled from the
//! connection's own task (one waker). It must not be shared between
//! connections or tasks: the shared sleep holds the waker of its last poll.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// hyper [`Timer`](hyper::rt::Timer) for one HTTP/1 connection.
#[derive(Clone, Debug, Default)]
pub struct ConnTimer {
    shared: Arc<Mutex<Option<Pin<Box<tokio::time::Sleep>>>>>,
}

impl ConnTimer {
    /// A timer for one new connection.
    pub fn new() -> Self {
        Self::default()
    }
}

impl hyper::rt::Timer for ConnTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(self.now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(ConnSleep {
            deadline: deadline.into(),
            shared: self.shared.clone(),
        })
    }

    /// tokio's clock, so that deadlines and the sleeps agree (also when a
    /// test pauses time).
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }
}

/// One of hyper's sleeps: resolves at `deadline`, woken by the shared sleep.
struct ConnSleep {
    deadline: tokio::time::Instant,
    shared: Arc<Mutex<Option<Pin<Box<tokio::time::Sleep>>>>>,
}

impl hyper::rt::Sleep for ConnSleep {}

impl Future for ConnSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = self.deadline;
        // The lock is only ever taken by the connection's own task; it is
        // here because hyper requires its sleeps to be `Sync`.
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        let sleep = shared.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        // The shared sleep never fires later than the deadline it serves.
        if sleep.deadline() > deadline {
            sleep.as_mut().reset(deadline);
        }
        loop {
            match sleep.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                // It fired at its deadline, which is ours: ours has passed.
                Poll::Ready(()) if sleep.deadline() >= deadline => return Poll::Ready(()),
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

    fn futures_poll_once(sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>) -> Poll<()> {
        let waker = std::task::Waker::noop();
        sleep.as_mut().poll(&mut Context::from_waker(waker))
    }
}
