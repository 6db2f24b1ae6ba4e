//! What each crate may depend on (ARCHITECTURE.md, "Crates"), read from `cargo tree`: the rollout
//! logic stays free of I/O crates, and the controller image's build leaves the lab out.

#![allow(clippy::panic)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

/// The names of every package in `package`'s normal dependency tree, as `cargo tree` resolves it
/// with `extra` flags.
fn dependency_names(package: &str, extra: &[&str]) -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = Command::new(cargo)
        .current_dir(&workspace)
        .args([
            "tree",
            "--offline",
            "-e",
            "normal",
            "--prefix",
            "none",
            "-p",
            package,
        ])
        .args(extra)
        .output()
        .unwrap_or_else(|error| panic!("cannot run cargo tree: {error}"));
    assert!(
        output.status.success(),
        "cargo tree -p {package} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_rollout_logic_depends_on_no_runtime_client_or_http_crate() {
    let names = dependency_names("cohort-rollout", &[]);
    assert!(
        names.contains("cohort-core"),
        "the tree was not read: {names:?}"
    );
    for banned in [
        "tokio",
        "kube",
        "kube-client",
        "kube-runtime",
        "hyper",
        "reqwest",
        "axum",
        "prometheus-http-query",
    ] {
        assert!(
            !names.contains(banned),
            "cohort-rollout depends on {banned}; it holds pure decisions only (ARCHITECTURE.md)"
        );
    }
}

#[test]
fn the_controller_image_build_leaves_the_lab_out() {
    let image = dependency_names("cohort", &["--no-default-features"]);
    assert!(
        image.contains("cohort-controller"),
        "the tree was not read: {image:?}"
    );
    assert!(
        !image.contains("cohort-lab"),
        "`cohort --no-default-features` (the Dockerfile's build) pulls in cohort-lab"
    );
    let full = dependency_names("cohort", &[]);
    assert!(
        full.contains("cohort-lab"),
        "the default build must keep the lab's commands"
    );
}
