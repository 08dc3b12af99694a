//! `cargo test` fails when the code is not formatted or clippy warns, so neither can
//! land unnoticed. Clippy runs in its own target directory: the outer `cargo test` may
//! still hold the lock on the main one.
use std::path::Path;
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
