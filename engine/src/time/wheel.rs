//! A hashed timing wheel: Varghese & Lauck, "Hashed and Hierarchical Timing Wheels: Data
//! Structures for the Efficient Implementation of a Timer Facility" (SOSP 1987), scheme 6.
//! A timer with deadline `d` lives in slot `d & mask`; each slot holds an unsorted, doubly
//! linked list, so start, stop and re-arm are O(1), and each tick visits one slot.
//!
//! Owns: which timers are armed and their deadlines in ticks, and the 12-byte link of every
//! timer id. An id is the connection's slab index, so the links are a `Vec` beside the
//! slab, linked by `u32` indices rather than pointers.
//!
//! Must never: read a clock (the caller passes `now`), call back into the caller, hold
//! more than 12 bytes per timer, or allocate except to grow the link storage for a new id.
//!
//! # Lazy re-arm
//!
//! A million idle connections must not cost a wheel operation per received byte. So
//! activity only stores the tick in the connection (`last_rx`); the timer keeps its old
//! deadline. When it fires, the caller looks at `last_rx`: if the connection was heard
//! from since, it re-inserts the timer at `last_rx + timeout`; otherwise it pings the
//! peer (and arms the ping's deadline) or reaps the connection.
//!
//! ```
//! use ringcast::time::wheel::{is_due, Wheel};
//!
//! const IDLE_TICKS: u32 = 300; // 30 s of 100 ms ticks.
//! let mut wheel = Wheel::new(4096, 0);
//! let mut last_rx = vec![0u32; 3]; // Beside the slab, indexed by the same id.
//! for id in 0..3 {
//!     wheel.insert(id, last_rx[id as usize] + IDLE_TICKS);
//! }
//!
//! // Connection 1 receives something at tick 250: a store, the wheel is not touched.
//! last_rx[1] = 250;
//!
//! let mut expired = Vec::new();
//! let mut reaped = Vec::new();
//! wheel.advance(300, &mut expired);
//! for id in expired.drain(..) {
//!     let due = last_rx[id as usize].wrapping_add(IDLE_TICKS);
//!     if is_due(due, wheel.now()) {
//!         reaped.push(id); // Or ping, and arm the ping's deadline.
//!     } else {
//!         wheel.insert(id, due);
//!     }
//! }
//! reaped.sort_unstable();
//! assert_eq!(reaped, [0, 2]);
//! assert_eq!(wheel.deadline(1), Some(550));
//! ```
//!
//! A timeout longer than the wheel (slots × tick) is correct: its slot comes round more
//! than once, and each visit before the last only looks at the deadline and moves on.
use std::cmp::Reverse;
use std::fmt;

/// The end of a list, or the `prev` of the first timer in a list.
const NONE: u32 = u32::MAX;
/// The `prev` of a timer that is not armed.
const UNARMED: u32 = u32::MAX - 1;

/// The largest timer id: the two values above it mark list ends and unarmed timers.
pub const MAX_ID: u32 = u32::MAX - 2;
/// How far ahead of `now` a deadline may lie, in ticks. Ticks wrap, so a deadline is read
/// as `deadline - now` in two's complement: anything further ahead reads as past.
pub const MAX_DELAY: u32 = i32::MAX as u32;
/// The most slots a wheel may have (64 MiB of list heads): a bound, not a target.
pub const MAX_SLOTS: usize = 1 << 24;

const _: () = assert!(MAX_ID < UNARMED && UNARMED < NONE);
const _: () = assert!(MAX_SLOTS as u64 <= MAX_DELAY as u64);

/// Whether tick `deadline` has been reached at tick `now`, with wrapping ticks: true when
/// `deadline` is at or before `now` and less than 2^31 ticks before it.
#[inline]
pub fn is_due(deadline: u32, now: u32) -> bool {
    deadline.wrapping_sub(now) as i32 <= 0
}

