//! Key slots: add, list, change password, and the refusals that keep a repository openable.

use crate::util::*;
use hostagent::Kind;
use hostagent::maintenance::keys;
use hostagent::repo::{KdfParams, Repository};

#[test]
fn add_passwd_remove_and_refusals() {
    let store = memory();
    let src = tempfile::tempdir().unwrap();
    let mut repo = init(store.clone());
    let files: Files = [("f".to_string(), bytes(1, 100_000))].into();
    write_files(src.path(), &files);
    let id = snapshot(&mut repo, src.path(), "n", &[]);
    let fast = KdfParams::insecure_fast();

    // The only slot can never go, forced or not.
    let only = keys::list(&repo, PASSWORD).unwrap();
    assert_eq!(only.len(), 1);
    assert!(only[0].current);
    let e = keys::remove(&repo, PASSWORD, &only[0].id[..8], true).unwrap_err();
    assert_eq!(e.kind(), Kind::InvalidInput);
    assert!(e.message().contains("only one"), "{e}");

    let second = keys::add(&repo, b"second", "ops", fast).unwrap();
    let list = keys::list(&repo, PASSWORD).unwrap();
    assert_eq!(list.iter().filter(|s| s.current).count(), 1);
    assert!(
        list.iter()
            .any(|s| s.id == second && !s.current && s.label == "ops")
    );

    // Removing the slot one opened with needs --force.
    let e = keys::remove(&repo, PASSWORD, &only[0].id[..8], false).unwrap_err();
    assert!(e.message().contains("your password opens"), "{e}");

    // Change "second" to "third": data untouched, old password gone, new one opens.
    let packs_before = store.list("packs/").unwrap();
    let (third, removed) = keys::change_password(&repo, b"second", b"third", fast).unwrap();
    assert_eq!(removed, vec![second.clone()]);
    assert_eq!(store.list("packs/").unwrap(), packs_before);
    assert_eq!(
        Repository::open(store.clone(), b"second")
            .unwrap_err()
            .kind(),
        Kind::WrongPassword
    );
    let via_third = Repository::open(store.clone(), b"third").unwrap();
    assert_eq!(restored(&via_third, &id, src.path()), files);

    // With another password in place, the original slot may go when forced.
    keys::remove(&repo, PASSWORD, &only[0].id[..8], true).unwrap();
    assert_eq!(
        Repository::open(store.clone(), PASSWORD)
            .unwrap_err()
            .kind(),
        Kind::WrongPassword
    );
    let left = keys::list(&via_third, b"third").unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].id, third);
    assert_eq!(
        keys::remove(&via_third, b"third", "zz", false)
            .unwrap_err()
            .kind(),
        Kind::NotFound
    );
}
