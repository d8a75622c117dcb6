use super::embedded::EmbeddedReadModels;
use super::*;
use std::sync::Arc;

/// A scratch directory, removed when dropped.
struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch() -> Scratch {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ficus-readmodels-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    Scratch(dir)
}

fn open(dir: &Scratch) -> EmbeddedReadModels {
    EmbeddedReadModels::open(&dir.0.join("readmodels.redb")).expect("open")
}

fn put(key: &str, value: &str) -> Write {
    (key.to_owned(), Some(value.as_bytes().to_vec()))
}

#[tokio::test]
async fn a_commit_writes_documents_and_checkpoint_together() {
    let dir = scratch();
    let store = open(&dir);
    let g = store.generations("orders").await.unwrap();
    assert_eq!(
        g,
        Generations {
            active: 1,
            checkpoint: 0,
            building: None
        }
    );
    store
        .commit("orders", 1, vec![put("o/1", "a"), put("o/2", "b")], 3)
        .await
        .unwrap();
    store
        .commit("orders", 1, vec![("o/1".into(), None), put("o/3", "c")], 5)
        .await
        .unwrap();
    assert_eq!(store.get("orders", 1, "o/1").await.unwrap(), None);
    assert_eq!(
        store.get("orders", 1, "o/2").await.unwrap(),
        Some(b"b".to_vec())
    );
    assert_eq!(store.generations("orders").await.unwrap().checkpoint, 5);
    // Another model is separate.
    assert_eq!(store.get("other", 1, "o/2").await.unwrap(), None);
}

#[tokio::test]
async fn a_checkpoint_that_does_not_move_forward_is_refused_and_writes_nothing() {
    let dir = scratch();
    let store = open(&dir);
    store.commit("m", 1, vec![put("k", "1")], 4).await.unwrap();
    for replay in [4, 2] {
        let err = store
            .commit("m", 1, vec![put("k", "twice")], replay)
            .await
            .unwrap_err();
        assert!(matches!(err, ReadModelError::Stale(_)), "{err}");
    }
    assert_eq!(store.get("m", 1, "k").await.unwrap(), Some(b"1".to_vec()));
}

#[tokio::test]
async fn scan_pages_by_prefix_in_key_order() {
    let dir = scratch();
    let store = open(&dir);
    let mut writes: Vec<Write> = (0..25).map(|i| put(&format!("a/{i:02}"), "x")).collect();
    writes.push(put("b/1", "y"));
    writes.push(put("a", "z"));
    store.commit("m", 1, writes, 1).await.unwrap();
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .scan("m", 1, "a/", after.as_deref(), 10)
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        after = Some(page.last().unwrap().key.clone());
        seen.extend(page.into_iter().map(|d| d.key));
    }
    let want: Vec<String> = (0..25).map(|i| format!("a/{i:02}")).collect();
    assert_eq!(seen, want);
    let all = store.scan("m", 1, "", None, 1000).await.unwrap();
    assert_eq!(all.len(), 27);
    assert_eq!(all[0].key, "a");
}

#[tokio::test]
async fn a_rebuild_builds_beside_the_active_generation_then_replaces_it() {
    let dir = scratch();
    let store = open(&dir);
    store
        .commit("m", 1, vec![put("old", "1")], 10)
        .await
        .unwrap();
    let next = store.begin_rebuild("m").await.unwrap();
    assert_eq!(next, 2);
    store
        .commit("m", 2, vec![put("new", "2")], 4)
        .await
        .unwrap();
    // The active generation still answers and still takes live writes.
    store
        .commit("m", 1, vec![put("old2", "1")], 11)
        .await
        .unwrap();
    let g = store.generations("m").await.unwrap();
    assert_eq!((g.active, g.checkpoint, g.building), (1, 11, Some((2, 4))));
    assert_eq!(store.get("m", 1, "old").await.unwrap(), Some(b"1".to_vec()));
    store.activate("m", 2).await.unwrap();
    let g = store.generations("m").await.unwrap();
    assert_eq!((g.active, g.checkpoint, g.building), (2, 4, None));
    assert_eq!(
        store.get("m", 1, "old").await.unwrap(),
        None,
        "old generation dropped"
    );
    assert_eq!(store.get("m", 2, "new").await.unwrap(), Some(b"2".to_vec()));
    // The replaced generation takes no more writes.
    let err = store
        .commit("m", 1, vec![put("x", "1")], 12)
        .await
        .unwrap_err();
    assert!(matches!(err, ReadModelError::Stale(_)), "{err}");
    // Activating a generation that is not being built is refused.
    assert!(store.activate("m", 3).await.is_err());
    // A rebuild started again drops the unfinished one.
    assert_eq!(store.begin_rebuild("m").await.unwrap(), 3);
    store
        .commit("m", 3, vec![put("half", "1")], 2)
        .await
        .unwrap();
    assert_eq!(store.begin_rebuild("m").await.unwrap(), 4);
    assert_eq!(store.get("m", 3, "half").await.unwrap(), None);
}

#[tokio::test]
async fn everything_committed_survives_a_reopen() {
    let dir = scratch();
    {
        let store = open(&dir);
        store.commit("m", 1, vec![put("k", "v")], 7).await.unwrap();
        store.begin_rebuild("m").await.unwrap();
    }
    let store = open(&dir);
    let g = store.generations("m").await.unwrap();
    assert_eq!((g.active, g.checkpoint, g.building), (1, 7, Some((2, 0))));
    assert_eq!(store.get("m", 1, "k").await.unwrap(), Some(b"v".to_vec()));
}

#[tokio::test]
async fn bad_keys_and_oversized_documents_are_refused_with_the_reason() {
    let dir = scratch();
    let store = open(&dir);
    let long = "k".repeat(MAX_KEY_BYTES + 1);
    for key in ["", long.as_str(), "a\nb"] {
        let err = store
            .commit("m", 1, vec![put(key, "v")], 1)
            .await
            .unwrap_err();
        assert!(matches!(err, ReadModelError::Invalid(_)), "{err}");
    }
    let big = vec![0u8; MAX_VALUE_BYTES + 1];
    let err = store
        .commit("m", 1, vec![("k".into(), Some(big))], 1)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("at most"), "{err}");
    assert_eq!(store.generations("m").await.unwrap().checkpoint, 0);
}

#[tokio::test]
async fn the_service_names_unknown_models() {
    let dir = scratch();
    let service = ReadModelService {
        store: Arc::new(open(&dir)),
        models: ["orders".to_owned()].into(),
    };
    let err = service.get("nope", "k").await.unwrap_err();
    assert!(
        err.to_string()
            .contains("unknown read model \"nope\" (known: orders)"),
        "{err}"
    );
    assert_eq!(service.get("orders", "k").await.unwrap(), None);
}
