//! A single-producer, multi-consumer broadcast ring with sequence-stamped slots, after
//! the LMAX Disruptor (Thompson et al., 2011), with one change: the producer never waits
//! for a consumer.
//!
//! The producer writes item `seq` into slot `seq & mask` and stamps it with `seq`, then
//! advances `head`. Every consumer keeps its own cursor. A consumer that falls more than
//! the capacity behind finds a newer stamp in the slot it wanted: it has been overrun,
//! and it learns exactly which sequence numbers it lost.
//!
//! Each slot is guarded by its own tiny mutex so that a consumer cloning an `Arc` out of
//! a slot can never race with the producer dropping the old one. The critical section on
//! either side is a stamp compare and one refcount change; the producer may wait for that,
//! never for a consumer to catch up.
//!
//! Parking: a consumer about to sleep sets its `parked` flag and re-reads `head`; the
//! producer advances `head` and then reads the flags. Both sides use `SeqCst`, so at least
//! one of them sees the other (Dekker), and no wake-up is lost.
//!
//! Flow control (the producer waiting while a consumer trails by more than a bound) uses
//! the same handshake the other way round: the producer sets a consumer's `mark` and
//! re-reads its cursor; the consumer stores its cursor and then reads the mark
//! ([`Broadcast::reached_mark`]), and tells the producer once it has passed it.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

struct Slot<T> {
    seq: u64,
    item: Option<Arc<T>>,
}

/// What a consumer finds at a sequence number.
pub enum Read<T> {
    /// The item published with that sequence number.
    Item(Arc<T>),
    /// The slot already holds a newer item: everything before `head - capacity` is gone.
    Overrun,
    /// Not published yet.
    Empty,
}

/// Per-consumer state the producer can see.
#[derive(Default)]
struct Reader {
    parked: AtomicBool,
    /// The next sequence number this consumer will read.
    cursor: AtomicU64,
    /// The producer waits for this consumer to reach this sequence number (0: it does not).
    mark: AtomicU64,
}

/// The ring. Sequence numbers start at 1.
pub struct Broadcast<T> {
    slots: Box<[Mutex<Slot<T>>]>,
    mask: u64,
    /// The next sequence number the producer will write.
    head: AtomicU64,
    readers: Box<[Reader]>,
}

impl<T> Broadcast<T> {
    /// A ring of `capacity` slots (a power of two) for `readers` consumers.
    ///
    /// # Panics
    /// If `capacity` is not a power of two.
    pub fn new(capacity: usize, readers: usize) -> Arc<Self> {
        assert!(
            capacity.is_power_of_two(),
            "ring capacity {capacity} must be a power of two"
        );
        let slots = (0..capacity)
            .map(|_| Mutex::new(Slot { seq: 0, item: None }))
            .collect();
        let readers: Box<[Reader]> = (0..readers).map(|_| Reader::default()).collect();
        for r in readers.iter() {
            r.cursor.store(1, Ordering::Relaxed);
        }
        Arc::new(Broadcast {
            slots,
            mask: capacity as u64 - 1,
            head: AtomicU64::new(1),
            readers,
        })
    }

    pub fn capacity(&self) -> u64 {
        self.mask + 1
    }

    /// The next sequence number to be published: every `seq < head()` is readable (or overrun).
    pub fn head(&self) -> u64 {
        self.head.load(Ordering::SeqCst)
    }

    fn slot(&self, seq: u64) -> std::sync::MutexGuard<'_, Slot<T>> {
        self.slots[(seq & self.mask) as usize]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads item `seq`.
    pub fn read(&self, seq: u64) -> Read<T> {
        let slot = self.slot(seq);
        match slot.seq.cmp(&seq) {
            std::cmp::Ordering::Equal => match &slot.item {
                Some(item) => Read::Item(Arc::clone(item)),
                // Released by the producer: only possible once every reader is past it.
                None => Read::Overrun,
            },
            std::cmp::Ordering::Greater => Read::Overrun,
            std::cmp::Ordering::Less => Read::Empty,
        }
    }

    /// Records that consumer `reader` has consumed everything below `cursor`.
    pub fn set_cursor(&self, reader: usize, cursor: u64) {
        // SeqCst, not Release: the store must be ordered before `reached_mark`'s load.
        self.readers[reader].cursor.store(cursor, Ordering::SeqCst);
    }

