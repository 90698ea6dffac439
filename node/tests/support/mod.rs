//! Shared by the node crate's integration tests, and by the root crate's (`tests/common`).

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
