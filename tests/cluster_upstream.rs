//! Upstream across the nodes of a cluster (`--backplane`), against a real nats-server,
//! real WebSocket clients (Python `websockets`, through tests/py/ws_driver.py) and
//! backends on the ingest socket: a client on one node and a backend on another talk
//! both ways, text and binary, with the backend's replies in command order; a SEND to a
//! closed connection on another node is answered and counted there; a SEND to a node that
//! does not exist is refused; with no backend anywhere the client is told so; backends on
//! two nodes share the messages of clients on a third; two nodes cannot share an id; and
//! with subscriber auth a message names its sender's `sub` on every node, and only a token
//! with `publish` may send one.
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use ringcast_tests::engine::{free_addr, Engine, TempDir};
use ringcast_tests::nats::NatsServer;
use ringcast_tests::wsclient::{field, WsDriver};
use ringcast_tests::WAIT;

/// The reason a client is given when no backend anywhere takes its message.
const NO_BACKEND: &str = "no backend is listening for upstream messages";

fn node(nats: &NatsServer, name: &str) -> Engine {
    Engine::start(&["--backplane", &nats.url(), "--node-id", name])
}

/// A client message as a backend receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Msg {
    conn: String,
    kind: String,
    payload: Vec<u8>,
    /// The sender's token's `sub` (percent-encoded), with subscriber auth.
    sub: Option<String>,
}

/// A backend on the ingest socket: `UPSTREAM`, `MSG` pushes (read by their length, so
/// payloads may hold any bytes), `SEND` and the replies, which pushes may come between.
struct Backend {
    stream: UnixStream,
    buf: Vec<u8>,
    /// Pushes read while waiting for a reply.
    pushed: VecDeque<Msg>,
}

/// A push or a reply.
enum Incoming {
    Msg(Msg),
    Reply(String),
}

impl Backend {
    fn connect(ingest: &Path) -> Backend {
        let stream =
            UnixStream::connect(ingest).unwrap_or_else(|e| panic!("connect {}: {e}", ingest.display()));
        stream.set_write_timeout(Some(WAIT)).expect("write timeout");
        Backend {
            stream,
            buf: Vec::new(),
            pushed: VecDeque::new(),
        }
    }

    /// Sends `UPSTREAM` and checks the answer.
    fn listen(ingest: &Path) -> Backend {
        let mut backend = Backend::connect(ingest);
        backend.write(b"UPSTREAM\n");
        assert_eq!(backend.reply(), "+OK upstream");
        backend
    }

    fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to the ingest socket");
    }

    /// Reads more bytes; false when none came by `deadline`.
    fn fill(&mut self, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        self.stream.set_read_timeout(Some(left)).expect("read timeout");
        let mut chunk = [0u8; 65536];
        match self.stream.read(&mut chunk) {
            Ok(0) => panic!("the engine closed the backend's connection"),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                false
            }
            Err(e) => panic!("read from the ingest socket: {e}"),
        }
    }

    /// The next push or reply, if one is complete by `deadline`.
    fn next(&mut self, deadline: Instant) -> Option<Incoming> {
        loop {
            if let Some(at) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8(self.buf[..at].to_vec()).expect("a UTF-8 line");
                let Some(head) = line.strip_prefix("MSG ") else {
                    self.buf.drain(..at + 2);
                    return Some(Incoming::Reply(line));
                };
                let parts: Vec<&str> = head.split(' ').collect();
                assert!(matches!(parts.len(), 3 | 4), "a MSG line: {line:?}");
                let len: usize = parts[1].parse().expect("a MSG length");
                let end = at + 2 + len + 2;
                if self.buf.len() >= end {
                    assert_eq!(
                        &self.buf[end - 2..end],
                        b"\r\n",
                        "MSG payload of {len} bytes then CRLF"
                    );
                    let payload = self.buf[at + 2..end - 2].to_vec();
                    let msg = Msg {
                        conn: parts[0].to_owned(),
                        kind: parts[2].to_owned(),
                        payload,
                        sub: parts.get(3).map(|s| (*s).to_owned()),
                    };
                    self.buf.drain(..end);
                    return Some(Incoming::Msg(msg));
                }
            }
            if !self.fill(deadline) {
                return None;
            }
        }
    }

    /// The next push within `timeout`, if any.
    fn msg_within(&mut self, timeout: Duration) -> Option<Msg> {
        if let Some(msg) = self.pushed.pop_front() {
            return Some(msg);
        }
        match self.next(Instant::now() + timeout)? {
            Incoming::Msg(msg) => Some(msg),
            Incoming::Reply(line) => panic!("a reply nobody asked for: {line:?}"),
        }
    }

    fn msg(&mut self) -> Msg {
        self.msg_within(WAIT).expect("a MSG push within the wait")
    }

    /// The next reply line, keeping pushes that come first.
    fn reply(&mut self) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.next(deadline) {
                Some(Incoming::Reply(line)) => return line,
                Some(Incoming::Msg(msg)) => self.pushed.push_back(msg),
                None => panic!("no reply within {WAIT:?}"),
            }
        }
    }

    fn send(&mut self, conn: &str, payload: &[u8]) -> String {
        self.write(&send_frame(conn, payload));
        self.reply()
    }
}

