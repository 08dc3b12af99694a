//! An EventSource stream parser written from WHATWG HTML §9.2.6 "Interpreting an event
//! stream", as a browser would run it; the tests judge the engine's SSE bytes with it.
//!
//! Owns: UTF-8 decoding of the stream (streaming, BOM stripped), line splitting on
//! CRLF, LF and CR, field processing and event dispatch, with the spec's buffers.
//!
//! Must never: share code or assumptions with the engine's encoder (`ringcast::proto::sse`),
//! or be more lenient than the spec: a test passing through this parser should mean a
//! browser would see the same events.
//!
//! Its own tests, against the spec's examples, are in `tests/sse_roundtrip.rs`: this
//! support library is built with `test = false`.

/// One dispatched `MessageEvent`, as a page would see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// `lastEventId`: the last event ID buffer at dispatch.
    pub id: String,
    /// The event type: the `event` field, or `"message"` when there was none.
    pub event: String,
    /// `data`: the `data` field values joined with LF.
    pub data: String,
}

/// The state of one EventSource connection's parser; feed it bytes in any split.
#[derive(Default)]
pub struct EventStreamParser {
    /// The bytes of an incomplete UTF-8 sequence at the end of the last feed.
    pending_utf8: Vec<u8>,
    /// Whether any text was decoded yet; a BOM is only stripped before that.
    decoded_any: bool,
    /// The current line, without its line break.
    line: String,
    /// The last line ended with CR, so an LF starting the next bytes is part of it.
    after_cr: bool,
    /// The data buffer.
    data: String,
    /// The event type buffer.
    event_type: String,
    /// The last event ID buffer.
    last_event_id_buffer: String,
    /// The event source's last event ID string, set at each dispatch.
    last_event_id: String,
    /// The reconnection time, once a valid `retry` field was seen.
    retry_ms: Option<u64>,
    /// Comment lines seen.
    comments: usize,
}

impl EventStreamParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds raw bytes (any split) and returns the events they dispatched, in order.
    ///
    /// The stream is decoded with UTF-8 decode (invalid sequences become U+FFFD, a
    /// leading BOM is dropped); an incomplete sequence at the end of `bytes` is kept for
    /// the next call, and so is a CR at the end, whose LF may come next.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Event> {
        let text = self.decode_utf8(bytes);
        let mut rest = text.as_str();
        if !self.decoded_any && !rest.is_empty() {
            self.decoded_any = true;
            rest = rest.strip_prefix('\u{feff}').unwrap_or(rest);
        }
        let mut events = Vec::new();
        while !rest.is_empty() {
            if self.after_cr {
                self.after_cr = false;
                if let Some(after) = rest.strip_prefix('\n') {
                    rest = after;
                    continue;
                }
            }
            let Some(at) = rest.find(['\r', '\n']) else {
                self.line.push_str(rest);
                break;
            };
            self.line.push_str(&rest[..at]);
            self.after_cr = rest.as_bytes()[at] == b'\r';
            rest = &rest[at + 1..];
            let line = std::mem::take(&mut self.line);
            self.process_line(&line, &mut events);
        }
        events
    }

    /// The reconnection time set by the last valid `retry` field, if any.
    pub fn retry_ms(&self) -> Option<u64> {
        self.retry_ms
    }

    /// The event source's last event ID string (what `Last-Event-ID` would carry on
    /// reconnection): the last event ID buffer as of the last dispatch.
    pub fn last_event_id(&self) -> &str {
        &self.last_event_id
    }

    /// The number of comment lines (lines starting with `:`) seen.
    pub fn comments(&self) -> usize {
        self.comments
    }

    fn decode_utf8(&mut self, bytes: &[u8]) -> String {
        let mut input = std::mem::take(&mut self.pending_utf8);
        input.extend_from_slice(bytes);
        let mut text = String::with_capacity(input.len());
        let mut rest = input.as_slice();
        loop {
            match std::str::from_utf8(rest) {
                Ok(valid) => {
                    text.push_str(valid);
                    return text;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    text.push_str(std::str::from_utf8(valid).expect("checked by valid_up_to"));
                    match e.error_len() {
                        Some(bad) => {
                            text.push('\u{fffd}');
                            rest = &after[bad..];
                        }
                        None => {
                            self.pending_utf8 = after.to_vec();
                            return text;
                        }
                    }
                }
            }
        }
    }

    /// One line, per the steps of §9.2.6.
    fn process_line(&mut self, line: &str, events: &mut Vec<Event>) {
        if line.is_empty() {
            self.dispatch(events);
        } else if line.starts_with(':') {
            self.comments += 1;
        } else if let Some((field, value)) = line.split_once(':') {
            self.process_field(field, value.strip_prefix(' ').unwrap_or(value));
        } else {
            self.process_field(line, "");
        }
    }

    fn process_field(&mut self, field: &str, value: &str) {
        match field {
            "event" => self.event_type = value.to_owned(),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            "id" if !value.contains('\0') => self.last_event_id_buffer = value.to_owned(),
            // "If the field value consists of only ASCII digits": an empty value has no
            // integer to interpret, so it is ignored, as browsers do.
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                if let Ok(ms) = value.parse() {
                    self.retry_ms = Some(ms);
                }
            }
            _ => {}
        }
    }

    /// "Dispatch the event", §9.2.6.
    fn dispatch(&mut self, events: &mut Vec<Event>) {
        self.last_event_id = self.last_event_id_buffer.clone();
        if self.data.is_empty() {
            self.event_type.clear();
            return;
        }
        if self.data.ends_with('\n') {
            self.data.pop();
        }
        let event_type = std::mem::take(&mut self.event_type);
        events.push(Event {
            id: self.last_event_id.clone(),
            event: if event_type.is_empty() {
                "message".to_owned()
            } else {
                event_type
            },
            data: std::mem::take(&mut self.data),
        });
    }
}