    /// After [`Broadcast::set_cursor`]: true, exactly once per mark, when the producer
    /// waits for this consumer ([`Broadcast::watch`]) and `cursor` has reached the mark;
    /// the consumer must then wake the producer.
    pub fn reached_mark(&self, reader: usize, cursor: u64) -> bool {
        let r = &self.readers[reader];
        let mark = r.mark.load(Ordering::SeqCst);
        mark != 0
            && cursor >= mark
            && r.mark
                .compare_exchange(mark, 0, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
    }

    /// How far the slowest consumer trails the head, in items.
    pub fn lag(&self) -> u64 {
        let head = self.head();
        self.readers
            .iter()
            .map(|r| head.saturating_sub(r.cursor.load(Ordering::SeqCst)))
            .max()
            .unwrap_or(0)
    }

    /// Asks every consumer whose cursor is below `mark` to report when it reaches it
    /// ([`Broadcast::reached_mark`]). Returns the lag re-read after the marks are set: a
    /// consumer that passes its mark after this read is sure to see the mark, so a
    /// producer that waits while this is over its bound is always woken.
    pub fn watch(&self, mark: u64) -> u64 {
        for r in self.readers.iter() {
            if r.cursor.load(Ordering::SeqCst) < mark {
                r.mark.store(mark, Ordering::SeqCst);
            }
        }
        self.lag()
    }

    /// Marks consumer `reader` as about to sleep. Returns false when items arrived at or
    /// after `cursor` in the meantime: the consumer must not sleep then.
    pub fn park(&self, reader: usize, cursor: u64) -> bool {
        self.readers[reader].parked.store(true, Ordering::SeqCst);
        if self.head.load(Ordering::SeqCst) > cursor {
            self.readers[reader].parked.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Clears consumer `reader`'s parked flag after it wakes.
    pub fn unpark(&self, reader: usize) {
        self.readers[reader].parked.store(false, Ordering::SeqCst);
    }

    /// The next sequence number consumer `reader` will read.
    pub fn cursor(&self, reader: usize) -> u64 {
        self.readers[reader].cursor.load(Ordering::Acquire)
    }

    pub fn readers(&self) -> usize {
        self.readers.len()
    }
}

/// The producing side. There is exactly one per ring: it is not `Clone`.
pub struct Producer<T> {
    ring: Arc<Broadcast<T>>,
    next: u64,
    /// Slots below this sequence number have had their item dropped.
    released: u64,
}

impl<T> Producer<T> {
    /// The one producer of `ring`.
    pub fn new(ring: Arc<Broadcast<T>>) -> Self {
        let next = ring.head.load(Ordering::Relaxed);
        Producer {
            ring,
            next,
            released: next,
        }
    }

    /// The sequence number the next `push` must carry.
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// Publishes `item` as sequence number `next_seq()`. Never waits for a consumer.
    pub fn push(&mut self, item: Arc<T>) {
        let seq = self.next;
        {
            let mut slot = self.ring.slot(seq);
            slot.seq = seq;
            slot.item = Some(item);
        }
        self.next = seq + 1;
        self.ring.head.store(self.next, Ordering::SeqCst);
        self.release_consumed();
    }

    /// Drops the ring's reference to items every consumer has read, so the ring keeps
    /// alive only what some consumer still needs.
    fn release_consumed(&mut self) {
        let min = self
            .ring
            .readers
            .iter()
            .map(|r| r.cursor.load(Ordering::Acquire))
            .min()
            .unwrap_or(self.next);
        // Bounded work per push: at most a few slots, amortised O(1).
        let end = min.min(self.released + 8).min(self.next);
        while self.released < end {
            let mut slot = self.ring.slot(self.released);
            if slot.seq == self.released {
                slot.item = None;
            }
            drop(slot);
            self.released += 1;
        }
        // Slots the producer has lapped are overwritten anyway.
        let floor = self.next.saturating_sub(self.ring.capacity());
        self.released = self.released.max(floor);
    }

    /// Consumers that were parked when the last items were published; each is returned
    /// once and must be woken by the caller (a `MSG_RING` doorbell).
    pub fn take_parked(&self) -> impl Iterator<Item = usize> + '_ {
        self.ring
            .readers
            .iter()
            .enumerate()
            .filter(|(_, r)| r.parked.load(Ordering::SeqCst) && r.parked.swap(false, Ordering::SeqCst))
            .map(|(i, _)| i)
    }

    pub fn ring(&self) -> &Arc<Broadcast<T>> {
        &self.ring
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_in_order_and_detects_overrun() {
        let ring = Broadcast::<u64>::new(4, 1);
        let mut p = Producer::new(Arc::clone(&ring));
        assert!(matches!(ring.read(1), Read::Empty));
        for v in 1..=4 {
            p.push(Arc::new(v));
        }
        for seq in 1..=4 {
            match ring.read(seq) {
                Read::Item(v) => assert_eq!(*v, seq),
                _ => panic!("seq {seq} should be readable"),
            }
        }
        p.push(Arc::new(5));
        assert!(matches!(ring.read(1), Read::Overrun), "slot 1 was lapped by 5");
        assert!(matches!(ring.read(5), Read::Item(_)));
        assert_eq!(ring.head(), 6);
    }

    #[test]
    fn consumed_items_are_released() {
        let ring = Broadcast::<u64>::new(16, 2);
        let mut p = Producer::new(Arc::clone(&ring));
        let item = Arc::new(7);
        p.push(Arc::clone(&item));
        assert_eq!(Arc::strong_count(&item), 2);
        ring.set_cursor(0, 2);
        p.push(Arc::new(8));
        assert_eq!(Arc::strong_count(&item), 2, "reader 1 has not read it yet");
        ring.set_cursor(1, 2);
        p.push(Arc::new(9));
        assert_eq!(Arc::strong_count(&item), 1, "both readers are past it");
    }

    #[test]
    fn park_sees_items_published_before_it() {
        let ring = Broadcast::<u64>::new(8, 1);
        let mut p = Producer::new(Arc::clone(&ring));
        p.push(Arc::new(1));
        assert!(
            !ring.park(0, 1),
            "an unread item must stop the consumer from sleeping"
        );
        assert!(ring.park(0, 2));
        p.push(Arc::new(2));
        assert_eq!(p.take_parked().collect::<Vec<_>>(), vec![0]);
        assert_eq!(p.take_parked().count(), 0, "each parked consumer is woken once");
    }

    #[test]
    fn a_watched_consumer_reports_its_mark_once() {
        let ring = Broadcast::<u64>::new(16, 2);
        let mut p = Producer::new(Arc::clone(&ring));
        for v in 1..=10 {
            p.push(Arc::new(v));
        }
        ring.set_cursor(0, 11);
        assert_eq!(ring.lag(), 10, "reader 1 has read nothing");
        assert_eq!(ring.watch(8), 10);
        assert!(!ring.reached_mark(0, 11), "reader 0 was past the mark: not asked");
        ring.set_cursor(1, 5);
        assert!(!ring.reached_mark(1, 5), "below the mark");
        ring.set_cursor(1, 9);
        assert!(ring.reached_mark(1, 9));
        assert!(!ring.reached_mark(1, 9), "each mark is reported once");
        assert_eq!(ring.lag(), 2);
    }

    #[test]
    fn a_producer_waiting_on_a_concurrent_consumer_is_always_woken() {
        // The producer publishes while the lag is at most `bound`, and otherwise waits to
        // be told a mark was reached; a lost wake-up would hang this test (bounded by
        // the consumer's finite work and a deadline).
        let ring = Broadcast::<u64>::new(64, 1);
        let mut p = Producer::new(Arc::clone(&ring));
        let reader = Arc::clone(&ring);
        let woken = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let told = Arc::clone(&woken);
        let total = 100_000u64;
        let bound = 16;
        let consumer = std::thread::spawn(move || {
            let (mut next, mut lost) = (1u64, 0u64);
            while next <= total {
                match reader.read(next) {
                    Read::Item(_) => next += 1,
                    Read::Overrun => lost += 1,
                    Read::Empty => std::hint::spin_loop(),
                }
                reader.set_cursor(0, next);
                if reader.reached_mark(0, next) {
                    told.fetch_add(1, Ordering::SeqCst);
                }
            }
            lost
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut seen = 0;
        for v in 1..=total {
            while ring.lag() >= bound {
                if ring.watch(ring.head() - bound / 2) < bound {
                    break;
                }
                while woken.load(Ordering::SeqCst) == seen {
                    assert!(std::time::Instant::now() < deadline, "producer never woken");
                    std::hint::spin_loop();
                }
                seen = woken.load(Ordering::SeqCst);
            }
            p.push(Arc::new(v));
        }
        assert_eq!(
            consumer.join().unwrap(),
            0,
            "a bound below the capacity loses nothing"
        );
    }

    #[test]
    fn concurrent_consumer_sees_every_item_or_counts_the_loss() {
        let ring = Broadcast::<u64>::new(64, 1);
        let mut p = Producer::new(Arc::clone(&ring));
        let reader = Arc::clone(&ring);
        let total = 200_000u64;
        let consumer = std::thread::spawn(move || {
            let (mut next, mut seen, mut lost) = (1u64, 0u64, 0u64);
            while next <= total {
                match reader.read(next) {
                    Read::Item(v) => {
                        assert_eq!(*v, next);
                        seen += 1;
                        next += 1;
                    }
                    Read::Overrun => {
                        let resume = reader.head().saturating_sub(reader.capacity()).max(next + 1);
                        lost += resume - next;
                        next = resume;
                    }
                    Read::Empty => std::hint::spin_loop(),
                }
                reader.set_cursor(0, next);
            }
            (seen, lost)
        });
        for v in 1..=total {
            p.push(Arc::new(v));
        }
        let (seen, lost) = consumer.join().unwrap();
        assert_eq!(seen + lost, total, "every item is either seen or counted lost");
    }
}
