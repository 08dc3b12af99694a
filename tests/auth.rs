//! Subscriber auth (`--auth-jwks`) with tokens signed by PyJWT (RS256, ES256, HS256; never
//! by the engine's own code) and real clients: curl-like raw requests for every refusal,
//! Chromium's EventSource with a query token and with a cookie, npm `eventsource` with a
//! header, Python `websockets` with a header and a refresh. Expiry on open connections,
//! reconnecting with a new token and Last-Event-ID without a gap, and key rotation by
//! SIGHUP with streams staying open.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ringcast_tests::engine::{free_addr, Engine, TempDir};
use ringcast_tests::http::exchange;
use ringcast_tests::ingest::Publisher;
use ringcast_tests::poll::LineChild;
use ringcast_tests::sse::SseClient;
use ringcast_tests::wsclient::{handshake, RawWs};
use ringcast_tests::WAIT;

fn py(script: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(script)
}

fn js(script: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/js")
        .join(script)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// Keys made by PyJWT's side (tests/py/jwt_tool.py) in a directory of their own.
struct Keys {
    dir: TempDir,
}

impl Keys {
    fn new() -> Keys {
        let dir = TempDir::new();
        for set in ["1", "2"] {
            let out = Command::new("python3")
                .arg(py("jwt_tool.py"))
                .args(["keys", &dir.path().display().to_string(), set])
                .output()
                .expect("python3 (with PyJWT and cryptography: pip install -r tests/py/requirements.txt)");
            assert!(
                out.status.success(),
                "jwt_tool.py keys: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Keys { dir }
    }

    fn jwks(&self, set: &str) -> PathBuf {
        self.dir.path().join(format!("jwks-{set}.json"))
    }

    /// A token signed with key `kid` for `topics`, expiring in `secs`.
    fn token(&self, kid: &str, topics: &[&str], secs: i64) -> String {
        let exp = now() as i64 + secs;
        let claims = serde_json::json!({"exp": exp, "sub": "user-7", "ringcast": {"subscribe": topics}});
        self.token_with(kid, &claims.to_string())
    }

    fn token_with(&self, kid: &str, claims: &str) -> String {
        let out = Command::new("python3")
            .arg(py("jwt_tool.py"))
            .args(["token", &self.dir.path().display().to_string(), kid, claims])
            .output()
            .expect("python3 jwt_tool.py token");
        assert!(
            out.status.success(),
            "jwt_tool.py token: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8").trim().to_owned()
    }
}

fn engine_with(keys: &Keys, extra: &[&str]) -> Engine {
    let jwks = keys.jwks("1").display().to_string();
    let mut args = vec!["--auth-jwks", &jwks, "--auth-leeway-secs", "0"];
    args.extend_from_slice(extra);
    Engine::start(&args)
}

fn get(engine: &Engine, target: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let mut req = format!("GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let (response, body, _) = exchange(engine.addr, req.as_bytes());
    let challenge = response.header("WWW-Authenticate").unwrap_or_default().to_owned();
    (
        response.status,
        challenge,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

#[test]
fn tokens_admit_their_topics_and_every_refusal_says_why() {
    let keys = Keys::new();
    let engine = engine_with(&keys, &["--auth-cookie", "rc_token"]);
    let mut p = Publisher::connect(&engine.ingest);
    for kid in ["rsa-1", "ec-1", "hs-1"] {
        let token = keys.token(kid, &["news", "user.7.*"], 600);
        let bearer = format!("Bearer {token}");
        let cookie = format!("a=b; rc_token={token}");
        let query = format!("/sse?topic=news&token={token}");
        let mut subs = vec![
            SseClient::subscribe_with(
                engine.addr,
                &["news", "user.7.inbox"],
                &[("Authorization", &bearer)],
            ),
            SseClient::subscribe_with(engine.addr, &["news"], &[("Cookie", &cookie)]),
            SseClient::open(engine.addr, &query, &[]),
        ];
        let id = p.publish("news", kid.as_bytes());
        for s in &mut subs {
            assert_eq!(s.expect_event().id, id, "{kid}");
        }
        // A topic the token does not allow: 403 naming it.
        let (status, _, body) = get(
            &engine,
            "/sse?topic=news&topic=sport",
            &[("Authorization", &bearer)],
        );
        assert_eq!(status, 403, "{kid}");
        assert!(body.contains("sport"), "{body}");
    }
    let good = keys.token("rsa-1", &["news"], 600);
    let expired = keys.token("rsa-1", &["news"], -5);
    let early = keys.token_with(
        "ec-1",
        &format!(r#"{{"exp":{},"nbf":{}}}"#, now() + 600, now() + 300),
    );
    let unknown = keys.token("rsa-2", &["news"], 600);
    let mut forged = good.clone();
    forged.truncate(forged.len() - 4);
    forged.push_str("AAAA");
    for (token, description) in [
        (None, "no token"),
        (Some("not-a-jwt"), "not a JWT"),
        (Some(forged.as_str()), "signature does not verify"),
        (Some(expired.as_str()), "expired"),
        (Some(early.as_str()), "not valid yet"),
        (Some(unknown.as_str()), "no key verifies"),
    ] {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = bearer.iter().map(|b| ("Authorization", b.as_str())).collect();
        let (status, challenge, _) = get(&engine, "/sse?topic=news", &headers);
        assert_eq!(status, 401, "{description}");
        assert!(
            challenge.starts_with("Bearer error=\"invalid_token\", error_description=\"")
                && challenge.contains(description),
            "{description}: {challenge}"
        );
    }
    // The same for polls and the WebSocket upgrade.
    assert_eq!(get(&engine, "/poll?topic=news&wait=0", &[]).0, 401);
    let (response, _) = handshake(engine.addr, "/ws?topic=news", &[]);
    assert_eq!(response.status, 401);
    let stats = engine.stats();
    for (reason, n) in [
        ("missing", 3),
        ("malformed", 1),
        ("bad_signature", 1),
        ("expired", 1),
        ("not_yet_valid", 1),
        ("unknown_key", 1),
    ] {
        assert!(stats.contains(&format!("\"{reason}\":{n}")), "{reason}: {stats}");
    }
    assert!(stats.contains("\"forbidden\":3"), "{stats}");
}

#[test]
fn a_websocket_subscribe_op_for_a_topic_the_token_does_not_allow_is_an_error() {
    let keys = Keys::new();
    let engine = engine_with(&keys, &[]);
    let bearer = format!("Bearer {}", keys.token("ec-1", &["news", "user.7.*"], 600));
    let mut ws = RawWs::connect(engine.addr, "/ws", &[("Authorization", &bearer)]);
    ws.send_text(r#"{"op":"subscribe","topic":"user.7.inbox"}"#);
    assert!(ws
        .next_frame(WAIT)
        .expect("ack")
        .text()
        .contains("ringcast.subscribed"));
    ws.send_text(r#"{"op":"subscribe","topic":"user.8.inbox"}"#);
    let refusal = ws.next_frame(WAIT).expect("an answer").text();
    assert!(
        refusal.contains("ringcast.error")
            && refusal.contains("does not allow")
            && refusal.contains("user.8.inbox"),
        "{refusal}"
    );
}

/// Reads one SSE stream's events until it ends; returns their (event, id).
fn read_to_end(sub: &mut SseClient) -> Vec<(String, String)> {
    let mut out = Vec::new();
    while let Ok(e) = sub.next_event(WAIT) {
        out.push((e.event, e.id));
    }
    out
}

#[test]
fn an_expired_stream_is_told_and_a_new_token_with_last_event_id_loses_nothing() {
    let keys = Keys::new();
    let engine = engine_with(&keys, &[]);
    let mut p = Publisher::connect(&engine.ingest);
    let short = format!("Bearer {}", keys.token("hs-1", &["x"], 2));
    let mut sub = SseClient::subscribe_with(engine.addr, &["x"], &[("Authorization", &short)]);
    let first = p.publish("x", b"1");
    assert_eq!(sub.expect_event().id, first);
    let started = Instant::now();
    let events = read_to_end(&mut sub);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "told within a tick of its expiry"
    );
    assert_eq!(
        events.last().map(|e| e.0.as_str()),
        Some("ringcast.expired"),
        "{events:?}"
    );
    assert!(sub.closes_within(WAIT), "the stream ends after ringcast.expired");
    // Published while the client was away: all of it comes back with the new token.
    let missed: Vec<String> = (0..5)
        .map(|i| p.publish("x", format!("m{i}").as_bytes()))
        .collect();
    let fresh = format!("Bearer {}", keys.token("hs-1", &["x"], 600));
    let mut again = SseClient::subscribe_with(
        engine.addr,
        &["x"],
        &[("Authorization", &fresh), ("Last-Event-ID", &first)],
    );
    let got: Vec<String> = (0..5).map(|_| again.expect_event().id).collect();
    assert_eq!(got, missed);
    assert!(engine.stats().contains("\"expired\":1"));
}

#[test]
fn a_held_long_poll_is_answered_when_its_token_expires() {
    let keys = Keys::new();
    let engine = engine_with(&keys, &[]);
    let token = keys.token("rsa-1", &["p"], 2);
    let started = Instant::now();
    let answer = ringcast_tests::poll::PollClient::connect(engine.addr).poll_with(
        "topic=p&wait=30",
        &[("Authorization", &format!("Bearer {token}"))],
        Duration::from_secs(15),
    );
    assert_eq!(answer.response.status, 200);
    assert!(answer.events.is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "answered at expiry, not after 30 s"
    );
}

#[test]
fn python_websockets_with_a_header_refreshes_or_is_closed_with_4001() {
    let keys = Keys::new();
    let engine = engine_with(&keys, &["--auth-refresh-grace-ms", "2000"]);
    let url = format!("ws://{}/ws?topic=w", engine.addr);
    let refresh = keys.token("ec-1", &["w"], 600);
    // One refreshes when told; one does not.
    let mut refreshing = LineChild::spawn(
        "python3",
        &[
            &py("ws_auth.py").display().to_string(),
            &url,
            &keys.token("rsa-1", &["w"], 2),
            &refresh,
            "12",
        ],
    );
    let mut lapsing = LineChild::spawn(
        "python3",
        &[
            &py("ws_auth.py").display().to_string(),
            &url,
            &keys.token("rsa-1", &["w"], 2),
            "-",
            "15",
        ],
    );
    assert_eq!(refreshing.expect_line(), "OPEN");
    assert_eq!(lapsing.expect_line(), "OPEN");
    let expired = refreshing.expect_line();
    assert!(expired.contains("ringcast.expired"), "{expired}");
    assert!(refreshing.expect_line().contains("ringcast.refreshed"));
    let mut p = Publisher::connect(&engine.ingest);
    let id = p.publish("w", b"after the refresh");
    let event = refreshing.expect_line();
    assert!(event.contains(&id), "{event}");
    // Its expiry and the event may come in either order (the two sit on their own loops).
    let mut lines = vec![lapsing.expect_line()];
    while !lines.last().expect("a line").contains("ringcast.expired") {
        lines.push(lapsing.expect_line());
    }
    let mut last = lapsing.expect_line();
    while !last.starts_with("CLOSED") {
        last = lapsing.expect_line();
    }
    assert_eq!(last, "CLOSED 4001", "closed once the grace ran out");
    assert!(engine.stats().contains("\"refreshed\":1"));
}

#[test]
fn keys_rotate_on_sighup_and_open_streams_stay() {
    let keys = Keys::new();
    let dir = TempDir::new();
    let live = dir.path().join("jwks.json");
    std::fs::copy(keys.jwks("1"), &live).expect("copy");
    let live_arg = live.display().to_string();
    let engine = Engine::start(&["--auth-jwks", &live_arg, "--auth-leeway-secs", "0"]);
    let old = format!("Bearer {}", keys.token("rsa-1", &["k"], 600));
    let mut open = SseClient::subscribe_with(engine.addr, &["k"], &[("Authorization", &old)]);
    std::fs::copy(keys.jwks("2"), &live).expect("rotate");
    // SAFETY: kill(2) on the engine this test started.
    unsafe { libc::kill(engine.pid as i32, libc::SIGHUP) };
    let deadline = Instant::now() + WAIT;
    while !engine.stderr().contains("SIGHUP: 3 subscriber keys loaded") {
        assert!(Instant::now() < deadline, "{}", engine.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        get(&engine, "/sse?topic=k", &[("Authorization", &old)]).0,
        401,
        "the old key is gone"
    );
    let new = format!("Bearer {}", keys.token("rsa-2", &["k"], 600));
    let mut fresh = SseClient::subscribe_with(engine.addr, &["k"], &[("Authorization", &new)]);
    let id = Publisher::connect(&engine.ingest).publish("k", b"after the rotation");
    assert_eq!(
        open.expect_event().id,
        id,
        "a stream admitted with the old key stays"
    );
    assert_eq!(fresh.expect_event().id, id);
    // A bad file on SIGHUP keeps the keys in use.
    std::fs::write(&live, "{ not json").expect("write");
    // SAFETY: as above.
    unsafe { libc::kill(engine.pid as i32, libc::SIGHUP) };
    let deadline = Instant::now() + WAIT;
    while !engine.stderr().contains("the keys in use stay") {
        assert!(Instant::now() < deadline, "{}", engine.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    let _still = SseClient::subscribe_with(engine.addr, &["k"], &[("Authorization", &new)]);
}

#[test]
fn a_bad_key_file_at_start_is_a_clear_error() {
    let dir = TempDir::new();
    let bad = dir.path().join("jwks.json");
    std::fs::write(
        &bad,
        r#"{"keys":[{"kty":"EC","kid":"e","crv":"P-521","x":"AA","y":"AA"}]}"#,
    )
    .expect("write");
    let err = Engine::try_start_on(
        free_addr(),
        &dir.path().join("s.sock"),
        &["--auth-jwks", &bad.display().to_string()],
    )
    .err()
    .expect("refused");
    assert!(
        err.stderr.contains("key e") && err.stderr.contains("P-256"),
        "{}",
        err.stderr
    );
}

/// Runs tests/js/auth_clients.mjs; publishes `n` events once it says OPEN; returns the ids
/// it received and the ids published.
fn js_client(engine: &Engine, args: &[&str], n: usize, topic: &str) -> (Vec<String>, Vec<String>) {
    let script = js("auth_clients.mjs").display().to_string();
    let mut all = vec![script.as_str()];
    all.extend_from_slice(args);
    let mut child = LineChild::spawn("node", &all);
    let open = child.expect_line();
    assert_eq!(open, "OPEN", "{}", child.context());
    let mut p = Publisher::connect(&engine.ingest);
    let published: Vec<String> = (0..n)
        .map(|i| p.publish(topic, format!("e{i}").as_bytes()))
        .collect();
    let result = child.expect_line();
    let ids = result
        .strip_prefix("RESULT ")
        .unwrap_or_else(|| panic!("{result}: {}", child.context()));
    let ids: Vec<String> = serde_json::from_str(ids).expect("a JSON array");
    (ids, published)
}

#[test]
fn npm_eventsource_with_a_header_receives() {
    let keys = Keys::new();
    let engine = engine_with(&keys, &[]);
    let url = format!("http://{}/sse?topic=n", engine.addr);
    let token = keys.token("rsa-1", &["n"], 600);
    let (got, published) = js_client(&engine, &["lib-header", &url, &token, "3"], 3, "n");
    assert_eq!(got, published);
}

#[test]
fn chromium_eventsource_with_a_query_token_and_with_a_cookie_receives() {
    let keys = Keys::new();
    let page = free_addr().port().to_string();
    let origin = format!("http://127.0.0.1:{page}");
    let engine = engine_with(
        &keys,
        &[
            "--auth-cookie",
            "rc_token",
            "--cors-origin",
            &origin,
            "--cors-credentials",
        ],
    );
    let token = keys.token("ec-1", &["c"], 600);
    let query = format!("http://{}/sse?topic=c&token={token}", engine.addr);
    let (got, published) = js_client(&engine, &["chromium-query", &query, "2", &page], 2, "c");
    assert_eq!(got, published, "query token");
    let page = free_addr().port().to_string();
    let engine = engine_with(
        &keys,
        &[
            "--auth-cookie",
            "rc_token",
            "--cors-origin",
            &format!("http://127.0.0.1:{page}"),
            "--cors-credentials",
        ],
    );
    let url = format!("http://{}/sse?topic=c", engine.addr);
    let (got, published) = js_client(&engine, &["chromium-cookie", &url, &token, "2", &page], 2, "c");
    assert_eq!(got, published, "cookie token");
}