/// One timer's place in its slot's list. Its bytes are multiplied by a million.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Link {
    /// The next timer in the same list, or `NONE`.
    next: u32,
    /// The previous timer in the same list, `NONE` for the first, `UNARMED` when unarmed.
    prev: u32,
    /// The tick the timer fires at. Kept after the timer fires (only `prev` says armed).
    deadline: u32,
}

impl Link {
    const UNARMED: Link = Link {
        next: NONE,
        prev: UNARMED,
        deadline: 0,
    };
}

/// A hashed timing wheel of `u32` timer ids and `u32` wrapping ticks.
///
/// Invariants between calls: every armed timer with a deadline after `now` is in the list
/// of slot `deadline & mask`; every armed timer with a deadline at or before `now` (it was
/// armed with a deadline already past) is in the `overdue` list; a slot's bit in
/// `occupied` is set exactly when its list is non-empty.
pub struct Wheel {
    /// The first timer of each slot's list, or `NONE`.
    heads: Box<[u32]>,
    /// One bit per slot, set while its list is non-empty, so that a sweep skips empty
    /// slots and `next_expiry` scans 64 slots per load.
    occupied: Box<[u64]>,
    /// Timers armed with a deadline at or before `now`; they fire at the next `advance`.
    overdue: u32,
    /// Indexed by timer id.
    links: Vec<Link>,
    now: u32,
    mask: u32,
    len: usize,
}

impl Wheel {
    /// A wheel of `slots` slots whose current tick is `now`, with no timers.
    ///
    /// # Panics
    ///
    /// If `slots` is not a power of two or is above [`MAX_SLOTS`].
    pub fn new(slots: usize, now: u32) -> Self {
        Self::with_capacity(slots, now, 0)
    }

    /// Like [`Wheel::new`], and reserves link storage for ids below `ids` without
    /// touching it: the pages are committed by the first insert that reaches them.
    ///
    /// # Panics
    ///
    /// As [`Wheel::new`].
    pub fn with_capacity(slots: usize, now: u32, ids: usize) -> Self {
        assert!(
            slots.is_power_of_two() && slots <= MAX_SLOTS,
            "a wheel needs a power of two of slots up to {MAX_SLOTS}, not {slots}"
        );
        Wheel {
            heads: vec![NONE; slots].into_boxed_slice(),
            occupied: vec![0; slots.div_ceil(64)].into_boxed_slice(),
            overdue: NONE,
            links: Vec::with_capacity(ids),
            now,
            mask: (slots - 1) as u32,
            len: 0,
        }
    }

    /// Arms timer `id` to fire at tick `deadline`, or moves it there if it is armed. A
    /// deadline at or before [`now`](Wheel::now) fires at the next [`advance`](Wheel::advance),
    /// even one to the same tick. O(1); grows the link storage (amortised) when `id` is
    /// beyond it.
    ///
    /// A deadline more than [`MAX_DELAY`] ticks ahead of `now` reads as past and fires at
    /// the next advance: ticks wrap.
    ///
    /// # Panics
    ///
    /// If `id` is above [`MAX_ID`].
    pub fn insert(&mut self, id: u32, deadline: u32) {
        assert!(id <= MAX_ID, "timer id {id} is above MAX_ID {MAX_ID}");
        let i = id as usize;
        if i >= self.links.len() {
            self.links.resize(i + 1, Link::UNARMED);
        }
        let link = self.links[i];
        if link.prev == UNARMED {
            self.len += 1;
        } else if self.list_of(link.deadline) == self.list_of(deadline) {
            // Same list: the position in it does not matter, only the deadline does.
            self.links[i].deadline = deadline;
            return;
        } else {
            self.unlink(id);
        }
        self.push(id, deadline);
    }

    /// Disarms `id` if it is armed; otherwise, or if `id` was never inserted, does nothing.
    /// O(1).
    pub fn remove(&mut self, id: u32) {
        if self.is_armed(id) {
            self.unlink(id);
            self.len -= 1;
        }
    }

