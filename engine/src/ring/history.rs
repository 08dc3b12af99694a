//! The replay history: the most recent events of each topic, kept so that a client
//! reconnecting with `Last-Event-ID` gets exactly what it missed, and told when that is
//! no longer possible.
//!
//! Everything is bounded: events per topic, bytes per topic, age, the number of topics
//! and the bytes of all topics together. Every eviction is remembered as a sequence
//! number (`evicted_upto` per topic, `forgotten_upto` for whole topics dropped), so that
//! [`History::since`] can tell a complete replay from one with a hole in it.
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the history needs to know about an event.
pub trait Retained {
    /// Global sequence number: unique and increasing across all topics.
    fn seq(&self) -> u64;
    fn topic(&self) -> &str;
    /// Bytes this event keeps alive, for the byte budgets.
    fn cost(&self) -> usize;
    fn published(&self) -> Instant;
}

/// The history's budgets.
#[derive(Clone, Copy, Debug)]
pub struct HistoryLimits {
    pub events_per_topic: usize,
    pub bytes_per_topic: usize,
    pub max_age: Duration,
    pub topics_max: usize,
    pub bytes_total: usize,
}

struct TopicLog<T> {
    events: VecDeque<Arc<T>>,
    bytes: usize,
    /// The highest sequence number this topic has evicted (0: none).
    evicted_upto: u64,
}

/// The answer to a replay request.
pub struct Replay<T> {
    /// Retained events of the requested topics in the requested range, in sequence order.
    pub events: Vec<Arc<T>>,
    /// False when some event of these topics newer than the requested point was evicted
    /// (or may have been: a whole topic forgotten), so the client has a hole.
    pub complete: bool,
    /// The events stopped at the page's limits; more follow the last one.
    pub more: bool,
}

/// How much one [`History::page`] returns.
#[derive(Clone, Copy, Debug)]
pub struct PageLimits {
    pub events: usize,
    /// Bytes as the events' [`Retained::cost`].
    pub bytes: usize,
}

impl PageLimits {
    /// No limit: the whole range.
    pub const ALL: PageLimits = PageLimits {
        events: usize::MAX,
        bytes: usize::MAX,
    };
}

/// Per-topic event logs with global budgets.
pub struct History<T> {
    /// Each name is allocated once, when its topic enters the table, and shared with
    /// `by_recency`: an insert into a known topic allocates no name.
    topics: HashMap<Arc<str>, TopicLog<T>>,
    /// Topics by the sequence number of their newest event: the first is the least
    /// recently published, evicted first when a global budget is exceeded.
    by_recency: BTreeMap<u64, Arc<str>>,
    /// The highest sequence number of any topic dropped from the table whole.
    forgotten_upto: u64,
    bytes_total: usize,
    limits: HistoryLimits,
}

impl<T: Retained> History<T> {
    pub fn new(limits: HistoryLimits) -> Self {
        History {
            topics: HashMap::new(),
            by_recency: BTreeMap::new(),
            forgotten_upto: 0,
            bytes_total: 0,
            limits,
        }
    }

    /// A history that knows nothing at or before `origin`: a resume from before it is
    /// never complete (a node joining a cluster's stream at `origin`).
    pub fn with_origin(limits: HistoryLimits, origin: u64) -> Self {
        History {
            forgotten_upto: origin,
            ..History::new(limits)
        }
    }

    pub fn topics(&self) -> usize {
        self.topics.len()
    }

    pub fn bytes(&self) -> usize {
        self.bytes_total
    }

    /// Appends `event` to its topic, then evicts to stay within every budget.
    pub fn insert(&mut self, event: Arc<T>, now: Instant) {
        let seq = event.seq();
        let cost = event.cost();
        let name = match self.topics.get_key_value(event.topic()) {
            Some((name, _)) => Arc::clone(name),
            None => {
                while self.topics.len() >= self.limits.topics_max.max(1) {
                    self.forget_oldest_topic();
                }
                // A topic may be one the table dropped earlier: it inherits everything
                // ever forgotten as possibly its own, so resuming across the drop reports
                // the hole.
                let name: Arc<str> = event.topic().into();
                let log = TopicLog {
                    events: VecDeque::new(),
                    bytes: 0,
                    evicted_upto: self.forgotten_upto,
                };
                self.topics.insert(Arc::clone(&name), log);
                name
            }
        };
        let log = self.topics.get_mut(&*name).expect("inserted above");
        if let Some(last) = log.events.back() {
            self.by_recency.remove(&last.seq());
        }
        log.events.push_back(event);
        log.bytes += cost;
        self.bytes_total += cost;
        self.by_recency.insert(seq, Arc::clone(&name));
        self.trim_topic(&name, now);
        while self.bytes_total > self.limits.bytes_total {
            if !self.evict_globally_oldest(&name) {
                break;
            }
        }
    }