fn send_frame(conn: &str, payload: &[u8]) -> Vec<u8> {
    let mut frame = format!("SEND {conn} {}\n", payload.len()).into_bytes();
    frame.extend_from_slice(payload);
    frame.push(b'\n');
    frame
}

/// Waits until `probe` holds, or fails saying `what`.
fn eventually(what: &str, mut probe: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !probe() {
        assert!(Instant::now() < deadline, "{what} within {WAIT:?}");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_client_on_one_node_and_a_backend_on_another_talk_both_ways() {
    let nats = NatsServer::start();
    let a = node(&nats, "a");
    let b = node(&nats, "b");
    let mut backend = Backend::listen(&b.ingest);
    let mut ws = WsDriver::start(a.addr);
    ws.connect("c", "/ws?topic=chat", &[]);
    ws.send_text("c", "hello, backend\nsecond line");
    ws.send_binary("c", b"\x00\x01\xffbinary\r\n");
    let text = backend.msg();
    assert!(
        text.conn.starts_with("a/"),
        "the id names the client's node: {text:?}"
    );
    assert_eq!(
        (text.kind.as_str(), text.payload.as_slice()),
        ("text", &b"hello, backend\nsecond line"[..])
    );
    let binary = backend.msg();
    assert_eq!(
        binary,
        Msg {
            conn: text.conn.clone(),
            kind: "binary".into(),
            payload: b"\x00\x01\xffbinary\r\n".to_vec(),
            sub: None,
        }
    );

    assert_eq!(backend.send(&text.conn, "réponse ✓".as_bytes()), "+OK sent");
    assert_eq!(field(&ws.recv("c"), "text"), "réponse ✓");
    assert_eq!(backend.send(&text.conn, b"\xff\xfe"), "+OK sent");
    assert_eq!(field(&ws.recv("c"), "binary_hex"), "fffe");

    // Pipelined and mixed with commands answered on the spot: the replies keep the
    // commands' order, and the client gets the SENDs in theirs.
    let mut batch = Vec::new();
    for i in 0..100 {
        batch.extend_from_slice(&send_frame(&text.conn, format!("n{i}").as_bytes()));
        if i == 50 {
            batch.extend_from_slice(b"PING\nPUB elsewhere 1\nx\n");
        }
    }
    backend.write(&batch);
    for i in 0..100 {
        assert_eq!(backend.reply(), "+OK sent", "reply to SEND {i}");
        if i == 50 {
            assert_eq!(backend.reply(), "+PONG");
            let publish = backend.reply();
            assert!(publish.starts_with("+OK ") && publish != "+OK sent", "{publish}");
        }
    }
    for i in 0..100 {
        assert_eq!(field(&ws.recv("c"), "text"), format!("n{i}"));
    }
    ws.finish();

    assert_eq!(a.counter("upstream"), 2, "{}", a.stats());
    assert_eq!(a.backplane_figure("upstream_relayed"), 2);
    assert_eq!(b.backplane_figure("upstream_received"), 2);
    assert_eq!(b.backplane_figure("sends_relayed"), 102);
    assert_eq!(a.backplane_figure("sends_received"), 102);
    assert_eq!(
        a.backplane_figure("relay_failed") + b.backplane_figure("relay_failed"),
        0
    );
}

#[test]
fn a_send_to_a_closed_connection_on_another_node_is_answered_and_counted() {
    let nats = NatsServer::start();
    let a = node(&nats, "a");
    let b = node(&nats, "b");
    let mut backend = Backend::listen(&b.ingest);
    let mut ws = WsDriver::start(a.addr);
    ws.connect("c", "/ws", &[]);
    ws.send_text("c", "who am I?");
    let msg = backend.msg();
    assert_eq!(ws.close("c").as_deref(), Some("1000"));
    ws.finish();
    assert_eq!(a.counter("downstream_dropped"), 0);
    // Queued on the connection's loop, which finds it gone: answered, dropped, counted.
    assert_eq!(backend.send(&msg.conn, b"too late"), "+OK sent");
    eventually("node a counts the SEND to its closed connection", || {
        a.counter("downstream_dropped") == 1
    });
    assert_eq!(a.backplane_figure("sends_received"), 1);
    assert_eq!(b.counter("downstream_dropped"), 0);
}

#[test]
fn a_send_to_an_unknown_node_is_refused_and_the_backend_goes_on() {
    let nats = NatsServer::start();
    let a = node(&nats, "a");
    let b = node(&nats, "b");
    let mut backend = Backend::connect(&b.ingest);
    assert_eq!(backend.send("nosuch/0.1.1", b"x"), "-ERR no such node: nosuch");
    // Answered by node a, and by b itself.
    let no_loop = "-ERR no such connection: its loop does not exist";
    assert_eq!(backend.send("a/9999.1.1", b"x"), no_loop);
    assert_eq!(backend.send("b/9999.1.1", b"x"), no_loop);
    assert_eq!(backend.send("9999.1.1", b"x"), no_loop);
    let bad = backend.send("a*b/0.1.1", b"x");
    assert!(bad.starts_with("-ERR invalid connection id"), "{bad}");
    backend.write(b"PING\n");
    assert_eq!(backend.reply(), "+PONG");
    assert_eq!(b.backplane_figure("sends_relayed"), 2);
    assert_eq!(
        b.backplane_figure("relay_failed"),
        2,
        "no such node, and a's refusal"
    );
    assert_eq!(a.backplane_figure("sends_received"), 1);

    // Without a backplane there are no other nodes.
    let single = Engine::start(&[]);
    let mut backend = Backend::connect(&single.ingest);
    assert_eq!(
        backend.send("x/0.1.1", b"x"),
        "-ERR no such node: x (this engine runs without a backplane)"
    );
}

#[test]
fn sends_to_a_node_that_does_not_answer_wait_for_room_and_time_out() {
    let nats = NatsServer::start();
    let a = node(&nats, "a");
    let b = Engine::start(&[
        "--backplane",
        &nats.url(),
        "--node-id",
        "b",
        "--backplane-timeout-ms",
        "2000",
    ]);
    // Node a stops answering (SIGSTOP): SENDs to it wait until their deadline, and what
    // waits is bounded at 16 MiB: the 17th MB waits on node b for room.
    // SAFETY: kill(2) on the pid of a child this test started.
    assert_eq!(unsafe { libc::kill(a.pid as i32, libc::SIGSTOP) }, 0);
    let mut backend = Backend::connect(&b.ingest);
    let payload = vec![b'x'; 1_000_000];
    let mut batch = Vec::new();
    for _ in 0..17 {
        batch.extend_from_slice(&send_frame("a/0.1.1", &payload));
    }
    batch.extend_from_slice(b"PING\n");
    backend.write(&batch);
    eventually("16 SENDs relayed", || b.backplane_figure("sends_relayed") == 16);
    thread::sleep(Duration::from_millis(300));
    assert_eq!(b.backplane_figure("sends_relayed"), 16, "the 17th waits for room");
    let timed_out =
        "-ERR backplane unavailable: node a did not answer within 2000 ms; the message may still have been delivered";
    for i in 0..17 {
        assert_eq!(backend.reply(), timed_out, "SEND {i}");
    }
    assert_eq!(backend.reply(), "+PONG");
    assert_eq!(b.backplane_figure("sends_relayed"), 17);
    assert_eq!(b.backplane_figure("relay_failed"), 17);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(a.pid as i32, libc::SIGCONT) }, 0);
    // Room was given back, and a answers again.
    assert_eq!(
        backend.send("a/9999.1.1", b"x"),
        "-ERR no such connection: its loop does not exist"
    );
}