    /// Whether `id` is armed.
    pub fn is_armed(&self, id: u32) -> bool {
        self.links.get(id as usize).is_some_and(|l| l.prev != UNARMED)
    }

    /// The tick `id` fires at, if it is armed.
    pub fn deadline(&self, id: u32) -> Option<u32> {
        let link = self.links.get(id as usize)?;
        (link.prev != UNARMED).then_some(link.deadline)
    }

    /// The current tick: the last one passed to [`advance`](Wheel::advance), or the start.
    pub fn now(&self) -> u32 {
        self.now
    }

    /// The number of slots.
    pub fn slots(&self) -> usize {
        self.heads.len()
    }

    /// The number of armed timers.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no timer is armed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Moves the current tick to `now`, disarms every timer whose deadline is at or before
    /// it and appends their ids to `expired`, in deadline order (ties in no set order).
    ///
    /// Visits each slot at most once, however long the jump: the cost is
    /// O(min(elapsed, slots) + expired + timers met in visited slots whose deadline is a
    /// later turn of the wheel). A jump longer than the wheel (which a loop that wakes at
    /// [`next_expiry`](Wheel::next_expiry), at most one turn ahead, never makes) also sorts
    /// the expired ids, as does more than one overdue timer.
    ///
    /// # Panics
    ///
    /// If `now` is before the current tick (more than [`MAX_DELAY`] ticks ahead of it).
    pub fn advance(&mut self, now: u32, expired: &mut Vec<u32>) {
        let elapsed = now.wrapping_sub(self.now);
        assert!(
            elapsed <= MAX_DELAY,
            "the wheel cannot go back from tick {} to tick {now}",
            self.now
        );
        let start = expired.len();
        if self.expire_overdue(expired) > 1 {
            self.sort_by_deadline(&mut expired[start..], now);
        }
        // Slots of ticks now+1 ..= new now, each at most once. Within one turn a slot's
        // due timers all have the slot's tick as their deadline, so sweeping in tick order
        // yields deadline order.
        let first = self.now.wrapping_add(1);
        let span = elapsed.min(self.mask + 1);
        let mut offset = 0;
        while offset < span {
            let Some(gap) = self.next_occupied(first.wrapping_add(offset)) else {
                break;
            };
            offset += gap;
            if offset >= span {
                break;
            }
            self.expire_slot(first.wrapping_add(offset), now, expired);
            offset += 1;
        }
        if elapsed > self.mask + 1 {
            // One sweep met several turns' deadlines in the same slot.
            self.sort_by_deadline(&mut expired[start..], now);
        }
        self.now = now;
    }

    /// A tick at which the earliest armed timer may fire, or `None` when none is armed:
    /// never after the earliest deadline, at most one turn of the wheel ahead of
    /// [`now`](Wheel::now), and exactly the earliest deadline when every deadline is within
    /// one turn. It is `now` itself when an overdue timer waits for the next advance.
    pub fn next_expiry(&self) -> Option<u32> {
        if self.overdue != NONE {
            return Some(self.now);
        }
        let first = self.now.wrapping_add(1);
        self.next_occupied(first).map(|gap| first.wrapping_add(gap))
    }

    /// Which list a timer with `deadline` belongs in: a slot, or `slots()` for overdue.
    fn list_of(&self, deadline: u32) -> usize {
        if is_due(deadline, self.now) {
            self.heads.len()
        } else {
            (deadline & self.mask) as usize
        }
    }

    /// Puts unarmed `id` first in the list for `deadline`.
    fn push(&mut self, id: u32, deadline: u32) {
        let list = self.list_of(deadline);
        let head = if list == self.heads.len() {
            &mut self.overdue
        } else {
            self.occupied[list / 64] |= 1 << (list % 64);
            &mut self.heads[list]
        };
        let next = *head;
        *head = id;
        if next != NONE {
            self.links[next as usize].prev = id;
        }
        self.links[id as usize] = Link {
            next,
            prev: NONE,
            deadline,
        };
    }