    /// Drops events older than the age budget across all topics, oldest topics first.
    /// Cheap when nothing is due: it stops at the first topic with a fresh event.
    pub fn expire(&mut self, now: Instant) {
        while let Some((_, name)) = self.by_recency.first_key_value() {
            let name = Arc::clone(name);
            let log = &self.topics[&*name];
            let newest = log.events.back().map(|e| e.published());
            if newest.is_some_and(|t| now.duration_since(t) <= self.limits.max_age) {
                break;
            }
            self.forget_topic(&name);
        }
    }

    /// Retained events of `topics` with `after < seq <= upto`, in order. `complete` is
    /// false when one of those topics lost an event newer than `after`.
    pub fn since(&self, topics: &[&str], after: u64, upto: u64, now: Instant) -> Replay<T> {
        self.page(topics, after, upto, PageLimits::ALL, now)
    }

    /// The first of those events that fit `limits` (at least one, however large), merged
    /// across topics in sequence order. `more` says the page stopped at a limit: the
    /// next page starts after its last event.
    pub fn page(
        &self,
        topics: &[&str],
        after: u64,
        upto: u64,
        limits: PageLimits,
        now: Instant,
    ) -> Replay<T> {
        let mut complete = true;
        // One cursor per topic into its log, merged by taking the lowest sequence number:
        // a connection has at most a few dozen topics, so a scan beats a heap.
        let mut cursors: Vec<(&VecDeque<Arc<T>>, usize)> = Vec::with_capacity(topics.len());
        for topic in topics {
            match self.topics.get(*topic) {
                Some(log) => {
                    if log.evicted_upto > after {
                        complete = false;
                    }
                    cursors.push((&log.events, log.events.partition_point(|e| e.seq() <= after)));
                }
                None if self.forgotten_upto > after => complete = false,
                None => {}
            }
        }
        let mut events = Vec::new();
        let mut bytes = 0;
        let mut more = false;
        loop {
            let next = cursors
                .iter()
                .enumerate()
                .filter_map(|(i, (log, at))| log.get(*at).map(|e| (i, e)))
                .filter(|(_, e)| e.seq() <= upto)
                .min_by_key(|(_, e)| e.seq());
            let Some((i, event)) = next else {
                break;
            };
            if !events.is_empty() && (events.len() >= limits.events || bytes + event.cost() > limits.bytes) {
                more = true;
                break;
            }
            cursors[i].1 += 1;
            if now.duration_since(event.published()) > self.limits.max_age {
                complete = false;
                continue;
            }
            bytes += event.cost();
            events.push(Arc::clone(event));
        }
        Replay {
            events,
            complete,
            more,
        }
    }

    /// Every retained event of `topic` with `seq <= upto`, in order (none past the age
    /// budget), and the highest sequence number of the topic known lost: evicted,
    /// forgotten with the topic, or past the age budget. A replay of these events after
    /// `after` is complete, as [`History::page`] would say, iff that number is `<= after`.
    pub fn log_of(&self, topic: &str, upto: u64, now: Instant) -> (Vec<Arc<T>>, u64) {
        let Some(log) = self.topics.get(topic) else {
            return (Vec::new(), self.forgotten_upto);
        };
        let mut lost_upto = log.evicted_upto;
        let mut events = Vec::with_capacity(log.events.len());
        for event in log.events.iter().take_while(|e| e.seq() <= upto) {
            if now.duration_since(event.published()) > self.limits.max_age {
                lost_upto = lost_upto.max(event.seq());
            } else {
                events.push(Arc::clone(event));
            }
        }
        (events, lost_upto)
    }

