//! Shared by the node crate's integration tests, and by the root crate's (`tests/common`).

// Each test file compiles this module on its own and uses only part of it.
#![allow(dead_code)]

/// Whether this test may do what needs root. Without root it prints why it skips and returns
/// false; under CI (`CI=true`, where tests run as root) a missing root is a failure, so a
/// skipped privileged test can never pass as a green run.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test} needs root, and CI runs as root: refusing to skip"
    );
    eprintln!("skipped {test}: needs root (run the suite as root to include it)");
    false
}

/// A one-member store in `dir` that has elected itself leader, for tests that run agent code
/// against a real store.
#[allow(clippy::expect_used)] // a test's store that cannot start is the test's failure
pub async fn member(dir: &std::path::Path) -> coxswain_store::Member {
    let config = coxswain_store::MemberConfig::new(1, dir, "127.0.0.1:1", "token");
    let m = coxswain_store::Member::start(config, true)
        .await
        .expect("start a one-member store");
    m.wait_for_leader(std::time::Duration::from_secs(10))
        .await
        .expect("the member elects itself");
    m
}
