//! `cargo test` fails when the code (the fuzz targets too) is not formatted or clippy
//! warns, so neither can land unnoticed. Clippy runs in its own target directory: the
//! outer `cargo test` may still hold the lock on the main one.
use std::path::{Path, PathBuf};
use std::process::Command;

fn cargo(args: &[&str]) -> (bool, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(args)
        .current_dir(root)
        .env("CARGO_TARGET_DIR", root.join("target/lint"))
        .output()
        .expect("cargo runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn code_is_formatted() {
    let (ok, out) = cargo(&["fmt", "--all", "--", "--check"]);
    assert!(
        ok,
        "cargo fmt --all --check failed; run `cargo fmt --all`:\n{out}"
    );
}

#[test]
fn clippy_is_clean() {
    let (ok, out) = cargo(&["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]);
    assert!(
        ok,
        "cargo clippy --workspace --all-targets -- -D warnings failed:\n{out}"
    );
}

/// The fuzz targets are a workspace of their own (they are built with coverage
/// instrumentation), so `cargo fmt --all` does not reach them.
#[test]
fn fuzz_targets_are_formatted() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/targets/fuzz_targets");
    let files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fuzz/targets/fuzz_targets exists")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "rs"))
        .collect();
    assert!(!files.is_empty(), "no fuzz target in {}", dir.display());
    let out = Command::new("rustfmt")
        .args(["--edition", "2021", "--check"])
        .args(&files)
        .output()
        .expect("rustfmt runs");
    assert!(
        out.status.success(),
        "fuzz targets are not formatted; run `rustfmt --edition 2021 fuzz/targets/fuzz_targets/*.rs`:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The fuzz targets call the engine's public API from outside the workspace, so
/// `cargo clippy --workspace` does not see them break when that API changes; this checks
/// them uninstrumented (fuzz/run.sh builds them with coverage).
#[test]
fn fuzz_targets_compile_cleanly() {
    let (ok, out) = cargo(&[
        "clippy",
        "--release",
        "--manifest-path",
        "fuzz/targets/Cargo.toml",
        "--bins",
        "--",
        "-D",
        "warnings",
    ]);
    assert!(
        ok,
        "cargo clippy --manifest-path fuzz/targets/Cargo.toml --bins failed:\n{out}"
    );
}
