//! Admission control with real clients: curl from several loopback source addresses for the
//! per-address cap and accept rate, raw silent sockets for the bound on refusals waiting,
//! Chromium's and npm `eventsource`'s EventSource shed at `--max-conns` and coming back by
//! themselves, Python `websockets` refused at the cap and rate-limited per message.
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use ringcast_tests::engine::{admin_request, assert_promtool_accepts, free_addr, Engine};
use ringcast_tests::ingest::Publisher;
use ringcast_tests::poll::{read_curl_head, LineChild};
use ringcast_tests::WAIT;

fn script(dir: &str, name: &str) -> String {
    let path: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(dir)
        .join(name);
    path.display().to_string()
}

/// One request by curl from `source` (a loopback address); returns the status, the
/// `Retry-After` header and the body.
fn curl_from(source: &str, addr: SocketAddr, target: &str) -> (u16, Option<String>, String) {
    let out = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "5", "--interface", source])
        .arg(format!("http://{addr}{target}"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no status from curl: {text:?} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let retry_after = head
        .lines()
        .find_map(|l| l.strip_prefix("Retry-After: ").map(str::to_owned));
    (status, retry_after, body.to_owned())
}

/// A streaming curl held open from `source`, once its `200` head has come.
fn held_stream(source: &str, addr: SocketAddr, topic: &str) -> LineChild {
    let url = format!("http://{addr}/sse?topic={topic}");
    let mut curl = LineChild::spawn(
        "curl",
        &["-sSNi", "--max-time", "60", "--interface", source, &url],
    );
    let head = read_curl_head(&mut curl);
    assert_eq!(head.status, 200, "{}", curl.context());
    curl
}

/// The sum over loops of `ringcast_admission_refusals_total{reason}`.
fn refusals(engine: &Engine, reason: &str) -> u64 {
    let (status, metrics) = admin_request(engine.admin, "GET", "/metrics", b"");
    assert_eq!(status, 200);
    let label = format!("reason=\"{reason}\"}} ");
    metrics
        .lines()
        .filter(|l| l.starts_with("ringcast_admission_refusals_total{") && l.contains(&label))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_address_at_its_cap_gets_429_while_other_addresses_are_served() {
    let engine = Engine::start(&["--max-conns-per-ip", "4"]);
    let mut held: Vec<LineChild> = (0..4)
        .map(|_| held_stream("127.0.0.2", engine.addr, "a"))
        .collect();

    let (status, retry, body) = curl_from("127.0.0.2", engine.addr, "/sse?topic=a");
    assert_eq!(status, 429, "{body}");
    assert_eq!(retry.as_deref(), Some("10"));
    assert!(body.contains("too many connections from this address"), "{body}");
    // Any request, not only streams.
    let (status, _, _) = curl_from("127.0.0.2", engine.addr, "/poll?topic=a&timeout=0");
    assert_eq!(status, 429);

    // Another address is not affected.
    let other = held_stream("127.0.0.3", engine.addr, "a");

    // A stream that ends makes room for the next one.
    held.pop().unwrap().kill();
    wait_until("the stream closed", || engine.counter("open_sse") == 4);
    assert_eq!(curl_from("127.0.0.2", engine.addr, "/nothing").0, 404);

    assert_eq!(refusals(&engine, "per_ip"), 2);
    assert_eq!(engine.counter("admission_per_ip"), 2);
    let (_, metrics) = admin_request(engine.admin, "GET", "/metrics", b"");
    assert_promtool_accepts(&metrics);
    drop(other);
}

#[test]
fn opening_connections_too_fast_gets_429_with_retry_after() {
    let engine = Engine::start(&["--accept-rate-per-ip", "1", "--accept-burst-per-ip", "3"]);
    for _ in 0..3 {
        assert_eq!(curl_from("127.0.0.4", engine.addr, "/nothing").0, 404);
    }
    let (status, retry, body) = curl_from("127.0.0.4", engine.addr, "/nothing");
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("connecting too fast"), "{body}");
    assert_eq!(retry.as_deref(), Some("1"), "one token a second");
    // Another address has its own bucket.
    assert_eq!(curl_from("127.0.0.5", engine.addr, "/nothing").0, 404);
    // A second later there is a token again.
    thread::sleep(Duration::from_millis(1100));
    assert_eq!(curl_from("127.0.0.4", engine.addr, "/nothing").0, 404);
    assert_eq!(refusals(&engine, "rate"), 1);
}

#[test]
fn refused_connections_waiting_for_an_answer_are_bounded() {
    let engine = Engine::start(&["--max-conns-per-ip", "1"]);
    let _admitted = TcpStream::connect(engine.addr).unwrap();
    wait_until("one connection open", || engine.counter("open") == 1);
    // Sixteen refused connections that say nothing wait for their answer...
    let mut waiting: Vec<TcpStream> = (0..16)
        .map(|_| TcpStream::connect(engine.addr).unwrap())
        .collect();
    wait_until("sixteen refusals", || refusals(&engine, "per_ip") == 16);
    // ...and further ones are closed unanswered.
    for _ in 0..4 {
        let mut s = TcpStream::connect(engine.addr).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "closed without an answer: {:?}", &buf[..n]);
    }
    assert_eq!(refusals(&engine, "dropped"), 4);
    // The waiting ones are answered once they ask.
    for s in &mut waiting {
        use std::io::Write;
        s.write_all(b"GET /sse?topic=a HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 429 "), "{answer}");
    }
    drop(waiting);
    wait_until("the answered ones gone", || engine.counter("open") == 1);
}

