//! Who may use the admin listener and the ingest socket: with `--admin-token` (or
//! `--admin-token-file`) `/stats`, `/metrics` and `POST /publish` need the bearer token
//! and everything else is refused 401 with a challenge, counted; `/healthz` (and
//! `/metrics` with `--metrics-public`) stay open; unusable tokens, and a non-loopback
//! admin address without one, are refused at start; `--ingest-group` gives the ingest
//! socket its group.
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use ringcast_tests::engine::{free_addr, Engine, TempDir};
use ringcast_tests::http::{exchange, Response};
use ringcast_tests::ingest::Publisher;
use ringcast_tests::sse::SseClient;

const TOKEN: &str = "k7Q2-admin-secret_0123456789abcdef";
const CHALLENGE: &str = "Bearer realm=\"ringcast-admin\"";
const INVALID: &str = "Bearer realm=\"ringcast-admin\", error=\"invalid_token\"";

/// One admin request with the given extra header lines; the answer and its body.
fn ask(admin: SocketAddr, method: &str, target: &str, fields: &str, body: &[u8]) -> (Response, String) {
    let mut request = format!(
        "{method} {target} HTTP/1.1\r\nHost: admin\r\n{fields}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    let (response, body, _) = exchange(admin, &request);
    (response, String::from_utf8(body).expect("a UTF-8 body"))
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}\r\n")
}

/// Asserts a 401 with `challenge` as its only `WWW-Authenticate`.
fn assert_refused(answer: &(Response, String), challenge: &str, what: &str) {
    let (response, body) = answer;
    assert_eq!(response.status, 401, "{what}: {response:?} {body}");
    assert_eq!(
        response.header_count("WWW-Authenticate"),
        1,
        "{what}: {response:?}"
    );
    assert_eq!(response.header("WWW-Authenticate"), Some(challenge), "{what}");
    assert!(!body.contains(TOKEN), "{what}: the answer holds no token: {body}");
}

/// A start expected to fail: its stderr.
fn refused_start(ingest: &Path, args: &[&str]) -> String {
    match Engine::try_start_on(free_addr(), ingest, args) {
        Ok(engine) => panic!("ringcast {args:?} started: {}", engine.ready_line),
        Err(e) => {
            assert!(
                e.status.is_some_and(|s| !s.success()),
                "ringcast {args:?} exited non-zero: {e}"
            );
            e.stderr
        }
    }
}

/// `path` with `text` and permission bits `mode` (set after writing, whatever the umask).
fn write_file(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).expect("write the token file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[test]
fn a_token_guards_stats_metrics_and_publish_but_not_healthz() {
    let engine = Engine::start(&["--admin-token", TOKEN]);
    let admin = engine.admin;
    let mut sub = SseClient::subscribe(engine.addr, &["news"]);

    assert_refused(
        &ask(admin, "GET", "/stats", "", b""),
        CHALLENGE,
        "/stats without a token",
    );
    let basic = "Authorization: Basic YWRtaW46YWRtaW4=\r\n";
    assert_refused(
        &ask(admin, "GET", "/stats", basic, b""),
        CHALLENGE,
        "another scheme",
    );
    let wrong = bearer(&format!("{TOKEN}x"));
    assert_refused(
        &ask(admin, "GET", "/stats", &wrong, b""),
        INVALID,
        "a longer token",
    );
    let prefix = bearer(&TOKEN[..TOKEN.len() - 1]);
    assert_refused(&ask(admin, "GET", "/stats", &prefix, b""), INVALID, "a prefix");
    assert_refused(&ask(admin, "GET", "/metrics", "", b""), CHALLENGE, "/metrics");
    assert_refused(
        &ask(admin, "POST", "/publish?topic=news", "", b"no"),
        CHALLENGE,
        "publish",
    );
    assert_refused(
        &ask(admin, "POST", "/publish?topic=news", &wrong, b"no"),
        INVALID,
        "publish, wrong token",
    );
    let (twice, _) = ask(
        admin,
        "GET",
        "/stats",
        &format!("{}{}", bearer(TOKEN), bearer(TOKEN)),
        b"",
    );
    assert_eq!(
        twice.status, 400,
        "two Authorization fields are ambiguous: {twice:?}"
    );
    assert_eq!(
        twice.header("WWW-Authenticate"),
        Some("Bearer realm=\"ringcast-admin\", error=\"invalid_request\"")
    );

    let (health, body) = ask(admin, "GET", "/healthz", "", b"");
    assert_eq!(
        (health.status, body.as_str()),
        (200, "ok\n"),
        "/healthz needs no token"
    );

    let scheme_case = "Authorization: bearer ".to_owned() + TOKEN + "\r\n";
    let (published, body) = ask(admin, "POST", "/publish?topic=news", &scheme_case, b"yes");
    assert_eq!(published.status, 200, "{body}");
    let event = sub.expect_event();
    assert_eq!(event.data, "yes", "the refused publishes published nothing");
    assert!(body.contains(&event.id), "{body}");

    let (stats, body) = ask(admin, "GET", "/stats", &bearer(TOKEN), b"");
    assert_eq!(stats.status, 200, "{body}");
    assert!(body.contains("\"published\":1,"), "one event: {body}");
    assert!(
        body.contains(
            "\"admin\":{\"token_required\":true,\"metrics_public\":false,\"unauthorized\":{\"missing\":4,\"invalid\":3,\"malformed\":1}}"
        ),
        "each refusal counted by reason: {body}"
    );
    let (metrics, text) = ask(admin, "GET", "/metrics", &bearer(TOKEN), b"");
    assert_eq!(metrics.status, 200);
    for line in [
        "ringcast_admin_unauthorized_total{reason=\"missing\"} 4",
        "ringcast_admin_unauthorized_total{reason=\"invalid\"} 3",
        "ringcast_admin_unauthorized_total{reason=\"malformed\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }
    ringcast_tests::engine::assert_promtool_accepts(&text);
}

#[test]
fn curl_is_refused_without_the_token_and_served_with_it() {
    let engine = Engine::start(&["--admin-token", TOKEN]);
    let url = |path: &str| format!("http://{}{path}", engine.admin);
    let curl = |args: &[&str]| {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "-D", "-", "-o", "/dev/null"])
            .args(args)
            .output()
            .expect("curl runs");
        assert!(
            out.status.success(),
            "curl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8 headers")
    };
    let without = curl(&[&url("/stats")]);
    assert!(without.starts_with("HTTP/1.1 401 "), "{without}");
    assert!(
        without.contains(&format!("WWW-Authenticate: {CHALLENGE}\r\n")),
        "{without}"
    );
    let wrong = curl(&["--oauth2-bearer", "not-it", &url("/stats")]);
    assert!(
        wrong.contains(&format!("WWW-Authenticate: {INVALID}\r\n")),
        "{wrong}"
    );
    let with = curl(&["--oauth2-bearer", TOKEN, &url("/stats")]);
    assert!(with.starts_with("HTTP/1.1 200 "), "{with}");
    let published = curl(&[
        "-H",
        &format!("Authorization: Bearer {TOKEN}"),
        "--data-binary",
        "from curl",
        &url("/publish?topic=news"),
    ]);
    assert!(published.starts_with("HTTP/1.1 200 "), "{published}");
}