    /// Takes armed `id` out of its list and marks it unarmed; `len` is the caller's.
    fn unlink(&mut self, id: u32) {
        let Link { next, prev, deadline } = self.links[id as usize];
        if next != NONE {
            self.links[next as usize].prev = prev;
        }
        if prev != NONE {
            self.links[prev as usize].next = next;
        } else {
            let list = self.list_of(deadline);
            if list == self.heads.len() {
                debug_assert_eq!(self.overdue, id, "timer {id} is first in no list");
                self.overdue = next;
            } else {
                debug_assert_eq!(self.heads[list], id, "timer {id} is first in no list");
                self.heads[list] = next;
                if next == NONE {
                    self.occupied[list / 64] &= !(1 << (list % 64));
                }
            }
        }
        self.links[id as usize] = Link {
            next: NONE,
            prev: UNARMED,
            deadline,
        };
    }

    /// Disarms the whole overdue list into `expired`; returns how many.
    fn expire_overdue(&mut self, expired: &mut Vec<u32>) -> usize {
        let mut n = 0;
        let mut id = std::mem::replace(&mut self.overdue, NONE);
        while id != NONE {
            let link = &mut self.links[id as usize];
            expired.push(id);
            id = std::mem::replace(&mut link.next, NONE);
            link.prev = UNARMED;
            n += 1;
        }
        self.len -= n;
        n
    }

    /// Disarms the timers of the slot of `tick` whose deadline is at or before `now`.
    fn expire_slot(&mut self, tick: u32, now: u32, expired: &mut Vec<u32>) {
        let mut id = self.heads[(tick & self.mask) as usize];
        while id != NONE {
            let link = self.links[id as usize];
            if is_due(link.deadline, now) {
                self.unlink(id);
                self.len -= 1;
                expired.push(id);
            }
            id = link.next;
        }
    }

    /// Sorts expired ids by deadline, all at or before `now` and less than 2^32 ticks
    /// before it.
    fn sort_by_deadline(&self, ids: &mut [u32], now: u32) {
        ids.sort_unstable_by_key(|&id| Reverse(now.wrapping_sub(self.links[id as usize].deadline)));
    }

    /// How many slots after the slot of `tick` (0 for that slot itself) the first
    /// non-empty one is, going round; `None` if all are empty.
    fn next_occupied(&self, tick: u32) -> Option<u32> {
        let from = (tick & self.mask) as usize;
        let words = self.occupied.len();
        let w0 = from / 64;
        // The first word only from `from` on; the wrap comes back to its low bits last.
        let mut bits = self.occupied[w0] & (!0u64 << (from % 64));
        for step in 0..=words {
            if bits != 0 {
                let slot = ((w0 + step) % words) * 64 + bits.trailing_zeros() as usize;
                return Some((slot.wrapping_sub(from) as u32) & self.mask);
            }
            bits = self.occupied[(w0 + step + 1) % words];
        }
        None
    }
}

impl fmt::Debug for Wheel {
    /// A summary: printing a million links helps nobody.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wheel")
            .field("slots", &self.heads.len())
            .field("now", &self.now)
            .field("len", &self.len)
            .field("ids", &self.links.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet, HashMap};

    /// Wheel sizes for the exhaustive loops: degenerate, small, one bitmap word, several.
    const SIZES: [usize; 6] = [1, 2, 8, 64, 128, 256];
    /// Start ticks, including ones whose first turn crosses the wrap of `u32`.
    const STARTS: [u32; 4] = [0, 1000, u32::MAX - 3, u32::MAX - 300];

    fn advance(w: &mut Wheel, now: u32) -> Vec<u32> {
        let mut out = Vec::new();
        w.advance(now, &mut out);
        out
    }

    /// Delays that each wheel size is checked at: every slot offset of the first turns,
    /// which covers slots-1, slots, slots+1 and 2*slots+3.
    fn delays(slots: usize) -> std::ops::RangeInclusive<u32> {
        0..=(3 * slots as u32 + 3)
    }

