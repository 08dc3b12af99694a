//! The project's own JavaScript client (`clients/js/ringcast.js`) in real Node and real
//! Chromium against the real engine: every transport receives; a crash and restart of the
//! engine is reported as one reset and nothing is delivered twice; tokens that expire are
//! refreshed through the app's callback without losing an event; behind a proxy that cuts
//! connections at random points every event arrives exactly once, in order; 1,000 clients
//! reconnecting after a crash spread their reconnects out; behind a proxy that swallows
//! upgrades and streams the client falls back to polling; a browser behind nginx, whose
//! `/ws` passes no upgrade, falls back to SSE and still gets every event once. Also the
//! `--console` page in Chromium, and HTTP/2 through HAProxy running `tuning/haproxy.cfg`:
//! 20 EventSources and a WebSocket on one page, resuming after a reload.
//!
//! The clients run in `tests/js/client_node.mjs` and `tests/js/client_browser.mjs`; each
//! prints one `RESULT {...}` line that this file judges. In the restart scenarios the
//! script prints `READY`, this side kills the engine with SIGKILL and starts it again, and
//! answers `RESTARTED <epoch>` on the script's stdin.
//!
//! Needs `node` 20.10+ (for `--experimental-websocket`), `npm ci` in tests/js (Chromium
//! is driven by playwright-core), `/usr/bin/chromium`, `nginx`, `haproxy` and `openssl`:
//! `.ci/run` installs them.
//! Without them these tests fail, saying so.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use ringcast_tests::engine::{free_addr, Engine, TempDir};
use ringcast_tests::json::FlatObject;
use ringcast_tests::script::Script;

/// Bound on one script run (the scripts bound themselves at 90 s).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(100);
const INSTALL_HINT: &str = concat!(
    "run the install steps of .ci/run: `apt-get install -y chromium nginx` ",
    "and `npm ci` in tests/js (needs node 20.10+)"
);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `node tests/js/SCRIPT ARGS` (with the WebSocket Node 20 keeps behind a flag).
fn node(script: &str, args: &[&str]) -> Script {
    let mut command = Command::new("node");
    command
        .arg("--experimental-websocket")
        .arg("--no-warnings")
        .arg(root().join("tests/js").join(script))
        .args(args)
        .current_dir(root().join("tests/js"));
    let what = format!("node tests/js/{script} {}", args.join(" "));
    Script::spawn(what, command, SCRIPT_TIMEOUT, INSTALL_HINT)
}

/// `script`'s result, which must say `"ok":"yes"`.
fn ok(script: Script) -> FlatObject {
    let result = script.finish();
    assert_eq!(get(&result, "ok"), "yes", "{result:?}");
    result
}

fn get<'a>(result: &'a FlatObject, key: &str) -> &'a str {
    match result.get(key) {
        Some(Some(value)) => value,
        _ => panic!("RESULT has no string {key:?}: {result:?}"),
    }
}

fn number(result: &FlatObject, key: &str) -> u64 {
    get(result, key)
        .parse()
        .unwrap_or_else(|e| panic!("{key} in {result:?}: {e}"))
}

fn node_script(mode: &str, engine: &Engine) -> Script {
    node(
        "client_node.mjs",
        &[mode, &engine.addr.to_string(), &engine.ingest.to_string_lossy()],
    )
}

/// Runs `mode`, crashing and restarting the engine when the script is READY.
fn with_crash(mode: &str, engine: &mut Engine) -> FlatObject {
    let mut script = node_script(mode, engine);
    script.expect_line("READY");
    let old = engine.epoch.clone();
    let started = Instant::now();
    engine.crash_and_restart();
    eprintln!("engine killed and ready again in {:?}", started.elapsed());
    assert_ne!(engine.epoch, old, "a restart must change the epoch");
    script.send_line(&format!("RESTARTED {}", engine.epoch));
    let result = ok(script);
    assert_eq!(get(&result, "epoch"), engine.epoch);
    result
}

#[test]
fn node_client_receives_on_every_transport() {
    let engine = Engine::start(&["--heartbeat-ms", "1000"]);
    let result = ok(node_script("transports", &engine));
    for t in ["websocket", "sse", "ndjson", "poll"] {
        assert_eq!(get(&result, &format!("{t}.transport")), t);
        assert_eq!(number(&result, &format!("{t}.messages")), 7, "{result:?}");
    }
}

#[test]
fn node_client_reports_one_reset_after_an_engine_crash() {
    let mut engine = Engine::start(&["--retry-ms", "300"]);
    let result = with_crash("restart", &mut engine);
    for t in ["websocket", "sse", "poll"] {
        assert_eq!(get(&result, &format!("{t}.reset")), "unknown-epoch");
        assert_eq!(number(&result, &format!("{t}.messages")), 5, "{result:?}");
    }
}

