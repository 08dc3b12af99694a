//! Time for the event loops: the hashed timer wheel and the conversion of a monotonic
//! [`Instant`] into its ticks.
//!
//! Owns: what a tick is, and which timers are due. Must never: read the system clock (the
//! loop reads it once per turn and passes the `Instant` in), or use anything else of ours.
//!
//! # How a loop uses it
//!
//! Each loop runs one [`Wheel`] of 100 ms ticks × 4096 slots (a turn of about 7 minutes),
//! with one timer per connection keyed by its slab index: heartbeats, write stalls,
//! request-head and keep-alive deadlines and close linger all share it, re-armed lazily
//! from the connection's `last_io` (see `shard::timers`). Every deadline there is a second
//! or more, so a tick of 100 ms is precise enough. A deadline that needs finer precision
//! would get a second wheel with its own [`Clock`] (say 10 ms × 1024 slots); a deadline
//! beyond a wheel's turn is still correct: its slot is visited once per turn until the
//! deadline's turn comes.
use std::time::{Duration, Instant};

pub mod wheel;

pub use wheel::{is_due, Wheel};

/// Turns a monotonic [`Instant`] into ticks of a fixed length since a start.
///
/// A deadline of `clock.ticks(t0) + clock.ticks_in(d)` is reached when
/// `clock.ticks(now)` reaches it: between `d - tick` and `d + tick` after `t0`, because
/// `t0` may fall anywhere within its tick. Add one tick where early is not allowed.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    start: Instant,
    tick_ns: u64,
}

impl Clock {
    /// A clock whose tick 0 begins at `start` and whose ticks last `tick`.
    ///
    /// # Panics
    ///
    /// If `tick` is zero or longer than `u64::MAX` nanoseconds (584 years).
    pub fn new(start: Instant, tick: Duration) -> Self {
        let tick_ns = u64::try_from(tick.as_nanos()).unwrap_or(0);
        assert!(
            tick_ns > 0,
            "a clock tick must be from 1 ns to 584 years, not {tick:?}"
        );
        Clock { start, tick_ns }
    }

    /// The length of a tick.
    pub fn tick(&self) -> Duration {
        Duration::from_nanos(self.tick_ns)
    }

    /// Whole ticks from the start to `now`, wrapping every 2^32 ticks like the wheel's
    /// arithmetic (497 days of 10 ms ticks). An instant before the start is tick 0.
    pub fn ticks(&self, now: Instant) -> u32 {
        let ns = now.saturating_duration_since(self.start).as_nanos();
        // Truncation is the wrap.
        (ns / u128::from(self.tick_ns)) as u32
    }

    /// The ticks in `d`, rounded up so that rounding never shortens a timeout, and at
    /// most [`wheel::MAX_DELAY`], the furthest a wheel deadline may lie ahead.
    pub fn ticks_in(&self, d: Duration) -> u32 {
        let ticks = d.as_nanos().div_ceil(u128::from(self.tick_ns));
        ticks.min(u128::from(wheel::MAX_DELAY)) as u32
    }