    #[test]
    fn link_is_12_bytes() {
        assert_eq!(std::mem::size_of::<Link>(), 12);
    }

    #[test]
    fn insert_remove_reinsert() {
        let mut w = Wheel::new(16, 0);
        assert!(w.is_empty());
        w.insert(3, 10);
        assert!(w.is_armed(3));
        assert_eq!(w.deadline(3), Some(10));
        assert_eq!(w.len(), 1);
        // Ids below 3 got link storage but are not armed; ids beyond it are not either.
        assert!(!w.is_armed(0));
        assert_eq!(w.deadline(0), None);
        assert!(!w.is_armed(1000));

        // Re-inserting moves: still one timer, at the new deadline only.
        w.insert(3, 20);
        assert_eq!((w.len(), w.deadline(3)), (1, Some(20)));
        assert_eq!(advance(&mut w, 19), Vec::<u32>::new());
        assert_eq!(advance(&mut w, 20), [3]);
        assert!(!w.is_armed(3));
        assert_eq!(w.deadline(3), None);
        assert!(w.is_empty());

        // Removing an unarmed, a fired or a never-seen id does nothing.
        w.remove(3);
        w.remove(0);
        w.remove(MAX_ID);
        assert!(w.is_empty());

        w.insert(3, 25);
        w.remove(3);
        assert!(w.is_empty());
        assert_eq!(advance(&mut w, 40), Vec::<u32>::new());
        // A fired or removed id can be armed again.
        w.insert(3, 41);
        assert_eq!(advance(&mut w, 41), [3]);
    }

    #[test]
    fn reinsert_within_a_slot_and_across_lists() {
        let mut w = Wheel::new(8, 100);
        w.insert(1, 101);
        // Same slot, a later turn: only the deadline changes.
        w.insert(1, 109);
        assert_eq!((w.len(), w.deadline(1)), (1, Some(109)));
        assert_eq!(advance(&mut w, 101), Vec::<u32>::new());
        assert_eq!(w.next_expiry(), Some(109));
        // To the overdue list and back into a slot.
        w.insert(1, 50);
        assert_eq!(w.next_expiry(), Some(101));
        w.insert(1, 103);
        assert_eq!(advance(&mut w, 102), Vec::<u32>::new());
        assert_eq!(advance(&mut w, 103), [1]);
        // From a slot to the overdue list.
        w.insert(1, 105);
        w.insert(1, 103);
        assert_eq!(advance(&mut w, 103), [1]);
    }

    #[test]
    fn remove_from_head_middle_and_tail() {
        for victims in [[0u32, 2, 4], [4, 3, 2], [0, 1, 2], [1, 3, 0]] {
            let mut w = Wheel::new(4, 0);
            for id in 0..5 {
                w.insert(id, 6); // One slot, one list: 4 3 2 1 0.
            }
            for v in victims {
                w.remove(v);
            }
            assert_eq!(w.len(), 2);
            let mut fired = advance(&mut w, 6);
            fired.sort_unstable();
            let expect: Vec<u32> = (0..5).filter(|id| !victims.contains(id)).collect();
            assert_eq!(fired, expect, "removed {victims:?}");
            assert!(w.is_empty());
            assert_eq!(w.next_expiry(), None);
        }
    }

    #[test]
    fn fires_exactly_at_deadline_tick_by_tick() {
        for slots in SIZES {
            for start in STARTS {
                for delay in delays(slots) {
                    let mut w = Wheel::new(slots, start);
                    w.insert(7, start.wrapping_add(delay));
                    for t in 0..=delay + 2 {
                        let fired = advance(&mut w, start.wrapping_add(t));
                        let expect: &[u32] = if t == delay { &[7] } else { &[] };
                        assert_eq!(fired, expect, "slots {slots} start {start} delay {delay} at +{t}");
                        assert_eq!(w.is_armed(7), t < delay);
                    }
                }
            }
        }
    }

