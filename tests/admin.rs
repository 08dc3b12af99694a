//! The admin listener: `POST /publish` publishes like the ingest socket (and refuses what
//! it refuses), `GET /metrics` passes `promtool check metrics` and shows every counter
//! `/stats` shows, with the same values, `GET /healthz` answers.
use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

use ringcast::counters::{Scope, TABLE};
use ringcast_tests::engine::{Engine, TempDir};
use ringcast_tests::sse::SseClient;

fn admin(addr: SocketAddr, method: &str, target: &str, body: &[u8]) -> (u16, String) {
    ringcast_tests::engine::admin_request(addr, method, target, body)
}

#[test]
fn http_publish_reaches_subscribers_and_refuses_bad_input() {
    let engine = Engine::start(&["--payload-max", "1024"]);
    let mut sub = SseClient::subscribe(engine.addr, &["news"]);
    let (status, body) = admin(
        engine.admin,
        "POST",
        "/publish?topic=news&event=flash",
        b"line one\nline two",
    );
    assert_eq!(status, 200, "{body}");
    let id = body.split('"').nth(3).expect("{\"id\":\"...\"}").to_owned();
    let event = sub.expect_event();
    assert_eq!(
        (event.id, event.event, event.data),
        (id, "flash".to_owned(), "line one\nline two".to_owned())
    );

    for (target, payload, want) in [
        ("/publish?topic=bad%20topic", &b"x"[..], 400),
        ("/publish", &b"x"[..], 400),
        ("/publish?topic=news&event=ringcast.reset", &b"x"[..], 400),
        ("/publish?topic=news", &[0xff, 0xfe][..], 400),
        ("/publish?topic=news", &[b'a'; 2000][..], 413),
    ] {
        let (status, body) = admin(engine.admin, "POST", target, payload);
        assert_eq!(status, want, "{target}: {body}");
        assert!(body.starts_with("{\"error\":"), "{target}: {body}");
    }
    let (status, _) = admin(engine.admin, "GET", "/publish?topic=news", b"");
    assert_eq!(status, 405);
    // Nothing refused reached the subscriber; the next good publish does.
    let (_, body) = admin(engine.admin, "POST", "/publish?topic=news", b"after");
    let event = sub.expect_event();
    assert!(body.contains(&event.id), "{body} vs {}", event.id);
    assert_eq!(event.data, "after");
}

#[test]
fn metrics_pass_promtool_and_count() {
    let engine = Engine::start(&[]);
    let _sub = SseClient::subscribe(engine.addr, &["m"]);
    let (status, _) = admin(engine.admin, "POST", "/publish?topic=m", b"x");
    assert_eq!(status, 200);
    let (status, metrics) = admin(engine.admin, "GET", "/metrics", b"");
    assert_eq!(status, 200);
    assert!(metrics.contains("ringcast_events_published_total 1"), "{metrics}");
    for family in [
        "ringcast_streams_opened_total{loop=",
        "ringcast_connections_open_by_transport{loop=",
        "ringcast_queued_bytes{loop=",
        "ringcast_admission_refusals_total{loop=",
    ] {
        assert!(metrics.contains(family), "{family} in {metrics}");
    }
    ringcast_tests::engine::assert_promtool_accepts(&metrics);
    let (status, body) = admin(engine.admin, "GET", "/healthz", b"");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
}

#[test]
fn open_connections_are_counted_by_transport() {
    let engine = Engine::start(&[]);
    let sub = SseClient::subscribe(engine.addr, &["g"]);
    let mut poll = TcpStream::connect(engine.addr).unwrap();
    poll.write_all(b"GET /poll?topic=g&wait=30 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let deadline = std::time::Instant::now() + ringcast_tests::WAIT;
    while engine.counter("polls_held") < 1 {
        assert!(std::time::Instant::now() < deadline, "{}", engine.stats());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!((engine.counter("open_sse"), engine.counter("polls_held")), (1, 1));
    drop(sub);
    drop(poll);
    while engine.counter("open_sse") + engine.counter("polls_held") > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "gauges did not return to 0: {}",
            engine.stats()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(engine.counter("open"), 0, "{}", engine.stats());
}

/// The samples of a `/metrics` document, by name and labels as written.
fn samples(metrics: &str) -> BTreeMap<String, u64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("sample {l:?}"));
            let value = value.parse().unwrap_or_else(|e| panic!("sample {l:?}: {e}"));
            (name.to_owned(), value)
        })
        .collect()
}

