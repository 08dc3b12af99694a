//! The engine's counters, from one table: each row is a field of [`Counters`] (the record
//! a loop writes), its key in the admin `/stats` document and the Prometheus family it is
//! a sample of in `/metrics`, with that family's type, help and label. Both renderings
//! walk [`TABLE`], so a counter cannot reach one and not the other.
//!
//! Owns: the per-loop counter record, what each counter is called where, and reading a
//! record into a [`Snapshot`].
//!
//! Must never: write a counter (each has one writer, its loop) or format a document (the
//! admin listener does, from [`TABLE`] and snapshots).
use std::ops::Range;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

use crate::auth::Refusal;

/// A Prometheus metric type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (the family's name ends in `_total`).
    Counter,
    /// Goes up and down.
    Gauge,
}

impl Kind {
    /// The name in a `# TYPE` line.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// Where a counter is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Always: a key of `/stats` `totals` and of every `loops` entry, and a family
    /// labelled by loop.
    Loop,
    /// With `--auth-jwks` only: a key of the `/stats` `auth` object (engine totals), and a
    /// family labelled by loop.
    Auth,
}

/// A Prometheus family: its name, type and help.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Family {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

impl Family {
    /// A family of [`Kind::Counter`].
    pub const fn counter(name: &'static str, help: &'static str) -> Self {
        Family {
            name,
            kind: Kind::Counter,
            help,
        }
    }

    /// A family of [`Kind::Gauge`].
    pub const fn gauge(name: &'static str, help: &'static str) -> Self {
        Family {
            name,
            kind: Kind::Gauge,
            help,
        }
    }
}

/// The label that tells a row's samples from the other rows of its family: its name, and
/// one value per cell of the row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Label {
    pub name: &'static str,
    pub values: &'static [&'static str],
}

/// One row of [`TABLE`]: one field of [`Counters`].
#[derive(Clone, Copy, Debug)]
pub struct Counter {
    /// The field of [`Counters`].
    pub field: &'static str,
    /// The key in `/stats`: for [`Scope::Loop`] the field's name. A row of one cell is
    /// `"key":N`; a row of several is `"key":{"<label value>":N,..}`.
    pub stat: &'static str,
    pub scope: Scope,
    /// The family its samples belong to; the rows of one family stand together.
    pub family: Family,
    /// Set when the family has other rows, or the row has several cells.
    pub label: Option<Label>,
    /// How many values the field holds: 1, or the length of its array.
    pub cells: usize,
}

/// A family that several rows share: connections open, by what they serve.
const OPEN_BY_TRANSPORT: Family = Family::gauge(
    "ringcast_connections_open_by_transport",
    "Open connections by what they serve: SSE or NDJSON streams, WebSockets, held polls.",
);

/// A family that several rows share: admission control's refusals.
const ADMISSION_REFUSALS: Family = Family::counter(
    "ringcast_admission_refusals_total",
    "Connections refused by admission control, by reason.",
);

/// The label values of [`Counters::auth_refused`], in the order of [`Refusal::ALL`].
const REFUSALS: [&str; Refusal::ALL.len()] = {
    let mut labels = [""; Refusal::ALL.len()];
    let mut i = 0;
    while i < labels.len() {
        labels[i] = Refusal::ALL[i].label();
        i += 1;
    }
    labels
};

