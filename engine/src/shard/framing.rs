//! The bytes of stream heads, chunks and control notices each transport sends.

use std::sync::Arc;

use bytes::Bytes;

use crate::event::Event;
use crate::proto::Kind;
use crate::proto::{json, sse, ws};

use super::SSE_HEADERS;

/// `head` with its `Access-Control-Allow-Origin: *` line replaced by `lines`.
pub(super) fn with_cors(head: &Bytes, lines: &str) -> Bytes {
    const ANY: &[u8] = b"Access-Control-Allow-Origin: *\r\n";
    let Some(at) = head.windows(ANY.len()).position(|w| w == ANY) else {
        return head.clone();
    };
    let mut out = Vec::with_capacity(head.len() + lines.len());
    out.extend_from_slice(&head[..at]);
    out.extend_from_slice(lines.as_bytes());
    out.extend_from_slice(&head[at + ANY.len()..]);
    Bytes::from(out)
}

/// A reset signal: the id to carry (just before the first replayed event) and its data.
pub(super) struct Reset {
    pub(super) id: String,
    pub(super) data: String,
}

/// The answer of `Shard::missed_since`: one page of what a resuming client missed.
pub(super) struct Missed {
    pub(super) reset: Option<Reset>,
    pub(super) events: Vec<Arc<Event>>,
    /// More than the page: the rest follows its last event.
    pub(super) more: bool,
}

/// The response head of an NDJSON stream, built once per loop.
pub(super) fn ndjson_head(loop_id: usize) -> Bytes {
    Bytes::from(format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nCache-Control: no-cache\r\n\
         X-Accel-Buffering: no\r\nAccess-Control-Allow-Origin: *\r\nX-Ringcast-Loop: {loop_id}\r\n\
         Transfer-Encoding: chunked\r\n\r\n"
    ))
}

/// A control message (`ringcast.reset`, `ringcast.gap`, `ringcast.slow`) named `name`,
/// with JSON `data` and optionally an event id, in the framing of `kind`: an SSE event, a
/// WebSocket text frame `{"id":..,"event":..,"data":..}`, or that object as an NDJSON line.
/// Without an id an SSE notice leaves the client's Last-Event-ID as it was.
pub(super) fn control(kind: Kind, name: &str, id: Option<&str>, data: &str) -> Bytes {
    match kind {
        Kind::Sse | Kind::Sse10 => {
            let mut body = Vec::with_capacity(data.len() + 64);
            if let Some(id) = id {
                body.extend_from_slice(format!("id: {id}\n").as_bytes());
            }
            body.extend_from_slice(format!("event: {name}\n").as_bytes());
            // `data` is one line of JSON: the SSE encoder would not split it.
            body.extend_from_slice(format!("data: {data}\n\n").as_bytes());
            frame(&body, kind == Kind::Sse)
        }
        Kind::WsJson
        | Kind::WsRaw
        | Kind::WsEcho
        | Kind::WsJsonDeflate
        | Kind::WsRawDeflate
        | Kind::WsEchoDeflate
        | Kind::Ndjson => {
            let id = id
                .map(|id| format!("\"id\":{},", json::string(id)))
                .unwrap_or_default();
            let object = format!("{{{id}\"event\":\"{name}\",\"data\":{data}}}");
            if kind == Kind::Ndjson {
                let mut line = object.into_bytes();
                line.push(b'\n');
                frame(&line, true)
            } else {
                ws_control(&object)
            }
        }
    }
}

/// The response head and the opening `retry:` field, built once per loop. The
/// `X-Ringcast-Loop` header names the loop that serves the stream.
pub(super) fn stream_head(chunked: bool, retry_ms: u32, loop_id: usize) -> Bytes {
    let mut out = Vec::from(SSE_HEADERS);
    out.extend_from_slice(format!("X-Ringcast-Loop: {loop_id}\r\n").as_bytes());
    let mut retry = Vec::new();
    sse::encode_retry(&mut retry, retry_ms);
    if chunked {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
        sse::encode_chunk(&mut out, &retry);
    } else {
        out.extend_from_slice(b"Connection: close\r\n\r\n");
        out.extend_from_slice(&retry);
    }
    Bytes::from(out)
}

pub(super) fn frame(body: &[u8], chunked: bool) -> Bytes {
    if chunked {
        let mut out = Vec::with_capacity(body.len() + 12);
        sse::encode_chunk(&mut out, body);
        Bytes::from(out)
    } else {
        Bytes::copy_from_slice(body)
    }
}

/// The data of a `ringcast.reset` event: why the resume failed and where replay starts.
pub(super) fn reset_json(reason: &str, last: &[u8], oldest: Option<String>) -> String {
    format!(
        "{{\"reason\":\"{reason}\",\"last_event_id\":{},\"oldest_id\":{}}}",
        json::string(&String::from_utf8_lossy(last)),
        oldest.map_or_else(|| "null".to_string(), |id| json::string(&id)),
    )
}

/// One WebSocket text frame carrying a control message.
pub(super) fn ws_control(text: &str) -> Bytes {
    let mut frame = Vec::with_capacity(text.len() + 4);
    ws::encode_frame(&mut frame, ws::Opcode::Text, true, text.as_bytes());
    Bytes::from(frame)
}