/// `/stats` and `/metrics` read while nothing moves (`/stats` reads the same before and
/// after `/metrics`), and the `/metrics` document.
fn settled(engine: &Engine) -> (serde_json::Value, BTreeMap<String, u64>, String) {
    let deadline = Instant::now() + ringcast_tests::WAIT;
    loop {
        let before = engine.stats();
        let (status, metrics) = admin(engine.admin, "GET", "/metrics", b"");
        assert_eq!(status, 200, "{metrics}");
        if engine.stats() == before {
            let stats = serde_json::from_str(&before).unwrap_or_else(|e| panic!("{e}: {before}"));
            return (stats, samples(&metrics), metrics);
        }
        assert!(Instant::now() < deadline, "/stats never settled: {before}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Every counter of `/stats` (per loop, and with `--auth-jwks` in `auth`) is a sample of a
/// `/metrics` family with the same value, and every sample of `/metrics` labelled by loop
/// is one of those, or the ring lag `/stats` gives each loop.
#[test]
fn every_stats_counter_is_a_metric_and_every_loop_metric_a_stats_counter() {
    let dir = TempDir::new();
    let jwks = dir.path().join("jwks.json");
    // An HS256 key: requests without a token are refused, so auth's counters move.
    std::fs::write(
        &jwks,
        r#"{"keys":[{"kty":"oct","kid":"k","alg":"HS256","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"}]}"#,
    )
    .expect("write the JWKS");
    let engine = Engine::start(&["--auth-jwks", jwks.to_str().expect("a UTF-8 path")]);
    for _ in 0..3 {
        let mut conn = TcpStream::connect(engine.addr).expect("connect");
        conn.write_all(b"GET /sse?topic=m HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .expect("request");
        let mut answer = String::new();
        std::io::Read::read_to_string(&mut conn, &mut answer).expect("answer");
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    }
    let (status, _) = admin(engine.admin, "POST", "/publish?topic=m", b"x");
    assert_eq!(status, 200);

    let (stats, mut samples, metrics) = settled(&engine);
    ringcast_tests::engine::assert_promtool_accepts(&metrics);
    let loops = stats["loops"].as_array().expect("loops in /stats");
    assert_eq!(loops.len(), 2, "{stats}");
    let totals = stats["totals"].as_object().expect("totals in /stats");
    let loop_keys: Vec<&str> = TABLE
        .iter()
        .filter(|c| c.scope == Scope::Loop)
        .map(|c| c.stat)
        .collect();
    let mut keys: Vec<&str> = totals.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut want = loop_keys.clone();
    want.sort_unstable();
    assert_eq!(keys, want, "the counters of /stats totals are the table's");
    let mut auth_totals: BTreeMap<String, u64> = BTreeMap::new();
    for (l, figures) in loops.iter().enumerate() {
        let lag = samples.remove(&format!("ringcast_ring_lag_events{{loop=\"{l}\"}}"));
        assert_eq!(figures["ring_lag"].as_u64(), lag, "ring lag of loop {l}");
        let mut keys: Vec<&str> = figures
            .as_object()
            .expect("a loop")
            .keys()
            .map(String::as_str)
            .collect();
        keys.retain(|k| *k != "ring_lag");
        keys.sort_unstable();
        assert_eq!(keys, want, "the counters of loop {l} are the table's");
        for c in TABLE {
            for cell in 0..c.cells {
                let labels = match c.label {
                    Some(label) => format!(",{}=\"{}\"", label.name, label.values[cell]),
                    None => String::new(),
                };
                let sample = format!("{}{{loop=\"{l}\"{labels}}}", c.family.name);
                let value = samples
                    .remove(&sample)
                    .unwrap_or_else(|| panic!("{} of loop {l} has no sample {sample} in /metrics", c.stat));
                match c.scope {
                    Scope::Loop => assert_eq!(figures[c.stat].as_u64(), Some(value), "{sample}"),
                    Scope::Auth => *auth_totals.entry(format!("{}{labels}", c.stat)).or_default() += value,
                }
            }
        }
    }
    for c in TABLE.iter().filter(|c| c.scope == Scope::Auth) {
        for cell in 0..c.cells {
            let (shown, key) = match c.label {
                Some(label) if c.cells > 1 => (
                    &stats["auth"][c.stat][label.values[cell]],
                    format!("{},{}=\"{}\"", c.stat, label.name, label.values[cell]),
                ),
                _ => (&stats["auth"][c.stat], c.stat.to_owned()),
            };
            assert_eq!(
                shown.as_u64(),
                auth_totals.get(&key).copied(),
                "auth {key}: {stats}"
            );
        }
    }
    assert_eq!(stats["auth"]["refused"]["missing"], 3, "{stats}");
    assert_eq!(totals["accepted"], 3, "{stats}");
    let stray: Vec<&String> = samples.keys().filter(|k| k.contains("loop=")).collect();
    assert!(
        stray.is_empty(),
        "labelled by loop in /metrics but not in /stats: {stray:?}"
    );
}
