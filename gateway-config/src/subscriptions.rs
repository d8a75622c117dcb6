//! Validation of `[pubsub]` and `[[subscriptions]]`.

use std::collections::BTreeMap;

use crate::locate::{join_index, join_key};
use crate::model::{Config, Delivery};
use crate::subject;
use crate::validate::{check_name, json_kind, known, Problems};

/// Every problem of the pub/sub tables.
pub(crate) fn check(config: &Config, out: &mut Problems) {
    out.range(
        "pubsub.max_message_bytes".into(),
        config.pubsub.max_message_bytes,
        1,
        64 * 1024 * 1024,
    );
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    // The first member of each queue group, to compare the others with.
    let mut queues: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, sub) in config.subscriptions.iter().enumerate() {
        let base = join_index("subscriptions", i);
        check_name("subscription", &sub.name, &join_key(&base, "name"), out);
        if let Some(first) = names.get(sub.name.as_str()) {
            out.push(
                join_key(&base, "name"),
                format!(
                    "duplicate subscription name {:?} (already used by subscriptions[{first}])",
                    sub.name
                ),
            );
        } else {
            names.insert(&sub.name, i);
        }
        let pattern_ok = match subject::check_pattern(&sub.subject) {
            Ok(()) => true,
            Err(e) => {
                out.push(
                    join_key(&base, "subject"),
                    format!(
                        "invalid subject pattern {:?}: {e} (expected dot-separated tokens of \
                         [A-Za-z0-9_-], `*` for one token, a final `>` for the rest)",
                        sub.subject
                    ),
                );
                false
            }
        };
        if !config.plugins.contains_key(&sub.plugin) {
            out.push(
                join_key(&base, "plugin"),
                format!(
                    "unknown plugin {:?} (known: {})",
                    sub.plugin,
                    known(config.plugins.keys())
                ),
            );
        }
        out.range(join_key(&base, "max_deliver"), sub.max_deliver, 1, 1000);
        out.range(join_key(&base, "backoff_ms"), sub.backoff_ms, 1, 3_600_000);
        if sub.backoff_max_ms < sub.backoff_ms {
            out.push(
                join_key(&base, "backoff_max_ms"),
                format!(
                    "must be at least backoff_ms ({}) (got {})",
                    sub.backoff_ms, sub.backoff_max_ms
                ),
            );
        } else {
            out.range(
                join_key(&base, "backoff_max_ms"),
                sub.backoff_max_ms,
                1,
                3_600_000,
            );
        }
        out.range(
            join_key(&base, "max_in_flight"),
            sub.max_in_flight,
            1,
            65_536,
        );
        let mut dead_ok = true;
        if let Some(dead) = &sub.dead_letter {
            if let Err(e) = subject::check_subject(dead) {
                dead_ok = false;
                out.push(
                    join_key(&base, "dead_letter"),
                    format!("invalid dead-letter subject {dead:?}: {e}"),
                );
            }
        }
        let dead = sub.dead_letter_subject();
        if sub.delivery == Delivery::AtLeastOnce
            && pattern_ok
            && dead_ok
            && subject::check_subject(&dead).is_ok()
            && subject::matches(&sub.subject, &dead)
        {
            let at = if sub.dead_letter.is_some() {
                "dead_letter"
            } else {
                "subject"
            };
            out.push(
                join_key(&base, at),
                format!(
                    "the dead-letter subject {dead:?} matches the subscription's own subject \
                     {:?}: a message that keeps failing would come back forever (set \
                     dead_letter to a subject outside the pattern)",
                    sub.subject
                ),
            );
        }
        if !sub.config.is_object() && !sub.config.is_null() {
            out.push(
                join_key(&base, "config"),
                format!("expected a table (got {})", json_kind(&sub.config)),
            );
        }
        if let Some(queue) = &sub.queue {
            check_name("queue group", queue, &join_key(&base, "queue"), out);
            match queues.get(queue.as_str()) {
                None => {
                    queues.insert(queue, i);
                }
                Some(&first) => {
                    let f = &config.subscriptions[first];
                    let differs = [
                        ("subject", f.subject != sub.subject),
                        ("delivery", f.delivery != sub.delivery),
                        ("max_deliver", f.max_deliver != sub.max_deliver),
                        ("backoff_ms", f.backoff_ms != sub.backoff_ms),
                        ("backoff_max_ms", f.backoff_max_ms != sub.backoff_max_ms),
                        ("max_in_flight", f.max_in_flight != sub.max_in_flight),
                        ("dead_letter", f.dead_letter != sub.dead_letter),
                    ];
                    for (key, differ) in differs {
                        if differ {
                            out.push(
                                join_key(&base, key),
                                format!(
                                    "members of queue group {queue:?} must agree on {key} \
                                     (it differs from subscriptions[{first}] ({:?}))",
                                    f.name
                                ),
                            );
                        }
                    }
                }
            }
        }
    }
}