#[test]
fn with_no_backend_anywhere_the_client_is_told_so() {
    let nats = NatsServer::start();
    let a = node(&nats, "a");
    let b = node(&nats, "b");
    let mut ws = WsDriver::start(a.addr);
    ws.connect("c", "/ws", &[]);
    let told = |ws: &mut WsDriver| {
        let reply = ws.recv("c");
        (field(&reply, "j.event") == "ringcast.error") && field(&reply, "j.reason") == NO_BACKEND
    };
    ws.send_text("c", "anyone?");
    assert!(told(&mut ws));
    assert_eq!(a.backplane_figure("relay_failed"), 1, "asked the cluster: nobody");

    // A backend on node b takes the next one; once it has left, nobody again.
    let mut backend = Backend::listen(&b.ingest);
    ws.send_text("c", "now?");
    assert_eq!(backend.msg().payload, b"now?");
    drop(backend);
    // Until b has left the queue group it answers for itself that it has no backend;
    // then nobody subscribes and NATS says so. The client is told the same either way.
    let mut attempts = 0;
    loop {
        attempts += 1;
        let received = b.backplane_figure("upstream_received");
        ws.send_text("c", "still there?");
        assert!(told(&mut ws), "attempt {attempts}");
        if b.backplane_figure("upstream_received") == received {
            break;
        }
        assert!(
            attempts < 50,
            "node b still takes client messages after its backend left"
        );
        thread::sleep(Duration::from_millis(50));
    }
    ws.finish();
    assert_eq!(
        a.counter("upstream_refused"),
        1 + attempts,
        "every refusal counted"
    );
    assert_eq!(a.backplane_figure("relay_failed"), 1 + attempts);
    assert_eq!(a.backplane_figure("upstream_relayed"), 2 + attempts);
}

