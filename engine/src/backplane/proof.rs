//! Proving that a replay read from the stream has no hole in it.
//!
//! Every message ringcast stores names the stream sequence of the previous message of its
//! topic in a `Ringcast-Prev` header, and that claim is checked by JetStream itself: the
//! first message of a topic in each publish batch carries
//! `Nats-Expected-Last-Subject-Sequence` with the same number, so the batch is refused if
//! another node stored a message of that topic in between; later messages of the topic in
//! the same atomic batch are stored right after one another, so they name their
//! predecessor by distance (`-1`, `-3`: that many sequence numbers back).
//!
//! The stream's limits (messages per subject, age, bytes) evict oldest first, so what it
//! still holds of a topic is always the topic's newest messages. For a client that has
//! seen everything up to `after`, a topic's replay is whole exactly when:
//!
//! - the first held message of the topic after `after` names a predecessor at or before
//!   `after` (nothing of the topic came between); or
//! - no held message of the topic is in `(after, cut]`, and the topic's newest message at
//!   or before `cut` is still held (it is then at or before `after`: nothing came after
//!   it); or
//! - the topic has no held message at all and the stream has evicted nothing after
//!   `after` (its first sequence is at most `after + 1`): a topic never published.
//!
//! Anything else (a predecessor after `after`, a message without the header, a topic all
//! of whose messages aged out) is a hole, and the client is told so.

/// The header naming a message's predecessor in its topic.
pub const PREV_HEADER: &str = "Ringcast-Prev";

/// The predecessor of a stored message, as its header states it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prev {
    /// The stream sequence of the topic's previous message; 0 for the topic's first.
    Seq(u64),
    /// No usable header: a message ringcast did not write.
    Unknown,
}

impl Prev {
    /// Reads the header of the message stored at `seq`: `N` names sequence `N`, `-D` the
    /// message `D` sequences back (a predecessor in the same atomic batch).
    pub fn parse(header: Option<&str>, seq: u64) -> Prev {
        let Some(value) = header else {
            return Prev::Unknown;
        };
        match value.strip_prefix('-') {
            Some(back) => back
                .parse::<u64>()
                .ok()
                .filter(|&d| d >= 1 && d < seq)
                .map_or(Prev::Unknown, |d| Prev::Seq(seq - d)),
            None => value
                .parse::<u64>()
                .ok()
                .filter(|&p| p < seq)
                .map_or(Prev::Unknown, Prev::Seq),
        }
    }
}

/// What the stream showed of one topic for a replay of `(after, cut]`.
#[derive(Clone, Copy, Debug)]
pub struct Evidence {
    /// The first held message of the topic after `after` and at or before `cut`, with
    /// its predecessor.
    pub first: Option<(u64, Prev)>,
    /// With no such message: whether the topic's newest message at or before `cut` is
    /// held.
    pub held_before: bool,
}

/// Whether the topic's replay after `after` is whole (see the module docs).
/// `stream_first` is the stream's first held sequence.
pub fn whole(after: u64, evidence: Evidence, stream_first: u64) -> bool {
    match evidence.first {
        Some((_, Prev::Seq(prev))) => prev <= after,
        Some((_, Prev::Unknown)) => false,
        None => evidence.held_before || stream_first <= after.saturating_add(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_name_a_predecessor_absolutely_or_by_distance() {
        assert_eq!(Prev::parse(Some("0"), 1), Prev::Seq(0));
        assert_eq!(Prev::parse(Some("41"), 50), Prev::Seq(41));
        assert_eq!(Prev::parse(Some("-1"), 50), Prev::Seq(49));
        assert_eq!(Prev::parse(Some("-3"), 50), Prev::Seq(47));
        for bad in ["50", "51", "-0", "-50", "x", "", "-"] {
            assert_eq!(Prev::parse(Some(bad), 50), Prev::Unknown, "{bad:?}");
        }
        assert_eq!(Prev::parse(None, 50), Prev::Unknown);
    }

    #[test]
    fn a_replay_is_whole_only_when_the_stream_proves_it() {
        let first = |seq, prev| Evidence {
            first: Some((seq, Prev::Seq(prev))),
            held_before: false,
        };
        let none = |held_before| Evidence {
            first: None,
            held_before,
        };
        // The topic's first message after 10 follows 7 (the client saw it) or 12 (lost).
        assert!(whole(10, first(15, 7), 1));
        assert!(whole(10, first(15, 10), 1));
        assert!(!whole(10, first(15, 12), 1));
        assert!(whole(10, first(15, 0), 100), "the topic's very first message");
        let unknown = Evidence {
            first: Some((15, Prev::Unknown)),
            held_before: false,
        };
        assert!(!whole(10, unknown, 1));
        // Nothing after 10: whole if its latest is still there, or nothing was evicted.
        assert!(whole(10, none(true), 500));
        assert!(whole(10, none(false), 11));
        assert!(!whole(10, none(false), 12), "all of it may have aged out");
    }
}
