//! The console (`--console`, off by default): `GET /_console`, a page for watching topics
//! live and publishing a test event, its script `GET /_console/console.js`, and
//! `GET /_console/ringcast.js`, the JavaScript client it runs on (clients/js, compiled in,
//! so the page and the engine always match).
//!
//! The page is served by the admin listener: it is private like the rest of the admin
//! routes, and its publish form posts to `/publish` on the same origin with the admin token
//! the operator types in. It subscribes to the client listener (the first `--listen`
//! address), which answers any origin unless `--cors-origin` is set.
//!
//! Must never: serve anything without `--console`, or publish other than through the
//! admin's own `POST /publish` (and so its token check).
use std::net::SocketAddr;

use super::conn::Reply;

/// The page, with placeholders filled in per request.
const PAGE: &str = include_str!("console.html");
/// The page's script.
const SCRIPT: &str = include_str!("console.js");
/// The client module, the same bytes as `clients/js/ringcast.js`.
const CLIENT: &str = include_str!("../../../clients/js/ringcast.js");

/// The console's answer to `path`, or `None` when it is not a console path.
///
/// `listen` is where the page's client subscribes; `publish` whether the admin has a token
/// (without one the console does not offer publishing: anyone who can load the page could
/// publish); `heartbeat_ms` is the engine's SSE heartbeat, which the client's liveness
/// check is tuned to.
pub fn route(path: &str, listen: SocketAddr, publish: bool, heartbeat_ms: u64) -> Option<Reply> {
    match path {
        "/_console" | "/_console/" => {
            let page = PAGE
                .replace("__RINGCAST_LISTEN__", &listen.to_string())
                .replace("__RINGCAST_PUBLISH__", if publish { "token" } else { "off" })
                .replace("__RINGCAST_HEARTBEAT_MS__", &heartbeat_ms.to_string());
            Some(page_reply("text/html; charset=utf-8", page))
        }
        "/_console/console.js" => Some(page_reply("text/javascript; charset=utf-8", SCRIPT.to_owned())),
        "/_console/ringcast.js" => Some(page_reply("text/javascript; charset=utf-8", CLIENT.to_owned())),
        _ => None,
    }
}

fn page_reply(content_type: &'static str, body: String) -> Reply {
    Reply {
        status: 200,
        content_type,
        body,
        headers: Vec::new(),
    }
    .with_header("Cache-Control", "no-store")
    // The page runs only its own script and the client module, and talks only to its own
    // origin and the client listener.
    .with_header(
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; connect-src *; img-src 'self'",
    )
    .with_header("X-Content-Type-Options", "nosniff")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_the_client_address_and_whether_it_may_publish() {
        let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let page = route("/_console", addr, false, 15_000).unwrap();
        assert_eq!(page.status, 200);
        assert!(
            page.body.contains("data-listen=\"127.0.0.1:8080\""),
            "{}",
            page.body
        );
        assert!(page.body.contains("data-publish=\"off\""));
        assert!(page.body.contains("data-heartbeat-ms=\"15000\""));
        assert!(!page.body.contains("__RINGCAST_"));
        let token = route("/_console", addr, true, 1).unwrap();
        assert!(token.body.contains("data-publish=\"token\""));
        let js = route("/_console/ringcast.js", addr, true, 1).unwrap();
        assert!(js.content_type.starts_with("text/javascript"));
        assert!(js.body.contains("export class RingcastClient"));
        assert!(route("/_console/other", addr, true, 1).is_none());
        assert!(route("/stats", addr, true, 1).is_none());
    }
}
