//! Sans-IO protocol codecs: they take `&[u8]` and return parsed values or bytes to
//! send. Nothing here touches a file descriptor, a clock or `sys/`.
pub mod http;
pub mod ingest;
pub mod json;
pub mod sse;
pub mod ws;

/// How a connection's events are framed, and by which shared encoding of an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// SSE in HTTP/1.1 chunks.
    Sse,
    /// SSE for an HTTP/1.0 client: the bare stream, ended by closing.
    Sse10,
    /// WebSocket, one JSON text frame per event.
    WsJson,
    /// WebSocket, the bare payload per event.
    WsRaw,
    /// WebSocket echo endpoint for conformance suites: no topics, messages come back.
    WsEcho,
    /// Newline-delimited JSON in HTTP/1.1 chunks, one object per event.
    Ndjson,
    /// [`WsJson`](Kind::WsJson) with permessage-deflate negotiated (RFC 7692): events at
    /// or above the threshold go as the event's one shared compressed frame.
    WsJsonDeflate,
    /// [`WsRaw`](Kind::WsRaw) with permessage-deflate negotiated.
    WsRawDeflate,
    /// [`WsEcho`](Kind::WsEcho) with permessage-deflate negotiated.
    WsEchoDeflate,
}

impl Kind {
    pub fn is_ws(self) -> bool {
        matches!(
            self,
            Kind::WsJson
                | Kind::WsRaw
                | Kind::WsEcho
                | Kind::WsJsonDeflate
                | Kind::WsRawDeflate
                | Kind::WsEchoDeflate
        )
    }

    /// The echo endpoint, compressed or not.
    pub fn is_echo(self) -> bool {
        matches!(self, Kind::WsEcho | Kind::WsEchoDeflate)
    }

    /// A WebSocket that negotiated permessage-deflate.
    pub fn deflate(self) -> bool {
        matches!(
            self,
            Kind::WsJsonDeflate | Kind::WsRawDeflate | Kind::WsEchoDeflate
        )
    }

    /// The same framing with permessage-deflate negotiated (WebSockets only).
    #[must_use]
    pub fn with_deflate(self) -> Kind {
        match self {
            Kind::WsJson => Kind::WsJsonDeflate,
            Kind::WsRaw => Kind::WsRawDeflate,
            Kind::WsEcho => Kind::WsEchoDeflate,
            other => other,
        }
    }
}