    #[test]
    fn fires_exactly_at_deadline_in_jumps() {
        for slots in SIZES {
            let jumps =
                [1, 2, slots - 1, slots, slots + 1, 2 * slots + 3, 7 * slots].map(|j| j.max(1) as u32);
            for start in STARTS {
                for delay in delays(slots) {
                    for jump in jumps {
                        let mut w = Wheel::new(slots, start);
                        w.insert(7, start.wrapping_add(delay));
                        let mut t = 0;
                        // The first advance to reach the deadline fires it, none before.
                        loop {
                            let fired = advance(&mut w, start.wrapping_add(t));
                            if t >= delay {
                                assert_eq!(
                                    fired,
                                    [7],
                                    "slots {slots} start {start} delay {delay} jump {jump}"
                                );
                                break;
                            }
                            assert_eq!(
                                fired,
                                Vec::<u32>::new(),
                                "slots {slots} start {start} delay {delay} jump {jump} +{t}"
                            );
                            t += jump;
                        }
                        assert!(w.is_empty());
                    }
                }
            }
        }
    }

    /// All delays armed at once, so each slot also holds timers of later turns that must
    /// stay: every advance returns exactly the deadlines it passed, in deadline order.
    #[test]
    fn every_offset_together_in_steps_of_every_size() {
        for slots in SIZES {
            for start in STARTS {
                for jump in 1..=(2 * slots as u32 + 3) {
                    let mut w = Wheel::new(slots, start);
                    let last = *delays(slots).end();
                    // Id d has delay d; insert in a scrambled order.
                    let odd_down = delays(slots).rev().filter(|d| d % 2 == 1);
                    for d in odd_down.chain(delays(slots).filter(|d| d % 2 == 0)) {
                        w.insert(d, start.wrapping_add(d));
                    }
                    let mut t = 0;
                    let mut next = 0; // The smallest delay not yet fired.
                    while next <= last {
                        let fired = advance(&mut w, start.wrapping_add(t));
                        let expect: Vec<u32> = (next..=t.min(last)).collect();
                        assert_eq!(fired, expect, "slots {slots} start {start} jump {jump} +{t}");
                        next = t + 1;
                        assert_eq!(w.len(), (last + 1).saturating_sub(next) as usize);
                        t += jump;
                    }
                }
            }
        }
    }

    #[test]
    fn wraps_around_u32() {
        let start = u32::MAX - 10;
        let mut w = Wheel::new(8, start);
        for (id, deadline) in [
            (0, u32::MAX - 1),
            (1, u32::MAX),
            (2, 0),
            (3, 1),
            (4, 12),
            (5, u32::MAX - 11),
        ] {
            w.insert(id, deadline);
        }
        assert_eq!(advance(&mut w, u32::MAX - 1), [5, 0], "the overdue one first");
        assert_eq!(advance(&mut w, u32::MAX), [1]);
        assert_eq!(advance(&mut w, 0), [2]);
        assert_eq!(w.next_expiry(), Some(1));
        assert_eq!(advance(&mut w, 11), [3]);
        assert_eq!(advance(&mut w, 12), [4]);
        assert!(w.is_empty());
    }

    #[test]
    fn deadline_range_is_max_delay() {
        for start in STARTS {
            let mut w = Wheel::new(64, start);
            w.insert(1, start.wrapping_add(MAX_DELAY));
            // One tick further reads as before now: overdue.
            w.insert(2, start.wrapping_add(MAX_DELAY + 1));
            assert_eq!(w.next_expiry(), Some(start));
            assert_eq!(advance(&mut w, start), [2]);
            assert_eq!(
                advance(&mut w, start.wrapping_add(MAX_DELAY - 1)),
                Vec::<u32>::new()
            );
            assert_eq!(advance(&mut w, start.wrapping_add(MAX_DELAY)), [1]);
        }
    }

