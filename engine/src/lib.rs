//! ringcast: a push tier for Linux. It holds very large numbers of mostly idle client
//! connections and pushes each event a backend publishes to every subscriber at once.
//!
//! # Bird's-eye view
//!
//! ```text
//!  publishers --unix socket--> ingest thread --broadcast ring + MSG_RING doorbell--> loop 0..N
//!                                   |                                                 |
//!                                history <------------- Last-Event-ID replay ---------'
//! ```
//!
//! Each loop is one thread on one core with its own io_uring: multishot accept into
//! direct descriptors, multishot receive from a provided-buffer ring (an idle connection
//! holds no buffer), a slab of 40-byte connection records, and subscriber lists per topic.
//! An event is encoded once and the same bytes are queued on every subscriber.
//!
//! # Modules
//!
//! - [`config`]: every limit and budget, validated once.
//! - [`proto`]: sans-IO codecs: HTTP request heads, SSE encoding, the ingest protocol.
//! - [`event`]: a published event, its encodings and its id.
//! - [`conn`]: the per-connection record and out-queue.
//! - [`ring`]: the broadcast ring between threads and the replay history.
//! - [`shard`]: one event loop per core, a sans-IO connection core.
//! - [`driver`]: runs the loops' I/O on io_uring or on epoll.
//! - [`ingest`]: the publisher socket, and the client `ringcast publish` uses.
//! - [`time`]: the timer wheel behind heartbeats, reaping and request deadlines.
//! - [`upstream`]: client messages to backends and back, across threads.
//! - [`sys`]: io_uring setup, buffers, sockets, signals: the home of `unsafe`.
//! - [`auth`]: subscriber tokens (JWT against a JWKS file), off by default.
//! - [`backplane`]: the cluster on NATS JetStream (`--backplane`), off by default.
//! - [`counters`]: the per-loop counters, from one table of their `/stats` and
//!   `/metrics` names.
//! - [`shared`]: the state the ingest thread, the loops and the admin listener share.
//! - [`admin`]: health and counters on the admin address.
//! - [`engine`]: starts it all.
pub mod admin;
pub mod admission;
pub mod auth;
pub mod backplane;
pub mod config;
pub mod conn;
pub mod counters;
pub mod driver;
pub mod engine;
pub mod event;
pub mod ingest;
pub mod proto;
pub mod ring;
pub mod shard;
pub mod shared;
pub mod sys;
pub mod time;
pub mod upstream;