#[test]
fn backends_on_two_nodes_share_the_messages_of_clients_on_a_third() {
    let nats = NatsServer::start();
    let a = node(&nats, "a");
    let b = node(&nats, "b");
    let c = node(&nats, "c");
    let mut backends = [Backend::listen(&b.ingest), Backend::listen(&c.ingest)];
    let mut ws = WsDriver::start(a.addr);
    let clients = 4;
    let each = 50;
    for k in 0..clients {
        ws.connect(&format!("c{k}"), "/ws", &[]);
    }
    for i in 0..each {
        for k in 0..clients {
            ws.send_text(&format!("c{k}"), &format!("c{k}-{i}"));
        }
    }
    let total = clients * each;
    let mut got: [Vec<Msg>; 2] = [Vec::new(), Vec::new()];
    let deadline = Instant::now() + WAIT * 3;
    while got[0].len() + got[1].len() < total {
        assert!(
            Instant::now() < deadline,
            "{} and {} of {total} messages",
            got[0].len(),
            got[1].len()
        );
        for (backend, got) in backends.iter_mut().zip(got.iter_mut()) {
            if let Some(msg) = backend.msg_within(Duration::from_millis(20)) {
                got.push(msg);
            }
        }
    }
    let mut conns: BTreeMap<String, usize> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for (which, got) in got.iter().enumerate() {
        assert!(
            got.len() >= total / 10,
            "backend {which} got {} of {total}: not spread",
            got.len()
        );
        // From one client to one backend, messages keep their order.
        let mut last: BTreeMap<&str, usize> = BTreeMap::new();
        for msg in got {
            assert!(msg.conn.starts_with("a/") && msg.kind == "text", "{msg:?}");
            let text = String::from_utf8(msg.payload.clone()).expect("text");
            let (client, i) = text.split_once('-').expect("c<k>-<i>");
            let i: usize = i.parse().expect("a number");
            if let Some(before) = last.insert(&msg.conn, i) {
                assert!(before < i, "backend {which}: {client} sent {before} before {i}");
            }
            let next = conns.len();
            let conn = *conns.entry(msg.conn.clone()).or_insert(next);
            assert!(seen.insert((client.to_owned(), conn, i)), "{text} twice");
        }
    }
    assert_eq!(seen.len(), total, "every message once");
    assert_eq!(conns.len(), clients, "one id per client");
    // Each backend answers what it got; every client gets all its answers.
    for (backend, got) in backends.iter_mut().zip(&got) {
        for msg in got {
            let mut echo = b"echo:".to_vec();
            echo.extend_from_slice(&msg.payload);
            assert_eq!(backend.send(&msg.conn, &echo), "+OK sent");
        }
    }
    for k in 0..clients {
        let answers: BTreeSet<String> = (0..each)
            .map(|_| field(&ws.recv(&format!("c{k}")), "text").to_owned())
            .collect();
        let want: BTreeSet<String> = (0..each).map(|i| format!("echo:c{k}-{i}")).collect();
        assert_eq!(answers, want, "client c{k}");
    }
    ws.finish();
    assert_eq!(a.backplane_figure("upstream_relayed"), total as u64);
    assert_eq!(
        b.backplane_figure("upstream_received") + c.backplane_figure("upstream_received"),
        total as u64
    );
    assert_eq!(a.backplane_figure("sends_received"), total as u64);
}

