//! The test of [`crate::testdir::TempDir`], apart from it: `tests/common` includes
//! `testdir.rs`, and a test there would run (and panic on purpose) in every integration binary.

use crate::testdir::TempDir;

#[test]
fn the_directory_is_fresh_and_gone_after_a_panic() {
    let a = TempDir::new("guard");
    let b = TempDir::new("guard");
    assert_ne!(a.path(), b.path());
    std::fs::write(a.join("f"), b"x").unwrap();
    let kept = a.path().to_path_buf();
    let panicked = std::panic::catch_unwind(move || {
        let _moved = a;
        panic!("a failing test");
    });
    assert!(panicked.is_err());
    assert!(!kept.exists(), "removed although the test panicked");
    drop(b);
}
