//! Graceful shutdown of the proxy's connections: on shutdown each connection
//! is told to finish its in-flight requests and close (hyper's
//! `graceful_shutdown`), and [`Drain::drained`] resolves once all are gone.
//!
//! hyper-util's `GracefulShutdown` does the same through a tokio `watch`
//! channel whose `changed()` future is polled on every poll of every
//! connection: ~250 instructions per proxied request
//! (`bench/instructions.sh`). Here a connection registers its task's waker
//! once, and a poll costs one atomic load until shutdown begins.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Waker};
use tokio::sync::Notify;

/// The proxy's connections, for shutting them down gracefully.
#[derive(Debug, Clone, Default)]
pub struct Drain {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Set once, when shutdown begins.
    stopping: AtomicBool,
    /// Live connections, by slot.
    conns: Mutex<Conns>,
    /// Notified when the last connection is gone after shutdown began.
    drained: Notify,
}

#[derive(Debug, Default)]
struct Conns {
    /// The waker of each connection's task (`None` until its first poll,
    /// after it was woken for shutdown, and for a free slot).
    slots: Vec<Option<Waker>>,
    /// Slots of connections that ended, for reuse.
    free: Vec<usize>,
}

impl Conns {
    fn live(&self) -> usize {
        self.slots.len() - self.free.len()
    }
}

impl Drain {
    /// No connections yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Register a connection; drop the watch when the connection ends.
    pub fn watch(&self) -> ConnWatch {
        let mut conns = self.inner.lock();
        let slot = conns.free.pop().unwrap_or_else(|| {
            conns.slots.push(None);
            conns.slots.len() - 1
        });
        ConnWatch {
            inner: self.inner.clone(),
            slot,
            registered: false,
            told: false,
        }
    }

    /// Begin shutdown (wake every connection to tell it), and resolve once
    /// every connection has ended.
    pub async fn drained(&self) {
        let wakers: Vec<Waker> = {
            let mut conns = self.inner.lock();
            self.inner.stopping.store(true, Ordering::Release);
            conns.slots.iter_mut().filter_map(Option::take).collect()
        };
        for w in wakers {
            w.wake();
        }
        loop {
            let notified = self.inner.drained.notified();
            tokio::pin!(notified);
            // Register before checking, so a last connection ending in
            // between is not missed.
            notified.as_mut().enable();
            if self.inner.lock().live() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Conns> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One connection's registration. Must be polled from the connection's task.
#[derive(Debug)]
pub struct ConnWatch {
    inner: Arc<Inner>,
    slot: usize,
    /// Whether the task's waker is registered.
    registered: bool,
    /// Whether [`ConnWatch::should_stop`] has said so.
    told: bool,
}

impl ConnWatch {
    /// Whether the connection should now shut down gracefully: `true` once,
    /// at the first poll after shutdown began. Registers the task to be
    /// woken then.
    pub fn should_stop(&mut self, cx: &mut Context<'_>) -> bool {
        if self.told {
            return false;
        }
        if !self.registered {
            self.inner.lock().slots[self.slot] = Some(cx.waker().clone());
            self.registered = true;
        }
        if self.inner.stopping.load(Ordering::Acquire) {
            self.told = true;
        }
        self.told
    }
}

impl Drop for ConnWatch {
    fn drop(&mut self) {
        let mut conns = self.inner.lock();
        conns.slots[self.slot] = None;
        conns.free.push(self.slot);
        if conns.live() == 0 && self.inner.stopping.load(Ordering::Acquire) {
            self.inner.drained.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::task::Poll;
    use std::time::Duration;

    /// A connection that runs until told to stop, then ends `after` later.
    async fn conn(mut watch: ConnWatch, after: Duration) {
        poll_fn(|cx| {
            if watch.should_stop(cx) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
        tokio::time::sleep(after).await;
        drop(watch);
    }

    #[tokio::test]
    async fn drained_tells_every_connection_and_waits_for_them() {
        let drain = Drain::new();
        let mut tasks = Vec::new();
        for i in 0..5u64 {
            tasks.push(tokio::spawn(conn(
                drain.watch(),
                Duration::from_millis(10 * i),
            )));
        }
        // Let every connection register.
        tokio::time::sleep(Duration::from_millis(20)).await;
        tokio::time::timeout(Duration::from_secs(5), drain.drained())
            .await
            .expect("drained");
        for t in tasks {
            assert!(t.is_finished(), "drained before a connection ended");
        }
    }

    #[tokio::test]
    async fn a_connection_polled_after_shutdown_began_is_told_at_once() {
        let drain = Drain::new();
        let watch = drain.watch();
        // Shutdown begins before the connection's first poll.
        let drained = tokio::spawn({
            let drain = drain.clone();
            async move { drain.drained().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !drained.is_finished(),
            "a live connection was not waited for"
        );
        tokio::spawn(conn(watch, Duration::ZERO));
        tokio::time::timeout(Duration::from_secs(5), drained)
            .await
            .expect("drained")
            .unwrap();
    }

    #[tokio::test]
    async fn with_no_connections_drained_is_immediate_and_slots_are_reused() {
        let drain = Drain::new();
        drop(drain.watch());
        drop(drain.watch());
        assert_eq!(drain.inner.lock().slots.len(), 1);
        tokio::time::timeout(Duration::from_secs(1), drain.drained())
            .await
            .expect("drained");
    }
}
