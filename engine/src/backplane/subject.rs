//! Topic names as NATS subjects: `<prefix>.<token>`, one token per topic.
//!
//! Topics are 1-200 bytes of `[A-Za-z0-9._~:/-]`, and a dot in a NATS subject separates
//! tokens (so `a..b` or `.a` would be invalid subjects, and `a.b` would be two tokens a
//! wildcard treats differently from `a~b`). Each topic therefore becomes a single token:
//! `~` is written `~7E` and `.` is written `~2E`; every other topic byte is a valid subject
//! byte as it is. The mapping is one to one, so a subject read back from the stream names
//! exactly one topic, and `<prefix>.*` matches every topic and nothing else.
use crate::proto::http::is_valid_topic;

/// The subject carrying `topic`'s events.
pub fn of_topic(prefix: &str, topic: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + 1 + topic.len() + 8);
    out.push_str(prefix);
    out.push('.');
    for c in topic.chars() {
        match c {
            '~' => out.push_str("~7E"),
            '.' => out.push_str("~2E"),
            c => out.push(c),
        }
    }
    out
}

/// The topic a subject of `prefix` carries, or `None` when it is not one ([`of_topic`]
/// never makes it).
pub fn topic_of(prefix: &str, subject: &str) -> Option<String> {
    let token = subject.strip_prefix(prefix)?.strip_prefix('.')?;
    let mut out = String::with_capacity(token.len());
    let mut rest = token;
    while let Some(at) = rest.find(['~', '.']) {
        out.push_str(&rest[..at]);
        let escape = rest.get(at..at + 3)?;
        match escape {
            "~7E" => out.push('~'),
            "~2E" => out.push('.'),
            _ => return None,
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    is_valid_topic(out.as_bytes()).then_some(out)
}

/// The wildcard every topic subject of `prefix` matches.
pub fn all_topics(prefix: &str) -> String {
    format!("{prefix}.*")
}

/// The subject of the `SEND`s other nodes relay to `node`:
/// `ringcast-relay.<stream>.send.<node>`, the node id escaped like a topic (its dots
/// would split the token). Four tokens: no stream's `<name>.*` can capture it.
pub fn node_sends(stream: &str, node: &str) -> String {
    of_topic(&format!("ringcast-relay.{stream}.send"), node)
}

/// The subject of client messages for a backend on any node:
/// `ringcast-relay.<stream>.up`. Three tokens, outside every stream like [`node_sends`].
pub fn upstream(stream: &str) -> String {
    format!("ringcast-relay.{stream}.up")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn dots_and_tildes_are_escaped_into_one_token() {
        assert_eq!(of_topic("RC", "news"), "RC.news");
        assert_eq!(of_topic("RC", "user.42.inbox"), "RC.user~2E42~2Einbox");
        assert_eq!(of_topic("RC", "a~b"), "RC.a~7Eb");
        assert_eq!(of_topic("RC", ".."), "RC.~2E~2E");
        assert_eq!(
            topic_of("RC", "RC.user~2E42~2Einbox").as_deref(),
            Some("user.42.inbox")
        );
        for bad in [
            "RC", "RC.", "RCX.a", "RC.a.b", "RC.a~", "RC.a~41", "RC.a b", "XX.a",
        ] {
            assert_eq!(topic_of("RC", bad), None, "{bad}");
        }
    }

    #[test]
    fn relay_subjects_stay_out_of_every_stream() {
        assert_eq!(node_sends("RC", "node-1"), "ringcast-relay.RC.send.node-1");
        assert_eq!(node_sends("RC", "a.b"), "ringcast-relay.RC.send.a~2Eb");
        assert_ne!(node_sends("RC", "a.b"), node_sends("RC", "a~2Eb"));
        assert_eq!(upstream("RC"), "ringcast-relay.RC.up");
        // A stream's subjects are exactly two tokens (`<name>.*`); these are more.
        for subject in [node_sends("RC", "a.b"), upstream("RC")] {
            assert!(subject.split('.').count() > 2, "{subject}");
        }
    }

    proptest! {
        #[test]
        fn every_topic_round_trips_through_one_token(topic in "[A-Za-z0-9._~:/-]{1,200}") {
            let subject = of_topic("RINGCAST", &topic);
            let token = subject.strip_prefix("RINGCAST.").unwrap();
            prop_assert!(!token.contains('.') && !token.is_empty());
            prop_assert_eq!(topic_of("RINGCAST", &subject), Some(topic));
        }
    }
}