#[test]
fn node_client_gets_every_event_once_through_a_dropping_proxy() {
    let engine = Engine::start(&["--retry-ms", "50"]);
    let result = ok(node_script("proxy", &engine));
    let cuts = number(&result, "cuts");
    assert!(
        cuts >= 20,
        "the proxy must have cut connections many times: {result:?}"
    );
    for t in ["websocket", "sse", "ndjson", "poll"] {
        assert_eq!(
            number(&result, &format!("{t}.messages")),
            301,
            "the primer and 300: {result:?}"
        );
        assert!(
            number(&result, &format!("{t}.opens")) >= 3,
            "{t} must have reconnected: {result:?}"
        );
    }
}

#[test]
fn thousand_node_clients_spread_their_reconnects_after_a_crash() {
    let mut engine = Engine::start(&[]);
    let result = with_crash("herd", &mut engine);
    let clients = number(&result, "clients");
    let worst = number(&result, "worst_100ms");
    eprintln!(
        "herd: {clients} clients, {} attempts, worst 100 ms window {worst} (from {} ms), \
         per 250 ms: [{}], last attempt at {} ms, back open p50 {} ms, max {} ms",
        get(&result, "attempts"),
        get(&result, "worst_100ms_from_ms"),
        get(&result, "histogram_250ms"),
        get(&result, "last_attempt_ms"),
        get(&result, "reopened_p50_ms"),
        get(&result, "reopened_max_ms"),
    );
    assert_eq!(clients, 1000);
    assert!(number(&result, "attempts") >= clients, "{result:?}");
    assert!(
        worst <= clients / 10,
        "{worst} reconnects within one 100 ms window, more than a tenth of {clients}: {result:?}"
    );
}

#[test]
fn node_client_notices_a_silent_connection_within_the_heartbeat_and_margin() {
    let engine = Engine::start(&["--heartbeat-ms", "1000"]);
    let result = ok(node_script("stall", &engine));
    let bound = number(&result, "bound_ms");
    for t in ["websocket", "sse", "ndjson", "poll"] {
        let noticed = number(&result, &format!("{t}.noticed_ms"));
        // 1.5 s of slack for timers on a loaded machine; without the liveness check a
        // frozen connection is never noticed (the test waits 10 s for it).
        assert!(
            noticed <= bound + 1500,
            "{t} took {noticed} ms to notice, over {bound} ms and the slack: {result:?}"
        );
    }
}

#[test]
fn node_client_falls_back_to_polling_when_upgrades_and_streams_are_swallowed() {
    let engine = Engine::start(&[]);
    let result = ok(node_script("blocked", &engine));
    assert_eq!(get(&result, "transport"), "poll", "{result:?}");
    assert_eq!(number(&result, "messages"), 20, "{result:?}");
    assert_eq!(number(&result, "tried_ws"), 1, "the WebSocket first: {result:?}");
    assert_eq!(number(&result, "tried_sse"), 1, "then SSE: {result:?}");
    assert_eq!(
        get(&result, "second.transport"),
        "poll",
        "what worked is remembered: {result:?}"
    );
    assert_eq!(number(&result, "second.tried_ws"), 0, "{result:?}");
    assert_eq!(number(&result, "second.tried_sse"), 0, "{result:?}");
}

/// The HS256 key `tests/js/client_node.mjs` signs its tokens with, base64url.
const JWKS: &str = r#"{"keys":[{"kty":"oct","kid":"hs","alg":"HS256","k":"cmluZ2Nhc3QtanMtY2xpZW50LXRlc3Qtc2VjcmV0LTAxMjM0NTY3ODk"}]}"#;

#[test]
fn node_client_refreshes_expiring_tokens_and_loses_nothing() {
    let dir = TempDir::new();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, JWKS).expect("write jwks.json");
    let jwks = jwks.to_string_lossy().into_owned();
    let engine = Engine::start(&["--auth-jwks", &jwks, "--auth-leeway-secs", "0"]);
    let result = ok(node_script("expiry", &engine));
    for t in ["websocket", "sse", "poll"] {
        assert_eq!(number(&result, &format!("{t}.messages")), 25, "{result:?}");
        assert!(
            number(&result, &format!("{t}.refreshes")) >= 1,
            "{t} never asked for a token: {result:?}"
        );
        assert!(
            number(&result, &format!("{t}.expired")) >= 1,
            "{t} reported no expiry: {result:?}"
        );
    }
}

// ----- Chromium behind nginx -----------------------------------------------------------

/// nginx in front of the engine: `/ws` is passed on as plain HTTP/1.0 (nginx's default,
/// which drops `Upgrade` and `Connection`), so no WebSocket can open through it; every
/// other path is proxied unbuffered; `/client/` serves clients/js and the test page.
struct Nginx {
    child: Child,
    addr: std::net::SocketAddr,
    _dir: TempDir,
}