#[test]
fn a_refusal_keeps_the_connection_and_the_next_request_is_judged_alone() {
    let engine = Engine::start(&["--admin-token", TOKEN]);
    let pipelined = format!(
        "GET /stats HTTP/1.1\r\nHost: admin\r\n\r\nGET /stats HTTP/1.1\r\nHost: admin\r\n{}\r\n",
        bearer(TOKEN)
    );
    let (first, _, mut conn) = exchange(engine.admin, pipelined.as_bytes());
    assert_eq!(first.status, 401);
    let (second, body) = conn
        .read_response(ringcast_tests::WAIT)
        .expect("the second answer");
    assert_eq!(second.status, 200, "{}", String::from_utf8_lossy(&body));
}

#[test]
fn metrics_public_opens_metrics_only() {
    let engine = Engine::start(&["--admin-token", TOKEN, "--metrics-public"]);
    let (metrics, text) = ask(engine.admin, "GET", "/metrics", "", b"");
    assert_eq!(metrics.status, 200, "{text}");
    assert!(text.contains("ringcast_events_published_total 0"), "{text}");
    assert_refused(&ask(engine.admin, "GET", "/stats", "", b""), CHALLENGE, "/stats");
    assert_refused(
        &ask(engine.admin, "POST", "/publish?topic=t", "", b"x"),
        CHALLENGE,
        "publish",
    );
    // Without a token there is nothing to open: everything is served as before.
    let open = Engine::start(&[]);
    let (stats, body) = ask(open.admin, "GET", "/stats", "", b"");
    assert_eq!(stats.status, 200);
    assert!(body.contains("\"admin\":{\"token_required\":false"), "{body}");
}

#[test]
fn a_token_file_is_read_once_at_start() {
    let dir = TempDir::new();
    let file = dir.path().join("admin.token");
    // The first line is the token, its CRLF is not; the rest of the file is ignored.
    write_file(&file, "from-the-file\r\nsecond line\n", 0o600);
    let file_arg = file.to_str().expect("a UTF-8 path");
    let engine = Engine::start(&["--admin-token-file", file_arg]);
    let status = |token: &str| ask(engine.admin, "GET", "/stats", &bearer(token), b"").0.status;
    assert_eq!(status("from-the-file"), 200);
    assert_eq!(status("second"), 401);
    write_file(&file, "changed\n", 0o600);
    assert_eq!(status("from-the-file"), 200, "the file is read at start only");
    assert_eq!(status("changed"), 401);
}

