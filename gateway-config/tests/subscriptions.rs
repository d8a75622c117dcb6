//! `[pubsub]` and `[[subscriptions]]`: defaults, validation errors with key paths, and the
//! subject matcher against a reference implementation.

use std::path::Path;

use ficus_config::subject::{check_pattern, check_subject, matches};
use ficus_config::{parse_str, Config, ConfigError, Delivery};
use proptest::prelude::*;

const FILE: &str = "conf/gateway.toml";

const PLUGIN: &str = "[plugins.sub]\nsource = \"sub.wasm\"\n";

fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
    parse_str(text, Path::new(FILE)).map_err(|e| e.0)
}

fn errors(text: &str) -> Vec<ConfigError> {
    match parse(text) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(errors) => errors,
    }
}

#[track_caller]
fn has_error(errors: &[ConfigError], key_path: &str, message: &str) {
    assert!(
        errors
            .iter()
            .any(|e| e.key_path == key_path && e.message.contains(message) && e.line.is_some()),
        "no error at {key_path} containing {message:?} in: {errors:#?}"
    );
}

#[test]
fn defaults() {
    let config = parse(&format!(
        "{PLUGIN}[[subscriptions]]\nname = \"audit\"\nsubject = \"orders.>\"\nplugin = \"sub\"\n"
    ))
    .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(config.pubsub.max_message_bytes, 1024 * 1024);
    let s = &config.subscriptions[0];
    assert_eq!(s.delivery, Delivery::AtLeastOnce);
    assert_eq!(s.max_deliver, 5);
    assert_eq!(s.backoff_ms, 100);
    assert_eq!(s.backoff_max_ms, 10_000);
    assert_eq!(s.max_in_flight, 256);
    assert_eq!(s.queue, None);
    assert_eq!(s.dead_letter_subject(), "dead.audit");
    assert_eq!(s.config_json(), "{}");
}