impl Nginx {
    fn start(engine: &Engine) -> Nginx {
        let nginx = Command::new("nginx").arg("-v").output();
        assert!(nginx.is_ok(), "no nginx on PATH; {INSTALL_HINT}");
        let dir = TempDir::new();
        for sub in ["logs", "tmp"] {
            std::fs::create_dir(dir.path().join(sub)).expect("nginx dirs");
        }
        let addr = free_addr();
        let conf = format!(
            r#"worker_processes 1;
daemon off;
master_process off;
pid {dir}/nginx.pid;
error_log {dir}/logs/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log {dir}/logs/access.log;
  client_body_temp_path {dir}/tmp/body; proxy_temp_path {dir}/tmp/proxy;
  fastcgi_temp_path {dir}/tmp/fcgi; uwsgi_temp_path {dir}/tmp/uwsgi; scgi_temp_path {dir}/tmp/scgi;
  types {{ text/html html; text/javascript js; }}
  server {{
    listen {addr};
    location /client/ {{ alias {client}/; }}
    location /page/ {{ alias {page}/; }}
    # A proxy that does not pass upgrades: HTTP/1.0 upstream, hop-by-hop headers dropped.
    location /ws {{ proxy_pass http://{engine}; }}
    location / {{
      proxy_pass http://{engine};
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_read_timeout 1h;
    }}
  }}
}}
"#,
            dir = dir.path().display(),
            client = root().join("clients/js").display(),
            page = root().join("tests/js/pages").display(),
            engine = engine.addr,
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("write nginx.conf");
        let child = Command::new("nginx")
            .arg("-e")
            .arg(dir.path().join("logs/error.log"))
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start nginx: {e}; {INSTALL_HINT}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not listen on {addr} within 10 s"
            );
            thread::sleep(Duration::from_millis(20));
        }
        Nginx {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // Not reaped before this, so the pid names no other process.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn require_chromium() {
    assert!(
        Path::new("/usr/bin/chromium").is_file(),
        "no /usr/bin/chromium; {INSTALL_HINT}"
    );
    let manifest = root().join("tests/js/node_modules/playwright-core/package.json");
    assert!(
        manifest.is_file(),
        "playwright-core is not installed; {INSTALL_HINT}"
    );
}

#[test]
fn chromium_client_falls_back_to_sse_behind_nginx_without_upgrades() {
    require_chromium();
    let engine = Engine::start(&[]);
    let nginx = Nginx::start(&engine);
    let result = ok(node(
        "client_browser.mjs",
        &[
            "fallback",
            &nginx.addr.to_string(),
            &engine.ingest.to_string_lossy(),
        ],
    ));
    assert_eq!(get(&result, "transport"), "sse", "{result:?}");
    assert_eq!(number(&result, "messages"), 50, "{result:?}");
    assert!(
        number(&result, "ws_attempts") >= 1,
        "the client must have tried the WebSocket first: {result:?}"
    );
    assert_eq!(
        get(&result, "second.transport"),
        "sse",
        "a second client must start with what worked: {result:?}"
    );
    assert_eq!(number(&result, "second.ws_attempts"), 0, "{result:?}");
}

// ----- the console ---------------------------------------------------------------------

#[test]
fn chromium_console_shows_events_publishes_with_the_token_and_shows_a_reset() {
    require_chromium();
    let mut engine = Engine::start(&["--console", "--admin-token", "console-test-token"]);
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console.png");
    let _ = std::fs::remove_file(&shot);
    let mut script = node(
        "client_browser.mjs",
        &[
            "console",
            &engine.admin.to_string(),
            &engine.ingest.to_string_lossy(),
            "console-test-token",
            &shot.to_string_lossy(),
        ],
    );
    script.expect_line("READY");
    engine.crash_and_restart();
    script.send_line(&format!("RESTARTED {}", engine.epoch));
    let result = ok(script);
    assert_eq!(get(&result, "epoch"), engine.epoch);
    assert_eq!(
        number(&result, "messages"),
        5,
        "3 published, 1 from the form, 1 after: {result:?}"
    );
    assert_eq!(number(&result, "resets"), 1, "{result:?}");
    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("no screenshot at {shot:?}: {e}"));
    assert!(png.starts_with(b"\x89PNG"), "{shot:?} is not a PNG");
    eprintln!("console screenshot: {shot:?}");
}

#[test]
fn the_console_is_served_only_with_the_flag() {
    use ringcast_tests::http::exchange;
    let request = b"GET /_console HTTP/1.1\r\nHost: admin\r\n\r\n";
    let off = Engine::start(&[]);
    assert_eq!(
        exchange(off.admin, request).0.status,
        404,
        "no console without --console"
    );
    let on = Engine::start(&["--console"]);
    let (head, body, _) = exchange(on.admin, request);
    assert_eq!(head.status, 200);
    let page = String::from_utf8_lossy(&body);
    assert!(page.contains(&format!("data-listen=\"{}\"", on.addr)), "{page}");
    assert!(
        page.contains("data-publish=\"off\""),
        "no admin token, no publishing: {page}"
    );
}

