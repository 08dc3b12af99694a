//! The state the ingest thread, every loop and the admin listener share: the epoch, the
//! broadcast ring and replay history, the configuration, each loop's counters and
//! mailbox, the stop flags, and the optional cluster link, token verifier and admission
//! control.
//!
//! Owns: the shape of that state. Built once by [`crate::engine::run`] before any thread
//! starts, then only read (through atomics and locks) until the process exits.
//!
//! Must never: hold per-connection state, or anything one loop writes and another reads
//! other than through an atomic or a lock.
use std::sync::atomic::{AtomicBool, AtomicI32};
use std::sync::{Arc, Mutex};

use crate::config::Config;
use crate::counters::Counters;
use crate::event::{Epoch, Event};
use crate::ring::broadcast::Broadcast;
use crate::ring::history::History;

/// State shared by the ingest thread and every loop.
pub struct Shared {
    pub epoch: Epoch,
    pub broadcast: Arc<Broadcast<Event>>,
    pub history: Mutex<History<Event>>,
    pub config: Config,
    pub counters: Vec<Arc<Counters>>,
    /// Per loop: client messages to backends and backend messages to clients.
    pub mailboxes: Vec<crate::upstream::Mailbox>,
    /// Backends that asked for client messages (`UPSTREAM`).
    pub upstream_listeners: crate::upstream::Listeners,
    /// The ingest thread's ring, for loops' doorbells when client messages wait; -1 until
    /// the ingest thread has built it.
    pub ingest_ring_fd: AtomicI32,
    /// Set on SIGINT/SIGTERM: the ingest thread sends its pending acknowledgements and stops.
    pub stopping: AtomicBool,
    /// Set by the ingest thread once it has stopped: nothing more will be published, and
    /// each loop delivers what the ring holds, flushes its queues and exits.
    pub ingest_stopped: AtomicBool,
    /// The cluster backplane, with `--backplane`.
    pub backplane: Option<crate::backplane::Link>,
    /// Subscriber token verification, with `--auth-jwks`.
    pub auth: Option<Arc<crate::auth::Auth>>,
    /// Connection limits per client address and across the engine, when any is set.
    pub admission: Option<crate::admission::Admission>,
    /// The sequence number of the last event before this engine started serving: 0 on a
    /// single node, the stream's last sequence when joining a cluster.
    pub start_seq: u64,
    /// The I/O driver every loop and the ingest thread run on.
    pub driver: crate::driver::Kind,
}
