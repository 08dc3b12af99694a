//! A published event as every loop sees it, and the event ids clients resume from.
//!
//! An event is encoded for SSE once, by the thread that accepts the publish, as one
//! HTTP/1.1 chunk; every subscriber on every loop is sent a refcounted slice of those
//! same bytes (the chunk for HTTP/1.1, the SSE body inside it for HTTP/1.0). The
//! WebSocket frames, plain and compressed (permessage-deflate, RFC 7692, without context
//! takeover), are made by the first loop that needs them and shared the same way: the
//! compression cost grows with events published, not with deliveries.
use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::proto::Kind;
use crate::proto::{json, sse, ws};
use crate::ring::history::Retained;

/// Identifies one run of the engine's history. Event ids are `<epoch>-<seq>`: the epoch in
/// hex, the global sequence number in decimal. Within an epoch, ids increase with `seq`;
/// a restart without history starts a new epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Epoch(u64);

/// What a client's `Last-Event-ID` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LastId {
    /// An id of this epoch: the client has seen everything up to this sequence number.
    Seq(u64),
    /// Well-formed, but issued by another run of the engine.
    OtherEpoch,
    /// Not an id this engine could have issued.
    Malformed,
}

impl Epoch {
    /// A fresh epoch from the wall clock (microseconds), distinct for every start.
    pub fn fresh() -> Self {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        Epoch(micros)
    }

    pub const fn from_raw(raw: u64) -> Self {
        Epoch(raw)
    }

    /// The id of event `seq`.
    pub fn id(self, seq: u64) -> String {
        format!("{:x}-{seq}", self.0)
    }

    /// Parses a client's last event id.
    pub fn parse(self, id: &[u8]) -> LastId {
        let Ok(id) = std::str::from_utf8(id) else {
            return LastId::Malformed;
        };
        let Some((epoch, seq)) = id.trim().split_once('-') else {
            return LastId::Malformed;
        };
        let valid_epoch =
            !epoch.is_empty() && epoch.len() <= 16 && epoch.bytes().all(|b| b.is_ascii_hexdigit());
        let seq = match seq.parse::<u64>() {
            Ok(s) if valid_epoch && seq.bytes().all(|b| b.is_ascii_digit()) => s,
            _ => return LastId::Malformed,
        };
        match u64::from_str_radix(epoch, 16) {
            Ok(e) if e == self.0 => LastId::Seq(seq),
            Ok(_) => LastId::OtherEpoch,
            Err(_) => LastId::Malformed,
        }
    }
}

/// One published event, immutable once built, shared by `Arc` between the ring, the
/// history and every loop.
#[derive(Debug)]
pub struct Event {
    pub seq: u64,
    pub id: Box<str>,
    pub topic: Box<str>,
    pub name: Option<Box<str>>,
    pub key: Option<Box<str>>,
    pub data: Bytes,
    pub published: Instant,
    /// The SSE encoding wrapped as one HTTP/1.1 chunk.
    sse_chunk: Bytes,
    /// Where the bare SSE encoding lies inside `sse_chunk`.
    sse_start: u16,
    /// WebSocket frames, encoded by the first loop with such a subscriber and shared by
    /// all (server frames are unmasked, so every subscriber gets the same bytes).
    ws_json: OnceLock<Bytes>,
    ws_raw: OnceLock<Bytes>,
    /// The same frames for permessage-deflate connections: compressed, or a clone of the
    /// plain frame when the payload is below the threshold or would not shrink.
    ws_json_deflate: OnceLock<Bytes>,
    ws_raw_deflate: OnceLock<Bytes>,
    /// One NDJSON line as one HTTP/1.1 chunk.
    ndjson: OnceLock<Bytes>,
}

/// Fixed bookkeeping per retained event, added to its byte cost.
const EVENT_OVERHEAD: usize = std::mem::size_of::<Event>() + 64;

