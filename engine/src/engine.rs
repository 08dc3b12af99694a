//! Wiring: validates the configuration, checks that io_uring works, starts one loop per
//! core and the ingest thread, and waits for a termination signal or a fatal error.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Sender};

use crate::config::Config;
use crate::event::Epoch;
use crate::ingest::IngestThread;
use crate::ring::broadcast::Broadcast;
use crate::ring::history::History;
use crate::shard::Shard;
use crate::sys;

// The loops name these two through this module.
pub use crate::counters::Counters;
pub use crate::shared::Shared;

/// Descriptors the epoll driver leaves for the engine's own use (ingest, admin, backplane,
/// files) out of RLIMIT_NOFILE, when dividing the rest among the loops.
const EPOLL_RESERVED_FDS: u64 = 512;

/// How long shutdown waits, beyond the drain window, before exiting anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Why the engine did not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Uring(#[from] sys::uring::UringError),
    #[error(transparent)]
    Ingest(#[from] sys::socket::IngestBindError),
    #[error(transparent)]
    Backplane(#[from] crate::backplane::BackplaneError),
    #[error(transparent)]
    AdminToken(#[from] crate::admin::TokenError),
    #[error("{0}")]
    Start(String),
    #[error("{0}")]
    Fatal(String),
}

enum Stop {
    Signal(i32),
    Fatal(String),
    LoopDone,
}

/// Runs the engine until SIGINT or SIGTERM.
///
/// # Errors
/// An [`EngineError`] that says what went wrong and what to do.
pub fn run(mut config: Config) -> Result<(), EngineError> {
    config.validate()?;
    // Resolved once on this thread so the most common failure reads as one clear line.
    let driver = crate::driver::resolve(config.driver)?;
    let nofile = sys::socket::raise_nofile_limit().unwrap_or(1024);
    let loops = config.loop_count();
    let conns_per_loop = match driver {
        crate::driver::Kind::IoUring => config.conns_per_loop(nofile),
        // Plain descriptors share the process's limit, less what the engine keeps for its
        // own sockets and files.
        crate::driver::Kind::Epoll => config
            .conns_per_loop(nofile)
            .min((nofile.saturating_sub(EPOLL_RESERVED_FDS) / loops as u64).max(1) as u32),
    };
    // Read once, before anything is bound: a later change to the file takes a restart.
    let admin_token = crate::admin::Token::load(&config)?;
    let ingest_gid = ingest_group_id(&config)?;
    // Created owner-only, then given its group and mode: never briefly open to anyone.
    let ingest = sys::perm::with_umask(0o177, || sys::socket::ingest_listener(&config.ingest))?;
    if let Some(pid) = ingest.replaced_exited {
        eprintln!(
            "ringcast: ingest socket {} still answered for pid {pid}, which has exited (the kernel \
             is still tearing down its io_uring instances); replaced it",
            config.ingest.display()
        );
    }
    let listener = ingest.listener;
    let socket_file = sys::socket::FileId::of(&config.ingest);
    // A second descriptor keeps the socket listening until this function returns, so an
    // engine started on the same path during our shutdown is told it is in use rather
    // than replacing a socket that is about to be removed.
    let _listening = listener
        .try_clone()
        .map_err(|e| EngineError::Start(format!("ingest socket: {e}")))?;
    let remove_socket = || {
        if let Some(file) = socket_file {
            file.remove_if_same(&config.ingest);
        }
    };
    set_ingest_access(&config, ingest_gid).inspect_err(|_| remove_socket())?;
    // Before binding the client and admin listeners, so that neither a client nor a
    // readiness probe is answered while an exited engine's listeners still take
    // connections on the same addresses, and after claiming the ingest path, so that an
    // engine already running there is named as such.
    check_listen_addresses(&config).inspect_err(|_| remove_socket())?;
    let admin = crate::admin::bind(config.admin)
        .map_err(|e| {
            EngineError::Start(format!(
                "cannot listen on the admin address {}: {e}; pass --admin ADDR",
                config.admin
            ))
        })
        .inspect_err(|_| remove_socket())?;
    let admin_addr = admin
        .local_addr()
        .map_err(|e| EngineError::Start(e.to_string()))
        .inspect_err(|_| remove_socket())?;
    sys::signal::block_termination().map_err(|e| EngineError::Start(format!("cannot block signals: {e}")))?;

    let auth = match &config.auth_jwks {
        Some(path) => {
            let settings = crate::auth::Settings {
                leeway_secs: config.auth_leeway_secs,
                audience: config.auth_audience.clone(),
                issuer: config.auth_issuer.clone(),
            };
            let auth = crate::auth::Auth::new(path, settings)
                .map_err(|e| EngineError::Start(format!("{e}; fix the file or the --auth-jwks path")))
                .inspect_err(|_| remove_socket())?;
            Some(Arc::new(auth))
        }
        None => None,
    };
    // With a backplane, ids come from the stream and the history starts where it stood.
    let (link, epoch, start_seq) = if config.backplane.is_empty() {
        (None, Epoch::fresh(), 0)
    } else {
        let (backplane, bells, joined) =
            crate::backplane::nats::start(&config, loops, driver).inspect_err(|_| remove_socket())?;
        if joined.payload_max < config.payload_max {
            eprintln!(
                "ringcast: the NATS server takes payloads up to {} bytes with headers; --payload-max \
                 lowered from {} to {}",
                joined.payload_max + 4096,
                config.payload_max,
                joined.payload_max
            );
            config.payload_max = joined.payload_max;
        }
        eprintln!(
            "ringcast: backplane: joined stream {} at sequence {} as node {}",
            config.backplane_stream,
            joined.last_seq,
            config.node_name()
        );
        let link = crate::backplane::Link { backplane, bells };
        (Some(link), Epoch::from_raw(joined.epoch_micros), joined.last_seq)
    };
    let shared = Arc::new(Shared {
        epoch,
        broadcast: Broadcast::new(config.ring_slots, loops),
        history: Mutex::new(History::with_origin(config.history_limits(), start_seq)),
        counters: (0..loops).map(|_| Arc::new(Counters::default())).collect(),
        config: config.clone(),
        mailboxes: (0..loops).map(|_| crate::upstream::Mailbox::default()).collect(),
        upstream_listeners: crate::upstream::Listeners::default(),
        ingest_ring_fd: std::sync::atomic::AtomicI32::new(-1),
        stopping: AtomicBool::new(false),
        ingest_stopped: AtomicBool::new(false),
        backplane: link,
        start_seq,
        driver,
        auth,
        admission: Some(config.admission_limits())
            .filter(crate::admission::Limits::any)
            .map(crate::admission::Admission::new),
    });
    let (stop_tx, stop_rx) = bounded::<Stop>(loops + 2);
    let mut ring_fds = Vec::with_capacity(loops);
    for id in 0..loops {
        let fd = start_shard(id, conns_per_loop, &shared, &stop_tx).inspect_err(|_| {
            remove_socket();
        })?;
        if let Some(link) = &shared.backplane {
            link.bells.loops[id].store(fd, Ordering::Release);
        }
        ring_fds.push(fd);
    }
    let ingest = IngestThread {
        listener,
        shared: Arc::clone(&shared),
        shard_rings: ring_fds,
    };
    let tx = stop_tx.clone();
    std::thread::Builder::new()
        .name("ringcast-ingest".into())
        .spawn(move || {
            let shared = Arc::clone(&ingest.shared);
            let result = ingest.run();
            shared.ingest_stopped.store(true, Ordering::Release);
            if let Err(e) = result {
                let _ = tx.send(Stop::Fatal(format!("ingest: {e}")));
            }
        })
        .map_err(|e| EngineError::Start(format!("cannot start the ingest thread: {e}")))?;
    let tx = stop_tx.clone();
    let reload_shared = Arc::clone(&shared);
    std::thread::spawn(move || loop {
        let sig = sys::signal::wait_termination();
        if sig == sys::signal::RELOAD {
            reload(&reload_shared);
            continue;
        }
        if tx.send(Stop::Signal(sig)).is_err() {
            return;
        }
    });
    let admin_shared = Arc::clone(&shared);
    std::thread::Builder::new()
        .name("ringcast-admin".into())
        .spawn(move || crate::admin::serve(admin, admin_shared, admin_token))
        .map_err(|e| EngineError::Start(format!("cannot start the admin thread: {e}")))?;

    let addrs: Vec<String> = config.listen.iter().map(ToString::to_string).collect();
    eprintln!(
        "ringcast: ready: clients on {} ({loops} loops x {conns_per_loop} connections, {}), ingest {}, admin {admin_addr}, epoch {}",
        addrs.join(", "),
        driver.name(),
        config.ingest.display(),
        shared.epoch.id(0).trim_end_matches("-0"),
    );
    let stop = stop_rx.recv().unwrap_or(Stop::Fatal("all threads ended".into()));
    let result = match stop {
        Stop::Signal(sig) => {
            eprintln!(
                "ringcast: stopping on signal {sig}: delivering acknowledged events, then closing \
                 connections over {} ms (a second signal exits at once)",
                config.drain_ms
            );
            shared.stopping.store(true, Ordering::Release);
            let deadline = Instant::now() + Duration::from_millis(config.drain_ms) + SHUTDOWN_GRACE;
            let mut done = 0;
            while done < loops {
                match stop_rx.recv_deadline(deadline) {
                    Ok(Stop::LoopDone | Stop::Fatal(_)) => done += 1,
                    Ok(Stop::Signal(sig)) => {
                        eprintln!("ringcast: second signal {sig}: exiting now");
                        break;
                    }
                    Err(_) => {
                        eprintln!(
                            "ringcast: {} loops still flushing after {SHUTDOWN_GRACE:?}; exiting",
                            loops - done
                        );
                        break;
                    }
                }
            }
            Ok(())
        }
        Stop::Fatal(msg) => Err(EngineError::Fatal(msg)),
        Stop::LoopDone => Err(EngineError::Fatal("a loop stopped unexpectedly".into())),
    };
    remove_socket();
    result
}

/// The gid of `--ingest-group`, looked up before the socket exists.
///
/// # Errors
/// [`EngineError::Start`] naming the group when there is none of that name or the group
/// database cannot be read.
fn ingest_group_id(config: &Config) -> Result<Option<u32>, EngineError> {
    let Some(name) = &config.ingest_group else {
        return Ok(None);
    };
    match sys::perm::group_id(name) {
        Ok(Some(gid)) => Ok(Some(gid)),
        Ok(None) => Err(EngineError::Start(format!(
            "--ingest-group {name}: no such group (see `getent group {name}`)"
        ))),
        Err(e) => Err(EngineError::Start(format!(
            "--ingest-group {name}: cannot look the group up: {e}"
        ))),
    }
}

/// Gives the ingest socket its group, then its mode: in that order, so the group's
/// permission bits are never granted to the engine's own primary group on the way.
///
/// # Errors
/// [`EngineError::Start`] naming the socket and what could not be set.
fn set_ingest_access(config: &Config, gid: Option<u32>) -> Result<(), EngineError> {
    let path = config.ingest.display();
    if let (Some(gid), Some(name)) = (gid, &config.ingest_group) {
        sys::perm::set_group(&config.ingest, gid).map_err(|e| {
            EngineError::Start(format!(
                "--ingest-group {name}: cannot give the ingest socket {path} group {name} (gid \
                 {gid}): {e}; the engine's user must be root or a member of {name}"
            ))
        })?;
    }
    sys::perm::set_mode(&config.ingest, config.ingest_mode).map_err(|e| {
        EngineError::Start(format!(
            "cannot set the mode of the ingest socket {path} to {:o}: {e}",
            config.ingest_mode
        ))
    })
}

/// How long a start waits for an exited process's listeners on its addresses to close.
/// The kernel's io_uring teardown takes milliseconds (see [`sys::orphan`]); a listener no
/// visible process holds that outlives this is more likely a process in another pid
/// namespace, and the engine starts beside it.
const EXITED_LISTENERS_WAIT: Duration = Duration::from_secs(5);

/// Checks the client and admin addresses before anything listens on them. A running
/// process of this user listening on a client address with `SO_REUSEPORT` (so that the
/// engine's bind would succeed beside it) is refused: the kernel would split the clients
/// between two engines, and publishers would reach only one. A listener only an exited
/// process's io_uring teardown still holds is waited for, bounded by
/// [`EXITED_LISTENERS_WAIT`]: a listener bound beside it would share its group, and the
/// kernel would keep handing it connections that are reset when it closes. Says on
/// stderr what it waits for and how long it took. A failing `sock_diag` is reported and
/// nothing is checked.
///
/// # Errors
/// [`EngineError::Start`] naming the address and the running holder's pid.
fn check_listen_addresses(config: &Config) -> Result<(), EngineError> {
    let mut addrs = config.listen.clone();
    addrs.push(config.admin);
    let since = Instant::now();
    let found = match sys::orphan::tcp_listeners(&addrs) {
        Ok(found) => found,
        Err(e) => {
            eprintln!("ringcast: cannot look for listeners on {addrs:?}: {e}; starting without checking");
            return Ok(());
        }
    };
    let running = found.iter().find(|l| {
        l.holder.is_some()
            && config
                .listen
                .iter()
                .any(|&a| sys::orphan::overlaps(a, l.socket.addr))
    });
    if let Some(held) = running {
        return Err(EngineError::Start(format!(
            "client address {} is in use by a running process (pid {}) listening with \
             SO_REUSEPORT; two engines on one address would split the clients between them; \
             stop it or pass --listen ADDR",
            held.socket.addr,
            held.holder.unwrap_or_default()
        )));
    }
    let orphans: Vec<sys::orphan::Listening> = found
        .iter()
        .filter(|l| l.holder.is_none())
        .map(|l| l.socket)
        .collect();
    if !orphans.is_empty() {
        await_closed(&orphans, since);
    }
    Ok(())
}

/// Waits for `orphans`, seen at `since`, to close, saying what it waits for and how it
/// ended; starts anyway after [`EXITED_LISTENERS_WAIT`].
fn await_closed(orphans: &[sys::orphan::Listening], since: Instant) {
    let mut on: Vec<String> = orphans.iter().map(|l| l.addr.to_string()).collect();
    on.dedup();
    let count = match orphans.len() {
        1 => "1 listening socket".to_owned(),
        n => format!("{n} listening sockets"),
    };
    eprintln!(
        "ringcast: waiting up to {} ms for {count} on {} to close: no process holds them, an \
         exited process's io_uring teardown still does, and new connections would land on them",
        EXITED_LISTENERS_WAIT.as_millis(),
        on.join(", ")
    );
    match sys::orphan::wait_closed(orphans, EXITED_LISTENERS_WAIT) {
        Ok(w) if w.left.is_empty() => {
            eprintln!(
                "ringcast: they closed {} ms after they were seen",
                since.elapsed().as_millis()
            );
        }
        Ok(w) => eprintln!(
            "ringcast: {} of them still listen after {} ms; starting beside them (a process in \
             another pid namespace may hold them)",
            w.left.len(),
            since.elapsed().as_millis()
        ),
        Err(e) => eprintln!("ringcast: cannot watch those listeners: {e}; starting"),
    }
}

/// SIGHUP: the subscriber keys are read again; a bad file keeps the old keys.
fn reload(shared: &Shared) {
    match &shared.auth {
        Some(auth) => match auth.reload() {
            Ok(n) => eprintln!("ringcast: SIGHUP: {n} subscriber keys loaded"),
            Err(e) => eprintln!("ringcast: SIGHUP: {e}; the keys in use stay"),
        },
        None => eprintln!("ringcast: SIGHUP: nothing to reload (no --auth-jwks)"),
    }
}

/// Builds loop `id` on io_uring and runs it; its doorbell goes to `ready` first.
fn run_uring_loop(
    id: usize,
    conns: u32,
    shared: Arc<Shared>,
    ready: &Sender<Result<i32, String>>,
) -> std::io::Result<()> {
    let cfg = &shared.config;
    let built = crate::shard::listeners(cfg).and_then(|listeners| {
        let n = listeners.len();
        crate::driver::uring::Uring::new(
            Shard::setup(conns),
            listeners,
            Some((cfg.recv_buffers, cfg.recv_buffer_bytes)),
        )
        .map(|d| (d, n))
    });
    let (driver, listeners) = match built {
        Ok(b) => b,
        Err(e) => {
            let _ = ready.send(Err(format!("loop {id}: {e}")));
            return Ok(());
        }
    };
    let _ = ready.send(Ok(driver.bell()));
    let mut shard = Shard::new(id, conns, listeners, shared, std::time::Instant::now());
    driver.run(&mut shard)
}

/// Builds loop `id` on epoll and runs it; its doorbell goes to `ready` first.
fn run_epoll_loop(
    id: usize,
    conns: u32,
    shared: Arc<Shared>,
    ready: &Sender<Result<i32, String>>,
) -> std::io::Result<()> {
    let cfg = &shared.config;
    let built = crate::shard::listeners(cfg).and_then(|listeners| {
        let n = listeners.len();
        crate::driver::epoll::Epoll::new(Shard::setup(conns), listeners, cfg.recv_buffer_bytes as usize)
            .map(|d| (d, n))
    });
    let (driver, listeners) = match built {
        Ok(b) => b,
        Err(e) => {
            let _ = ready.send(Err(format!("loop {id}: {e}")));
            return Ok(());
        }
    };
    let _ = ready.send(Ok(driver.bell()));
    let mut shard = Shard::new(id, conns, listeners, shared, std::time::Instant::now());
    driver.run(&mut shard)
}

fn start_shard(id: usize, conns: u32, shared: &Arc<Shared>, stop: &Sender<Stop>) -> Result<i32, EngineError> {
    let (ready_tx, ready_rx) = bounded(1);
    let shared = Arc::clone(shared);
    let stop = stop.clone();
    std::thread::Builder::new()
        .name(format!("ringcast-loop-{id}"))
        .spawn(move || {
            sys::socket::pin_to_cpu(id);
            let result = match shared.driver {
                crate::driver::Kind::IoUring => run_uring_loop(id, conns, shared, &ready_tx),
                crate::driver::Kind::Epoll => run_epoll_loop(id, conns, shared, &ready_tx),
            };
            let _ = match result {
                Ok(()) => stop.send(Stop::LoopDone),
                Err(e) => stop.send(Stop::Fatal(format!("loop {id}: {e}"))),
            };
        })
        .map_err(|e| EngineError::Start(format!("cannot start loop {id}: {e}")))?;
    match ready_rx.recv() {
        Ok(Ok(fd)) => Ok(fd),
        Ok(Err(e)) => Err(EngineError::Start(e)),
        Err(_) => Err(EngineError::Start(format!("loop {id} died while starting"))),
    }
}