    #[test]
    fn overdue_fires_at_the_next_advance_in_deadline_order() {
        let mut w = Wheel::new(16, 1000);
        for (id, deadline) in [(0, 990), (1, 1000), (2, 700), (3, 999)] {
            w.insert(id, deadline);
        }
        w.insert(4, 1001);
        assert_eq!(w.next_expiry(), Some(1000));
        assert_eq!(advance(&mut w, 1000), [2, 0, 3, 1]);
        assert_eq!(w.next_expiry(), Some(1001));
        assert_eq!(advance(&mut w, 1001), [4]);
    }

    #[test]
    #[should_panic(expected = "cannot go back")]
    fn advance_backwards_panics() {
        let mut w = Wheel::new(8, 100);
        w.advance(99, &mut Vec::new());
    }

    #[test]
    #[should_panic(expected = "above MAX_ID")]
    fn id_above_max_panics() {
        Wheel::new(8, 0).insert(MAX_ID + 1, 5);
    }

    #[test]
    fn slots_must_be_a_power_of_two() {
        for slots in [0, 3, 12, 4097, MAX_SLOTS * 2] {
            assert!(
                std::panic::catch_unwind(|| Wheel::new(slots, 0)).is_err(),
                "{slots}"
            );
        }
        for slots in [1, 2, 4096, MAX_SLOTS] {
            assert_eq!(Wheel::new(slots, 0).slots(), slots);
        }
    }

    /// A loop that sleeps until `next_expiry` must never sleep past a deadline.
    #[test]
    fn next_expiry_never_oversleeps() {
        for slots in SIZES {
            for start in STARTS {
                for delay in 1..=*delays(slots).end() {
                    let mut w = Wheel::new(slots, start);
                    let deadline = start.wrapping_add(delay);
                    w.insert(9, deadline);
                    let mut wakes = 0;
                    loop {
                        let next = w.next_expiry().expect("armed");
                        let ahead = next.wrapping_sub(w.now());
                        assert!((1..=slots as u32).contains(&ahead), "slots {slots} delay {delay}");
                        assert!(
                            !is_due(deadline, next.wrapping_sub(1)),
                            "slots {slots} delay {delay}"
                        );
                        if delay <= slots as u32 {
                            assert_eq!(next, deadline, "exact within one turn");
                        }
                        wakes += 1;
                        if advance(&mut w, next) == [9] {
                            assert_eq!(next, deadline);
                            break;
                        }
                    }
                    assert_eq!(wakes, (delay - 1) / slots as u32 + 1);
                    assert_eq!(w.next_expiry(), None);
                }
            }
        }
    }

    #[test]
    fn next_expiry_scans_across_bitmap_words() {
        let deadlines = [1, 63, 64, 65, 127, 128, 200, 255, 256, 300];
        let mut w = Wheel::new(256, 0);
        for deadline in deadlines {
            w.insert(deadline, deadline);
        }
        let mut seen = Vec::new();
        while let Some(next) = w.next_expiry() {
            seen.push(next);
            let fired = advance(&mut w, next);
            assert_eq!(
                fired,
                deadlines
                    .iter()
                    .copied()
                    .filter(|&d| d == next)
                    .collect::<Vec<_>>()
            );
        }
        // 300 is a turn ahead at first: its slot, tick 44, is visited early, in vain.
        assert_eq!(seen, [1, 44, 63, 64, 65, 127, 128, 200, 255, 256, 300]);
    }

    #[test]
    fn link_storage_grows_and_reuses() {
        let mut w = Wheel::with_capacity(8, 0, 4);
        assert_eq!(w.links.capacity(), 4);
        assert!(w.links.is_empty(), "reserved, not touched");
        w.insert(100, 3);
        assert_eq!(w.links.len(), 101);
        w.insert(2, 3);
        assert_eq!(w.links.len(), 101);
        assert_eq!(advance(&mut w, 3).len(), 2);
        assert_eq!(format!("{w:?}"), "Wheel { slots: 8, now: 3, len: 0, ids: 101 }");
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// Arm id at now + delay; a negative delay is already past.
        Insert(u32, i32),
        Remove(u32),
        Advance(u32),
    }

