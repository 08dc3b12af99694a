//! The request strictness corpus: malformed and ambiguous request heads, each with the
//! answer the engine must give and where the case comes from (a section of RFC 9112 or
//! RFC 9110, or a peer's own test: HAProxy's `reg-tests/http-messaging`, nginx's
//! `nginx-tests` and `ngx_http_request.c`, httparse's and h11's tests, and the
//! Transfer-Encoding mutations of defparam/smuggler).
//!
//! Every row is checked twice:
//! - through the parser (`ringcast::proto::http::parse_request`): its status, and the
//!   same answer however the bytes arrive;
//! - against the real binary: the status, `Connection: close`, the connection closed with
//!   nothing after the answer (a request smuggled behind it is never answered), and an
//!   SSE subscriber on another connection that still receives what is published.
//!
//! Rows that must still be served (absolute-form, HTTP/1.0 without `Host`, an identical
//! `Content-Length` list, names with underscores) are checked the same way, and the admin
//! listener, which parses with the same function, refuses a chunked `POST /publish`
//! without publishing anything.
use std::time::{Duration, Instant};

use ringcast::proto::http::{self, Parsed};
use ringcast_tests::engine::Engine;
use ringcast_tests::http::{shorten, End, HttpConn, Response};
use ringcast_tests::ingest::Publisher;
use ringcast_tests::sse::SseClient;
use ringcast_tests::WAIT;

/// One request and the status it must get.
struct Row {
    /// The RFC section or the peer test the case comes from.
    source: &'static str,
    status: u16,
    request: &'static [u8],
}

const fn row(status: u16, source: &'static str, request: &'static [u8]) -> Row {
    Row {
        source,
        status,
        request,
    }
}

