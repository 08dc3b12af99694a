//! An EventSource stream parser written from WHATWG HTML §9.2.6 "Interpreting an event
//! stream", step by step, for checking the engine's SSE encoder against what a browser
//! would make of its bytes.
//!
//! Follows the spec's algorithm on a whole stream: UTF-8 decode (one leading BOM
//! dropped, invalid bytes replaced), lines ended by CRLF, LF or CR, fields processed
//! per §9.2.6, events dispatched at blank lines (§9.2.7 "dispatch the event"). An event
//! not ended by a blank line when the stream ends is discarded, as the spec says.

/// A dispatched `MessageEvent`, as a script would see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The event `type`: the `event:` field, or `message` when it was empty or absent.
    pub kind: String,
    /// The `data` attribute.
    pub data: String,
    /// The `lastEventId` attribute.
    pub last_event_id: String,
}

/// What a stream made an `EventSource` do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    pub events: Vec<Event>,
    /// The last `retry:` value that set the reconnection time, in milliseconds.
    pub retry_ms: Option<u64>,
}

#[derive(Default)]
struct Buffers {
    data: String,
    event_type: String,
    last_event_id: String,
}

/// Parses a whole event stream.
#[must_use]
pub fn parse(stream: &[u8]) -> Parsed {
    // "Streams must be decoded using the UTF-8 decode algorithm", which strips one BOM.
    let text = String::from_utf8_lossy(stream);
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut parsed = Parsed::default();
    let mut buffers = Buffers::default();
    let mut rest = text;
    // A line is only a line once its end of line has arrived; what is left after the
    // last one is an incomplete line, discarded with the pending event.
    while let Some(at) = rest.find(['\r', '\n']) {
        let line = &rest[..at];
        let width = if rest[at..].starts_with("\r\n") { 2 } else { 1 };
        rest = &rest[at + width..];
        process_line(line, &mut buffers, &mut parsed);
    }
    parsed
}

fn process_line(line: &str, buffers: &mut Buffers, parsed: &mut Parsed) {
    if line.is_empty() {
        dispatch(buffers, parsed);
        return;
    }
    if line.starts_with(':') {
        return;
    }
    let (field, value) = match line.split_once(':') {
        Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
        None => (line, ""),
    };
    match field {
        "event" => buffers.event_type = value.to_string(),
        "data" => {
            buffers.data.push_str(value);
            buffers.data.push('\n');
        }
        // An id with NUL is ignored.
        "id" if !value.contains('\0') => buffers.last_event_id = value.to_string(),
        // Only ASCII digits set the reconnection time; a big value is valid too, so it
        // saturates rather than being lost.
        "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
            parsed.retry_ms = Some(value.parse().unwrap_or(u64::MAX));
        }
        _ => {}
    }
}

fn dispatch(buffers: &mut Buffers, parsed: &mut Parsed) {
    // Step 1: the last event ID string is set even when no event is dispatched.
    let last_event_id = buffers.last_event_id.clone();
    if buffers.data.is_empty() {
        buffers.event_type.clear();
        return;
    }
    let mut data = std::mem::take(&mut buffers.data);
    if data.ends_with('\n') {
        data.pop();
    }
    let kind = match std::mem::take(&mut buffers.event_type) {
        kind if kind.is_empty() => "message".to_string(),
        kind => kind,
    };
    parsed.events.push(Event {
        kind,
        data,
        last_event_id,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: &str, data: &str, id: &str) -> Event {
        Event {
            kind: kind.into(),
            data: data.into(),
            last_event_id: id.into(),
        }
    }

    /// The examples of §9.2.6.
    #[test]
    fn spec_examples() {
        let p = parse(b"data: YHOO\ndata: +2\ndata: 10\n\n");
        assert_eq!(p.events, [ev("message", "YHOO\n+2\n10", "")]);
        let p = parse(
            b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n",
        );
        assert_eq!(
            p.events,
            [
                ev("message", "first event", "1"),
                ev("message", "second event", ""),
                ev("message", " third event", "")
            ]
        );
        let p = parse(b"data\n\ndata\ndata\n\ndata:");
        assert_eq!(p.events, [ev("message", "", ""), ev("message", "\n", "")]);
        let p = parse(b"data:test\n\ndata: test\n\n");
        assert_eq!(p.events, [ev("message", "test", ""), ev("message", "test", "")]);
    }

    #[test]
    fn fields_and_line_ends() {
        let p = parse(b"\xef\xbb\xbfretry: 250\revent: a:b\r\nid: x\0y\ndata: 1\r\r");
        assert_eq!(p.retry_ms, Some(250));
        assert_eq!(p.events, [ev("a:b", "1", "")]);
        let p = parse(b"retry: 1x\nevent: e\n\ndata: d\nid: 7\n\nid: 8\n\n: c\nevent: late");
        assert_eq!(p.retry_ms, None);
        assert_eq!(p.events, [ev("message", "d", "7")]);
        assert_eq!(parse(b"data: \xff\n\n").events, [ev("message", "\u{fffd}", "")]);
    }
}