    fn op(slots: u32) -> impl Strategy<Value = Op> {
        let reach = 3 * slots as i32 + 3;
        prop_oneof![
            4 => (0..48u32, -5..=reach).prop_map(|(id, d)| Op::Insert(id, d)),
            1 => (0..48u32).prop_map(Op::Remove),
            3 => prop_oneof![0..=3u32, 0..=(3 * slots + 3)].prop_map(Op::Advance),
        ]
    }

    /// The reference: deadlines in unwrapped `i64` ticks, kept sorted.
    #[derive(Default)]
    struct Model {
        now: i64,
        by_deadline: BTreeMap<i64, BTreeSet<u32>>,
        of: HashMap<u32, i64>,
    }

    impl Model {
        fn remove(&mut self, id: u32) {
            if let Some(d) = self.of.remove(&id) {
                let ids = self.by_deadline.get_mut(&d).unwrap();
                ids.remove(&id);
                if ids.is_empty() {
                    self.by_deadline.remove(&d);
                }
            }
        }

        fn insert(&mut self, id: u32, deadline: i64) {
            self.remove(id);
            self.of.insert(id, deadline);
            self.by_deadline.entry(deadline).or_default().insert(id);
        }

        /// The expired ids by deadline, each deadline's ids as a set.
        fn advance(&mut self, now: i64) -> Vec<(i64, BTreeSet<u32>)> {
            self.now = now;
            let later = self.by_deadline.split_off(&(now + 1));
            let due = std::mem::replace(&mut self.by_deadline, later);
            for ids in due.values() {
                for id in ids {
                    self.of.remove(id);
                }
            }
            due.into_iter().collect()
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn matches_a_sorted_reference(
            (slots, start, ops) in prop::sample::select(vec![1u32, 2, 4, 16, 64]).prop_flat_map(|slots| (
                Just(slots),
                prop_oneof![any::<u32>(), (u32::MAX - 200)..=u32::MAX],
                prop::collection::vec(op(slots), 0..200),
            ))
        ) {
            let mut w = Wheel::new(slots as usize, start);
            let mut m = Model::default();
            let tick = |at: i64| start.wrapping_add(at as u32);
            for op in ops {
                match op {
                    Op::Insert(id, delay) => {
                        w.insert(id, tick(m.now + delay as i64));
                        m.insert(id, m.now + delay as i64);
                    }
                    Op::Remove(id) => {
                        w.remove(id);
                        m.remove(id);
                    }
                    Op::Advance(by) => {
                        let mut fired = Vec::new();
                        w.advance(tick(m.now + by as i64), &mut fired);
                        // Same ids, and grouped by deadline in deadline order.
                        let mut rest = fired.as_slice();
                        for (deadline, ids) in m.advance(m.now + by as i64) {
                            let (group, tail) = rest.split_at(ids.len().min(rest.len()));
                            let group: BTreeSet<u32> = group.iter().copied().collect();
                            prop_assert_eq!(&group, &ids, "deadline {}", deadline);
                            rest = tail;
                        }
                        prop_assert_eq!(rest, &[0u32; 0][..]);
                    }
                }
                prop_assert_eq!(w.len(), m.of.len());
                prop_assert_eq!(w.now(), tick(m.now));
                for id in 0..48 {
                    prop_assert_eq!(w.deadline(id), m.of.get(&id).map(|&d| tick(d)));
                }
                match m.by_deadline.keys().next() {
                    None => prop_assert_eq!(w.next_expiry(), None),
                    Some(&first) => {
                        let next = m.now + w.next_expiry().unwrap().wrapping_sub(tick(m.now)) as i64;
                        prop_assert!(next <= first.max(m.now), "next_expiry {} after deadline {}", next, first);
                        prop_assert!(next >= m.now);
                    }
                }
            }
        }
    }
}