    /// How long from `now` until tick `tick` begins, zero if it has begun: for turning
    /// [`Wheel::next_expiry`] into a sleep. Like the wheel, reads `tick` as at most
    /// [`wheel::MAX_DELAY`] ticks ahead, so it stays right when tick numbers wrap.
    pub fn until(&self, tick: u32, now: Instant) -> Duration {
        let ns = now.saturating_duration_since(self.start).as_nanos();
        let tick_ns = u128::from(self.tick_ns);
        let current = ns / tick_ns;
        let ahead = tick.wrapping_sub(current as u32) as i32;
        if ahead <= 0 {
            return Duration::ZERO;
        }
        let wait_ns = (current + ahead as u128) * tick_ns - ns;
        let secs = u64::try_from(wait_ns / 1_000_000_000).unwrap_or(u64::MAX);
        Duration::new(secs, (wait_ns % 1_000_000_000) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_round_down_and_wrap() {
        let start = Instant::now();
        let c = Clock::new(start, Duration::from_millis(100));
        assert_eq!(c.tick(), Duration::from_millis(100));
        for (ms, tick) in [(0, 0), (99, 0), (100, 1), (199, 1), (200, 2), (7 * 60_000, 4200)] {
            assert_eq!(c.ticks(start + Duration::from_millis(ms)), tick, "{ms} ms");
        }
        // Before the start counts as the start.
        if let Some(earlier) = start.checked_sub(Duration::from_secs(1)) {
            assert_eq!(c.ticks(earlier), 0);
        }
        let ns = Clock::new(start, Duration::from_nanos(1));
        let wrapped = Duration::from_nanos((1 << 32) + 5);
        assert_eq!(ns.ticks(start + wrapped), 5);
    }

    #[test]
    fn ticks_in_rounds_up_and_caps() {
        let c = Clock::new(Instant::now(), Duration::from_millis(10));
        for (d, ticks) in [
            (Duration::ZERO, 0),
            (Duration::from_nanos(1), 1),
            (Duration::from_millis(10), 1),
            (Duration::from_micros(10_001), 2),
            (Duration::from_secs(30), 3000),
            (Duration::MAX, wheel::MAX_DELAY),
        ] {
            assert_eq!(c.ticks_in(d), ticks, "{d:?}");
        }
    }

    #[test]
    fn until_is_the_wait_for_the_tick_to_begin() {
        let start = Instant::now();
        let c = Clock::new(start, Duration::from_millis(10));
        let ms = Duration::from_millis;
        let at = |t: Duration| start + t;
        assert_eq!(c.until(0, at(ms(0))), Duration::ZERO);
        assert_eq!(c.until(1, at(ms(0))), ms(10));
        assert_eq!(c.until(1, at(ms(3))), ms(7));
        assert_eq!(c.until(1, at(ms(10))), Duration::ZERO);
        assert_eq!(c.until(0, at(ms(25))), Duration::ZERO, "past ticks are no wait");
        assert_eq!(c.until(4096, at(ms(5))), ms(40_955));
        // Across the wrap of the tick numbers: tick 2 of the next round of 2^32.
        let ns = Clock::new(start, Duration::from_nanos(1));
        let late = at(Duration::from_nanos(u64::from(u32::MAX) - 1));
        assert_eq!(ns.until(2, late), Duration::from_nanos(4));
        assert_eq!(ns.until(u32::MAX - 5, late), Duration::ZERO);
        // Waking after `until` lands exactly in the tick.
        for t in [1, 7, 4096, 1_000_000] {
            let now = at(ms(3));
            assert_eq!(c.ticks(now + c.until(t, now)), t);
            assert_eq!(c.ticks(now + c.until(t, now) - Duration::from_nanos(1)), t - 1);
        }
    }

    #[test]
    fn zero_tick_panics() {
        let start = Instant::now();
        for tick in [Duration::ZERO, Duration::MAX] {
            assert!(
                std::panic::catch_unwind(|| Clock::new(start, tick)).is_err(),
                "{tick:?}"
            );
        }
    }

    /// A timeout in ticks is never reached before `d - tick` nor after `d + tick`.
    #[test]
    fn deadline_is_within_one_tick_of_the_timeout() {
        let start = Instant::now();
        let c = Clock::new(start, Duration::from_millis(100));
        let d = Duration::from_millis(1000);
        for t0_ms in (0..300).step_by(7) {
            let t0 = start + Duration::from_millis(t0_ms);
            let deadline = c.ticks(t0) + c.ticks_in(d);
            let reached = (0..3000)
                .map(|ms| t0 + Duration::from_millis(ms))
                .find(|&t| is_due(deadline, c.ticks(t)))
                .unwrap();
            let after = reached - t0;
            assert!(
                after > d - c.tick() && after <= d + c.tick(),
                "t0 +{t0_ms} ms: {after:?}"
            );
        }
    }
}
