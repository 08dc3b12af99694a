//! Who may use the admin listener. With `--admin-token` (or `--admin-token-file`) the
//! routes that read the engine's state or publish (`/stats`, `/metrics` unless
//! `--metrics-public`, `/publish`) need `Authorization: Bearer <token>` (RFC 6750 §2.1);
//! `/healthz` stays open for probes. A refusal is `401` with `WWW-Authenticate`
//! (RFC 6750 §3), counted by reason.
//!
//! Owns: loading the token once at start (the flag, or the first line of the file), the
//! comparison, the refusal answers and their counters.
//!
//! Must never: keep, log or echo a token a client sent, or compare in time that depends
//! on the secret's bytes or length.
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

use subtle::ConstantTimeEq;

use super::conn::{Authorization, Reply};
use crate::config::{admin_token_problem, Config, ADMIN_TOKEN_BYTES_MAX};

/// The realm named in every challenge.
const CHALLENGE: &str = "Bearer realm=\"ringcast-admin\"";

/// Why the admin token could not be loaded at start.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the admin token file {path}: {source}; pass --admin-token-file PATH")]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "the admin token file {path} is readable by every user (mode {mode:03o}); \
         chmod o-r {path} (e.g. chmod 600)"
    )]
    WorldReadable { path: PathBuf, mode: u32 },
    #[error("the admin token file {path}: its first line {why}")]
    Unusable { path: PathBuf, why: &'static str },
}

/// The admin token, in a buffer of fixed size so that comparing takes the same steps
/// whatever its length.
pub struct Token {
    bytes: Box<[u8; ADMIN_TOKEN_BYTES_MAX]>,
    len: usize,
}

impl Token {
    /// The token of `config`: `--admin-token`, or the first line of `--admin-token-file`
    /// (read now, once; without its line end); `None` when neither is given.
    ///
    /// # Errors
    /// A [`TokenError`] naming the file: unreadable, readable by every user, or a first
    /// line that cannot be a token (empty, too long, not printable ASCII).
    ///
    /// # Panics
    /// If `--admin-token` was not checked by [`Config::validate`].
    pub fn load(config: &Config) -> Result<Option<Token>, TokenError> {
        if let Some(secret) = &config.admin_token {
            return Ok(Some(Token::new(secret.expose().as_bytes())));
        }
        let Some(path) = &config.admin_token_file else {
            return Ok(None);
        };
        let line = read_first_line(path)?;
        if let Some(why) = admin_token_problem(&line) {
            return Err(TokenError::Unusable {
                path: path.clone(),
                why,
            });
        }
        Ok(Some(Token::new(&line)))
    }

    /// # Panics
    /// If `secret` fails [`admin_token_problem`].
    fn new(secret: &[u8]) -> Token {
        assert!(
            admin_token_problem(secret).is_none(),
            "an admin token of {} bytes that was not validated",
            secret.len()
        );
        let mut bytes = Box::new([0u8; ADMIN_TOKEN_BYTES_MAX]);
        bytes[..secret.len()].copy_from_slice(secret);
        Token {
            bytes,
            len: secret.len(),
        }
    }

    /// Whether `given` is the token. Every byte of the fixed-size buffer is compared,
    /// in constant time, so the time taken tells nothing of the token's bytes or length;
    /// only whether `given` itself is over the size bound shows.
    pub fn matches(&self, given: &[u8]) -> bool {
        if given.len() > ADMIN_TOKEN_BYTES_MAX {
            return false;
        }
        let mut padded = [0u8; ADMIN_TOKEN_BYTES_MAX];
        padded[..given.len()].copy_from_slice(given);
        let same_len = (given.len() as u64).ct_eq(&(self.len as u64));
        (same_len & padded[..].ct_eq(&self.bytes[..])).into()
    }
}