#[test]
fn unusable_tokens_are_refused_at_start() {
    let dir = TempDir::new();
    let ingest = dir.path().join("ringcast.sock");
    let file = dir.path().join("admin.token");
    let file_arg = file.to_str().expect("a UTF-8 path");

    write_file(&file, "a-good-secret\n", 0o644);
    let e = refused_start(&ingest, &["--admin-token-file", file_arg]);
    assert!(
        e.contains(&format!(
            "the admin token file {file_arg} is readable by every user (mode 644)"
        )),
        "{e}"
    );
    assert!(e.contains("chmod"), "it says what to do: {e}");
    assert!(!ingest.exists(), "nothing was created");

    write_file(&file, "\n", 0o600);
    let e = refused_start(&ingest, &["--admin-token-file", file_arg]);
    assert!(
        e.contains(&format!(
            "the admin token file {file_arg}: its first line is empty"
        )),
        "{e}"
    );

    write_file(&file, "two words\n", 0o600);
    let e = refused_start(&ingest, &["--admin-token-file", file_arg]);
    assert!(e.contains("printable ASCII without spaces"), "{e}");

    let e = refused_start(&ingest, &["--admin-token", ""]);
    assert!(e.contains("--admin-token \"\": is empty"), "{e}");

    let missing = dir.path().join("missing.token");
    let e = refused_start(&ingest, &["--admin-token-file", missing.to_str().unwrap()]);
    assert!(e.contains("cannot read the admin token file"), "{e}");

    write_file(&file, "a-good-secret\n", 0o600);
    let e = refused_start(&ingest, &["--admin-token", TOKEN, "--admin-token-file", file_arg]);
    assert!(e.contains("cannot be used with"), "one of the two: {e}");
    assert!(!e.contains(TOKEN), "the secret is not echoed: {e}");
}

#[test]
fn a_non_loopback_admin_address_needs_a_token() {
    let dir = TempDir::new();
    let ingest = dir.path().join("ringcast.sock");
    for addr in ["0.0.0.0:0", "[::]:0"] {
        let e = refused_start(&ingest, &["--admin", addr]);
        assert!(
            e.contains(&format!("--admin {addr}: not a loopback address"))
                && e.contains("pass --admin-token or --admin-token-file"),
            "{e}"
        );
        assert!(!ingest.exists(), "refused before the socket was created");
    }
    // All of 127.0.0.0/8 is loopback, and so is ::1.
    for addr in ["127.0.0.2:0", "[::1]:0"] {
        let engine = Engine::start(&["--admin", addr]);
        let asked: SocketAddr = addr.parse().expect("an address");
        assert_eq!(engine.admin.ip(), asked.ip());
        let (stats, _) = ask(engine.admin, "GET", "/stats", "", b"");
        assert_eq!(stats.status, 200, "no token, no gate");
    }
}

/// An existing group other than this process's own, and its gid.
fn other_group() -> (String, u32) {
    // SAFETY: getgid cannot fail and touches no memory.
    let own = unsafe { libc::getgid() };
    for name in ["nogroup", "daemon", "nobody"] {
        let out = Command::new("getent")
            .args(["group", name])
            .output()
            .expect("getent runs");
        let line = String::from_utf8_lossy(&out.stdout);
        if let Some(gid) = line.split(':').nth(2).and_then(|g| g.trim().parse::<u32>().ok()) {
            if gid != own {
                return (name.to_owned(), gid);
            }
        }
    }
    panic!("none of nogroup, daemon, nobody is a group other than gid {own}");
}

#[test]
fn the_ingest_socket_gets_its_group() {
    let (group, gid) = other_group();
    let engine = Engine::start(&["--ingest-mode", "0660", "--ingest-group", &group]);
    let meta = std::fs::metadata(&engine.ingest).expect("stat the socket");
    assert_eq!(meta.gid(), gid, "the socket's group is {group}");
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    let mut publisher = Publisher::connect(&engine.ingest);
    assert!(publisher.publish("t", b"still works").contains('-'));
}

#[test]
fn an_unusable_ingest_group_is_refused_at_start() {
    let dir = TempDir::new();
    let ingest = dir.path().join("ringcast.sock");
    let e = refused_start(
        &ingest,
        &[
            "--ingest-mode",
            "0660",
            "--ingest-group",
            "ringcast-no-such-group",
        ],
    );
    assert!(
        e.contains("--ingest-group ringcast-no-such-group: no such group"),
        "{e}"
    );
    assert!(!ingest.exists(), "refused before the socket was created");
    let (group, _) = other_group();
    let e = refused_start(&ingest, &["--ingest-group", &group]);
    assert!(
        e.contains(&format!(
            "--ingest-group {group}: gives the group nothing with this --ingest-mode"
        )),
        "the default 0600 lets no group in: {e}"
    );
}