impl Event {
    /// Builds the event and its wire encodings.
    pub fn new(
        epoch: Epoch,
        seq: u64,
        topic: &str,
        name: Option<&str>,
        key: Option<&str>,
        data: &[u8],
        now: Instant,
    ) -> Self {
        let id = epoch.id(seq);
        let mut body = Vec::with_capacity(sse::encoded_len(&id, name, data));
        sse::encode_event(&mut body, &id, name, data);
        let mut chunk = Vec::with_capacity(body.len() + 20);
        sse::encode_chunk(&mut chunk, &body);
        let sse_start = (chunk.len() - body.len() - 2) as u16;
        Event {
            seq,
            id: id.into(),
            topic: topic.into(),
            name: name.map(Into::into),
            key: key.map(Into::into),
            data: Bytes::copy_from_slice(data),
            published: now,
            sse_chunk: Bytes::from(chunk),
            sse_start,
            ws_json: OnceLock::new(),
            ws_raw: OnceLock::new(),
            ws_json_deflate: OnceLock::new(),
            ws_raw_deflate: OnceLock::new(),
            ndjson: OnceLock::new(),
        }
    }

    /// The bytes a connection of `kind` is sent for this event. A permessage-deflate
    /// connection gets the event's one compressed frame, made with `codec` by whichever
    /// loop asks first, when the frame's payload has at least `deflate_min_bytes` bytes.
    pub fn bytes_for(&self, kind: Kind, codec: &mut ws::deflate::Codec, deflate_min_bytes: usize) -> Bytes {
        match kind {
            Kind::Sse => self.sse(true),
            Kind::Sse10 => self.sse(false),
            Kind::WsJson => self.ws_json.get_or_init(|| self.encode_ws_json()).clone(),
            Kind::WsRaw => self.ws_raw.get_or_init(|| self.encode_ws_raw()).clone(),
            Kind::WsJsonDeflate => {
                let plain = self.ws_json.get_or_init(|| self.encode_ws_json());
                let cell = &self.ws_json_deflate;
                cell.get_or_init(|| compressed(plain, codec, deflate_min_bytes))
                    .clone()
            }
            Kind::WsRawDeflate => {
                let plain = self.ws_raw.get_or_init(|| self.encode_ws_raw());
                let cell = &self.ws_raw_deflate;
                cell.get_or_init(|| compressed(plain, codec, deflate_min_bytes))
                    .clone()
            }
            Kind::Ndjson => self.ndjson.get_or_init(|| self.encode_ndjson()).clone(),
            // The echo endpoint subscribes to nothing.
            Kind::WsEcho | Kind::WsEchoDeflate => Bytes::new(),
        }
    }

    /// `{"id":..,"topic":..,"event":..|null,"data":..}` as one text frame.
    fn encode_ws_json(&self) -> Bytes {
        let body = self.json();
        let mut frame = Vec::with_capacity(body.len() + 10);
        ws::encode_frame(&mut frame, ws::Opcode::Text, true, &body);
        Bytes::from(frame)
    }

    /// The same object and a line feed, as one HTTP/1.1 chunk.
    fn encode_ndjson(&self) -> Bytes {
        let mut line = self.json();
        line.push(b'\n');
        let mut chunk = Vec::with_capacity(line.len() + 12);
        sse::encode_chunk(&mut chunk, &line);
        Bytes::from(chunk)
    }

    /// `{"id":..,"topic":..,"event":..|null,"data":..}`.
    pub fn json(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(self.data.len() + self.topic.len() + 64);
        body.extend_from_slice(b"{\"id\":");
        json::push_string(&mut body, &self.id);
        body.extend_from_slice(b",\"topic\":");
        json::push_string(&mut body, &self.topic);
        body.extend_from_slice(b",\"event\":");
        match &self.name {
            Some(name) => json::push_string(&mut body, name),
            None => body.extend_from_slice(b"null"),
        }
        body.extend_from_slice(b",\"data\":");
        // Payloads are UTF-8: the ingest protocol refuses anything else.
        json::push_string(&mut body, std::str::from_utf8(&self.data).unwrap_or_default());
        body.push(b'}');
        body
    }

    /// The bare payload as one text frame.
    fn encode_ws_raw(&self) -> Bytes {
        let mut frame = Vec::with_capacity(self.data.len() + 10);
        ws::encode_frame(&mut frame, ws::Opcode::Text, true, &self.data);
        Bytes::from(frame)
    }

    /// The SSE bytes to send: one chunk for a chunked HTTP/1.1 stream, else the bare event.
    pub fn sse(&self, chunked: bool) -> Bytes {
        if chunked {
            self.sse_chunk.clone()
        } else {
            let start = usize::from(self.sse_start);
            self.sse_chunk.slice(start..self.sse_chunk.len() - 2)
        }
    }
}