/// Refused requests. Each targets `/sse?topic=watch` (or is a POST to it), so a request
/// wrongly accepted gets a stream (200) or a 405, never the status listed.
const REFUSED: &[Row] = &[
    // ----- Request line (RFC 9112 §3, §2.3) -----
    row(400, "RFC 9112 §3: two SP after the method", b"GET  /sse?topic=watch HTTP/1.1\r\nHost: h\r\n\r\n"),
    row(400, "RFC 9112 §3: HTAB as a separator", b"GET\t/sse?topic=watch HTTP/1.1\r\nHost: h\r\n\r\n"),
    row(400, "RFC 9112 §3: SP after the version", b"GET /sse?topic=watch HTTP/1.1 \r\nHost: h\r\n\r\n"),
    row(400, "httparse test_request_with_leading_space", b" GET /sse?topic=watch HTTP/1.1\r\nHost: h\r\n\r\n"),
    row(400, "httparse test_request_with_invalid_method", b"P()ST /sse?topic=watch HTTP/1.1\r\nHost: h\r\n\r\n"),
    row(400, "httparse test_request_with_invalid_token_delimiter", b"GET\n/ HTTP/1.1\r\nHost: foo.bar\r\n\r\n"),
    row(400, "httparse test_request_with_empty_path", b"GET  HTTP/1.1\r\nHost: h\r\n\r\n"),
    row(400, "h11 test_reject_garbage_after_response_line (request line)", b"HEAD /sse?topic=watch HTTP/1.1 xxxxxx\r\nHost: a\r\n\r\n"),
    row(400, "RFC 9112 §3: no HTTP-version (HTTP/0.9)", b"GET /sse?topic=watch\r\n\r\n"),
    row(400, "RFC 9112 §2.3: HTTP-name is case-sensitive", b"GET /sse?topic=watch http/1.1\r\nHost: h\r\n\r\n"),
    row(400, "RFC 9112 §2.3: two-digit minor version", b"GET /sse?topic=watch HTTP/1.10\r\nHost: h\r\n\r\n"),
    row(400, "httparse test_request_with_invalid_but_short_version", b"GET /sse?topic=watch HTTP/1!\r\nHost: h\r\n\r\n"),
    row(505, "RFC 9113 §3.4: the HTTP/2 connection preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
    row(505, "RFC 9110 §15.6.6: HTTP/2.0 in an HTTP/1 request line", b"GET /sse?topic=watch HTTP/2.0\r\nHost: h\r\n\r\n"),
    row(400, "h11 test_early_detection_of_invalid_request (TLS ClientHello, no line end)", b"\x16\x03\x01\x00\xa5"),
    row(400, "h11 test_early_detection_of_invalid_request (NUL)", b"\x00"),
    row(400, "h11 test_early_detection_of_invalid_request (SP)", b" "),
    // ----- Request target (RFC 9112 §3.2, RFC 3986) -----
    row(400, "h11 test_reject_non_vchar_in_path (0x7f)", b"GET /sse\x7f?topic=watch HTTP/1.1\r\nHost: h\r\n\r\n"),
    row(400, "h11 test_reject_non_vchar_in_path (0xee); HAProxy refuses non-ASCII", b"GET /sse\xee?topic=watch HTTP/1.1\r\nHost: h\r\n\r\n"),
    row(400, "RFC 3986 §2: raw UTF-8 in the target", b"GET /sse?topic=caf\xc3\xa9 HTTP/1.1\r\nHost: h\r\n\r\n"),
    row(400, "h11 test_reject_non_vchar_in_path (0x00)", b"GET /sse\x00?topic=watch HTTP/1.1\r\nHost: h\r\n\r\n"),
    row(400, "nginx-tests http_uri.t 'space'", b"GET /sse /?topic=watch HTTP/1.1\r\nHost: h\r\n\r\n"),
    row(400, "nginx-tests http_uri.t 'control'", b"GET /sse\x02?topic=watch HTTP/1.1\r\nHost: h\r\n\r\n"),
    row(400, "nginx-tests http_uri.t 'percent'", b"GET /sse%?topic=watch HTTP/1.1\r\nHost: h\r\n\r\n"),
    row(400, "nginx-tests http_uri.t 'percent digit'", b"GET /sse%1?topic=watch HTTP/1.1\r\nHost: h\r\n\r\n"),
    row(400, "HAProxy h1_authority_fragment_char.vtc; RFC 9112 §3.2 (no fragment)", b"GET /sse?topic=watch#frag HTTP/1.1\r\nHost: h\r\n\r\n"),
    row(400, "HAProxy h1_authority_fragment_char.vtc (authority#frag)", b"GET http://hostname#frag HTTP/1.1\r\nhost: hostname\r\n\r\n"),
    row(400, "HAProxy h1_request_target_validation.vtc 'GET *'", b"GET * HTTP/1.1\r\nHost: h\r\n\r\n"),
    row(400, "HAProxy h1_request_target_validation.vtc 'OPTIONS */test'", b"OPTIONS */test HTTP/1.1\r\nHost: h\r\n\r\n"),
    row(400, "HAProxy h1_request_target_validation.vtc 'CONNECT haproxy.org'; nginx-tests http_method.t 'connect no port'", b"CONNECT haproxy.org HTTP/1.1\r\nHost: haproxy.org\r\n\r\n"),
    row(400, "HAProxy h1_request_target_validation.vtc 'CONNECT /'; nginx-tests http_method.t 'connect uri'", b"CONNECT / HTTP/1.1\r\nHost: h\r\n\r\n"),
    row(400, "HAProxy h1_request_target_validation.vtc 'CONNECT http://haproxy.org:80'", b"CONNECT http://haproxy.org:80 HTTP/1.1\r\nHost: haproxy.org\r\n\r\n"),
    row(400, "HAProxy h1_request_target_validation.vtc 'GET haproxy.org:80'", b"GET haproxy.org:80 HTTP/1.1\r\nHost: haproxy.org\r\n\r\n"),
    row(400, "HAProxy h1_request_target_validation.vtc 'GET admin'", b"GET admin HTTP/1.1\r\nHost: h\r\n\r\n"),
    row(400, "HAProxy h1_request_target_validation.vtc 'GET admin/a/b'", b"GET admin/a/b HTTP/1.1\r\nHost: h\r\n\r\n"),
    row(400, "RFC 9110 §4.2.4: userinfo in an http URI", b"GET http://user:pw@h/sse?topic=watch HTTP/1.1\r\nHost: h\r\n\r\n"),
    row(400, "RFC 9110 §4.2.1: empty host; nginx-tests http_host.t 'domain empty (absolute request)'", b"GET http:///sse?topic=watch HTTP/1.1\r\nHost: h\r\n\r\n"),
    row(400, "RFC 9112 §3.2.2: absolute-form of a scheme other than http(s)", b"GET ftp://h/sse?topic=watch HTTP/1.1\r\nHost: h\r\n\r\n"),
    // ----- Host (RFC 9112 §3.2) -----
    row(400, "RFC 9112 §3.2: HTTP/1.1 without Host; nginx ngx_http_process_request_header", b"GET /sse?topic=watch HTTP/1.1\r\n\r\n"),
    row(400, "RFC 9112 §3.2: two Host lines; nginx-tests http_host.t 'host repeat'", b"GET /sse?topic=watch HTTP/1.0\r\nHost: localhost\r\nHost: again\r\n\r\n"),
    row(400, "RFC 9112 §3.2: two identical Host lines; h11 test_events.py", b"GET /sse?topic=watch HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"),
    row(400, "HAProxy h1_host_normalization.vtc (host: hostname1, host: hostname2)", b"GET http://hostname1/sse?topic=watch HTTP/1.1\r\nhost: hostname1\r\nhost: hostname2\r\n\r\n"),
    row(400, "HAProxy h1_host_normalization.vtc (host: hostname1:80, host: hostname1)", b"GET http://hostname1/sse?topic=watch HTTP/1.1\r\nhost: hostname1:80\r\nhost: hostname1\r\n\r\n"),
    row(400, "nginx-tests http_host.t 'domain empty (host header)'", b"GET /sse?topic=watch HTTP/1.0\r\nHost: \r\n\r\n"),
    row(400, "nginx-tests http_host.t 'control'", b"GET /sse?topic=watch HTTP/1.0\r\nHost: localhost\x02\r\n\r\n"),
    row(400, "nginx-tests http_host.t 'domain w/ path separators (host header)'", b"GET /sse?topic=watch HTTP/1.0\r\nHost: example.com/\\:552\r\n\r\n"),
    row(400, "nginx-tests http_host.t 'domain w/ double dot (host header)'", b"GET /sse?topic=watch HTTP/1.0\r\nHost: ..examp-LE.com\r\n\r\n"),
    row(400, "nginx-tests http_host.t 'empty domain w/ ending dot (host header)'", b"GET /sse?topic=watch HTTP/1.0\r\nHost: .\r\n\r\n"),
    row(400, "nginx-tests http_host.t 'domain w/ ending dot w/port dot (host header)'", b"GET /sse?topic=watch HTTP/1.0\r\nHost: example.com.:1.2\r\n\r\n"),
    row(400, "nginx-tests http_host.t 'ipv4 w/port long (host header)'", b"GET /sse?topic=watch HTTP/1.0\r\nHost: 123.49.0.78:98777\r\n\r\n"),
    row(400, "nginx-tests http_host.t 'ipv4 w/port double (host header)'", b"GET /sse?topic=watch HTTP/1.0\r\nHost: 123.40.56.78:9000:80\r\n\r\n"),
    row(400, "nginx-tests http_host.t 'ipv6 literal w/ path separators (host header)'", b"GET /sse?topic=watch HTTP/1.0\r\nHost: [abcd::e\\f98:0/:7654:321]\r\n\r\n"),
    row(400, "nginx-tests http_host.t 'ipv6 literal w/ ending dot w/port (host header)'", b"GET /sse?topic=watch HTTP/1.0\r\nHost: [abcd::ef98:0:7654:321].:98\r\n\r\n"),
    row(400, "nginx-tests http_host.t 'ipv6 literal w/ double dot (absolute request)'", b"GET http://[ab..cd::ef98:0:7654:321]/ HTTP/1.0\r\n\r\n"),
    row(400, "nginx-tests http_host.t 'ipv6 literal w/ leading alnum (host header)'", b"GET /sse?topic=watch HTTP/1.0\r\nHost: extra[abcd::ef98:0:7654:321]:98\r\n\r\n"),
    row(400, "nginx-tests http_host.t 'ipv6 literal missing bracket (host header)'", b"GET /sse?topic=watch HTTP/1.0\r\nHost: [abcd::ef98:0:7654:321\r\n\r\n"),
    row(400, "RFC 9110 §7.2: SP inside Host", b"GET /sse?topic=watch HTTP/1.1\r\nHost: a b\r\n\r\n"),
    row(400, "HAProxy h1_host_normalization.vtc (http://hostname1/, host: hostname2)", b"GET http://hostname1/sse?topic=watch HTTP/1.1\r\nhost: hostname2\r\n\r\n"),
    row(400, "HAProxy h1_host_normalization.vtc (http://hostname:80/, host: hostname:81)", b"GET http://hostname:80/sse?topic=watch HTTP/1.1\r\nhost: hostname:81\r\n\r\n"),
    row(400, "HAProxy h1_host_normalization.vtc (http://hostname:8080/, host: hostname)", b"GET http://hostname:8080/sse?topic=watch HTTP/1.1\r\nhost: hostname\r\n\r\n"),
    row(400, "HAProxy h1_host_normalization.vtc (http://hostname/, host: hostname:81)", b"GET http://hostname/sse?topic=watch HTTP/1.1\r\nhost: hostname:81\r\n\r\n"),
    // ----- Lines and fields (RFC 9112 §2.2, §5) -----
    row(400, "RFC 9112 §2.2: bare CR ends the request line", b"GET /sse?topic=watch HTTP/1.1\rHost: h\r\n\r\n"),
    row(400, "RFC 9112 §2.2: bare CR inside a field line", b"GET /sse?topic=watch HTTP/1.1\r\nHost: h\rX: y\r\n\r\n"),
    row(400, "RFC 9112 §2.2: whitespace before the first field; h11 test_readers_unusual", b"GET /sse?topic=watch HTTP/1.1\r\n  folded: line\r\nHost: h\r\n\r\n"),
    row(400, "RFC 9112 §5.2: obs-fold (SP) in a request", b"GET /sse?topic=watch HTTP/1.1\r\nHost: h\r\nX-A: a\r\n b\r\n\r\n"),
    row(400, "RFC 9112 §5.2: obs-fold (HTAB) in a request", b"GET /sse?topic=watch HTTP/1.1\r\nHost: h\r\nX-A: a\r\n\tb\r\n\r\n"),
    row(400, "RFC 9112 §5.1: SP before the colon; h11 test_readers_unusual 'foo  : line'", b"GET /sse?topic=watch HTTP/1.1\r\nHost: h\r\nfoo  : line\r\n\r\n"),
    row(400, "RFC 9112 §5.1: HTAB before the colon; h11 test_readers_unusual 'foo\\t: line'", b"GET /sse?topic=watch HTTP/1.1\r\nHost: h\r\nfoo\t: line\r\n\r\n"),
    row(400, "RFC 9112 §5.1: SP before the colon of Host", b"GET /sse?topic=watch HTTP/1.1\r\nHost : h\r\n\r\n"),
    row(400, "httparse test_request_with_empty_header_name", b"GET /sse?topic=watch HTTP/1.1\r\nHost: h\r\n: hello\r\n\r\n"),
    row(400, "RFC 9112 §5: a field line without a colon", b"GET /sse?topic=watch HTTP/1.1\r\nHost: h\r\nno colon here\r\n\r\n"),
    row(400, "httparse test_request_header_with_nul_in_header_name", b"GET /sse?topic=watch HTTP/1.1\r\nHost: h\r\nAccess-Control-Allow-Cred\0entials: hello\r\n\r\n"),
    row(400, "httparse test_request_header_with_missing_colon_with_folding", b"GET /sse?topic=watch HTTP/1.1\r\nHost: h\r\nAccess-Control-Allow-Credentials   \r\n hello\r\n\r\n"),
    row(400, "RFC 9110 §5.1: SP inside a field name", b"GET /sse?topic=watch HTTP/1.1\r\nHost: h\r\nBad Name: x\r\n\r\n"),
    row(400, "h11 test_reject_garbage_in_header_line (NUL in a value)", b"GET /sse?topic=watch HTTP/1.1\r\nHost: foo\x00bar\r\n\r\n"),
    row(400, "RFC 9110 §5.5: DEL in a field value", b"GET /sse?topic=watch HTTP/1.1\r\nHost: h\r\nX: a\x7fb\r\n\r\n"),
    // ----- Body framing (RFC 9112 §6, §7) and smuggling shapes -----
    row(400, "RFC 9112 §6.3 ¶3: CL.TE; nginx 'Content-Length and Transfer-Encoding'", b"POST /sse?topic=watch HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nX"),
    row(400, "RFC 9112 §6.3 ¶3: TE.CL", b"POST /sse?topic=watch HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n"),
    row(400, "RFC 9112 §6.1: TE in HTTP/1.0; nginx", b"POST /sse?topic=watch HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    row(400, "RFC 9112 §6.3 ¶4; HAProxy http_transfer_encoding.vtc 'chunked, gzip'", b"POST /sse?topic=watch HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"),
    row(400, "RFC 9112 §6.1; HAProxy http_transfer_encoding.vtc 'chunked, chunked'", b"POST /sse?topic=watch HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n"),
    row(400, "HAProxy http_transfer_encoding.vtc 'chunked, gzip, chunked'", b"POST /sse?topic=watch HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip, chunked\r\n\r\n0\r\n\r\n"),
    row(400, "RFC 9112 §6.3 ¶4; HAProxy http_transfer_encoding.vtc 'gzip'", b"POST /sse?topic=watch HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n"),
    row(400, "RFC 9112 §6.1: chunked twice over two lines", b"POST /sse?topic=watch HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    row(400, "smuggling obfuscation 'Transfer-Encoding: xchunked'", b"POST /sse?topic=watch HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"),
    row(400, "smuggling obfuscation 'Transfer-Encoding: identity'", b"POST /sse?topic=watch HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: identity\r\n\r\n"),
    row(400, "HAProxy h1_parse_xfer_enc_header: empty member 'chunked,'", b"POST /sse?topic=watch HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked,\r\n\r\n0\r\n\r\n"),
    row(400, "smuggler midspace-0b (VT before chunked)", b"POST /sse?topic=watch HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n"),
    row(400, "smuggler space1 'Transfer-Encoding : chunked'", b"POST /sse?topic=watch HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n"),
    row(501, "RFC 9112 §6.1 (a coding not understood); nginx 'unknown Transfer-Encoding'", b"POST /sse?topic=watch HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
    row(411, "RFC 9112 §7: a chunked body, which no endpoint takes (RFC 9110 §15.5.12)", b"POST /sse?topic=watch HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
    row(411, "smuggler tabprefix1 'Transfer-Encoding:\\tchunked'", b"POST /sse?topic=watch HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\tchunked\r\n\r\n0\r\n\r\n"),
    row(411, "RFC 9112 §7: codings are case-insensitive ('CHUNKED')", b"GET /sse?topic=watch HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: CHUNKED\r\n\r\n0\r\n\r\n"),
    row(400, "RFC 9112 §6.3 step 5; nginx and HAProxy: 'Content-Length: 5, 6'", b"POST /sse?topic=watch HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 6\r\n\r\nhello!"),
    row(400, "RFC 9112 §6.3 step 5: two differing Content-Length lines", b"POST /sse?topic=watch HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"),
    row(400, "RFC 9110 §8.6: 'Content-Length: +5'", b"POST /sse?topic=watch HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\nhello"),
    row(400, "RFC 9110 §8.6: 'Content-Length: -1'", b"POST /sse?topic=watch HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n"),
    row(400, "RFC 9110 §8.6: empty Content-Length", b"POST /sse?topic=watch HTTP/1.1\r\nHost: h\r\nContent-Length:\r\n\r\n"),
    row(400, "RFC 9110 §8.6: 'Content-Length: 0x5'", b"POST /sse?topic=watch HTTP/1.1\r\nHost: h\r\nContent-Length: 0x5\r\n\r\nhello"),
    row(400, "RFC 9110 §8.6: 'Content-Length: 1 2'", b"POST /sse?topic=watch HTTP/1.1\r\nHost: h\r\nContent-Length: 1 2\r\n\r\n"),
    row(400, "HAProxy http_parse_cont_len_header: empty member 'Content-Length: 5,'", b"POST /sse?topic=watch HTTP/1.1\r\nHost: h\r\nContent-Length: 5,\r\n\r\nhello"),
    row(400, "HAProxy http_parse_cont_len_header: overflow", b"POST /sse?topic=watch HTTP/1.1\r\nHost: h\r\nContent-Length: 18446744073709551616\r\n\r\n"),
    row(400, "RFC 9110 §5.5: VT before a Content-Length value", b"POST /sse?topic=watch HTTP/1.1\r\nHost: h\r\nContent-Length:\x0b5\r\n\r\nhello"),
];

/// Requests that stay valid and are served, with their status.
const SERVED: &[Row] = &[
    row(200, "RFC 9112 §3.2.2: absolute-form with a matching Host", b"GET http://h/sse?topic=watch HTTP/1.1\r\nHost: h\r\n\r\n"),
    row(200, "HAProxy h1_host_normalization.vtc: the default port on one side only", b"GET http://hostname:80/sse?topic=watch HTTP/1.1\r\nhost: hostname\r\n\r\n"),
    row(200, "nginx-tests http_host.t 'IPvFuture all symbols (host header)'", b"GET /sse?topic=watch HTTP/1.1\r\nHost: [v0123456789aBcDeF.!$&'()*+,;=-._~AbCdEfGhIjKlMnOpQrStUvWxYz0123456789:]\r\n\r\n"),
    row(200, "nginx-tests http_host.t 'domain stray colon (host header)'", b"GET /sse?topic=watch HTTP/1.1\r\nHost: abcd-ef.g02.xyz:\r\n\r\n"),
    row(200, "nginx-tests http_host.t 'domain w/ ending dot w/port (host header)'", b"GET /sse?topic=watch HTTP/1.1\r\nHost: abcd-ef.g02.xyz.:88\r\n\r\n"),
    row(200, "RFC 9112 §2.2: LF alone ends a line", b"GET /sse?topic=watch HTTP/1.1\nHost: h\n\n"),
    row(200, "RFC 9112 §2.2: empty lines before the request line", b"\r\n\r\nGET /sse?topic=watch HTTP/1.1\r\nHost: h\r\n\r\n"),
    row(200, "nginx (underscores_in_headers off): names with '_' are ignored, not framing", b"GET /sse?topic=watch HTTP/1.1\r\nHost: h\r\nTransfer_Encoding: chunked\r\nContent_Length: 5\r\n\r\n"),
    row(200, "smuggler xprespace-09: the TE line is inside another field's value", b"GET /sse?topic=watch HTTP/1.1\r\nHost: h\r\nX: X\tTransfer-Encoding: chunked\r\n\r\n"),
    row(404, "RFC 9112 §3.2: HTTP/1.0 needs no Host", b"GET /nope HTTP/1.0\r\n\r\n"),
    row(404, "RFC 9112 §6.3 step 5; HAProxy: a list of one repeated Content-Length", b"POST /nope HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\nhello"),
];

/// The defparam/smuggler `configs/default.py` mutations of `Transfer-Encoding: chunked`
/// (each byte of its list at each of its ten positions), in its template: the gadget line
/// right after the request line, then `Host`, then `Content-Length`. All are refused with
/// 400, as RFC 9112 §6.3 ¶3 (TE with CL), §2.2, §5 and §3.2 (a line end that ends the
/// head before `Host`) require, except where the mutation puts the `Transfer-Encoding`
/// text inside another field's value (SP, HTAB or obs-text after `X: X`): then there is
/// no Transfer-Encoding, the request has a 5-byte body and gets its 405, and the
/// connection closes without reading the body as a request.
fn smuggler_rows() -> Vec<(String, Vec<u8>, u16)> {
    let bytes = [
        0x01, 0x04, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x1f, 0x20, 0x7f, 0xa0, 0xff,
    ];
    let mut rows = Vec::new();
    for c in bytes {
        let c = [c];
        let te = b"Transfer-Encoding".as_slice();
        let gadgets: [(&str, Vec<u8>); 10] = [
            ("midspace", [&b"Transfer-Encoding:"[..], &c, b"chunked"].concat()),
            ("postspace", [te, &c, b": chunked"].concat()),
            ("prespace", [&c[..], te, b": chunked"].concat()),
            ("endspace", [&b"Transfer-Encoding: chunked"[..], &c].concat()),
            ("xprespace", [&b"X: X"[..], &c, te, b": chunked"].concat()),
            (
                "endspacex",
                [&b"Transfer-Encoding: chunked"[..], &c, b"X: X"].concat(),
            ),
            ("rxprespace", [&b"X: X\r"[..], &c, te, b": chunked"].concat()),
            ("xnprespace", [&b"X: X"[..], &c, b"\n", te, b": chunked"].concat()),
            (
                "endspacerx",
                [&b"Transfer-Encoding: chunked\r"[..], &c, b"X: X"].concat(),
            ),
            (
                "endspacexn",
                [&b"Transfer-Encoding: chunked"[..], &c, b"\nX: X"].concat(),
            ),
        ];
        for (name, gadget) in gadgets {
            let mut request = b"POST /sse?topic=watch HTTP/1.1\r\n".to_vec();
            request.extend_from_slice(&gadget);
            // The body is a whole chunked body, then a request that only a server reading
            // it as chunked would see.
            request.extend_from_slice(
                b"\r\nHost: h\r\nContent-Length: 5\r\n\r\n0\r\n\r\nGET /sse?topic=smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
            );
            let hidden = name == "xprespace" && [0x09, 0x20, 0xa0, 0xff].contains(&c[0]);
            let status = if hidden { 405 } else { 400 };
            rows.push((format!("smuggler {name}-{:02x}", c[0]), request, status));
        }
    }
    rows
}

/// Every row: refused, served and the smuggler mutations, as (source, request, status).
fn all_rows() -> Vec<(String, Vec<u8>, u16)> {
    let fixed = REFUSED
        .iter()
        .chain(SERVED)
        .map(|r| (r.source.to_owned(), r.request.to_vec(), r.status));
    fixed.chain(smuggler_rows()).collect()
}

/// What the parser makes of `bytes` as they grow one byte at a time: the first answer
/// that is not `Partial`, as the status the engine would give (200 for a whole head),
/// or `None` while every prefix is partial.
fn settled_status(bytes: &[u8]) -> Option<(usize, Result<usize, u16>)> {
    (1..=bytes.len()).find_map(|cut| match http::parse_request(&bytes[..cut]) {
        Ok(Parsed::Partial) => None,
        Ok(Parsed::Complete(req)) => Some((cut, Ok(req.head_len))),
        Err(e) => Some((cut, Err(e.status()))),
    })
}

#[test]
fn the_parser_gives_each_row_its_status_however_it_arrives() {
    let rows = all_rows();
    assert!(rows.len() > 200, "{} rows", rows.len());
    for (source, request, status) in &rows {
        let what = format!("{source}: {}", shorten(request));
        let whole = http::parse_request(request);
        match (&whole, *status) {
            (Err(e), _) => assert_eq!(e.status(), *status, "{what}: {e:?}"),
            (Ok(Parsed::Complete(_)), 200 | 404 | 405) => {}
            (other, _) => panic!("{what}: {other:?}, expected {status}"),
        }
        // Growing the buffer byte by byte reaches the same answer, and an error is seen
        // no later than the whole buffer shows it.
        let (_, settled) = settled_status(request).unwrap_or_else(|| panic!("{what}: never settles"));
        match (settled, whole) {
            (Err(s), Err(e)) => assert_eq!(s, e.status(), "{what}"),
            (Ok(len), Ok(Parsed::Complete(req))) => assert_eq!(len, req.head_len, "{what}"),
            (s, w) => panic!("{what}: byte by byte {s:?}, whole {w:?}"),
        }
    }
}

/// An engine, a subscriber that must keep receiving, and a publisher.
struct Fixture {
    engine: Engine,
    watcher: SseClient,
    publisher: Publisher,
    published: u32,
}

impl Fixture {
    fn new() -> Fixture {
        let engine = Engine::start(&[]);
        let watcher = SseClient::subscribe(engine.addr, &["watch"]);
        let publisher = Publisher::connect(&engine.ingest);
        Fixture {
            engine,
            watcher,
            publisher,
            published: 0,
        }
    }

    /// Publishes to the watcher's topic and checks it receives exactly that next.
    fn assert_still_serving(&mut self, after: &str) {
        self.published += 1;
        let data = format!("still serving {}", self.published);
        let id = self.publisher.publish("watch", data.as_bytes());
        let event = self.watcher.expect_event();
        assert_eq!(
            (event.id.as_str(), event.data.as_str()),
            (id.as_str(), data.as_str()),
            "after {after}"
        );
    }
}

/// Waits for the engine to close `conn`, and returns any bytes it sent before closing.
fn bytes_until_close(conn: &mut HttpConn) -> Result<Vec<u8>, End> {
    let deadline = Instant::now() + WAIT;
    loop {
        match conn.fill(deadline) {
            Ok(()) => continue,
            Err(End::Closed) => return Ok(conn.take_buffered()),
            Err(End::TimedOut) => return Err(End::TimedOut),
        }
    }
}

/// Sends `request` on a new connection and reads the response head and its body.
fn answer(f: &Fixture, request: &[u8]) -> (Response, HttpConn) {
    let mut conn = HttpConn::connect(f.engine.addr);
    // The engine may answer and close before every byte is written.
    let _ = conn.send(request);
    let response = conn
        .read_head(WAIT)
        .unwrap_or_else(|end| panic!("no response ({end:?}) to {}", shorten(request)));
    (response, conn)
}

#[test]
fn the_engine_refuses_each_row_closes_and_serves_the_others() {
    let mut f = Fixture::new();
    f.assert_still_serving("start");
    let before = f.engine.counter("bad_requests");
    let rows = all_rows();
    let mut refused = 0;
    for (source, request, status) in &rows {
        let what = format!("{source}: {}", shorten(request));
        let (response, mut conn) = answer(&f, request);
        assert_eq!(response.status, *status, "{what}: {response:?}");
        match status {
            200 => assert_eq!(
                response.header("Content-Type"),
                Some("text/event-stream"),
                "{what}: {response:?}"
            ),
            404 | 405 if !request.windows(16).any(|w| w == b"Content-Length: ") => {}
            _ => {
                // An error, or an answer to a request with a body the engine will not
                // read: `Connection: close`, the body announced and nothing after it.
                assert!(response.closes(), "{what}: no Connection: close in {response:?}");
                let rest =
                    bytes_until_close(&mut conn).unwrap_or_else(|e| panic!("{what}: left open ({e:?})"));
                let body_len = response.content_length().expect("a Content-Length");
                assert_eq!(
                    rest.len(),
                    body_len,
                    "{what}: sent after the answer: {:?}",
                    shorten(&rest)
                );
                refused += u64::from(*status >= 400 && *status != 404 && *status != 405);
            }
        }
        f.assert_still_serving(&what);
    }
    // One count per refusal (the 405s after a hidden TE are no bad requests).
    assert_eq!(f.engine.counter("bad_requests") - before, refused);
}

#[test]
fn the_admin_listener_refuses_chunked_and_hostless_requests() {
    let mut f = Fixture::new();
    let admin = f.engine.admin;
    let requests: [(&[u8], u16); 4] = [
        (
            b"POST /publish?topic=watch HTTP/1.1\r\nHost: admin\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            411,
        ),
        (
            b"POST /publish?topic=watch HTTP/1.1\r\nHost: admin\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nhello",
            400,
        ),
        (b"POST /publish?topic=watch HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 400),
        (
            b"POST /publish?topic=watch HTTP/1.1\r\nHost: a\r\nHost: b\r\nContent-Length: 5\r\n\r\nhello",
            400,
        ),
    ];
    for (request, status) in requests {
        let mut conn = HttpConn::connect(admin);
        let _ = conn.send(request);
        let (response, _) = conn
            .read_response(WAIT)
            .unwrap_or_else(|end| panic!("no admin response ({end:?}) to {}", shorten(request)));
        assert_eq!(response.status, status, "{}: {response:?}", shorten(request));
        // Nothing was published: the watcher's next event is the marker.
        f.assert_still_serving(&shorten(request));
    }
    // A well-formed publish still works.
    let mut conn = HttpConn::connect(admin);
    conn.send(b"POST /publish?topic=watch HTTP/1.1\r\nHost: admin\r\nContent-Length: 5\r\n\r\nhello")
        .unwrap();
    let (response, body) = conn.read_response(WAIT).expect("a publish answer");
    assert_eq!(
        response.status,
        200,
        "{response:?} {:?}",
        String::from_utf8_lossy(&body)
    );
    let event = f
        .watcher
        .next_event(Duration::from_secs(5))
        .expect("the published event");
    assert_eq!(event.data, "hello");
}
