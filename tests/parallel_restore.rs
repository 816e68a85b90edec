//! A file larger than the restore's piece size (32 MiB, `restore/planner.rs`) is cut into
//! pieces that several writer threads write at their offsets; the file that comes out must
//! be the original byte for byte, its holes still holes, under its real name only once
//! complete.

mod util;

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use util::fixture;

#[test]
fn a_file_of_several_pieces_is_restored_byte_identical_by_several_writers() {
    let tmp = util::tempdir();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    // 70 MiB: 40 MiB of data, a 10 MiB hole, 20 MiB of data: three pieces of about 32 MiB
    // of data each at most, the hole inside the second.
    let big = src.join("big.img");
    let mut f = fs::File::create(&big).unwrap();
    f.write_all(&fixture::pseudo_random(11, 40 << 20)).unwrap();
    f.seek(SeekFrom::Current(10 << 20)).unwrap();
    f.write_all(&fixture::pseudo_random(12, 20 << 20)).unwrap();
    drop(f);
    let original = fs::read(&big).unwrap();
    assert_eq!(original.len(), 70 << 20);
    let repo = util::init_repo(&tmp.path().join("repo"));
    let snap = util::snapshot(&repo, &[&src]);

    for threads in [2, 4] {
        let out = tmp.path().join(format!("out-{threads}"));
        let mut opts = util::restore_options(&out, &[], false);
        opts.threads = threads;
        let report = hostagent::restore::restore(&repo, &snap.snapshot, &opts).unwrap();
        assert_eq!(report.error_count, 0, "{:?}", report.errors);

        let restored = util::restored(&out, &big);
        let bytes = fs::read(&restored).unwrap();
        assert_eq!(bytes.len(), original.len(), "{threads} threads");
        // Compare by MiB to name the first wrong one instead of dumping 70 MiB.
        for (i, (a, b)) in bytes
            .chunks(1 << 20)
            .zip(original.chunks(1 << 20))
            .enumerate()
        {
            assert!(a == b, "{threads} threads: MiB {i} differs");
        }
        let meta = fs::metadata(&restored).unwrap();
        assert!(
            meta.blocks() * 512 <= (61 << 20),
            "{threads} threads: the 10 MiB hole was written out ({} bytes allocated)",
            meta.blocks() * 512
        );
        util::compare::assert_same_tree(&src, &util::restored(&out, &src));
        assert!(util::names_starting_with(&out, ".hostagent-restore-").is_empty());
    }
}