/// Expands the table into [`Counters`], [`TABLE`] and [`Counters::visit`]. A row is
/// `field[len] as "stat": Scope, family, "label" = values;` where `[len]` makes the field an
/// array of `len` cells, `as "stat"` names its `/stats` key when it is not the field's
/// name, and the label is given when the family has other rows or the row several cells.
macro_rules! counters {
    (@ty) => { AtomicU64 };
    (@ty $len:expr) => { [AtomicU64; $len] };
    (@cells) => { 1 };
    (@cells $len:expr) => { $len };
    (@stat $field:ident) => { stringify!($field) };
    (@stat $field:ident $stat:literal) => { $stat };
    (@label) => { None };
    (@label $name:literal = $values:expr) => {
        Some(Label {
            name: $name,
            values: $values,
        })
    };
    ($(
        $(#[doc = $doc:literal])*
        $field:ident $([$len:expr])? $(as $stat:literal)?: $scope:ident, $family:expr
            $(, $label:literal = $values:expr)?;
    )*) => {
        /// Per-loop counters. Each has a single writer, its loop; anyone may read them.
        #[derive(Default, Debug)]
        pub struct Counters {
            $($(#[doc = $doc])* pub $field: counters!(@ty $($len)?),)*
        }

        /// Every counter, in the order of the fields of [`Counters`].
        pub const TABLE: &[Counter] = &[$(
            Counter {
                field: stringify!($field),
                stat: counters!(@stat $field $($stat)?),
                scope: Scope::$scope,
                family: $family,
                label: counters!(@label $($label = $values)?),
                cells: counters!(@cells $($len)?),
            },
        )*];

        impl Counters {
            /// Calls `f` on every cell, in the order of [`TABLE`] and of each array.
            pub fn visit(&self, mut f: impl FnMut(&AtomicU64)) {
                $(Cells::cells(&self.$field).iter().for_each(&mut f);)*
            }
        }
    };
}

counters! {
    /// Client connections accepted.
    accepted: Loop, Family::counter("ringcast_connections_accepted_total", "Client connections accepted.");
    /// Client connections open (gauge).
    open: Loop, Family::gauge("ringcast_connections_open", "Client connections open.");
    /// Open SSE streams (gauge).
    open_sse: Loop, OPEN_BY_TRANSPORT, "transport" = &["sse"];
    /// Open NDJSON streams (gauge).
    open_ndjson: Loop, OPEN_BY_TRANSPORT, "transport" = &["ndjson"];
    /// Open WebSockets (gauge).
    open_ws: Loop, OPEN_BY_TRANSPORT, "transport" = &["ws"];
    /// Long-polls held open waiting for an event (gauge).
    polls_held: Loop, OPEN_BY_TRANSPORT, "transport" = &["poll"];
    /// Bytes queued on the loop's connections (gauge, refreshed every tick).
    queued_bytes: Loop, Family::gauge(
        "ringcast_queued_bytes",
        "Bytes queued on the loop's connections, refreshed every tick.",
    );
    /// Accepts that failed because the file table or the process was full.
    accept_full: Loop, Family::counter(
        "ringcast_connections_refused_total",
        "Accepts that failed on a full file table or process.",
    );
    /// Accepts that failed for any other reason.
    accept_errors: Loop, Family::counter("ringcast_accept_errors_total", "Other accept errors.");
    /// Receives that found the provided-buffer ring empty (re-armed).
    recv_enobufs: Loop, Family::counter(
        "ringcast_recv_enobufs_total",
        "Receives that found the buffer ring empty.",
    );
    /// Idle connections whose armed receive was traded for a poll on their input.
    recv_parked: Loop, Family::counter(
        "ringcast_recv_parked_total",
        "Idle connections whose receive was parked on a poll.",
    );
    /// Parked connections whose input arrived and whose receive was armed again.
    recv_unparked: Loop, Family::counter(
        "ringcast_recv_unparked_total",
        "Parked connections given their receive back.",
    );
    /// Requests answered 4xx for malformed input.
    bad_requests: Loop, Family::counter(
        "ringcast_bad_requests_total",
        "Requests answered 4xx for malformed input.",
    );
    /// SSE and NDJSON streams opened.
    streams: Loop, Family::counter("ringcast_streams_opened_total", "SSE and NDJSON streams opened.");
    /// Long-poll and poll requests answered or held.
    polls: Loop, Family::counter("ringcast_polls_total", "Long-poll and poll requests.");
    /// Resumes answered with a reset.
    resets: Loop, Family::counter("ringcast_resets_total", "Resumes answered with a reset.");
    /// Events replayed from the history on resume.
    replayed: Loop, Family::counter(
        "ringcast_events_replayed_total",
        "Events replayed from the history on resume.",
    );
    /// Events that had at least one subscriber on this loop.
    events: Loop, Family::counter(
        "ringcast_events_fanned_out_total",
        "Events with at least one subscriber on the loop.",
    );
    /// Sends handed to the kernel (plain and gathered).
    sends: Loop, Family::counter("ringcast_sends_total", "Sends handed to the kernel.");
    /// Events queued to a subscriber.
    deliveries: Loop, Family::counter("ringcast_events_delivered_total", "Events queued to a subscriber.");
    /// Clients closed at the hard cap of their queue.
    slow_closed: Loop, Family::counter("ringcast_slow_closed_total", "Clients closed at the hard queue cap.");
    /// Events a slow client's policy dropped or refused (each told to it as a gap).
    dropped: Loop, Family::counter(
        "ringcast_events_dropped_total",
        "Events a slow client's policy dropped or refused.",
    );
    /// Events that replaced a queued event with the same topic and key.
    coalesced: Loop, Family::counter(
        "ringcast_events_coalesced_total",
        "Events that replaced a queued one with the same key.",
    );
    /// Clients closed by a `disconnect` policy.
    slow_disconnected: Loop, Family::counter(
        "ringcast_slow_disconnected_total",
        "Clients closed by a disconnect policy.",
    );
    /// Events this loop missed in the broadcast ring by falling behind.
    ring_overrun: Loop, Family::counter(
        "ringcast_ring_overrun_events_total",
        "Events a loop missed on the broadcast ring.",
    );
    /// Overruns the history could not fully refill.
    ring_lost: Loop, Family::counter(
        "ringcast_ring_lost_total",
        "Overruns the history could not fully refill.",
    );
    /// Ranges the history evicted before a resuming client read them (each told as a gap).
    replay_gaps: Loop, Family::counter(
        "ringcast_replay_gaps_total",
        "Ranges evicted before a resuming client read them (each told as a gap).",
    );
    /// Heartbeat comments sent on quiet streams.
    heartbeats: Loop, Family::counter("ringcast_heartbeats_total", "Heartbeats sent on quiet streams.");
    /// Connections closed with 408: no complete request head in time (slowloris).
    request_timeouts: Loop, Family::counter(
        "ringcast_reaped_request_timeout_total",
        "Connections answered 408 (slowloris).",
    );
    /// Keep-alive connections closed for idling between requests.
    idle_closed: Loop, Family::counter("ringcast_reaped_idle_total", "Idle keep-alive connections closed.");
    /// Connections reaped because their unsent bytes made no progress (stalled or vanished).
    stalled: Loop, Family::counter(
        "ringcast_reaped_stalled_total",
        "Connections reaped for a write stall.",
    );
    /// Connections the kernel gave up on (TCP_USER_TIMEOUT, keepalive): receive ETIMEDOUT.
    tcp_timeouts: Loop, Family::counter(
        "ringcast_reaped_tcp_timeout_total",
        "Connections the kernel gave up on.",
    );
    /// WebSocket upgrades completed.
    websockets: Loop, Family::counter("ringcast_websockets_opened_total", "WebSocket upgrades completed.");
    /// WebSockets failed for breaking the protocol (closed with 1002, 1007 or 1009).
    ws_protocol_errors: Loop, Family::counter(
        "ringcast_ws_protocol_errors_total",
        "WebSockets failed for a protocol error.",
    );
    /// WebSocket pings sent after inbound silence.
    ws_pings: Loop, Family::counter("ringcast_ws_pings_total", "WebSocket pings sent.");
    /// WebSockets closed because a ping went unanswered.
    ws_pong_timeouts: Loop, Family::counter(
        "ringcast_reaped_pong_timeout_total",
        "WebSockets that did not answer a ping.",
    );
    /// Client messages handed to the ingest thread for a backend.
    upstream: Loop, Family::counter(
        "ringcast_upstream_messages_total",
        "Client messages handed to backends.",
    );
    /// Client messages answered with an error: no backend listens, or the queue is full.
    upstream_refused: Loop, Family::counter(
        "ringcast_upstream_refused_total",
        "Client messages refused: no backend or queue full.",
    );
    /// Backend messages for connections that had closed by the time they arrived.
    downstream_dropped: Loop, Family::counter(
        "ringcast_downstream_dropped_total",
        "Backend messages for closed connections.",
    );
    /// Connections refused (429) because their address held --max-conns-per-ip.
    admission_per_ip: Loop, ADMISSION_REFUSALS, "reason" = &["per_ip"];
    /// Connections refused (429) because their address opened them too fast.
    admission_rate: Loop, ADMISSION_REFUSALS, "reason" = &["rate"];
    /// Connections shed (SSE 200 with `retry:`, else 503) at --max-conns.
    admission_shed: Loop, ADMISSION_REFUSALS, "reason" = &["shed"];
    /// Refused connections closed unanswered: their address had enough answers waiting.
    admission_dropped: Loop, ADMISSION_REFUSALS, "reason" = &["dropped"];
    /// WebSocket messages refused for exceeding --ws-msg-rate.
    ws_rate_limited: Loop, Family::counter(
        "ringcast_ws_rate_limited_total",
        "WebSocket messages refused for exceeding --ws-msg-rate.",
    );
    /// WebSockets closed (1008) for going on past --ws-msg-rate.
    ws_rate_closed: Loop, Family::counter(
        "ringcast_ws_rate_closed_total",
        "WebSockets closed with 1008 for going on past --ws-msg-rate.",
    );
    /// In a cluster: stream sequences this node never received (evicted before its consumer
    /// read them), each run told to every stream as a `ringcast.gap`.
    stream_skipped: Loop, Family::counter(
        "ringcast_stream_skipped_total",
        "Stream sequences a cluster node never received (evicted first), told as gaps.",
    );
    /// Requests refused for their token, by [`Refusal::index`].
    auth_refused[Refusal::ALL.len()] as "refused": Auth, Family::counter(
        "ringcast_auth_refusals_total",
        "Requests refused for their token, by reason.",
    ), "reason" = &REFUSALS;
    /// Requests and subscribe ops for a topic the token does not allow (403).
    auth_forbidden as "forbidden": Auth, Family::counter(
        "ringcast_auth_forbidden_total",
        "Requests and subscribe ops for a topic the token does not allow.",
    );
    /// Open connections whose token expired.
    auth_expired as "expired": Auth, Family::counter(
        "ringcast_auth_expired_total",
        "Open connections whose token expired.",
    );
    /// WebSockets that sent a valid refresh token.
    auth_refreshed as "refreshed": Auth, Family::counter(
        "ringcast_auth_refreshed_total",
        "WebSockets that sent a valid refresh token.",
    );
}

/// Where each row's cells start in a [`Snapshot`], and (last) how many cells there are.
const OFFSETS: [usize; TABLE.len() + 1] = {
    let mut offsets = [0; TABLE.len() + 1];
    let mut i = 0;
    while i < TABLE.len() {
        offsets[i + 1] = offsets[i] + TABLE[i].cells;
        i += 1;
    }
    offsets
};

/// How many values a [`Counters`] holds.
pub const CELLS: usize = OFFSETS[TABLE.len()];

/// A field's cells: one counter, or an array of them.
trait Cells {
    fn cells(&self) -> &[AtomicU64];
}

impl Cells for AtomicU64 {
    fn cells(&self) -> &[AtomicU64] {
        std::slice::from_ref(self)
    }
}

impl<const N: usize> Cells for [AtomicU64; N] {
    fn cells(&self) -> &[AtomicU64] {
        self
    }
}

/// The values of one [`Counters`] at one moment (each read relaxed, so not one instant
/// across counters), or the sum of several.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    cells: [u64; CELLS],
}

impl Counters {
    /// Reads every counter.
    pub fn read(&self) -> Snapshot {
        let mut cells = [0; CELLS];
        let mut next = cells.iter_mut();
        self.visit(|counter| {
            if let Some(cell) = next.next() {
                *cell = counter.load(Relaxed);
            }
        });
        Snapshot { cells }
    }
}

impl Snapshot {
    /// The cells of row `row` of [`TABLE`].
    ///
    /// # Panics
    /// If `row` is not below `TABLE.len()`.
    pub fn row(&self, row: usize) -> &[u64] {
        &self.cells[OFFSETS[row]..OFFSETS[row + 1]]
    }

    /// The sum of `snapshots`, cell by cell.
    pub fn total(snapshots: &[Snapshot]) -> Snapshot {
        let mut cells = [0u64; CELLS];
        for s in snapshots {
            for (sum, v) in cells.iter_mut().zip(s.cells) {
                *sum = sum.wrapping_add(v);
            }
        }
        Snapshot { cells }
    }
}

/// The rows of each family, in the order of [`TABLE`]: a run of rows with one family name.
pub fn families() -> impl Iterator<Item = Range<usize>> {
    let mut start = 0;
    std::iter::from_fn(move || {
        let first = TABLE.get(start)?;
        let len = TABLE[start..]
            .iter()
            .take_while(|c| c.family.name == first.family.name)
            .count();
        let rows = start..start + len;
        start += len;
        Some(rows)
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn is_snake(s: &str) -> bool {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    }

    #[test]
    fn keys_are_unique_and_loop_keys_are_field_names() {
        let mut seen = HashSet::new();
        for c in TABLE {
            assert!(is_snake(c.field) && is_snake(c.stat), "{c:?}");
            assert!(
                seen.insert((c.scope, c.stat)),
                "two rows share /stats key {}",
                c.stat
            );
            if c.scope == Scope::Loop {
                assert_eq!(c.stat, c.field, "a loop counter's /stats key is its field's name");
            }
        }
    }

    #[test]
    fn families_are_named_typed_and_stand_together() {
        let mut seen = HashSet::new();
        for rows in families() {
            let first = TABLE[rows.start];
            let family = first.family;
            assert!(seen.insert(family.name), "family {} is split", family.name);
            assert!(
                family.name.starts_with("ringcast_") && is_snake(family.name),
                "{family:?}"
            );
            assert_eq!(
                family.name.ends_with("_total"),
                family.kind == Kind::Counter,
                "counters, and only counters, end in _total: {family:?}"
            );
            assert!(
                family.help.ends_with('.') && !family.help.contains('\n'),
                "{family:?}"
            );
            let mut values = HashSet::new();
            for c in &TABLE[rows.clone()] {
                assert_eq!((c.family, c.scope), (family, first.scope), "{c:?} in {family:?}");
                match c.label {
                    None => assert!(rows.len() == 1 && c.cells == 1, "{c:?} needs a label"),
                    Some(label) => {
                        assert_eq!(label.name, first.label.map(|l| l.name).unwrap_or(""), "{c:?}");
                        assert!(is_snake(label.name) && label.name != "loop", "{c:?}");
                        assert_eq!(label.values.len(), c.cells, "one label value per cell: {c:?}");
                        for v in label.values {
                            assert!(is_snake(v) && values.insert(*v), "{c:?}: value {v}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn snapshots_follow_the_table() {
        let counters = Counters::default();
        let mut n = 0;
        counters.visit(|c| {
            n += 1;
            c.store(n, Relaxed);
        });
        assert_eq!(n as usize, CELLS);
        let snapshot = counters.read();
        let row = |field: &str| TABLE.iter().position(|c| c.field == field).expect(field);
        assert_eq!(snapshot.row(0), [1]);
        assert_eq!(snapshot.row(row("open_ws")), [counters.open_ws.load(Relaxed)]);
        assert_eq!(
            snapshot.row(row("stream_skipped")),
            [counters.stream_skipped.load(Relaxed)]
        );
        let refused: Vec<u64> = counters.auth_refused.iter().map(|c| c.load(Relaxed)).collect();
        assert_eq!(snapshot.row(row("auth_refused")), refused);
        assert_eq!(snapshot.row(TABLE.len() - 1), [CELLS as u64]);
        let total = Snapshot::total(&[snapshot.clone(), snapshot]);
        assert_eq!(total.row(row("open_ws")), [2 * counters.open_ws.load(Relaxed)]);
    }

    #[test]
    fn refusal_labels_follow_the_refusals() {
        for r in Refusal::ALL {
            assert_eq!(REFUSALS[r.index()], r.label());
        }
    }

    /// Dashboards read these names: renaming one breaks them.
    #[test]
    fn published_names_stay() {
        let stats: Vec<&str> = TABLE
            .iter()
            .filter(|c| c.scope == Scope::Loop)
            .map(|c| c.stat)
            .collect();
        assert_eq!(
            stats.join(" "),
            "accepted open open_sse open_ndjson open_ws polls_held queued_bytes accept_full \
             accept_errors recv_enobufs recv_parked recv_unparked bad_requests streams polls resets replayed events \
             sends deliveries slow_closed dropped coalesced slow_disconnected ring_overrun ring_lost \
             replay_gaps heartbeats request_timeouts idle_closed stalled tcp_timeouts websockets \
             ws_protocol_errors ws_pings ws_pong_timeouts upstream upstream_refused \
             downstream_dropped admission_per_ip admission_rate admission_shed admission_dropped \
             ws_rate_limited ws_rate_closed stream_skipped"
        );
        let names: HashSet<&str> = TABLE.iter().map(|c| c.family.name).collect();
        for name in [
            "connections_accepted_total",
            "connections_open",
            "connections_refused_total",
            "accept_errors_total",
            "bad_requests_total",
            "streams_opened_total",
            "websockets_opened_total",
            "polls_total",
            "resets_total",
            "events_replayed_total",
            "events_fanned_out_total",
            "events_delivered_total",
            "events_dropped_total",
            "events_coalesced_total",
            "slow_disconnected_total",
            "slow_closed_total",
            "ring_overrun_events_total",
            "ring_lost_total",
            "replay_gaps_total",
            "heartbeats_total",
            "reaped_request_timeout_total",
            "reaped_idle_total",
            "reaped_stalled_total",
            "reaped_tcp_timeout_total",
            "reaped_pong_timeout_total",
            "ws_pings_total",
            "ws_protocol_errors_total",
            "upstream_messages_total",
            "upstream_refused_total",
            "downstream_dropped_total",
            "stream_skipped_total",
            "ws_rate_limited_total",
            "ws_rate_closed_total",
            "recv_enobufs_total",
            "recv_parked_total",
            "recv_unparked_total",
            "admission_refusals_total",
            "auth_refusals_total",
            "auth_forbidden_total",
            "auth_expired_total",
            "auth_refreshed_total",
        ] {
            assert!(
                names.contains(format!("ringcast_{name}").as_str()),
                "ringcast_{name} is gone"
            );
        }
        let auth: Vec<&str> = TABLE
            .iter()
            .filter(|c| c.scope == Scope::Auth)
            .map(|c| c.stat)
            .collect();
        assert_eq!(auth, ["refused", "forbidden", "expired", "refreshed"]);
    }
}
