//! Plugin canaries: a new version of a pipeline step's plugin takes a share
//! of the requests; the host watches its error rate and latency and rolls it
//! back or promotes it on its own.

use crate::plugin::filter::FilterPool;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The budgets a canary must meet.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    /// Share of requests for the canary, in percent.
    pub percent: u32,
    /// Largest tolerated error rate.
    pub max_error_rate: f64,
    /// Largest tolerated mean hook time.
    pub max_latency: Duration,
    /// Requests observed before any decision.
    pub min_requests: u64,
    /// Requests within budget before promotion.
    pub promote_after: u64,
}

/// Where a canary stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decision {
    /// Still taking its share of requests.
    Running,
    /// Rolled back: every request uses the stable version.
    RolledBack,
    /// Promoted: every request uses the canary version.
    Promoted,
}

/// A canary version of one pipeline step.
pub struct Canary {
    /// The canary version's instances.
    pub pool: Arc<FilterPool>,
    /// Its budgets.
    pub budget: Budget,
    requests: AtomicU64,
    errors: AtomicU64,
    latency_us: AtomicU64,
    decision: AtomicU8,
    reason: std::sync::Mutex<Option<String>>,
}

/// A canary's figures for `/admin/status`.
#[derive(Debug, Clone, Serialize)]
pub struct CanarySummary {
    /// Plugin name.
    pub plugin: String,
    /// Route name.
    pub route: String,
    /// Position in the pipeline.
    pub position: u16,
    /// Configured share, in percent.
    pub percent: u32,
    /// Requests that used the canary.
    pub requests: u64,
    /// Of which failed or produced a 5xx.
    pub errors: u64,
    /// errors / requests.
    pub error_rate: f64,
    /// Mean time of one canary hook call, in milliseconds.
    pub mean_latency_ms: f64,
    /// Where it stands.
    pub decision: Decision,
    /// Why it was rolled back or promoted.
    pub reason: Option<String>,
}

impl Canary {
    /// A running canary.
    pub fn new(pool: Arc<FilterPool>, budget: Budget) -> Canary {
        Canary {
            pool,
            budget,
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency_us: AtomicU64::new(0),
            decision: AtomicU8::new(0),
            reason: std::sync::Mutex::new(None),
        }
    }

    /// Where it stands.
    pub fn decision(&self) -> Decision {
        match self.decision.load(Ordering::Relaxed) {
            0 => Decision::Running,
            1 => Decision::RolledBack,
            _ => Decision::Promoted,
        }
    }

    /// Whether this request should use the canary version.
    pub fn pick(&self) -> bool {
        match self.decision() {
            Decision::Running => fastrand::u32(0..100) < self.budget.percent,
            Decision::RolledBack => false,
            Decision::Promoted => true,
        }
    }

    /// Record one request that used the canary: whether it failed (trap,
    /// timeout, memory, or a 5xx it produced) and the time spent in its hooks.
    pub fn record(&self, failed: bool, spent: Duration) {
        if self.decision() != Decision::Running {
            return;
        }
        let n = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        let errors = if failed {
            self.errors.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.errors.load(Ordering::Relaxed)
        };
        let total_us = self
            .latency_us
            .fetch_add(spent.as_micros() as u64, Ordering::Relaxed)
            + spent.as_micros() as u64;
        if n < self.budget.min_requests {
            return;
        }
        let rate = errors as f64 / n as f64;
        let mean = Duration::from_micros(total_us / n);
        let (decision, reason) = if rate > self.budget.max_error_rate {
            (
                Decision::RolledBack,
                format!(
                    "error rate {:.3} over {n} requests exceeds max_error_rate {}",
                    rate, self.budget.max_error_rate
                ),
            )
        } else if mean > self.budget.max_latency {
            (
                Decision::RolledBack,
                format!(
                    "mean hook time {:.3} ms over {n} requests exceeds max_latency_ms {}",
                    mean.as_secs_f64() * 1000.0,
                    self.budget.max_latency.as_secs_f64() * 1000.0
                ),
            )
        } else if n >= self.budget.promote_after {
            (
                Decision::Promoted,
                format!(
                    "{n} requests within budget (error rate {:.3}, mean hook time {:.3} ms)",
                    rate,
                    mean.as_secs_f64() * 1000.0
                ),
            )
        } else {
            return;
        };
        let code = if decision == Decision::RolledBack {
            1
        } else {
            2
        };
        if self
            .decision
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            let spec = self.pool.spec();
            let word = if decision == Decision::RolledBack {
                "rolled-back"
            } else {
                "promoted"
            };
            metrics::counter!(
                "ficus_canary_decisions_total",
                "plugin" => spec.plugin.to_string(),
                "route" => spec.route.to_string(),
                "decision" => word,
            )
            .increment(1);
            if decision == Decision::RolledBack {
                tracing::warn!(plugin = %spec.plugin, route = %spec.route, position = spec.position, "canary rolled back: {reason}");
            } else {
                tracing::info!(plugin = %spec.plugin, route = %spec.route, position = spec.position, "canary promoted: {reason}");
            }
            *self.reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
        }
    }

    /// Figures for `/admin/status`.
    pub fn summary(&self) -> CanarySummary {
        let spec = self.pool.spec();
        let requests = self.requests.load(Ordering::Relaxed);
        let errors = self.errors.load(Ordering::Relaxed);
        let latency_us = self.latency_us.load(Ordering::Relaxed);
        CanarySummary {
            plugin: spec.plugin.to_string(),
            route: spec.route.to_string(),
            position: spec.position,
            percent: self.budget.percent,
            requests,
            errors,
            error_rate: if requests == 0 {
                0.0
            } else {
                errors as f64 / requests as f64
            },
            mean_latency_ms: if requests == 0 {
                0.0
            } else {
                latency_us as f64 / requests as f64 / 1000.0
            },
            decision: self.decision(),
            reason: self
                .reason
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}