#[test]
fn a_second_node_with_the_same_id_does_not_start() {
    let nats = NatsServer::start();
    let _a = node(&nats, "a");
    let dir = TempDir::new();
    let err = Engine::try_start_on(
        free_addr(),
        &dir.path().join("s.sock"),
        &["--backplane", &nats.url(), "--node-id", "a"],
    )
    .err()
    .expect("a second node named a must not start");
    assert!(
        err.stderr.contains("another node of the cluster is running as a")
            && err.stderr.contains("--node-id"),
        "{}",
        err.stderr
    );
    let err = Engine::try_start_on(
        free_addr(),
        &dir.path().join("t.sock"),
        &["--backplane", &nats.url(), "--node-id", "a/b"],
    )
    .err()
    .expect("a node id with a slash must be refused");
    assert!(err.stderr.contains("--node-id a/b"), "{}", err.stderr);
}

/// Keys and tokens made by PyJWT (tests/py/jwt_tool.py), not by the engine's code.
fn jwt_tool(args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/jwt_tool.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 (with PyJWT: pip install -r tests/py/requirements.txt)");
    assert!(
        out.status.success(),
        "jwt_tool.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8").trim().to_owned()
}

#[test]
fn with_auth_a_message_names_its_sender_on_every_node_and_needs_publish() {
    let keys = TempDir::new();
    let dir = keys.path().display().to_string();
    jwt_tool(&["keys", &dir, "1"]);
    let jwks = keys.path().join("jwks-1.json").display().to_string();
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let token = |sub: &str, publish: bool| {
        let mut perms = serde_json::json!({"subscribe": ["chat"]});
        if publish {
            perms["publish"] = serde_json::json!(["*"]);
        }
        let claims = serde_json::json!({"exp": exp, "sub": sub, "ringcast": perms});
        jwt_tool(&["token", &dir, "ec-1", &claims.to_string()])
    };
    let nats = NatsServer::start();
    let auth = ["--auth-jwks", jwks.as_str(), "--auth-leeway-secs", "0"];
    let url = nats.url();
    let start = |name: &str| {
        let mut args = vec!["--backplane", url.as_str(), "--node-id", name];
        args.extend_from_slice(&auth);
        Engine::start(&args)
    };
    let a = start("a");
    let b = start("b");
    // Only node b has a backend: messages from node a's clients are relayed.
    let mut remote = Backend::listen(&b.ingest);
    let mut ws = WsDriver::start(a.addr);
    let writer = token("user 42|x", true);
    let reader = token("user-43", false);
    ws.connect("w", &format!("/ws?topic=chat&token={writer}"), &[]);
    ws.connect(
        "r",
        "/ws?topic=chat",
        &[("Authorization", &format!("Bearer {reader}"))],
    );

    ws.send_text("w", "from the writer");
    let relayed = remote.msg();
    assert!(relayed.conn.starts_with("a/"), "{relayed:?}");
    assert_eq!(relayed.payload, b"from the writer");
    assert_eq!(
        relayed.sub.as_deref(),
        Some("user%2042%7Cx"),
        "percent-encoded: {relayed:?}"
    );

    // A token without publish may not send.
    ws.send_text("r", "from the reader");
    let refused = ws.recv("r");
    assert_eq!(
        field(&refused, "text"),
        r#"{"event":"ringcast.error","reason":"the token does not allow upstream messages","topic":null}"#
    );
    assert!(remote.msg_within(Duration::from_millis(300)).is_none());

    // A backend on the client's own node gets the same name.
    let mut local = Backend::listen(&a.ingest);
    ws.send_text("w", "again");
    let here = local.msg();
    assert_eq!(
        (here.payload.as_slice(), here.sub.as_deref()),
        (&b"again"[..], Some("user%2042%7Cx"))
    );

    // A refresh keeps the subject: a token for someone else is refused.
    let other = token("user-44", true);
    ws.send_text("w", &format!(r#"{{"op":"refresh","token":"{other}"}}"#));
    let answer = ws.recv("w");
    let answer = field(&answer, "text");
    assert!(
        answer.contains("the new token is for another subject"),
        "{answer}"
    );
    let same = token("user 42|x", true);
    ws.send_text("w", &format!(r#"{{"op":"refresh","token":"{same}"}}"#));
    assert_eq!(field(&ws.recv("w"), "text"), r#"{"event":"ringcast.refreshed"}"#);
}
