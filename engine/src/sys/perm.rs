//! File permissions of what the engine creates: the ingest socket is made under a umask
//! that lets no one else in, then given the configured group and mode, so it never exists
//! with looser permissions than asked, whatever the process umask.
//!
//! Must never: leave the process umask changed, or read a group entry into an unbounded
//! buffer.
use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The largest buffer a group lookup grows to: a group entry holds its member names, and
/// directory-backed groups can list thousands of them.
const GROUP_BUFFER_BYTES_MAX: usize = 1 << 20;

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

/// Sets `path`'s group to `gid`, leaving its owner.
///
/// # Errors
/// The `chown` error: `EPERM` when the process is neither root nor a member of the group.
pub fn set_group(path: &Path, gid: u32) -> io::Result<()> {
    std::os::unix::fs::chown(path, None, Some(gid))
}

/// The id of the group named `name` (the group database, `/etc/group` or NSS), or `None`
/// when there is no such group.
///
/// # Errors
/// `InvalidInput` for a name holding a NUL byte; the lookup's own error (an unreachable
/// directory service), or `ERANGE` for an entry larger than 1 MiB.
pub fn group_id(name: &str) -> io::Result<Option<u32>> {
    let name = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in the group name"))?;
    // SAFETY: sysconf reads a constant; -1 (no hint) is handled below.
    let hint = unsafe { libc::sysconf(libc::_SC_GETGR_R_SIZE_MAX) };
    let mut len = usize::try_from(hint)
        .unwrap_or(1024)
        .clamp(1024, GROUP_BUFFER_BYTES_MAX);
    loop {
        match lookup(&name, len) {
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) && len < GROUP_BUFFER_BYTES_MAX => {
                len = (len * 2).min(GROUP_BUFFER_BYTES_MAX);
            }
            other => return other,
        }
    }
}

/// One `getgrnam_r` call with a buffer of `len` bytes.
fn lookup(name: &CStr, len: usize) -> io::Result<Option<u32>> {
    let mut buf = vec![0 as libc::c_char; len];
    // SAFETY: `group` is plain data (integers and pointers) for which all zeroes is a
    // valid value; getgrnam_r overwrites it.
    let mut group: libc::group = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: `name` is NUL-terminated; `group`, `buf` (with its true length) and `found`
    // are valid for writes for the whole call, and nothing pointing into `buf` outlives
    // this function (only the gid, an integer, is kept).
    let rc = unsafe { libc::getgrnam_r(name.as_ptr(), &mut group, buf.as_mut_ptr(), buf.len(), &mut found) };
    match rc {
        0 if found.is_null() => Ok(None),
        0 => Ok(Some(group.gr_gid)),
        // POSIX lets "no such group" be reported as these too (getgrnam_r(3)).
        libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM => Ok(None),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_found_by_name() {
        // Every Linux system has group 0; its name is "root".
        assert_eq!(group_id("root").unwrap(), Some(0));
        assert_eq!(group_id("ringcast-no-such-group").unwrap(), None);
        assert_eq!(group_id("a\0b").unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn a_small_buffer_is_grown() {
        // One byte cannot hold even the name: the call must say ERANGE, not truncate.
        let name = CString::new("root").unwrap();
        assert_eq!(lookup(&name, 1).unwrap_err().raw_os_error(), Some(libc::ERANGE));
    }
}
