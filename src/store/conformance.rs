//! The conformance suite every [`ObjectStore`] must pass, run by the tests against each
//! implementation. It checks the guarantees written on the trait, nothing more.

use super::{ObjectStore, StoreErrorKind};

/// Runs every check against `store`, which must be empty. Panics with the broken guarantee.
pub fn run_all(store: &dyn ObjectStore) {
    put_then_get(store);
    not_found_is_distinct(store);
    ranged_reads(store);
    idempotent_put_and_delete(store);
    listing_by_prefix(store);
    put_file_moves_contents(store);
    large_object(store);
}

pub fn put_then_get(store: &dyn ObjectStore) {
    store.put("conf/a/one", b"hello").unwrap();
    assert_eq!(
        store.get("conf/a/one").unwrap(),
        b"hello",
        "read-after-write"
    );
    assert_eq!(store.stat("conf/a/one").unwrap(), 5, "stat after write");
    store.put("conf/a/empty", b"").unwrap();
    assert_eq!(store.get("conf/a/empty").unwrap(), b"", "empty object");
}

pub fn not_found_is_distinct(store: &dyn ObjectStore) {
    for result in [
        store.get("conf/missing").map(|_| ()),
        store.get_range("conf/missing", 0, 4).map(|_| ()),
        store.stat("conf/missing").map(|_| ()),
    ] {
        let err = result.expect_err("a missing object must be an error");
        assert_eq!(err.kind, StoreErrorKind::NotFound, "{err}");
    }
}

pub fn ranged_reads(store: &dyn ObjectStore) {
    let data: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
    store.put("conf/range", &data).unwrap();
    assert_eq!(store.get_range("conf/range", 0, 10).unwrap(), &data[..10]);
    assert_eq!(
        store.get_range("conf/range", 5000, 1234).unwrap(),
        &data[5000..6234]
    );
    assert_eq!(
        store.get_range("conf/range", 9990, 100).unwrap(),
        &data[9990..],
        "a range past the end is cut short"
    );
    // Into a reused buffer: what it held before is gone, whether longer or shorter.
    let mut buf = vec![0xAA; 20_000];
    store
        .get_range_into("conf/range", 100, 50, &mut buf)
        .unwrap();
    assert_eq!(buf, &data[100..150]);
    store
        .get_range_into("conf/range", 9000, 4000, &mut buf)
        .unwrap();
    assert_eq!(buf, &data[9000..], "a range past the end is cut short");
    let err = store
        .get_range_into("conf/missing", 0, 4, &mut buf)
        .expect_err("a missing object must be an error");
    assert_eq!(err.kind, StoreErrorKind::NotFound, "{err}");
}

pub fn idempotent_put_and_delete(store: &dyn ObjectStore) {
    store.put("conf/idem", b"same").unwrap();
    store.put("conf/idem", b"same").unwrap();
    assert_eq!(store.get("conf/idem").unwrap(), b"same");
    store.delete("conf/idem").unwrap();
    assert_eq!(
        store.get("conf/idem").unwrap_err().kind,
        StoreErrorKind::NotFound,
        "deleted object must be gone"
    );
    store
        .delete("conf/idem")
        .expect("deleting a missing object succeeds");
}

pub fn listing_by_prefix(store: &dyn ObjectStore) {
    store.put("list/x/1", b"1").unwrap();
    store.put("list/x/22", b"22").unwrap();
    store.put("list/y/333", b"333").unwrap();
    store.put("listing", b"not under list/").unwrap();
    let mut under_x: Vec<_> = store
        .list("list/x/")
        .unwrap()
        .into_iter()
        .map(|o| (o.key, o.size))
        .collect();
    under_x.sort();
    assert_eq!(
        under_x,
        vec![("list/x/1".to_string(), 1), ("list/x/22".to_string(), 2)]
    );
    let mut all: Vec<_> = store
        .list("list/")
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    all.sort();
    assert_eq!(all, vec!["list/x/1", "list/x/22", "list/y/333"]);
    assert!(store.list("nothing-here/").unwrap().is_empty());
}

pub fn put_file_moves_contents(store: &dyn ObjectStore) {
    let dir = store.spool_dir().unwrap_or_else(std::env::temp_dir);
    // Unique per call: several stores run this suite at once in one test process.
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!("conformance-{}-{call}", std::process::id()));
    std::fs::write(&path, b"from a file").unwrap();
    store.put_file("conf/from-file", &path).unwrap();
    assert_eq!(store.get("conf/from-file").unwrap(), b"from a file");
    assert!(!path.exists(), "put_file consumes the file");
}

pub fn large_object(store: &dyn ObjectStore) {
    let data: Vec<u8> = (0..(20u32 << 20)).map(|i| (i * 7 % 251) as u8).collect();
    store.put("conf/large", &data).unwrap();
    assert_eq!(store.stat("conf/large").unwrap(), data.len() as u64);
    assert_eq!(
        store.get_range("conf/large", 15 << 20, 16).unwrap(),
        &data[15 << 20..(15 << 20) + 16]
    );
    assert!(store.get("conf/large").unwrap() == data);
}