// ----- HTTP/2 through HAProxy ----------------------------------------------------------

/// HAProxy (master-worker) running `tuning/haproxy.cfg` itself, with only its addresses,
/// its certificate path and its `maxconn` (to fit this machine's 20,000 descriptors)
/// replaced, plus a second file bounding how long an old worker keeps its streams after a
/// reload (`hard-stop-after`).
struct Haproxy {
    child: Child,
    addr: std::net::SocketAddr,
    _dir: TempDir,
}

/// Replaces `from` by `to` in `text`, failing when `from` is not there: the test must
/// notice when the tuning file it relies on changes.
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "tuning/haproxy.cfg must hold {from:?} once"
    );
    text.replacen(from, to, 1)
}

impl Haproxy {
    fn start(engine: &Engine) -> Haproxy {
        assert!(
            Command::new("haproxy").arg("-v").output().is_ok(),
            "no haproxy on PATH: apt-get install haproxy (see .ci/run)"
        );
        let dir = TempDir::new();
        let pem = dir.path().join("push.pem");
        let key = dir.path().join("key.pem");
        let cert = dir.path().join("cert.pem");
        let openssl = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=localhost",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("run openssl");
        assert!(
            openssl.status.success(),
            "openssl: {}",
            String::from_utf8_lossy(&openssl.stderr)
        );
        let mut both = std::fs::read(&cert).expect("cert");
        both.extend(std::fs::read(&key).expect("key"));
        std::fs::write(&pem, both).expect("write push.pem");

        let addr = free_addr();
        let tuning = std::fs::read_to_string(root().join("tuning/haproxy.cfg")).expect("tuning/haproxy.cfg");
        let cfg = replace_once(&tuning, "maxconn 2000000", "maxconn 4000");
        let cfg = replace_once(&cfg, "bind :443 ", &format!("bind {addr} "));
        let cfg = replace_once(&cfg, "/etc/haproxy/push.pem", &pem.to_string_lossy());
        let cfg = replace_once(
            &cfg,
            "127.0.0.1:8080 check port 9090",
            &format!("{} check port {}", engine.addr, engine.admin.port()),
        );
        std::fs::write(dir.path().join("haproxy.cfg"), cfg).expect("write haproxy.cfg");
        std::fs::write(dir.path().join("test.cfg"), "global\n    hard-stop-after 1s\n")
            .expect("write test.cfg");
        let child = Command::new("haproxy")
            .arg("-W")
            .arg("-f")
            .arg(dir.path().join("haproxy.cfg"))
            .arg("-f")
            .arg(dir.path().join("test.cfg"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "haproxy did not listen on {addr} within 10 s"
            );
            thread::sleep(Duration::from_millis(20));
        }
        Haproxy {
            child,
            addr,
            _dir: dir,
        }
    }

    /// A reload: the master starts a new worker on the same listeners; the old one stops
    /// taking connections and, after `hard-stop-after`, cuts the streams it holds.
    fn reload(&self) {
        // SAFETY: kill(2) on the pid of our own child, which is not reaped yet.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGUSR2) };
        assert_eq!(rc, 0, "SIGUSR2 to haproxy: {}", std::io::Error::last_os_error());
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        // The master takes its workers down with it on SIGTERM.
        // SAFETY: kill(2) on the pid of our own child, which is not reaped yet.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn chromium_over_http2_through_haproxy_holds_20_eventsources_and_a_websocket_across_a_reload() {
    require_chromium();
    let engine = Engine::start(&["--retry-ms", "500"]);
    let haproxy = Haproxy::start(&engine);
    let mut script = node(
        "client_browser.mjs",
        &["h2", &haproxy.addr.to_string(), &engine.ingest.to_string_lossy()],
    );
    script.expect_line("READY");
    haproxy.reload();
    thread::sleep(Duration::from_millis(300));
    script.send_line("RELOADED");
    let result = ok(script);
    assert_eq!(
        get(&result, "protocol"),
        "h2",
        "the browser must speak HTTP/2: {result:?}"
    );
    assert!(
        number(&result, "es_min_opens") >= 2,
        "every EventSource must have been cut by the reload and resumed: {result:?}"
    );
    assert!(
        number(&result, "ws_opens") >= 2,
        "the WebSocket must have resumed: {result:?}"
    );
    assert_eq!(number(&result, "ws_resets"), 0, "{result:?}");
    eprintln!(
        "http/2 through haproxy: 20 EventSources and a WebSocket, all events once after the reload, \
         {} ms from the reload until every stream held every event",
        get(&result, "resumed_ms")
    );
}
