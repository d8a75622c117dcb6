//! Delivery workers: take a message from a [`Source`], call the subscriber
//! plugin's `on-message`, and acknowledge or reject the message.
//!
//! A worker owns one plugin instance and handles one message at a time. A
//! trap, timeout or memory-limit failure counts as a rejected delivery and
//! the instance is replaced by a fresh one for the next message. The
//! worker knows nothing of how messages are stored: the embedded broker's
//! durable and in-memory queues are sources, and so would a JetStream
//! consumer be (its `next` a fetch, `ack`/`fail` an ack/nak).

use crate::plugin::bindings::subscriber_world::Message;
use crate::plugin::subscriber::{SubscriberFactory, SubscriberInstance};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// A message handed to a worker.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// What the plugin receives (`delivery` is 1 on the first attempt).
    pub message: Message,
}

/// Where a worker gets its messages and reports their outcome.
#[async_trait::async_trait]
pub trait Source: Send + Sync + 'static {
    /// Wait for the next message this worker may handle (respecting the
    /// source's ordering and backoff), or `None` once `stop` turns true.
    async fn next(&self, stop: &mut watch::Receiver<bool>) -> Option<Delivery>;

    /// `on-message` returned ok.
    async fn ack(&self, delivery: Delivery);

    /// `on-message` returned an error, trapped, or ran out of time or
    /// memory. The source decides between redelivery and dead-lettering
    /// (durable) or dropping (at-most-once).
    async fn fail(&self, delivery: Delivery, reason: String);
}

/// Run one worker until `stop` turns true. The message in hand when it
/// does is finished (handled and acknowledged or rejected) first.
pub async fn run_worker(
    subscription: Arc<str>,
    source: Arc<dyn Source>,
    factory: Arc<SubscriberFactory>,
    mut instance: Option<SubscriberInstance>,
    mut stop: watch::Receiver<bool>,
) {
    let handle_seconds = metrics::histogram!(
        "ficus_pubsub_handle_seconds",
        "subscription" => subscription.to_string()
    );
    while let Some(delivery) = source.next(&mut stop).await {
        if instance.is_none() {
            match factory.instantiate().await {
                Ok(i) => instance = Some(i),
                Err(e) => {
                    tracing::error!(
                        subscription = %subscription,
                        plugin = %factory.spec().plugin,
                        error = %e,
                        "cannot create a subscriber instance"
                    );
                    outcome(&subscription, "instance");
                    source.fail(delivery, format!("no instance: {e}")).await;
                    // Do not spin on a plugin that cannot start.
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.changed() => {}
                    }
                    continue;
                }
            }
        }
        let Some(inst) = instance.as_mut() else {
            continue;
        };
        let started = Instant::now();
        let result = inst.on_message(&delivery.message).await;
        handle_seconds.record(started.elapsed().as_secs_f64());
        match result {
            Ok(Ok(())) => {
                outcome(&subscription, "ok");
                source.ack(delivery).await;
            }
            Ok(Err(reason)) => {
                outcome(&subscription, "error");
                tracing::debug!(
                    subscription = %subscription,
                    subject = %delivery.message.subject,
                    sequence = delivery.message.sequence,
                    delivery = delivery.message.delivery,
                    reason = %reason,
                    "on-message returned an error"
                );
                source.fail(delivery, reason).await;
            }
            Err(e) => {
                outcome(&subscription, e.kind());
                tracing::warn!(
                    subscription = %subscription,
                    plugin = %factory.spec().plugin,
                    hook = "on-message",
                    subject = %delivery.message.subject,
                    sequence = delivery.message.sequence,
                    error = %e,
                    "subscriber failed; replacing its instance"
                );
                instance = None;
                source.fail(delivery, e.to_string()).await;
            }
        }
    }
}

fn outcome(subscription: &str, outcome: &'static str) {
    metrics::counter!(
        "ficus_pubsub_deliveries_total",
        "subscription" => subscription.to_string(),
        "outcome" => outcome
    )
    .increment(1);
}
