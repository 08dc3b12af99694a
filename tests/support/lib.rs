//! Support for the integration tests: start the real engine and talk to it as real clients do.
//!
//! - [`engine`] starts and stops the `ringcast` binary on a free port with its own socket dir.
//! - [`http`] speaks raw HTTP/1.1 over a `TcpStream` and reads response heads and bodies.
//! - [`sse`] is an EventSource client: chunked decoding fed to the [`whatwg`] parser.
//! - [`ingest`] is a publisher on the Unix socket, and a runner of `ringcast publish`.
//! - [`json`] reads the flat JSON objects of `ringcast.reset` events.
//! - [`nats`] runs nats-server with JetStream (alone or as a cluster) and asks it things.
//!
//! Every wait here has a deadline: a misbehaving engine fails a test, it never hangs it.
pub mod engine;
pub mod http;
pub mod ingest;
pub mod json;
pub mod nats;
pub mod poll;
pub mod script;
pub mod slow;
pub mod sse;
pub mod whatwg;
pub mod wsclient;

use std::io::Read;
use std::process::ChildStderr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::Duration;

/// How long a test waits for something that should happen (an event, a reply). Generous,
/// because the suite runs its tests in parallel on small machines.
pub const WAIT: Duration = Duration::from_secs(10);

/// How long a test watches for something that should not happen (a stray event).
pub const QUIET: Duration = Duration::from_millis(300);

/// The sequence number of an event id `<epoch>-<seq>`.
///
/// # Panics
///
/// If `id` is not of that form.
pub fn seq_of(id: &str) -> u64 {
    let (epoch, seq) = id
        .rsplit_once('-')
        .unwrap_or_else(|| panic!("event id {id:?} is not <epoch>-<seq>"));
    assert!(
        !epoch.is_empty() && epoch.bytes().all(|b| b.is_ascii_hexdigit()),
        "event id {id:?}: epoch is not hex"
    );
    seq.parse()
        .unwrap_or_else(|_| panic!("event id {id:?}: sequence is not a number"))
}

/// The epoch of an event id `<epoch>-<seq>`.
///
/// # Panics
///
/// If `id` is not of that form.
pub fn epoch_of(id: &str) -> &str {
    seq_of(id);
    id.rsplit_once('-').map(|(epoch, _)| epoch).unwrap_or_default()
}

/// What a child process writes to stderr, collected by a thread until its end of file
/// (which the child's exit or kill brings), for failure messages.
#[derive(Clone, Default)]
pub struct StderrLog(Arc<Mutex<String>>);

impl StderrLog {
    /// Starts the thread that drains `pipe` into the log.
    pub fn drain(mut pipe: ChildStderr) -> StderrLog {
        let log = StderrLog::default();
        let sink = log.clone();
        thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                sink.lock().push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        });
        log
    }

    /// Everything written so far.
    pub fn text(&self) -> String {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, String> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