    fn trim_topic(&mut self, name: &str, now: Instant) {
        let limits = self.limits;
        let log = self.topics.get_mut(name).expect("topic present");
        while let Some(front) = log.events.front() {
            let over = log.events.len() > limits.events_per_topic
                || log.bytes > limits.bytes_per_topic
                || now.duration_since(front.published()) > limits.max_age;
            // The newest event always stays, whatever its size: a publish that was
            // acknowledged must be replayable at least until the next one.
            if !over || log.events.len() == 1 {
                break;
            }
            let gone = log.events.pop_front().expect("front exists");
            log.bytes -= gone.cost();
            self.bytes_total -= gone.cost();
            log.evicted_upto = log.evicted_upto.max(gone.seq());
        }
    }

    /// Evicts one event from the least recently published topic other than `keep`'s
    /// newest event. Returns false when nothing can be evicted.
    fn evict_globally_oldest(&mut self, keep: &str) -> bool {
        let Some((_, name)) = self.by_recency.first_key_value() else {
            return false;
        };
        let name = name.clone();
        let log = self.topics.get_mut(&name).expect("indexed topic present");
        if &*name == keep && log.events.len() <= 1 {
            return false;
        }
        if log.events.len() <= 1 {
            self.forget_topic(&name);
            return true;
        }
        let gone = log.events.pop_front().expect("non-empty");
        log.bytes -= gone.cost();
        self.bytes_total -= gone.cost();
        log.evicted_upto = log.evicted_upto.max(gone.seq());
        true
    }

    fn forget_oldest_topic(&mut self) {
        if let Some((_, name)) = self.by_recency.first_key_value() {
            let name = name.clone();
            self.forget_topic(&name);
        }
    }

