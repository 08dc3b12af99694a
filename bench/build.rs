//! Records the commit the tool was built from, so every result can name it: sets
//! `RINGCAST_BENCH_COMMIT` to `git rev-parse HEAD`, with `-dirty` when `git status
//! --porcelain` lists anything, or `unknown` when git or the repository is missing.
//!
//! Reruns when HEAD moves (the `HEAD` file, the branch ref it points to, `packed-refs`),
//! when the index changes (a commit, a stage) and when this crate's sources change (an
//! edit that makes the tree dirty).

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src");
    let commit = match git(&["rev-parse", "HEAD"]) {
        Some(head) => {
            watch_git_files();
            let dirty = git(&["status", "--porcelain"]).is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{head}-dirty")
            } else {
                head
            }
        }
        None => "unknown".to_owned(),
    };
    println!("cargo:rustc-env=RINGCAST_BENCH_COMMIT={commit}");
}

/// Asks cargo to rerun this script when HEAD, the ref it names, or the index changes.
fn watch_git_files() {
    let mut files = vec!["HEAD".to_owned(), "index".to_owned(), "packed-refs".to_owned()];
    if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"]) {
        files.push(reference);
    }
    for file in files {
        // `--git-path` resolves worktrees and a `.git` file the same way git does.
        if let Some(path) = git(&["rev-parse", "--git-path", &file]) {
            let path = Path::new(&path);
            let path = if path.is_absolute() {
                path.to_path_buf()
            } else {
                Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
            };
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
}

/// The trimmed standard output of `git ARGS` run in this crate's directory, or `None`
/// if git is missing or fails.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
