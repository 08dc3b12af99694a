//! The one-line text protocol from a `hold-worker` process to its parent, on the
//! worker's stdout; the parent's only command back is the line `close` on its stdin.
//!
//! Lines are space-separated `key=value` fields after a verb:
//!
//! ```text
//! progress held=1200 failed=0
//! result held=2000 ramp_ms=431 fail=connect/ECONNREFUSED:3,timeout/connect:1 lat=120:5,131:2
//! closed dropped=0 repolls=0
//! ```
//!
//! `lat` lists latency histogram buckets as `microseconds:count`. Failure kinds never
//! contain `:`, `,`, `=` or spaces ([`sanitize_kind`] sees to it).

use std::collections::BTreeMap;

/// The command a parent writes to a worker's stdin to make it close and exit.
pub const CLOSE: &str = "close";

/// What a worker reports at the end of its connect phase.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerResult {
    /// Connections held at the end of the connect phase.
    pub held: u64,
    /// Wall time of the connect phase, milliseconds.
    pub ramp_ms: u64,
    /// Failed connections by kind.
    pub failures: BTreeMap<String, u64>,
    /// Connect + handshake latency histogram, `(microseconds, count)` per bucket.
    pub latency_us: Vec<(u64, u64)>,
}

/// One line from a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// Running totals during the connect phase.
    Progress {
        /// Connections held so far.
        held: u64,
        /// Connections failed so far.
        failed: u64,
    },
    /// The connect phase is over; the worker now holds until told `close`.
    Result(WorkerResult),
    /// The worker closed everything; `dropped` connections were lost while holding.
    Closed {
        /// Held connections the server closed during the hold phase.
        dropped: u64,
        /// Long-polls answered and re-issued while holding.
        repolls: u64,
    },
}

/// Replaces the characters the line format reserves.
pub fn sanitize_kind(kind: &str) -> String {
    kind.chars()
        .map(|c| match c {
            ':' | ',' | '=' | ' ' | '\n' | '\r' | '\t' => '_',
            c => c,
        })
        .collect()
}

/// Encodes a line, without its newline.
pub fn encode(line: &Line) -> String {
    match line {
        Line::Progress { held, failed } => format!("progress held={held} failed={failed}"),
        Line::Closed { dropped, repolls } => format!("closed dropped={dropped} repolls={repolls}"),
        Line::Result(r) => {
            let fail: Vec<String> = r
                .failures
                .iter()
                .map(|(k, n)| format!("{}:{n}", sanitize_kind(k)))
                .collect();
            let lat: Vec<String> = r.latency_us.iter().map(|(v, n)| format!("{v}:{n}")).collect();
            format!(
                "result held={} ramp_ms={} fail={} lat={}",
                r.held,
                r.ramp_ms,
                fail.join(","),
                lat.join(",")
            )
        }
    }
}

/// Decodes one line (trailing whitespace ignored).
///
/// # Errors
/// A message naming the field that did not parse.
pub fn decode(line: &str) -> Result<Line, String> {
    let mut words = line.split_whitespace();
    let verb = words.next().ok_or("empty line")?;
    let fields: BTreeMap<&str, &str> = words.filter_map(|w| w.split_once('=')).collect();
    let num = |key: &str| -> Result<u64, String> {
        let v = fields.get(key).ok_or(format!("no {key}= in {verb} line"))?;
        v.parse().map_err(|_| format!("{key}={v} is not a number"))
    };
    match verb {
        "progress" => Ok(Line::Progress {
            held: num("held")?,
            failed: num("failed")?,
        }),
        "closed" => Ok(Line::Closed {
            dropped: num("dropped")?,
            repolls: num("repolls")?,
        }),
        "result" => {
            let failures = pairs(fields.get("fail").copied().unwrap_or(""))?
                .into_iter()
                .map(|(k, n)| (k.to_owned(), n))
                .collect();
            let latency_us = pairs(fields.get("lat").copied().unwrap_or(""))?
                .into_iter()
                .map(|(v, n)| v.parse().map(|v| (v, n)))
                .collect::<Result<_, _>>()
                .map_err(|_| "lat= holds a bucket that is not a number".to_owned())?;
            Ok(Line::Result(WorkerResult {
                held: num("held")?,
                ramp_ms: num("ramp_ms")?,
                failures,
                latency_us,
            }))
        }
        other => Err(format!("unknown verb {other:?}")),
    }
}

/// Parses `a:1,b:2` (possibly empty) into pairs.
fn pairs(list: &str) -> Result<Vec<(&str, u64)>, String> {
    list.split(',')
        .filter(|item| !item.is_empty())
        .map(|item| {
            let (key, n) = item
                .rsplit_once(':')
                .ok_or(format!("{item:?} is not key:count"))?;
            let n = n.parse().map_err(|_| format!("{item:?} has no count"))?;
            Ok((key, n))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_round_trips() {
        let mut failures = BTreeMap::new();
        failures.insert("connect/ECONNREFUSED".to_owned(), 3);
        failures.insert("status/503".to_owned(), 1);
        let lines = [
            Line::Progress { held: 5, failed: 1 },
            Line::Closed {
                dropped: 0,
                repolls: 3,
            },
            Line::Result(WorkerResult::default()),
            Line::Result(WorkerResult {
                held: 19_000,
                ramp_ms: 2_345,
                failures,
                latency_us: vec![(120, 5), (131, 18_995)],
            }),
        ];
        for line in lines {
            let text = encode(&line);
            assert!(!text.contains('\n'), "{text}");
            assert_eq!(decode(&text), Ok(line), "{text}");
        }
    }

    #[test]
    fn reserved_characters_in_kinds_are_replaced() {
        let mut failures = BTreeMap::new();
        failures.insert("odd: kind,=x".to_owned(), 2);
        let text = encode(&Line::Result(WorkerResult {
            failures,
            ..WorkerResult::default()
        }));
        let Ok(Line::Result(r)) = decode(&text) else {
            panic!("{text}");
        };
        assert_eq!(r.failures.get("odd__kind__x"), Some(&2));
    }

    #[test]
    fn broken_lines_are_errors() {
        assert!(decode("").is_err());
        assert!(decode("hello held=1").is_err());
        assert!(decode("progress held=x failed=0").is_err());
        assert!(decode("progress held=1").is_err());
        assert!(decode("result held=1 ramp_ms=2 fail=a lat=").is_err());
        assert!(decode("result held=1 ramp_ms=2 fail= lat=x:1").is_err());
    }
}