    fn forget_topic(&mut self, name: &str) {
        if let Some(log) = self.topics.remove(name) {
            let newest = log.events.back().map_or(0, |e| e.seq());
            self.by_recency.remove(&newest);
            self.bytes_total -= log.bytes;
            self.forgotten_upto = self.forgotten_upto.max(newest).max(log.evicted_upto);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Ev {
        seq: u64,
        topic: String,
        cost: usize,
        at: Instant,
    }
    impl Retained for Ev {
        fn seq(&self) -> u64 {
            self.seq
        }
        fn topic(&self) -> &str {
            &self.topic
        }
        fn cost(&self) -> usize {
            self.cost
        }
        fn published(&self) -> Instant {
            self.at
        }
    }

    fn limits() -> HistoryLimits {
        HistoryLimits {
            events_per_topic: 3,
            bytes_per_topic: 1000,
            max_age: Duration::from_secs(60),
            topics_max: 2,
            bytes_total: 10_000,
        }
    }

    fn ev(seq: u64, topic: &str, at: Instant) -> Arc<Ev> {
        Arc::new(Ev {
            seq,
            topic: topic.into(),
            cost: 100,
            at,
        })
    }

    fn seqs(r: &Replay<Ev>) -> Vec<u64> {
        r.events.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn replays_missed_events_across_topics_in_order() {
        let now = Instant::now();
        let mut h = History::new(limits());
        for (seq, t) in [(1, "a"), (2, "b"), (3, "a"), (4, "b")] {
            h.insert(ev(seq, t, now), now);
        }
        let r = h.since(&["a", "b"], 1, 4, now);
        assert_eq!(seqs(&r), vec![2, 3, 4]);
        assert!(r.complete);
        let r = h.since(&["a", "b"], 1, 3, now);
        assert_eq!(seqs(&r), vec![2, 3], "nothing past the reader's cursor");
    }

    #[test]
    fn count_eviction_makes_an_older_resume_incomplete() {
        let now = Instant::now();
        let mut h = History::new(limits());
        for seq in 1..=5 {
            h.insert(ev(seq, "a", now), now);
        }
        assert_eq!(seqs(&h.since(&["a"], 0, 5, now)), vec![3, 4, 5]);
        assert!(!h.since(&["a"], 1, 5, now).complete, "events 2 was evicted");
        assert!(h.since(&["a"], 2, 5, now).complete, "nothing after 2 was evicted");
    }

    #[test]
    fn forgotten_topics_are_reported_as_holes() {
        let now = Instant::now();
        let mut h = History::new(limits());
        h.insert(ev(1, "a", now), now);
        h.insert(ev(2, "b", now), now);
        h.insert(ev(3, "c", now), now); // topics_max 2: "a" goes
        assert_eq!(h.topics(), 2);
        assert!(!h.since(&["a"], 0, 3, now).complete);
        assert!(h.since(&["a"], 1, 3, now).complete, "a's last event was 1");
        assert!(h.since(&["zzz"], 3, 3, now).complete);
        h.insert(ev(4, "a", now), now);
        assert!(
            !h.since(&["a"], 0, 4, now).complete,
            "a came back, but event 1 is still gone"
        );
        assert_eq!(seqs(&h.since(&["a"], 1, 4, now)), vec![4]);
    }

    #[test]
    fn age_expires_events_and_topics() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(61);
        let mut h = History::new(limits());
        h.insert(ev(1, "a", t0), t0);
        let r = h.since(&["a"], 0, 1, later);
        assert!(r.events.is_empty() && !r.complete);
        h.expire(later);
        assert_eq!(h.topics(), 0);
        assert_eq!(h.bytes(), 0);
        h.insert(ev(2, "a", later), later);
        assert!(
            !h.since(&["a"], 0, 2, later).complete,
            "expired event 1 stays a hole"
        );
    }

    #[test]
    fn total_byte_budget_evicts_least_recent_topic_first() {
        let now = Instant::now();
        let mut h = History::new(HistoryLimits {
            bytes_total: 300,
            topics_max: 10,
            ..limits()
        });
        h.insert(ev(1, "a", now), now);
        h.insert(ev(2, "a", now), now);
        h.insert(ev(3, "b", now), now);
        h.insert(ev(4, "c", now), now);
        assert!(h.bytes() <= 300);
        assert_eq!(seqs(&h.since(&["a", "b", "c"], 0, 4, now)), vec![2, 3, 4]);
    }

    /// `log_of` agrees with `page` on every resume point: the same events after it, and
    /// the same word on completeness.
    #[test]
    fn log_of_agrees_with_page() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(61);
        let mut h = History::new(HistoryLimits {
            events_per_topic: 4,
            topics_max: 2,
            ..limits()
        });
        for seq in 1..=12 {
            let at = if seq < 9 { t0 } else { later };
            h.insert(ev(seq, ["a", "b"][seq as usize % 2], at), at);
        }
        h.insert(ev(13, "c", later), later); // topics_max 2: "a" or "b" is forgotten
        for topic in ["a", "b", "c", "zzz"] {
            for now in [t0, later, later + Duration::from_secs(1)] {
                for upto in [8, 13] {
                    let (events, lost_upto) = h.log_of(topic, upto, now);
                    for after in 0..=13 {
                        let page = h.since(&[topic], after, upto, now);
                        let mine: Vec<u64> = events.iter().map(|e| e.seq).filter(|&s| s > after).collect();
                        assert_eq!(mine, seqs(&page), "{topic} after {after} upto {upto}");
                        assert_eq!(
                            lost_upto <= after,
                            page.complete,
                            "{topic} after {after} upto {upto}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn pages_merge_topics_in_order_and_continue_where_they_stopped() {
        let now = Instant::now();
        let mut h = History::new(HistoryLimits {
            events_per_topic: 100,
            topics_max: 10,
            ..limits()
        });
        for seq in 1..=9 {
            h.insert(ev(seq, ["a", "b", "c"][seq as usize % 3], now), now);
        }
        let two = PageLimits {
            events: 2,
            bytes: usize::MAX,
        };
        let mut after = 0;
        let mut all = Vec::new();
        loop {
            let page = h.page(&["a", "b"], after, 8, two, now);
            assert!(page.complete && page.events.len() <= 2);
            all.extend(seqs(&page));
            after = page.events.last().map_or(after, |e| e.seq);
            if !page.more {
                break;
            }
        }
        assert_eq!(all, vec![1, 3, 4, 6, 7], "c's events and 9 (past upto) left out");
        let bytes = PageLimits {
            events: 100,
            bytes: 250,
        };
        assert_eq!(seqs(&h.page(&["a", "b", "c"], 0, 9, bytes, now)), vec![1, 2]);
        let tiny = PageLimits {
            events: 100,
            bytes: 1,
        };
        assert_eq!(
            seqs(&h.page(&["a"], 0, 9, tiny, now)),
            vec![3],
            "one event always fits"
        );
    }
}