/// Reads the first line of `path`, at most a token's bound and a line end, after checking
/// that not every user may read the file. The mode is that of the opened file, so a file
/// swapped in after the check is not read.
fn read_first_line(path: &Path) -> Result<Vec<u8>, TokenError> {
    let read_error = |source| TokenError::Read {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(read_error)?;
    let mode = file.metadata().map_err(read_error)?.permissions().mode() & 0o7777;
    if mode & 0o004 != 0 {
        return Err(TokenError::WorldReadable {
            path: path.to_owned(),
            mode,
        });
    }
    let mut line = Vec::new();
    // One byte over the bound tells a token that is too long from one that fits.
    let bound = ADMIN_TOKEN_BYTES_MAX as u64 + 2;
    BufReader::new(file.take(bound))
        .read_until(b'\n', &mut line)
        .map_err(read_error)?;
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    Ok(line)
}

/// Refusals counted by reason.
#[derive(Debug, Default)]
pub struct Refusals {
    /// No `Authorization` field, or one of another scheme than `Bearer`.
    pub missing: AtomicU64,
    /// A bearer token that is not the admin token.
    pub invalid: AtomicU64,
    /// More than one `Authorization` field.
    pub malformed: AtomicU64,
}

impl Refusals {
    /// Each count by the reason's name.
    pub fn counts(&self) -> [(&'static str, u64); 3] {
        [
            ("missing", self.missing.load(Relaxed)),
            ("invalid", self.invalid.load(Relaxed)),
            ("malformed", self.malformed.load(Relaxed)),
        ]
    }
}

/// The admin listener's access rule: the token (if any), which routes stay open, and
/// what was refused.
pub struct Gate {
    token: Option<Token>,
    metrics_public: bool,
    pub refusals: Refusals,
}

impl Gate {
    pub fn new(token: Option<Token>, metrics_public: bool) -> Gate {
        Gate {
            token,
            metrics_public,
            refusals: Refusals::default(),
        }
    }

    /// Whether a token is required at all.
    pub fn enabled(&self) -> bool {
        self.token.is_some()
    }

    /// Whether `/metrics` is served without a token.
    pub fn metrics_public(&self) -> bool {
        self.metrics_public
    }

    /// The refusal for a request to `path` carrying `authorization`, or `None` when it
    /// may go on. Only the admin's own routes are guarded, whatever the method: an
    /// unknown path is answered 404 by the router, which tells nothing a token protects.
    pub fn check(&self, path: &str, authorization: &Authorization<'_>) -> Option<Reply> {
        let token = self.token.as_ref()?;
        let guarded = match path {
            "/stats" | "/publish" => true,
            "/metrics" => !self.metrics_public,
            _ => false,
        };
        if !guarded {
            return None;
        }
        let given = match authorization {
            Authorization::Absent => None,
            Authorization::One(value) => bearer(value),
            Authorization::Several => {
                self.refusals.malformed.fetch_add(1, Relaxed);
                return Some(
                    super::json_error(400, "send one Authorization field, not several").with_header(
                        "WWW-Authenticate",
                        format!("{CHALLENGE}, error=\"invalid_request\""),
                    ),
                );
            }
        };
        match given {
            Some(given) if token.matches(given) => None,
            Some(_) => {
                self.refusals.invalid.fetch_add(1, Relaxed);
                Some(
                    super::json_error(401, "the bearer token is not the admin token").with_header(
                        "WWW-Authenticate",
                        format!("{CHALLENGE}, error=\"invalid_token\""),
                    ),
                )
            }
            None => {
                self.refusals.missing.fetch_add(1, Relaxed);
                Some(
                    super::json_error(
                        401,
                        "this endpoint needs Authorization: Bearer <the --admin-token>",
                    )
                    .with_header("WWW-Authenticate", CHALLENGE),
                )
            }
        }
    }
}

/// The token of an `Authorization: Bearer <token>` value (the scheme is
/// case-insensitive, RFC 9110 §11.1), or `None` for another scheme or no token.
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    let (scheme, rest) = value.split_at(value.iter().position(|&b| b == b' ')?);
    let token = rest.trim_ascii_start();
    (scheme.eq_ignore_ascii_case(b"Bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_matches_itself_only() {
        let token = Token::new(b"s3cret");
        assert!(token.matches(b"s3cret"));
        for other in [&b""[..], b"s3cre", b"s3cret2", b"s3creT", b"s3cret\0", b"S3cret"] {
            assert!(!token.matches(other), "{other:?}");
        }
        assert!(!token.matches(&[b's'; ADMIN_TOKEN_BYTES_MAX + 1]));
        let longest = [b'x'; ADMIN_TOKEN_BYTES_MAX];
        assert!(Token::new(&longest).matches(&longest));
    }

    #[test]
    fn bearer_values() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer   abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic YTpi"), None);
        assert_eq!(bearer(b"Bearer"), None);
        assert_eq!(bearer(b"Bearer "), None);
        assert_eq!(bearer(b"Bearerabc"), None);
    }

    #[test]
    fn only_the_guarded_routes_need_the_token() {
        let gate = Gate::new(Some(Token::new(b"t")), true);
        let none = Authorization::Absent;
        assert!(gate.check("/healthz", &none).is_none());
        assert!(gate.check("/metrics", &none).is_none(), "--metrics-public");
        assert!(gate.check("/nowhere", &none).is_none());
        assert_eq!(gate.check("/stats", &none).map(|r| r.status), Some(401));
        assert!(gate.check("/stats", &Authorization::One(b"Bearer t")).is_none());
        let several = gate.check("/publish", &Authorization::Several).map(|r| r.status);
        assert_eq!(several, Some(400));
        assert_eq!(
            gate.refusals.counts(),
            [("missing", 1), ("invalid", 0), ("malformed", 1)]
        );
        let open = Gate::new(None, false);
        assert!(open.check("/stats", &none).is_none());
    }
}
