//! The connection core driven without sockets: a simulated driver hands the shard
//! completions at virtual times and reads the ops it queues (quinn-proto's model). Each
//! test walks one row of the timer table in `timers`, one transport's framing, a
//! backpressure policy or the drain.
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;
use crate::config::Config;
use crate::driver::{Completion, Loop, Op};
use crate::event::Epoch;
use crate::ring::broadcast::Producer;
use crate::ring::history::History;

/// One loop and its simulated driver.
struct Sim {
    shard: Shard,
    producer: Producer<Event>,
    shared: Arc<Shared>,
    now: Instant,
    /// Descriptors handed out by accepts.
    next_file: u32,
}

/// A connection as the simulated driver knows it.
#[derive(Clone, Copy, Debug)]
struct Client {
    file: u32,
    recv: u64,
}

/// What the shard asked the driver to do, with sent bytes copied out.
#[derive(Debug)]
enum Did {
    Recv { file: u32, data: u64 },
    Poll { file: u32, data: u64 },
    CancelOp { op: u64, data: u64 },
    Send { file: u32, bytes: Vec<u8>, data: u64 },
    Shutdown { data: u64 },
    Cancel { file: u32, data: u64 },
    Close { file: u32, data: u64 },
    Other,
}

/// Without per-address limits, so a listener has one multishot accept.
fn shared(driver: crate::driver::Kind, flags: &[&str]) -> Arc<Shared> {
    let mut all = vec!["--max-conns-per-ip", "0"];
    all.extend_from_slice(flags);
    let config = Config::from_flags(&all).expect("test flags parse");
    config.validate().expect("test flags are valid");
    Arc::new(Shared {
        epoch: Epoch::from_raw(0x5eed),
        broadcast: Broadcast::new(config.ring_slots, 1),
        history: Mutex::new(History::with_origin(config.history_limits(), 0)),
        counters: vec![Arc::new(Counters::default())],
        mailboxes: vec![crate::upstream::Mailbox::default()],
        upstream_listeners: crate::upstream::Listeners::default(),
        ingest_ring_fd: AtomicI32::new(-1),
        stopping: AtomicBool::new(false),
        ingest_stopped: AtomicBool::new(false),
        backplane: None,
        auth: None,
        admission: Some(config.admission_limits())
            .filter(crate::admission::Limits::any)
            .map(crate::admission::Admission::new),
        start_seq: 0,
        driver,
        config,
    })
}

impl Sim {
    fn new(flags: &[&str]) -> Sim {
        Sim::on(crate::driver::Kind::Epoll, flags)
    }

    /// A loop as the `driver` runs it (idle receives are parked on io_uring only).
    fn on(driver: crate::driver::Kind, flags: &[&str]) -> Sim {
        let shared = shared(driver, flags);
        let now = Instant::now();
        let mut shard = Shard::new(0, 64, 1, Arc::clone(&shared), now);
        let accepts = shard.take_ops();
        assert!(
            matches!(accepts[..], [Op::Accept { listener: 0, .. }]),
            "a new loop arms its accept: {accepts:?}"
        );
        Sim {
            producer: Producer::new(Arc::clone(&shared.broadcast)),
            shard,
            shared,
            now,
            next_file: 100,
        }
    }

    fn complete(&mut self, c: Completion<'_>) {
        self.shard.complete(c, self.now);
    }

    /// The ops queued since the last look, sent bytes copied out.
    fn ops(&mut self) -> Vec<Did> {
        self.shard.take_ops().into_iter().map(did).collect()
    }

    /// A client connects; returns it once the shard has armed its receive.
    fn connect(&mut self) -> Client {
        let file = self.next_file;
        self.next_file += 1;
        self.complete(Completion {
            data: pack(tag::ACCEPT, 0, 0),
            res: file as i32,
            more: true,
            buf: None,
            peer: None,
        });
        let ops = self.ops();
        let recv = ops
            .iter()
            .find_map(|d| match d {
                Did::Recv { file: f, data } if *f == file => Some(*data),
                _ => None,
            })
            .unwrap_or_else(|| panic!("an accepted connection is read from: {ops:?}"));
        Client { file, recv }
    }

    /// The client sends `bytes`; returns the ops that caused.
    fn send(&mut self, c: Client, bytes: &[u8]) -> Vec<Did> {
        let mut buf = bytes.to_vec();
        self.complete(Completion {
            data: c.recv,
            res: buf.len() as i32,
            more: true,
            buf: Some(&mut buf),
            peer: None,
        });
        self.ops()
    }

    /// The kernel took `n` bytes of the send `data`.
    fn sent(&mut self, data: u64, n: usize) -> Vec<Did> {
        self.complete(Completion::of(data, n as i32, false));
        self.ops()
    }

    /// Sends complete in full, and the sends that causes, until none is left; returns
    /// every byte sent to `file` and the other ops.
    fn flush_all(&mut self, mut ops: Vec<Did>, file: u32) -> (Vec<u8>, Vec<Did>) {
        let mut out = Vec::new();
        let mut rest = Vec::new();
        while !ops.is_empty() {
            let mut next = Vec::new();
            for d in ops {
                match d {
                    Did::Send { file: f, bytes, data } if f == file => {
                        out.extend_from_slice(&bytes);
                        next.extend(self.sent(data, bytes.len()));
                    }
                    other => rest.push(other),
                }
            }
            ops = next;
        }
        (out, rest)
    }

    /// Virtual time passes, in ticks of the loop's clock.
    fn advance(&mut self, by: Duration) -> Vec<Did> {
        let step = Duration::from_millis(TICK_MS);
        let mut ops = Vec::new();
        let mut left = by;
        while !left.is_zero() {
            let d = left.min(step);
            self.now += d;
            left -= d;
            self.complete(Completion::of(TICK_DATA, 0, true));
            ops.extend(self.ops());
        }
        ops
    }