#[test]
fn full_subscription_parses() {
    let config = parse(&format!(
        "{PLUGIN}[pubsub]\nmax_message_bytes = 4096\n\
         [[subscriptions]]\nname = \"a\"\nsubject = \"orders.*\"\nplugin = \"sub\"\n\
         queue = \"workers\"\ndelivery = \"at-most-once\"\nmax_deliver = 2\nbackoff_ms = 5\n\
         backoff_max_ms = 50\nmax_in_flight = 8\ndead_letter = \"failed.orders\"\n\
         config = {{ label = \"x\" }}\n"
    ))
    .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(config.pubsub.max_message_bytes, 4096);
    let s = &config.subscriptions[0];
    assert_eq!(s.delivery, Delivery::AtMostOnce);
    assert_eq!(s.queue.as_deref(), Some("workers"));
    assert_eq!(s.dead_letter_subject(), "failed.orders");
    assert_eq!(s.config_json(), r#"{"label":"x"}"#);
}

#[test]
fn bad_subscriptions_are_reported_at_their_key_paths() {
    let text = format!(
        "{PLUGIN}[pubsub]\nmax_message_bytes = 0\n\
         [[subscriptions]]\nname = \"Bad Name\"\nsubject = \"orders.>.x\"\nplugin = \"nope\"\n\
         max_deliver = 0\nbackoff_ms = 100\nbackoff_max_ms = 10\nmax_in_flight = 0\n\
         dead_letter = \"dead.*\"\nconfig = 3\n\
         [[subscriptions]]\nname = \"ok\"\nsubject = \"a..b\"\nplugin = \"sub\"\n\
         [[subscriptions]]\nname = \"ok\"\nsubject = \"a.b\"\nplugin = \"sub\"\n"
    );
    let errors = errors(&text);
    has_error(&errors, "pubsub.max_message_bytes", "between 1 and");
    has_error(
        &errors,
        "subscriptions[0].name",
        "invalid subscription name",
    );
    has_error(
        &errors,
        "subscriptions[0].subject",
        "must be the last token",
    );
    has_error(
        &errors,
        "subscriptions[0].plugin",
        "unknown plugin \"nope\" (known: sub)",
    );
    has_error(
        &errors,
        "subscriptions[0].max_deliver",
        "between 1 and 1000 (got 0)",
    );
    has_error(
        &errors,
        "subscriptions[0].backoff_max_ms",
        "at least backoff_ms",
    );
    has_error(
        &errors,
        "subscriptions[0].max_in_flight",
        "between 1 and 65536",
    );
    has_error(
        &errors,
        "subscriptions[0].dead_letter",
        "only allowed in subscription patterns",
    );
    has_error(&errors, "subscriptions[0].config", "expected a table");
    has_error(&errors, "subscriptions[1].subject", "token 2 is empty");
    has_error(
        &errors,
        "subscriptions[2].name",
        "duplicate subscription name \"ok\"",
    );
}

#[test]
fn unknown_delivery_mode_names_the_choices() {
    let errors = errors(&format!(
        "{PLUGIN}[[subscriptions]]\nname = \"a\"\nsubject = \"x\"\nplugin = \"sub\"\n\
         delivery = \"exactly-once\"\n"
    ));
    assert!(
        errors[0].message.contains("at-least-once") && errors[0].key_path.contains("delivery"),
        "{errors:#?}"
    );
}

#[test]
fn a_dead_letter_subject_inside_the_pattern_is_refused() {
    let errors = errors(&format!(
        "{PLUGIN}[[subscriptions]]\nname = \"all\"\nsubject = \">\"\nplugin = \"sub\"\n\
         [[subscriptions]]\nname = \"b\"\nsubject = \"orders.>\"\nplugin = \"sub\"\n\
         dead_letter = \"orders.dead\"\n"
    ));
    has_error(&errors, "subscriptions[0].subject", "\"dead.all\" matches");
    has_error(
        &errors,
        "subscriptions[1].dead_letter",
        "\"orders.dead\" matches",
    );
    // At-most-once subscriptions have no dead letters.
    assert!(parse(&format!(
        "{PLUGIN}[[subscriptions]]\nname = \"all\"\nsubject = \">\"\nplugin = \"sub\"\n\
         delivery = \"at-most-once\"\n"
    ))
    .is_ok());
}

#[test]
fn queue_group_members_must_agree() {
    let errors = errors(&format!(
        "{PLUGIN}[[subscriptions]]\nname = \"a\"\nsubject = \"jobs.*\"\nplugin = \"sub\"\n\
         queue = \"w\"\n\
         [[subscriptions]]\nname = \"b\"\nsubject = \"jobs.>\"\nplugin = \"sub\"\nqueue = \"w\"\n\
         delivery = \"at-most-once\"\n\
         [[subscriptions]]\nname = \"c\"\nsubject = \"jobs.*\"\nplugin = \"sub\"\nqueue = \"W!\"\n"
    ));
    has_error(
        &errors,
        "subscriptions[1].subject",
        "members of queue group \"w\" must agree on subject",
    );
    has_error(
        &errors,
        "subscriptions[1].delivery",
        "must agree on delivery",
    );
    has_error(
        &errors,
        "subscriptions[2].queue",
        "invalid queue group name",
    );
    assert!(parse(&format!(
        "{PLUGIN}[[subscriptions]]\nname = \"a\"\nsubject = \"jobs.*\"\nplugin = \"sub\"\n\
         queue = \"w\"\n\
         [[subscriptions]]\nname = \"b\"\nsubject = \"jobs.*\"\nplugin = \"sub\"\nqueue = \"w\"\n"
    ))
    .is_ok());
}

/// The obvious recursive definition of NATS matching, to check the iterative one against.
fn reference(pattern: &[&str], subject: &[&str]) -> bool {
    match (pattern.split_first(), subject.split_first()) {
        (None, None) => true,
        (Some((&">", _)), Some(_)) => true,
        (Some((p, prest)), Some((s, srest))) => (*p == "*" || p == s) && reference(prest, srest),
        _ => false,
    }
}

fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_string()),
        Just("b".to_string()),
        Just("c-1".to_string())
    ]
}

fn pattern_token() -> impl Strategy<Value = String> {
    prop_oneof![token(), Just("*".to_string())]
}

proptest! {
    #[test]
    fn matcher_agrees_with_the_reference(
        mut pattern in prop::collection::vec(pattern_token(), 1..5),
        full_wildcard in any::<bool>(),
        subject in prop::collection::vec(token(), 1..6),
    ) {
        if full_wildcard {
            *pattern.last_mut().expect("non-empty") = ">".to_string();
        }
        let p = pattern.join(".");
        let s = subject.join(".");
        prop_assert!(check_pattern(&p).is_ok());
        prop_assert!(check_subject(&s).is_ok());
        let p_tokens: Vec<&str> = pattern.iter().map(String::as_str).collect();
        let s_tokens: Vec<&str> = subject.iter().map(String::as_str).collect();
        prop_assert_eq!(matches(&p, &s), reference(&p_tokens, &s_tokens), "{} vs {}", p, s);
    }

    #[test]
    fn a_concrete_subject_matches_itself_and_its_wildcards(subject in prop::collection::vec(token(), 1..6)) {
        let s = subject.join(".");
        prop_assert!(matches(&s, &s));
        prop_assert!(matches(">", &s));
        let stars = vec!["*"; subject.len()].join(".");
        prop_assert!(matches(&stars, &s));
    }
}
