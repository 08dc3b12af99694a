//! File permissions of what the engine creates: the ingest socket is made under a umask
//! that lets no one else in, then given the configured mode, so it never exists with
//! looser permissions than asked, whatever the process umask.
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Runs `create` with the process umask set to `mask`, then restores it.
///
/// The umask is process-wide: call this only while no other thread creates files.
pub fn with_umask<T>(mask: u32, create: impl FnOnce() -> T) -> T {
    // SAFETY: umask only swaps a process attribute; it cannot fail.
    let old = unsafe { libc::umask(mask as libc::mode_t) };
    let out = create();
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    out
}

/// Sets `path`'s permission bits to `mode`.
///
/// # Errors
/// The `chmod` error.
pub fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}
