//! The object-store conformance suite, run against every store this build has.

use hostagent::store::{CountingStore, LocalStore, MemoryStore, conformance};

#[test]
fn local_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    conformance::run_all(&LocalStore::new(dir.path().join("repo")));
}

#[test]
fn memory_store_conforms() {
    conformance::run_all(&MemoryStore::new());
}

#[test]
fn counting_wrapper_conforms_and_counts() {
    let store = CountingStore::new(MemoryStore::new());
    conformance::run_all(&store);
    let c = store.counters();
    assert!(c.puts_under("conf") >= 5, "{c:?}");
    assert!(c.put_bytes_under("conf") > 20 << 20, "{c:?}");
}

#[test]
fn local_store_refuses_keys_that_escape_its_root() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new(dir.path().join("repo"));
    for key in ["../outside", "/etc/passwd", "a/../../b", "", "a//b"] {
        let err = hostagent::store::ObjectStore::put(&store, key, b"x").unwrap_err();
        assert_eq!(
            err.kind,
            hostagent::store::StoreErrorKind::Permanent,
            "{key}"
        );
    }
    assert!(!dir.path().join("outside").exists());
}

#[test]
fn faulty_wrapper_conforms_within_its_budget_and_then_fails_everything() {
    use hostagent::store::{FaultyStore, ObjectStore, StoreErrorKind};
    use std::sync::Arc;
    conformance::run_all(&FaultyStore::unlimited(Arc::new(MemoryStore::new())));
    let store = FaultyStore::new(Arc::new(MemoryStore::new()), 1);
    store.put("a", b"1").unwrap();
    assert_eq!(store.get("a").unwrap(), b"1");
    assert_eq!(
        store.put("b", b"2").unwrap_err().kind,
        StoreErrorKind::Permanent
    );
    assert!(store.has_failed());
    assert_eq!(store.get("a").unwrap_err().kind, StoreErrorKind::Permanent);
    assert_eq!(store.mutations(), 1);
}