#[test]
fn at_max_conns_sse_is_shed_as_a_short_stream_and_other_requests_get_503() {
    let engine = Engine::start(&["--max-conns", "2", "--retry-ms", "200"]);
    let first = held_stream("127.0.0.1", engine.addr, "s");
    let _second = held_stream("127.0.0.1", engine.addr, "s");

    // SSE: 200, a retry: between 200 ms and five times that, and the stream ends.
    let (status, _, body) = curl_from("127.0.0.1", engine.addr, "/sse?topic=s");
    assert_eq!(status, 200, "{body}");
    let retry: u32 = body
        .strip_prefix("retry: ")
        .and_then(|r| r.strip_suffix("\n\n"))
        .unwrap_or_else(|| panic!("a lone retry: field, got {body:?}"))
        .parse()
        .unwrap();
    assert!((200..1000).contains(&retry), "retry: {retry}");
    // Others: 503 with Retry-After.
    let (status, retry_after, _) = curl_from("127.0.0.1", engine.addr, "/poll?topic=s&timeout=0");
    assert_eq!(status, 503);
    assert!(retry_after.is_some_and(|r| (1..=1).contains(&r.parse::<u32>().unwrap())));
    let ws = LineChild::spawn(
        "python3",
        &[
            &script("py", "ws_admission.py"),
            "connect",
            &format!("ws://{}/ws?topic=s", engine.addr),
        ],
    )
    .expect_line();
    assert_eq!(ws, "STATUS 503 1");
    assert_eq!(refusals(&engine, "shed"), 3);

    // A browser's EventSource keeps retrying a shed stream, and gets in once there is room.
    let page = free_addr().port().to_string();
    let url = format!("http://{}/sse?topic=s", engine.addr);
    let mut browser = LineChild::spawn(
        "node",
        &[&script("js", "shed_clients.mjs"), "chromium", &url, &page],
    );
    wait_until("the browser shed twice", || refusals(&engine, "shed") >= 5);
    // Streams opened so far count this one: the next is the browser's.
    let streams = engine.counter("streams");
    drop(first);
    wait_until("the browser's stream open", || {
        engine.counter("streams") > streams
    });
    let mut p = Publisher::connect(&engine.ingest);
    p.publish("s", b"after the shedding");
    let result = browser.expect_line();
    let result: serde_json::Value = serde_json::from_str(
        result
            .strip_prefix("RESULT ")
            .unwrap_or_else(|| panic!("{result}: {}", browser.context())),
    )
    .unwrap();
    assert_eq!(result["data"], "after the shedding");
    assert!(result["errors"].as_u64().unwrap() >= 2, "{result}");
}

#[test]
fn npm_eventsource_comes_back_after_being_shed() {
    let engine = Engine::start(&["--max-conns", "1", "--retry-ms", "100"]);
    let held = held_stream("127.0.0.1", engine.addr, "n");
    let url = format!("http://{}/sse?topic=n", engine.addr);
    let mut client = LineChild::spawn("node", &[&script("js", "shed_clients.mjs"), "lib", &url]);
    wait_until("the client shed twice", || refusals(&engine, "shed") >= 2);
    let streams = engine.counter("streams");
    drop(held);
    wait_until("the client's stream open", || engine.counter("streams") > streams);
    Publisher::connect(&engine.ingest).publish("n", b"in");
    let result = client.expect_line();
    assert!(result.starts_with("RESULT "), "{}", client.context());
    assert!(result.contains("\"data\":\"in\""), "{result}");
}

fn ws_ops(engine: &Engine, count: usize, interval_ms: u32) -> serde_json::Value {
    let mut child = LineChild::spawn(
        "python3",
        &[
            &script("py", "ws_admission.py"),
            "ops",
            &format!("ws://{}/ws?topic=r", engine.addr),
            &count.to_string(),
            &interval_ms.to_string(),
        ],
    );
    let line = child
        .next_line(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e:?}: {}", child.context()));
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

#[test]
fn a_websocket_sending_too_fast_is_told_then_closed_with_1008() {
    let engine = Engine::start(&["--ws-msg-rate", "20", "--ws-msg-burst", "10"]);
    // Within the rate: every op is answered.
    let paced = ws_ops(&engine, 20, 80);
    assert_eq!(paced["acks"], 20, "{paced}");
    assert_eq!(paced["limited"], 0, "{paced}");
    assert_eq!(paced["close"], serde_json::Value::Null, "{paced}");
    // A flood: the burst is answered, then errors, then close 1008.
    let flood = ws_ops(&engine, 500, 0);
    let acks = flood["acks"].as_u64().unwrap();
    assert!((10..=14).contains(&acks), "about a burst answered: {flood}");
    assert!(flood["limited"].as_u64().unwrap() >= 10, "{flood}");
    assert_eq!(flood["close"], 1008, "{flood}");
    assert_eq!(engine.counter("ws_rate_closed"), 1);
    assert!(engine.counter("ws_rate_limited") >= 11);
    // The engine and other clients carry on.
    let again = ws_ops(&engine, 4, 0);
    assert_eq!(again["acks"], 4, "{again}");
}