/// The compressed twin of a plain unfragmented text frame `plain` (RSV1 set), or `plain`
/// itself when its payload is shorter than `min_bytes` or would not shrink.
fn compressed(plain: &Bytes, codec: &mut ws::deflate::Codec, min_bytes: usize) -> Bytes {
    let header = match plain[1] & 0x7F {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    let payload = &plain[header..];
    if payload.len() < min_bytes {
        return plain.clone();
    }
    let frame = codec.frame(ws::Opcode::Text, payload);
    if frame.len() < plain.len() {
        Bytes::from(frame)
    } else {
        plain.clone()
    }
}

impl Retained for Event {
    fn seq(&self) -> u64 {
        self.seq
    }
    fn topic(&self) -> &str {
        &self.topic
    }
    fn cost(&self) -> usize {
        self.data.len() + self.sse_chunk.len() + self.topic.len() + EVENT_OVERHEAD
    }
    fn published(&self) -> Instant {
        self.published
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_within_an_epoch() {
        let e = Epoch::from_raw(0xabc);
        assert_eq!(e.id(42), "abc-42");
        assert_eq!(e.parse(b"abc-42"), LastId::Seq(42));
        assert_eq!(e.parse(b"abd-42"), LastId::OtherEpoch);
        for bad in [
            &b""[..],
            b"abc",
            b"abc-",
            b"-1",
            b"abc-x",
            b"abc-+1",
            b"xyz-1",
            b"abc-1-2",
            b"\xff",
        ] {
            assert_eq!(
                e.parse(bad),
                LastId::Malformed,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn deflate_frames_are_made_once_and_shared() {
        let data = br#"{"price":191.2,"symbol":"AAPL","venue":"XNAS"}"#.repeat(20);
        let ev = Event::new(Epoch::from_raw(1), 7, "t", None, None, &data, Instant::now());
        let mut codec = ws::deflate::Codec::default();
        let plain = ev.bytes_for(Kind::WsJson, &mut codec, 0);
        let z = ev.bytes_for(Kind::WsJsonDeflate, &mut codec, 64);
        assert_eq!(z[0], 0xC1, "FIN, RSV1, text");
        assert!(z.len() * 4 < plain.len(), "{} vs {}", z.len(), plain.len());
        // Every later subscriber shares the same bytes, whatever codec it passes.
        let again = ev.bytes_for(Kind::WsJsonDeflate, &mut ws::deflate::Codec::default(), 64);
        assert_eq!(again.as_ptr(), z.as_ptr());
        let payload = |f: &Bytes| f.slice(if f[1] & 0x7F == 126 { 4 } else { 2 }..);
        let mut out = Vec::new();
        codec.inflate(&payload(&z), 1 << 20, &mut out).unwrap();
        assert_eq!(&out[..], &payload(&plain)[..]);
        let raw = ev.bytes_for(Kind::WsRawDeflate, &mut codec, 64);
        codec.inflate(&payload(&raw), 1 << 20, &mut out).unwrap();
        assert_eq!(out, data);
        // Below the threshold: the plain frame itself, RSV1 clear.
        let small = Event::new(
            Epoch::from_raw(1),
            8,
            "t",
            None,
            None,
            b"tiny tiny tiny tiny",
            Instant::now(),
        );
        let a = small.bytes_for(Kind::WsRawDeflate, &mut codec, 64);
        assert_eq!(a.as_ptr(), small.bytes_for(Kind::WsRaw, &mut codec, 64).as_ptr());
        assert_eq!(a[0], 0x81);
    }

    #[test]
    fn http10_body_is_the_chunk_without_framing() {
        let ev = Event::new(
            Epoch::from_raw(1),
            7,
            "t",
            Some("n"),
            None,
            b"a\nb",
            Instant::now(),
        );
        let body = ev.sse(false);
        assert_eq!(&body[..], b"id: 1-7\nevent: n\ndata: a\ndata: b\n\n");
        let chunk = ev.sse(true);
        assert_eq!(
            &chunk[..],
            format!("{:x}\r\n{}\r\n", body.len(), std::str::from_utf8(&body).unwrap()).as_bytes()
        );
    }
}