    /// One driver turn without I/O: the shard reads the broadcast ring.
    fn turn(&mut self) -> Vec<Did> {
        self.shard.before_wait();
        self.shard.end_turn();
        self.ops()
    }

    fn publish(&mut self, topic: &str, data: &[u8]) -> Arc<Event> {
        let seq = self.producer.next_seq();
        let event = Arc::new(Event::new(
            self.shared.epoch,
            seq,
            topic,
            None,
            None,
            data,
            self.now,
        ));
        self.producer.push(Arc::clone(&event));
        event
    }

    fn counters(&self) -> &Counters {
        &self.shared.counters[0]
    }
}

fn did(op: Op) -> Did {
    match op {
        Op::RecvMulti { file, data } => Did::Recv { file, data },
        Op::PollIn { file, data } => Did::Poll { file, data },
        Op::CancelOp { op, data, .. } => Did::CancelOp { op, data },
        Op::Send { file, buf, len, data } => Did::Send {
            file,
            // SAFETY: the shard keeps the bytes of a queued send alive and untouched until
            // its completion, which the simulation hands in only after this copy.
            bytes: unsafe { std::slice::from_raw_parts(buf, len as usize) }.to_vec(),
            data,
        },
        Op::SendMsg { file, msg, data } => {
            let mut bytes = Vec::new();
            // SAFETY: as above, for the msghdr and the iovecs it points to.
            let iovs = unsafe { std::slice::from_raw_parts((*msg).msg_iov, (*msg).msg_iovlen) };
            for v in iovs {
                // SAFETY: each iovec covers queued bytes the shard keeps alive.
                bytes.extend_from_slice(unsafe {
                    std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len)
                });
            }
            Did::Send { file, bytes, data }
        }
        Op::Shutdown { data, .. } => Did::Shutdown { data },
        Op::Cancel { file, data } => Did::Cancel { file, data },
        Op::Close { file, data } => Did::Close { file, data },
        _ => Did::Other,
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn cancelled(ops: &[Did], file: u32) -> bool {
    ops.iter()
        .any(|d| matches!(d, Did::Cancel { file: f, .. } if *f == file))
}

/// The single send to `file` among `ops`.
fn send_to(ops: &[Did], file: u32) -> (String, u64) {
    let sends: Vec<_> = ops
        .iter()
        .filter_map(|d| match d {
            Did::Send { file: f, bytes, data } if *f == file => Some((text(bytes), *data)),
            _ => None,
        })
        .collect();
    assert_eq!(sends.len(), 1, "one send to {file}: {ops:?}");
    sends.into_iter().next().expect("checked")
}

const SECOND: Duration = Duration::from_secs(1);

#[test]
fn a_client_that_sends_nothing_gets_408_at_the_request_deadline() {
    let mut sim = Sim::new(&["--request-timeout-ms", "3000"]);
    let c = sim.connect();
    assert!(sim.advance(2 * SECOND).is_empty(), "nothing before the deadline");
    let ops = sim.advance(2 * SECOND);
    let (reply, _) = send_to(&ops, c.file);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert_eq!(sim.counters().request_timeouts.load(Ordering::Relaxed), 1);
}

#[test]
fn a_head_sent_too_slowly_gets_408_however_often_bytes_arrive() {
    let mut sim = Sim::new(&["--request-timeout-ms", "3000"]);
    let c = sim.connect();
    for line in [&b"GET /sse?topic=a HTTP/1.1\r\n"[..], b"Host: x\r\n"] {
        assert!(sim.send(c, line).is_empty());
        assert!(sim.advance(SECOND).is_empty());
    }
    let ops = sim.advance(2 * SECOND);
    assert!(send_to(&ops, c.file).0.starts_with("HTTP/1.1 408"));
}

#[test]
fn an_idle_keep_alive_connection_closes_after_the_idle_deadline() {
    let mut sim = Sim::new(&["--keepalive-idle-ms", "5000", "--request-timeout-ms", "2000"]);
    let c = sim.connect();
    let ops = sim.send(c, b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n");
    let (reply, data) = send_to(&ops, c.file);
    assert!(reply.starts_with("HTTP/1.1 404"), "{reply}");
    assert!(sim.sent(data, reply.len()).is_empty());
    // Served once: the request deadline no longer applies, the idle one does.
    assert!(!cancelled(&sim.advance(4 * SECOND), c.file));
    assert!(cancelled(&sim.advance(2 * SECOND), c.file));
    assert_eq!(sim.counters().idle_closed.load(Ordering::Relaxed), 1);
}

#[test]
fn a_quiet_stream_gets_a_heartbeat_each_interval() {
    let mut sim = Sim::new(&["--heartbeat-ms", "15000"]);
    let c = sim.connect();
    let ops = sim.send(c, b"GET /sse?topic=a HTTP/1.1\r\nHost: x\r\n\r\n");
    let (head, data) = send_to(&ops, c.file);
    assert!(
        head.starts_with("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream"),
        "{head}"
    );
    assert!(sim.sent(data, head.len()).is_empty());
    assert!(sim.advance(14 * SECOND).is_empty(), "nothing before the interval");
    let ops = sim.advance(2 * SECOND);
    let (beat, data) = send_to(&ops, c.file);
    assert_eq!(beat, "3\r\n:\n\n\r\n", "a comment line as one chunk");
    assert!(sim.sent(data, beat.len()).is_empty());
    // Deadlines fire up to a tick late, never early.
    assert!(sim.advance(15 * SECOND - Duration::from_millis(100)).is_empty());
    let ops = sim.advance(SECOND);
    assert_eq!(send_to(&ops, c.file).0, "3\r\n:\n\n\r\n");
    assert_eq!(sim.counters().heartbeats.load(Ordering::Relaxed), 2);
}

#[test]
fn a_stream_whose_send_never_completes_is_reaped_at_the_write_stall_deadline() {
    let mut sim = Sim::new(&["--heartbeat-ms", "15000", "--write-stall-ms", "30000"]);
    let c = sim.connect();
    let ops = sim.send(c, b"GET /sse?topic=a HTTP/1.1\r\nHost: x\r\n\r\n");
    let (_, _head_send) = send_to(&ops, c.file);
    // The head's send is never completed: the client reads nothing.
    assert!(!cancelled(&sim.advance(29 * SECOND), c.file));
    assert!(cancelled(&sim.advance(2 * SECOND), c.file));
    assert_eq!(sim.counters().stalled.load(Ordering::Relaxed), 1);
}

#[test]
fn a_websocket_is_pinged_and_closed_when_no_pong_comes() {
    let mut sim = Sim::new(&["--ws-ping-ms", "20000", "--ws-pong-timeout-ms", "10000"]);
    let c = sim.connect();
    let ops = sim.send(
        c,
        b"GET /ws?topic=a HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    let (reply, data) = send_to(&ops, c.file);
    assert!(reply.starts_with("HTTP/1.1 101"), "{reply}");
    // RFC 6455 §1.3's example key and its accept value.
    assert!(
        reply.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{reply}"
    );
    assert!(sim.sent(data, reply.len()).is_empty());
    assert!(sim.advance(19 * SECOND).is_empty());
    let ops = sim.advance(2 * SECOND);
    let Some(Did::Send { bytes, data, .. }) = ops.into_iter().find(|d| matches!(d, Did::Send { .. })) else {
        panic!("a ping at the interval");
    };
    assert_eq!(bytes, [0x89, 0x00], "a ping with no payload");
    assert!(sim.sent(data, 2).is_empty());
    assert!(!cancelled(&sim.advance(9 * SECOND), c.file));
    assert!(cancelled(&sim.advance(2 * SECOND), c.file));
    assert_eq!(sim.counters().ws_pong_timeouts.load(Ordering::Relaxed), 1);
}

#[test]
fn a_pong_keeps_a_websocket_open() {
    let mut sim = Sim::new(&["--ws-ping-ms", "20000", "--ws-pong-timeout-ms", "10000"]);
    let c = sim.connect();
    let ops = sim.send(
        c,
        b"GET /ws?topic=a HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    let (reply, data) = send_to(&ops, c.file);
    sim.sent(data, reply.len());
    for _ in 0..3 {
        let ops = sim.advance(21 * SECOND);
        let (_, data) = send_to(&ops, c.file);
        sim.sent(data, 2);
        // A masked pong with no payload (RFC 6455 §5.5.3).
        assert!(sim.send(c, &[0x8a, 0x80, 1, 2, 3, 4]).is_empty());
    }
    assert_eq!(sim.counters().ws_pong_timeouts.load(Ordering::Relaxed), 0);
}

#[test]
fn a_final_answer_lingers_then_closes_at_the_linger_deadline() {
    let mut sim = Sim::new(&[]);
    let c = sim.connect();
    let ops = sim.send(c, b"GET /sse HTTP/1.1\r\nHost: x\r\n\r\n");
    let (reply, data) = send_to(&ops, c.file);
    assert!(reply.starts_with("HTTP/1.1 400"), "no topic: {reply}");
    let ops = sim.sent(data, reply.len());
    let Some(Did::Shutdown { data }) = ops.into_iter().next() else {
        panic!("the write side is shut down once the answer is out");
    };
    assert!(sim.sent(data, 0).is_empty());
    assert!(!cancelled(&sim.advance(SECOND), c.file));
    assert!(
        cancelled(&sim.advance(2 * SECOND), c.file),
        "the linger is bounded"
    );
}

#[test]
fn a_closed_connection_is_freed_only_after_its_last_op_completes() {
    let mut sim = Sim::new(&[]);
    let c = sim.connect();
    let ops = sim.send(c, b"GET /sse?topic=t HTTP/1.1\r\nHost: x\r\n\r\n");
    let (head, send) = send_to(&ops, c.file);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // The peer goes while the head is still being sent: that send must be cancelled.
    sim.complete(Completion::of(c.recv, 0, false));
    let ops = sim.ops();
    let Some(&Did::Cancel { data: cancel, .. }) = ops.first() else {
        panic!("EOF cancels what the kernel holds: {ops:?}");
    };
    assert_eq!(sim.shard.len(), 1);
    sim.complete(Completion::of(cancel, 0, false));
    assert!(sim.ops().is_empty(), "the send is still in flight");
    sim.complete(Completion::of(send, -libc::ECANCELED, false));
    let ops = sim.ops();
    let Some(&Did::Close { file, data }) = ops.first() else {
        panic!("then the descriptor is closed: {ops:?}");
    };
    assert_eq!(file, c.file);
    assert_eq!(
        sim.shard.len(),
        1,
        "the record outlives the close until it completes"
    );
    sim.complete(Completion::of(data, 0, false));
    assert!(sim.shard.is_empty());
    // A late completion for the freed slot is recognised by its generation and ignored.
    sim.complete(Completion::of(c.recv, -libc::ECANCELED, false));
    assert!(sim.ops().is_empty());
}

#[test]
fn a_peer_that_closes_an_idle_connection_costs_no_cancel() {
    let mut sim = Sim::new(&[]);
    let c = sim.connect();
    // EOF ends the receive; nothing else is in flight, so nothing is cancelled (a cancel
    // by descriptor walks every request of the ring: a storm of them costs N squared).
    sim.complete(Completion::of(c.recv, 0, false));
    let ops = sim.ops();
    assert!(!cancelled(&ops, c.file), "{ops:?}");
    let Some(&Did::Close { file, data }) = ops.first() else {
        panic!("the descriptor is closed at once: {ops:?}");
    };
    assert_eq!((file, sim.shard.len()), (c.file, 1));
    sim.complete(Completion::of(data, 0, false));
    assert!(sim.shard.is_empty());
}

#[test]
fn sse_ndjson_and_websocket_subscribers_get_each_event_in_their_framing() {
    let mut sim = Sim::new(&[]);
    let sse = sim.connect();
    let ndjson = sim.connect();
    let ws = sim.connect();
    let mut opened = Vec::new();
    opened.extend(sim.send(sse, b"GET /sse?topic=a HTTP/1.1\r\nHost: x\r\n\r\n"));
    opened.extend(sim.send(ndjson, b"GET /stream?topic=a HTTP/1.1\r\nHost: x\r\n\r\n"));
    opened.extend(sim.send(
        ws,
        b"GET /ws?topic=a HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    ));
    for c in [sse, ndjson, ws] {
        let (head, data) = send_to(&opened, c.file);
        sim.sent(data, head.len());
    }
    let event = sim.publish("a", b"hello");
    let ops = sim.turn();
    let (sse_bytes, _) = send_to(&ops, sse.file);
    assert_eq!(
        sse_bytes,
        format!(
            "{:x}\r\nid: {}\ndata: hello\n\n\r\n",
            18 + event.id.len(),
            event.id
        )
    );
    let (nd, _) = send_to(&ops, ndjson.file);
    let line = format!(
        "{{\"id\":\"{}\",\"topic\":\"a\",\"event\":null,\"data\":\"hello\"}}\n",
        event.id
    );
    assert_eq!(nd, format!("{:x}\r\n{line}\r\n", line.len()));
    let frame = ops
        .iter()
        .find_map(|d| match d {
            Did::Send { file, bytes, .. } if *file == ws.file => Some(bytes.clone()),
            _ => None,
        })
        .expect("a frame to the WebSocket");
    let json = &line[..line.len() - 1];
    let mut expected = vec![0x81, json.len() as u8];
    expected.extend_from_slice(json.as_bytes());
    assert_eq!(frame, expected, "an unmasked text frame (RFC 6455 §5.2)");
}

#[test]
fn a_subscriber_whose_send_is_in_flight_gets_what_queued_meanwhile_in_one_gathered_send() {
    let mut sim = Sim::new(&[]);
    let c = sim.connect();
    let ops = sim.send(c, b"GET /sse?topic=a HTTP/1.1\r\nHost: x\r\n\r\n");
    let (head, data) = send_to(&ops, c.file);
    sim.sent(data, head.len());
    sim.publish("a", b"1");
    let (_, first) = send_to(&sim.turn(), c.file);
    // While the first event's send is out, three more are published.
    for d in [b"2", b"3", b"4"] {
        sim.publish("a", d);
    }
    assert!(sim.turn().is_empty(), "one send in flight per connection");
    let ops = sim.sent(first, 1);
    // A short send: the rest of the first event goes with the next three.
    let (rest, _) = send_to(&ops, c.file);
    assert!(rest.contains("data: 1\n") && rest.contains("data: 4\n"), "{rest}");
    assert_eq!(rest.matches("data: ").count(), 4, "{rest}");
}

#[test]
fn a_slow_subscriber_over_its_event_cap_is_told_of_the_gap_under_the_drop_policy() {
    let mut sim = Sim::new(&["--queue-events", "4", "--policy", "*=drop-oldest"]);
    let c = sim.connect();
    let ops = sim.send(c, b"GET /sse?topic=a HTTP/1.1\r\nHost: x\r\n\r\n");
    let (head, data) = send_to(&ops, c.file);
    sim.sent(data, head.len());
    sim.publish("a", b"first");
    let (first, stuck) = send_to(&sim.turn(), c.file);
    // The client reads nothing while 20 more are published.
    for i in 0..20 {
        sim.publish("a", format!("e{i}").as_bytes());
        assert!(sim.turn().is_empty());
    }
    let ops = sim.sent(stuck, first.len());
    let (bytes, _) = sim.flush_all(ops, c.file);
    let got = text(&bytes);
    assert!(got.contains("event: ringcast.gap"), "the loss is told: {got}");
    assert!(got.contains("data: e19\n"), "the newest events are kept: {got}");
    assert!(sim.counters().dropped.load(Ordering::Relaxed) > 0);
}

/// Every byte each client is sent until no send is left, completing each send in full
/// and running a turn after each round, as a driver does.
fn read_all(sim: &mut Sim, mut ops: Vec<Did>) -> HashMap<u32, Vec<u8>> {
    let mut got: HashMap<u32, Vec<u8>> = HashMap::new();
    loop {
        let mut next = Vec::new();
        for d in ops {
            if let Did::Send { file, bytes, data } = d {
                got.entry(file).or_default().extend_from_slice(&bytes);
                next.extend(sim.sent(data, bytes.len()));
            }
        }
        next.extend(sim.turn());
        if !next.iter().any(|d| matches!(d, Did::Send { .. })) {
            return got;
        }
        ops = next;
    }
}

/// `n` SSE subscribers of topic `a`, their heads sent.
fn subscribers(sim: &mut Sim, n: usize) -> Vec<Client> {
    (0..n)
        .map(|_| open(sim, b"GET /sse?topic=a HTTP/1.1\r\nHost: x\r\n\r\n"))
        .collect()
}

/// Publishes `n` events to topic `a`.
fn publish_n(sim: &mut Sim, n: usize) -> Vec<Arc<Event>> {
    (0..n)
        .map(|i| sim.publish("a", format!("e{i}").as_bytes()))
        .collect()
}

#[test]
fn turns_are_small_while_a_client_is_behind_and_deep_again_once_it_has_read() {
    // Turns of 128 events, 64 while a queue is deep (128 of its 256).
    let mut sim = Sim::new(&["--queue-events", "256", "--policy", "*=drop-oldest"]);
    let clients = subscribers(&mut sim, 2);
    let (slow, fast) = (clients[0], clients[1]);
    let e0 = sim.publish("a", b"first");
    let ops = sim.turn();
    let (_, stuck) = send_to(&ops, slow.file);
    let (bytes, data) = send_to(&ops, fast.file);
    sim.sent(data, bytes.len());
    let later = publish_n(&mut sim, 400);
    let frames = |ops: &[Did], c: Client| send_to(ops, c.file).0.matches("data: ").count();
    // The slow client's queue takes a turn of 128 behind its send: it is behind.
    let ops = sim.turn();
    assert_eq!(frames(&ops, fast), 128);
    let (bytes, data) = send_to(&ops, fast.file);
    sim.sent(data, bytes.len());
    let ops = sim.turn();
    assert_eq!(frames(&ops, fast), 64, "a small turn");
    let (bytes, data) = send_to(&ops, fast.file);
    sim.sent(data, bytes.len());
    // It reads everything, and nothing was dropped...
    let ops = sim.sent(stuck, encoded(&[e0], Kind::Sse).len());
    let got = read_all(&mut sim, ops);
    assert_eq!(text(&got[&slow.file]), text(&encoded(&later, Kind::Sse)));
    assert_eq!(text(&got[&fast.file]), text(&encoded(&later[192..], Kind::Sse)));
    assert_eq!(sim.counters().dropped.load(Ordering::Relaxed), 0);
    // ...and with nobody behind, turns are deep again.
    publish_n(&mut sim, 200);
    let ops = sim.turn();
    assert_eq!(frames(&ops, fast), 128, "a deep turn");
    assert_eq!(frames(&ops, slow), 128);
}

#[test]
fn the_drain_ends_streams_with_a_retry_and_answers_polls() {
    let mut sim = Sim::new(&["--drain-ms", "1000", "--retry-ms", "3000"]);
    let c = sim.connect();
    let ops = sim.send(c, b"GET /sse?topic=a HTTP/1.1\r\nHost: x\r\n\r\n");
    let (head, data) = send_to(&ops, c.file);
    sim.sent(data, head.len());
    let p = sim.connect();
    assert!(
        sim.send(p, b"GET /poll?topic=a HTTP/1.1\r\nHost: x\r\n\r\n")
            .is_empty(),
        "a held poll"
    );
    sim.shared.ingest_stopped.store(true, Ordering::Release);
    let mut ops = sim.advance(Duration::from_millis(100));
    for _ in 0..12 {
        ops.extend(sim.turn());
        ops.extend(sim.advance(Duration::from_millis(100)));
    }
    let (bye, rest) = sim.flush_all(ops, c.file);
    let (answer, _) = send_to(&rest, p.file);
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "the held poll is answered: {answer}"
    );
    let bye = text(&bye);
    let retry: u32 = bye
        .split("retry: ")
        .nth(1)
        .and_then(|s| s.split('\n').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a retry line: {bye:?}"));
    assert!(
        (3000..4000).contains(&retry),
        "jittered over the drain window: {retry}"
    );
    assert!(bye.ends_with("0\r\n\r\n"), "the chunked stream ends: {bye:?}");
}

/// The upgrade request of a WebSocket subscriber to `path`, offering permessage-deflate
/// when `deflate`.
fn ws_upgrade(path: &str, deflate: bool) -> Vec<u8> {
    let offer = if deflate {
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    } else {
        ""
    };
    format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n"
    )
    .into_bytes()
}

/// Opens a subscriber with `request` and completes its response head's send.
fn open(sim: &mut Sim, request: &[u8]) -> Client {
    let c = sim.connect();
    let ops = sim.send(c, request);
    let (head, data) = send_to(&ops, c.file);
    assert!(head.starts_with("HTTP/1."), "{head}");
    sim.sent(data, head.len());
    c
}

/// The sends among `ops` by file: the bytes, the address of their first byte, the data.
fn sends(ops: Vec<Op>) -> Vec<(u32, Vec<u8>, usize, u64)> {
    ops.into_iter()
        .filter_map(|op| {
            let at = match &op {
                Op::Send { buf, .. } => *buf as usize,
                // SAFETY: the msghdr and its first iovec are alive until the completion.
                Op::SendMsg { msg, .. } => unsafe { (*(**msg).msg_iov).iov_base as usize },
                _ => return None,
            };
            match did(op) {
                Did::Send { file, bytes, data } => Some((file, bytes, at, data)),
                _ => None,
            }
        })
        .collect()
}

/// The single send to `file` among `ops`, as bytes.
fn raw_send_to(ops: &[Did], file: u32) -> (Vec<u8>, u64) {
    let mut sends = ops.iter().filter_map(|d| match d {
        Did::Send { file: f, bytes, data } if *f == file => Some((bytes.clone(), *data)),
        _ => None,
    });
    let send = sends
        .next()
        .unwrap_or_else(|| panic!("a send to {file}: {ops:?}"));
    assert!(sends.next().is_none(), "one send to {file}: {ops:?}");
    send
}

/// What a subscriber of `kind` is sent for `events`, one after another.
fn encoded(events: &[Arc<Event>], kind: Kind) -> Vec<u8> {
    let mut codec = ws::deflate::Codec::default();
    events
        .iter()
        .flat_map(|e| e.bytes_for(kind, &mut codec, 0).to_vec())
        .collect()
}

use crate::proto::Kind;

#[test]
fn a_turns_events_reach_every_transport_byte_for_byte_in_one_shared_buffer() {
    let mut sim = Sim::new(&["--ws-deflate", "on", "--ws-deflate-min-bytes", "1"]);
    let subscribers = [
        (
            b"GET /sse?topic=a HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            Kind::Sse,
        ),
        (
            b"GET /sse?topic=a HTTP/1.0\r\nHost: x\r\n\r\n".to_vec(),
            Kind::Sse10,
        ),
        (
            b"GET /stream?topic=a HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            Kind::Ndjson,
        ),
        (ws_upgrade("/ws?topic=a", false), Kind::WsJson),
        (ws_upgrade("/ws?topic=a&format=raw", false), Kind::WsRaw),
        (ws_upgrade("/ws?topic=a", true), Kind::WsJsonDeflate),
        (ws_upgrade("/ws?topic=a&format=raw", true), Kind::WsRawDeflate),
    ];
    // Two subscribers of each transport.
    let clients: Vec<(Client, Kind)> = subscribers
        .iter()
        .chain(subscribers.iter())
        .map(|(request, kind)| (open(&mut sim, request), *kind))
        .collect();
    let events: Vec<Arc<Event>> = (0..5)
        .map(|i| sim.publish("a", format!("event {i}\nline two of {i}").as_bytes()))
        .collect();
    sim.shard.before_wait();
    sim.shard.end_turn();
    let sent = sends(sim.shard.take_ops());
    assert_eq!(sent.len(), clients.len(), "one send per subscriber: {sent:?}");
    for (i, &(c, kind)) in clients.iter().enumerate() {
        let (_, bytes, at, _) = sent
            .iter()
            .find(|s| s.0 == c.file)
            .unwrap_or_else(|| panic!("a send to {c:?}"));
        assert_eq!(
            text(bytes),
            text(&encoded(&events, kind)),
            "{kind:?}: each event's own framing, in order"
        );
        let twin = clients[(i + subscribers.len()) % clients.len()].0;
        let twin_at = sent.iter().find(|s| s.0 == twin.file).expect("a send").2;
        assert_eq!(*at, twin_at, "{kind:?}: both subscribers are sent the one buffer");
    }
    let sse = &sent.iter().find(|s| s.0 == clients[0].0.file).expect("a send").1;
    let body = format!("id: {}\ndata: event 0\ndata: line two of 0\n\n", events[0].id);
    assert!(
        text(sse).starts_with(&format!("{:x}\r\n{body}\r\n", body.len())),
        "{}",
        text(sse)
    );
    assert_eq!(
        sim.counters().deliveries.load(Ordering::Relaxed),
        5 * clients.len() as u64
    );
}

#[test]
fn a_subscriber_that_falls_behind_mid_run_loses_the_oldest_and_hears_of_it() {
    let mut sim = Sim::new(&["--queue-events", "4", "--policy", "*=drop-oldest"]);
    let slow = open(&mut sim, b"GET /sse?topic=a HTTP/1.1\r\nHost: x\r\n\r\n");
    let fast = open(&mut sim, b"GET /sse?topic=a HTTP/1.1\r\nHost: x\r\n\r\n");
    let e0 = sim.publish("a", b"e0");
    let ops = sim.turn();
    let (_, stuck) = send_to(&ops, slow.file);
    let (first, data) = send_to(&ops, fast.file);
    sim.sent(data, first.len());
    // The slow client's send of e0 stays out. A run of three fits its queue whole...
    let run: Vec<Arc<Event>> = (1..=3)
        .map(|i| sim.publish("a", format!("e{i}").as_bytes()))
        .collect();
    let ops = sim.turn();
    let (got, data) = send_to(&ops, fast.file);
    assert_eq!(got, text(&encoded(&run, Kind::Sse)));
    sim.sent(data, got.len());
    // ...a run of two does not: the oldest of the queued run make room.
    let next: Vec<Arc<Event>> = (4..=5)
        .map(|i| sim.publish("a", format!("e{i}").as_bytes()))
        .collect();
    let ops = sim.turn();
    let (got, _) = send_to(&ops, fast.file);
    assert_eq!(
        got,
        text(&encoded(&next, Kind::Sse)),
        "the fast client misses nothing"
    );
    assert_eq!(sim.counters().dropped.load(Ordering::Relaxed), 2);
    let ops = sim.sent(stuck, encoded(&[e0], Kind::Sse).len());
    let (bytes, _) = sim.flush_all(ops, slow.file);
    let gap = format!(
        "event: ringcast.gap\ndata: {{\"topic\":\"a\",\"dropped\":2,\"first_id\":\"{}\",\"last_id\":\"{}\"}}\n\n",
        run[0].id, run[1].id
    );
    let mut expected = format!("{:x}\r\n{gap}\r\n", gap.len()).into_bytes();
    expected.extend(encoded(
        &[run[2].clone(), next[0].clone(), next[1].clone()],
        Kind::Sse,
    ));
    assert_eq!(
        text(&bytes),
        text(&expected),
        "the notice, then the newest events in order"
    );
}

#[test]
fn short_sends_inside_a_run_resume_mid_frame_and_the_policy_still_applies_after() {
    let mut sim = Sim::new(&["--queue-events", "3", "--policy", "*=drop-oldest"]);
    let c = open(&mut sim, &ws_upgrade("/ws?topic=a&format=raw", false));
    let run: Vec<Arc<Event>> = (0..3)
        .map(|i| sim.publish("a", format!("payload-{i}").as_bytes()))
        .collect();
    let all = encoded(&run, Kind::WsRaw);
    let frame = all.len() / 3;
    let (got, data) = raw_send_to(&sim.turn(), c.file);
    assert_eq!(got, all, "one send of the three frames");
    // The kernel takes the first frame and half of the second: the next send starts in
    // the middle of the second frame.
    let cut = frame + frame / 2;
    let (rest, data) = raw_send_to(&sim.sent(data, cut), c.file);
    assert_eq!(rest, &all[cut..]);
    // While it is out, a run of two comes: with two events in flight only one more fits
    // the queue of three, so the run is queued event by event and its first is dropped.
    let later: Vec<Arc<Event>> = (3..5)
        .map(|i| sim.publish("a", format!("payload-{i}").as_bytes()))
        .collect();
    assert!(sim.turn().is_empty(), "one send in flight per connection");
    assert_eq!(sim.counters().dropped.load(Ordering::Relaxed), 1);
    // Another short send, inside the third frame; then everything is taken.
    let taken = 2 * frame + frame / 2 - cut;
    let ops = sim.sent(data, taken);
    let (tail, _) = sim.flush_all(ops, c.file);
    let mut received = all[..cut + taken].to_vec();
    received.extend_from_slice(&tail);
    let notice = format!(
        "{{\"event\":\"ringcast.gap\",\"data\":{{\"topic\":\"a\",\"dropped\":1,\"first_id\":\"{id}\",\"last_id\":\"{id}\"}}}}",
        id = later[0].id
    );
    let mut expected = all.clone();
    expected.extend_from_slice(&ws_control(&notice));
    expected.extend(encoded(&later[1..], Kind::WsRaw));
    assert_eq!(received, expected, "whole frames, the notice, the newest event");
}

/// The cancel among `ops` that parks the receive `recv`, if any.
fn parking(ops: &[Did], recv: u64) -> Option<u64> {
    ops.iter().find_map(|d| match d {
        Did::CancelOp { op, data } if *op == recv => Some(*data),
        _ => None,
    })
}

/// The poll among `ops` on `file`, if any.
fn poll_on(ops: &[Did], file: u32) -> Option<u64> {
    ops.iter().find_map(|d| match d {
        Did::Poll { file: f, data } if *f == file => Some(*data),
        _ => None,
    })
}

/// The receive among `ops` on `file`, if any.
fn recv_on(ops: &[Did], file: u32) -> Option<u64> {
    ops.iter().find_map(|d| match d {
        Did::Recv { file: f, data } if *f == file => Some(*data),
        _ => None,
    })
}

const UPGRADE: &[u8] =
    b"GET /ws?topic=a HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
      Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

impl Sim {
    /// Opens `c` as a stream (or WebSocket) with `request` and completes the head's send.
    fn open(&mut self, c: Client, request: &[u8]) {
        let ops = self.send(c, request);
        let (head, data) = send_to(&ops, c.file);
        assert!(head.starts_with("HTTP/1.1 "), "{head}");
        assert!(self.sent(data, head.len()).is_empty());
    }

    /// Lets `c` go idle until its receive is parked: the receive is cancelled, ends with
    /// `-ECANCELED`, and a poll takes its place. Returns the poll's `data`.
    fn park(&mut self, c: Client, within: Duration) -> u64 {
        let mut cancel = None;
        let mut left = within;
        while cancel.is_none() && !left.is_zero() {
            let step = left.min(Duration::from_millis(100));
            left -= step;
            cancel = parking(&self.advance(step), c.recv);
        }
        let cancel =
            cancel.unwrap_or_else(|| panic!("the receive of {} is parked within {within:?}", c.file));
        self.complete(Completion::of(c.recv, -libc::ECANCELED, false));
        let ops = self.ops();
        assert!(!cancelled(&ops, c.file), "a parked receive is no close: {ops:?}");
        assert!(
            recv_on(&ops, c.file).is_none(),
            "no receive beside the poll: {ops:?}"
        );
        let poll = poll_on(&ops, c.file).unwrap_or_else(|| panic!("a poll in the receive's place: {ops:?}"));
        self.complete(Completion::of(cancel, 0, false));
        assert!(
            self.ops().is_empty(),
            "the cancel's own completion changes nothing"
        );
        poll
    }

    /// The parked `c` becomes readable: its receive is armed again.
    fn readable(&mut self, c: Client, poll: u64) {
        self.complete(Completion::of(poll, libc::POLLIN as i32, false));
        let ops = self.ops();
        assert_eq!(
            recv_on(&ops, c.file),
            Some(c.recv),
            "the receive is back: {ops:?}"
        );
    }

    fn count(&self, counter: &std::sync::atomic::AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

#[test]
fn an_idle_stream_parks_its_receive_still_gets_events_and_notices_the_close() {
    let mut sim = Sim::on(
        crate::driver::Kind::IoUring,
        &["--recv-park-ms", "1000", "--heartbeat-ms", "0"],
    );
    let c = sim.connect();
    sim.open(c, b"GET /sse?topic=a HTTP/1.1\r\nHost: x\r\n\r\n");
    // Silent for one period at least, two at most.
    assert!(parking(&sim.advance(900 * Duration::from_millis(1)), c.recv).is_none());
    let poll = sim.park(c, 2 * SECOND);
    sim.publish("a", b"while parked");
    let (event, data) = send_to(&sim.turn(), c.file);
    assert!(event.contains("data: while parked\n"), "{event}");
    assert!(sim.sent(data, event.len()).is_empty());
    assert!(sim.advance(5 * SECOND).is_empty(), "parked once, not again");
    // The client half-closes: the poll reports it, the receive reads the EOF.
    sim.readable(c, poll);
    sim.complete(Completion::of(c.recv, 0, false));
    // Nothing is left in flight, so the descriptor closes at once, without a cancel.
    let ops = sim.ops();
    assert!(
        ops.iter()
            .any(|d| matches!(d, Did::Close { file, .. } if *file == c.file)),
        "EOF closes the stream: {ops:?}"
    );
    assert_eq!(sim.count(&sim.counters().recv_parked), 1);
    assert_eq!(sim.count(&sim.counters().recv_unparked), 1);
}

#[test]
fn a_keep_alive_connection_parked_between_requests_answers_the_next_one() {
    let mut sim = Sim::on(crate::driver::Kind::IoUring, &["--recv-park-ms", "1000"]);
    let c = sim.connect();
    let (reply, data) = send_to(&sim.send(c, b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n"), c.file);
    assert!(reply.starts_with("HTTP/1.1 404"), "{reply}");
    sim.sent(data, reply.len());
    let poll = sim.park(c, 3 * SECOND);
    sim.readable(c, poll);
    let (reply, _) = send_to(&sim.send(c, b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n"), c.file);
    assert!(
        reply.starts_with("HTTP/1.1 404"),
        "the second request is answered: {reply}"
    );
}

#[test]
fn a_parked_websocket_is_pinged_kept_by_its_pong_and_reaped_without_one() {
    let mut sim = Sim::on(
        crate::driver::Kind::IoUring,
        &[
            "--recv-park-ms",
            "1000",
            "--ws-ping-ms",
            "5000",
            "--ws-pong-timeout-ms",
            "3000",
        ],
    );
    let c = sim.connect();
    sim.open(c, UPGRADE);
    let poll = sim.park(c, 3 * SECOND);
    // The ping goes out while the input waits on the poll.
    let ops = (0..50)
        .map(|_| sim.advance(Duration::from_millis(100)))
        .find(|ops| !ops.is_empty())
        .expect("a ping within 5 s");
    let Some(Did::Send { bytes, data, .. }) = ops.into_iter().find(|d| matches!(d, Did::Send { .. })) else {
        panic!("a ping, while parked");
    };
    assert_eq!(bytes, [0x89, 0x00]);
    sim.sent(data, 2);
    sim.readable(c, poll);
    assert!(
        sim.send(c, &[0x8a, 0x80, 1, 2, 3, 4]).is_empty(),
        "the pong is read"
    );
    let poll = sim.park(c, 3 * SECOND);
    assert!(!cancelled(&sim.advance(SECOND), c.file), "the pong kept it");
    // The next ping goes unanswered: the reaper closes it, poll and all.
    let mut ops = Vec::new();
    for _ in 0..12 {
        ops.extend(sim.advance(SECOND));
        if let Some(Did::Send { data, .. }) = ops.iter().find(|d| matches!(d, Did::Send { .. })) {
            let data = *data;
            ops.clear();
            sim.sent(data, 2);
        }
        if cancelled(&ops, c.file) {
            break;
        }
    }
    assert!(cancelled(&ops, c.file), "no pong: reaped while parked: {ops:?}");
    assert_eq!(sim.count(&sim.counters().ws_pong_timeouts), 1);
    let Some(&Did::Cancel { data: cancel, .. }) = ops.iter().find(|d| matches!(d, Did::Cancel { .. })) else {
        unreachable!("checked above");
    };
    sim.complete(Completion::of(poll, -libc::ECANCELED, false));
    assert!(sim.ops().is_empty(), "the cancel still owes its completion");
    sim.complete(Completion::of(cancel, 0, false));
    let ops = sim.ops();
    let Some(&Did::Close { data, .. }) = ops.first() else {
        panic!("then the descriptor is closed: {ops:?}");
    };
    sim.complete(Completion::of(data, 0, false));
    assert!(sim.shard.is_empty(), "the record is freed");
}

#[test]
fn a_websocket_that_keeps_talking_is_never_parked() {
    let mut sim = Sim::on(crate::driver::Kind::IoUring, &["--recv-park-ms", "1000"]);
    let c = sim.connect();
    sim.open(c, UPGRADE);
    for _ in 0..20 {
        assert!(parking(&sim.advance(Duration::from_millis(500)), c.recv).is_none());
        // An unsolicited pong (RFC 6455 §5.5.3): a frame that asks for no answer.
        assert!(sim.send(c, &[0x8a, 0x80, 1, 2, 3, 4]).is_empty());
    }
    assert_eq!(sim.count(&sim.counters().recv_parked), 0);
}

#[test]
fn a_receive_that_ends_while_its_park_is_in_flight_leaves_one_poll() {
    let mut sim = Sim::on(
        crate::driver::Kind::IoUring,
        &["--recv-park-ms", "1000", "--heartbeat-ms", "0"],
    );
    let c = sim.connect();
    sim.open(c, b"GET /sse?topic=a HTTP/1.1\r\nHost: x\r\n\r\n");
    let cancel = (0..30)
        .find_map(|_| parking(&sim.advance(Duration::from_millis(100)), c.recv))
        .expect("parked");
    // The buffer ring ran dry just before the cancel reached the receive.
    sim.complete(Completion::of(c.recv, -libc::ENOBUFS, false));
    let ops = sim.ops();
    assert!(recv_on(&ops, c.file).is_none(), "{ops:?}");
    let poll = poll_on(&ops, c.file).expect("the poll in the receive's place");
    sim.complete(Completion::of(cancel, -libc::ENOENT, false));
    assert!(sim.ops().is_empty());
    sim.readable(c, poll);
}

#[test]
fn epoll_loops_never_park() {
    let mut sim = Sim::new(&["--recv-park-ms", "1000", "--heartbeat-ms", "0"]);
    let c = sim.connect();
    sim.open(c, b"GET /sse?topic=a HTTP/1.1\r\nHost: x\r\n\r\n");
    let ops = sim.advance(10 * SECOND);
    assert!(
        parking(&ops, c.recv).is_none() && poll_on(&ops, c.file).is_none(),
        "{ops:?}"
    );
    assert_eq!(sim.count(&sim.counters().recv_parked), 0);
}

#[test]
fn parking_off_never_parks() {
    let mut sim = Sim::on(
        crate::driver::Kind::IoUring,
        &["--recv-park-ms", "0", "--heartbeat-ms", "0"],
    );
    let c = sim.connect();
    sim.open(c, b"GET /sse?topic=a HTTP/1.1\r\nHost: x\r\n\r\n");
    let ops = sim.advance(10 * SECOND);
    assert!(parking(&ops, c.recv).is_none(), "{ops:?}");
}
