//! Nothing of the source is readable in the repository: distinctive markers placed in file
//! and directory names, contents, xattr names and values, symlink targets, the host name
//! and tags are searched for in every byte of every object the snapshot wrote.

mod util;

use hostagent::backup;
use std::fs;
use std::os::unix::fs::symlink;
use util::fixture;

const MARKERS: [&str; 9] = [
    "QxMarkerFileName",
    "QxMarkerDirName",
    "QxMarkerContentText",
    "QxMarkerContentRandom",
    "QxMarkerXattrName",
    "QxMarkerXattrValue",
    "QxMarkerSymlinkTarget",
    "QxMarkerHostName",
    "QxMarkerTag",
];

fn find(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn no_name_or_content_of_the_source_appears_in_the_repository() {
    let tmp = util::tempdir();
    let src = tmp.path().join("src");
    let dir = src.join("QxMarkerDirName-and-more");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("QxMarkerFileName.txt"), b"plain").unwrap();
    // Compressible text: zstd keeps literals, so only encryption hides it.
    fs::write(src.join("text"), "QxMarkerContentText\n".repeat(5000)).unwrap();
    // Incompressible data, stored raw before encryption.
    let mut random = fixture::pseudo_random(5, 600_000);
    random.splice(300_000..300_000, b"QxMarkerContentRandom".iter().copied());
    fs::write(src.join("random"), &random).unwrap();
    fs::write(src.join("with-xattrs"), b"x").unwrap();
    fixture::set_xattr(&src.join("with-xattrs"), "user.QxMarkerXattrName", b"v");
    fixture::set_xattr(
        &src.join("with-xattrs"),
        "user.other",
        b"QxMarkerXattrValue",
    );
    symlink("/QxMarkerSymlinkTarget/x", src.join("link")).unwrap();

    let repo_dir = tmp.path().join("repo");
    let repo = util::init_repo(&repo_dir);
    let mut opts = util::backup_options(&[&src]);
    opts.hostname = "QxMarkerHostName".into();
    opts.tags = vec!["QxMarkerTag".into()];
    let report = backup::backup(&repo, &opts).unwrap();
    assert_eq!(report.snapshot.stats.errors, 0);

    let files = util::repo_files(&repo_dir);
    let total: usize = files.values().map(Vec::len).sum();
    assert!(total > 600_000, "the repository holds only {total} bytes");
    // The search works: the plain config is found.
    assert!(files.values().any(|b| find(b, b"hostagent-repository")));
    for marker in MARKERS {
        for (path, bytes) in &files {
            assert!(
                !find(bytes, marker.as_bytes()),
                "{marker} is readable in {}",
                path.display()
            );
        }
    }
    // And the snapshot does hold them all, so their absence above means something.
    let out = tmp.path().join("out");
    let restored = util::restore_to(&repo, &report.snapshot, &out);
    assert_eq!(restored.error_count, 0);
    util::compare::assert_same_tree(&src, &util::restored(&out, &src));
}
