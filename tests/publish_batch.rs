//! `POST /publish` with an NDJSON body, sent by curl: one event per line, one answer line
//! per event in order, bad lines answered without losing the good ones, and the batch's
//! limits answered 413 and 400 before anything is published.
use std::process::Command;

use ringcast_tests::engine::Engine;
use ringcast_tests::sse::SseClient;

/// Runs curl against the admin listener; returns the status line and the body.
fn curl(engine: &Engine, target: &str, content_type: &str, body: &[u8]) -> (u16, String, String) {
    let dir = ringcast_tests::engine::TempDir::new();
    let file = dir.path().join("body");
    std::fs::write(&file, body).expect("write the body");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-D", "-"])
        .args(["-H", &format!("Content-Type: {content_type}")])
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg(format!("http://{}{target}", engine.admin))
        .output()
        .expect("curl runs");
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line: {head}"));
    (status, head.to_owned(), body.to_owned())
}

#[test]
fn an_ndjson_batch_is_published_in_order_with_one_answer_per_line() {
    let engine = Engine::start(&["--payload-max", "1024"]);
    let mut news = SseClient::subscribe(engine.addr, &["news"]);
    let mut other = SseClient::subscribe(engine.addr, &["other"]);
    let long = "x".repeat(2000);
    let body = [
        r#"{"topic":"news","data":"one"}"#.to_owned(),
        r#"{"data":"two","event":"note"}"#.to_owned(),
        String::new(),
        r#"{"topic":"bad topic","data":"lost"}"#.to_owned(),
        "not json".to_owned(),
        format!(r#"{{"topic":"news","data":"{long}"}}"#),
        r#"{"topic":"news","data":"x","extra":1}"#.to_owned(),
        r#"{"topic":"news","data":"x","event":"ringcast.reset"}"#.to_owned(),
        r#"{"topic":"other","data":"three\nlines\nhere","key":"k1"}"#.to_owned(),
        r#"{"topic":"news","data":"four"}"#.to_owned(),
    ]
    .join("\n");
    let (status, head, answer) = curl(
        &engine,
        "/publish?topic=news",
        "application/x-ndjson",
        body.as_bytes(),
    );
    assert_eq!(status, 200, "{head}\n{answer}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/x-ndjson"),
        "{head}"
    );
    let lines: Vec<serde_json::Value> = answer
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert_eq!(lines.len(), 9, "one answer per non-empty line: {answer}");
    let id = |n: usize| {
        lines[n]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("line {n}: {answer}"))
            .to_owned()
    };
    let status_of = |n: usize| {
        lines[n]["status"]
            .as_u64()
            .unwrap_or_else(|| panic!("line {n}: {answer}"))
    };
    for (n, want) in [(2, 400), (3, 400), (4, 413), (5, 400), (6, 400)] {
        assert_eq!(status_of(n), want, "line {n}: {answer}");
        assert!(lines[n]["error"].is_string(), "line {n}: {answer}");
    }
    let (one, two, three, four) = (id(0), id(1), id(7), id(8));
    let got = news.events_until(3, ringcast_tests::WAIT);
    let got: Vec<_> = got.into_iter().map(|e| (e.id, e.event, e.data)).collect();
    assert_eq!(
        got,
        vec![
            (one, "message".to_owned(), "one".to_owned()),
            (two, "note".to_owned(), "two".to_owned()),
            (four, "message".to_owned(), "four".to_owned()),
        ]
    );
    let e = other.expect_event();
    assert_eq!((e.id, e.data), (three, "three\nlines\nhere".to_owned()));
    news.expect_no_event(std::time::Duration::from_millis(300));
}

#[test]
fn a_batch_over_its_limits_is_refused_whole() {
    let engine = Engine::start(&[]);
    let mut sub = SseClient::subscribe(engine.addr, &["news"]);
    let line = r#"{"topic":"news","data":"x"}"#;
    let too_many = vec![line; 1001].join("\n");
    let (status, _, answer) = curl(&engine, "/publish", "application/x-ndjson", too_many.as_bytes());
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer.contains("1001 events exceeds the limit of 1000"),
        "{answer}"
    );
    let big = format!(r#"{{"topic":"news","data":"{}"}}"#, "y".repeat(5 << 20));
    let (status, _, answer) = curl(&engine, "/publish", "application/x-ndjson", big.as_bytes());
    assert_eq!(status, 413, "{answer}");
    // The largest accepted batch goes through whole.
    let full = vec![line; 1000].join("\n");
    let (status, _, answer) = curl(
        &engine,
        "/publish",
        "application/x-ndjson; charset=utf-8",
        full.as_bytes(),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer.lines().filter(|l| l.starts_with("{\"id\":")).count(),
        1000,
        "{answer}"
    );
    let got = sub.events_until(1000, ringcast_tests::WAIT);
    assert!(got.iter().all(|e| e.data == "x"));
    sub.expect_no_event(std::time::Duration::from_millis(300));
}
