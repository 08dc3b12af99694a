//! The timer wheel with a million timers in 4096 slots, the coarse wheel of a full loop:
//! cost per timer of arming, of activity under lazy re-arm (a store to `last_rx`), of
//! moving an armed timer, of expiry, of the lazy re-arm sweep, and of visiting timers
//! whose deadline is a later turn.
//!
//! Every benchmark times whole passes over the million timers, untimed set-up between
//! passes, and reports the time per timer (criterion's "time" is per element).
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use ringcast::time::{is_due, Wheel};

const TIMERS: u32 = 1_000_000;
const SLOTS: usize = 4096;
/// The idle timeout of the lazy re-arm sweep: one tick over a turn, so that a timer
/// re-armed from a `last_rx` just before it fired is not met again in the same sweep.
const TIMEOUT: u32 = SLOTS as u32 + 1;

/// A bijective mixer (the murmur3 finaliser), for scattered deadlines and ids.
fn mix(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x85eb_ca6b);
    x ^= x >> 13;
    x = x.wrapping_mul(0xc2b2_ae35);
    x ^ (x >> 16)
}

/// A deadline 1..=SLOTS ticks after `now`, scattered over the slots by `id` and `seed`.
fn scattered(now: u32, id: u32, seed: u32) -> u32 {
    now.wrapping_add(1 + mix(id ^ seed) % SLOTS as u32)
}

/// A deadline 1..=SLOTS ticks after `now`, the same for neighbouring ids: the timers of
/// one slot are neighbours in memory, as after a burst of accepts.
fn clustered(now: u32, id: u32) -> u32 {
    now.wrapping_add(1 + (u64::from(id) * SLOTS as u64 / u64::from(TIMERS)) as u32)
}

/// Ids 0..TIMERS in a scattered order, as activity arrives on a loop's connections.
fn shuffled_ids() -> Vec<u32> {
    let mut ids: Vec<u32> = (0..TIMERS).collect();
    let mut state = 0x2545_f491_u32;
    for i in (1..ids.len()).rev() {
        state = mix(state.wrapping_add(i as u32));
        ids.swap(i, state as usize % (i + 1));
    }
    ids
}

/// A wheel whose link storage for every id is committed, with every timer armed.
fn full_wheel() -> Wheel {
    let mut w = Wheel::with_capacity(SLOTS, 0, TIMERS as usize);
    for id in 0..TIMERS {
        w.insert(id, scattered(0, id, 0));
    }
    w
}

/// Runs timed passes over all timers until `iters` timers are covered and scales the
/// sum to `iters`, so that criterion's time per iteration is the time per timer.
fn per_timer(iters: u64, mut pass: impl FnMut(u32) -> Duration) -> Duration {
    let passes = iters.div_ceil(u64::from(TIMERS));
    let total: Duration = (0..passes).map(|p| pass(p as u32 + 1)).sum();
    total.mul_f64(iters as f64 / (passes * u64::from(TIMERS)) as f64)
}

/// Advances tick by tick through one turn, handing each tick's expired ids to `fired`.
fn sweep_one_turn(w: &mut Wheel, expired: &mut Vec<u32>, mut fired: impl FnMut(&mut Wheel, u32, u32)) {
    let start = w.now();
    for t in 1..=SLOTS as u32 {
        let now = start.wrapping_add(t);
        w.advance(now, expired);
        for &id in expired.iter() {
            fired(w, id, now);
        }
        expired.clear();
    }
}

fn insert(g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    let mut w = full_wheel();
    let ids = shuffled_ids();
    g.bench_function("insert_sequential_ids", |b| {
        b.iter_custom(|iters| {
            per_timer(iters, |seed| {
                (0..TIMERS).for_each(|id| w.remove(id));
                let start = Instant::now();
                for id in 0..TIMERS {
                    w.insert(id, scattered(0, id, seed));
                }
                start.elapsed()
            })
        })
    });
    g.bench_function("insert_shuffled_ids", |b| {
        b.iter_custom(|iters| {
            per_timer(iters, |seed| {
                (0..TIMERS).for_each(|id| w.remove(id));
                let start = Instant::now();
                for &id in &ids {
                    w.insert(id, scattered(0, id, seed));
                }
                start.elapsed()
            })
        })
    });
    // The first million inserts of a loop: link storage grows and its pages are touched.
    g.bench_function("insert_into_new_wheel", |b| {
        b.iter_custom(|iters| {
            per_timer(iters, |seed| {
                let start = Instant::now();
                let mut w = Wheel::new(SLOTS, 0);
                for id in 0..TIMERS {
                    w.insert(id, scattered(0, id, seed));
                }
                let elapsed = start.elapsed();
                drop(black_box(w));
                elapsed
            })
        })
    });
}

fn activity(g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    let ids = shuffled_ids();
    let mut last_rx = vec![0u32; TIMERS as usize];
    g.bench_function("activity_store_last_rx", |b| {
        b.iter_custom(|iters| {
            per_timer(iters, |tick| {
                let start = Instant::now();
                for &id in &ids {
                    last_rx[id as usize] = tick;
                }
                black_box(&mut last_rx);
                start.elapsed()
            })
        })
    });
    // What eager re-arm would cost per event instead: moving an armed timer.
    let mut w = full_wheel();
    g.bench_function("rearm_armed_timer", |b| {
        b.iter_custom(|iters| {
            per_timer(iters, |seed| {
                let start = Instant::now();
                for &id in &ids {
                    w.insert(id, scattered(0, id, seed));
                }
                start.elapsed()
            })
        })
    });
}

fn expiry(g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    let mut w = full_wheel();
    let mut expired = Vec::new();
    // Every timer fires: advance and the walk of the expired ids, no re-insert. Scattered:
    // a slot's timers are anywhere in the 12 MB of links, the steady state once lazy
    // re-arm has sorted timers by last_rx; each step of a slot's list is a cache miss.
    // Clustered: a slot's timers are neighbours in memory.
    for (name, spread) in [
        ("expire_scattered_ids", scattered as fn(u32, u32, u32) -> u32),
        ("expire_clustered_ids", |now, id, _| clustered(now, id)),
    ] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                per_timer(iters, |seed| {
                    let now = w.now();
                    for id in 0..TIMERS {
                        w.insert(id, spread(now, id, seed));
                    }
                    let mut fired = 0u32;
                    let start = Instant::now();
                    sweep_one_turn(&mut w, &mut expired, |_, _, _| fired += 1);
                    let elapsed = start.elapsed();
                    assert_eq!(fired, TIMERS);
                    elapsed
                })
            })
        });
    }
    // Every timer fires, but its connection was heard from after it was armed: the
    // caller re-inserts it at last_rx + TIMEOUT. Cost per visited timer, re-insert included.
    let mut last_rx = vec![0u32; TIMERS as usize];
    g.bench_function("lazy_rearm_sweep", |b| {
        b.iter_custom(|iters| {
            per_timer(iters, |seed| {
                let now = w.now();
                for id in 0..TIMERS {
                    let deadline = scattered(now, id, seed);
                    w.insert(id, deadline);
                    // Heard from the tick before the timer fires.
                    last_rx[id as usize] = deadline.wrapping_sub(1);
                }
                let mut rearmed = 0u32;
                let start = Instant::now();
                sweep_one_turn(&mut w, &mut expired, |w, id, now| {
                    let due = last_rx[id as usize].wrapping_add(TIMEOUT);
                    if !is_due(due, now) {
                        w.insert(id, due);
                        rearmed += 1;
                    }
                });
                let elapsed = start.elapsed();
                assert_eq!((rearmed, w.len()), (TIMERS, TIMERS as usize));
                elapsed
            })
        })
    });
    // Timers a turn ahead: each visit only reads the deadline. A timeout longer than the
    // wheel pays this once per extra turn.
    g.bench_function("visit_later_turn", |b| {
        b.iter_custom(|iters| {
            per_timer(iters, |seed| {
                let now = w.now();
                for id in 0..TIMERS {
                    w.insert(id, scattered(now, id, seed).wrapping_add(SLOTS as u32));
                }
                let start = Instant::now();
                sweep_one_turn(&mut w, &mut expired, |_, _, _| unreachable!());
                let elapsed = start.elapsed();
                assert_eq!(w.len(), TIMERS as usize);
                elapsed
            })
        })
    });
}

fn wheel(c: &mut Criterion) {
    let mut g = c.benchmark_group("wheel_1m_timers_4096_slots");
    g.throughput(Throughput::Elements(1));
    g.sample_size(10);
    insert(&mut g);
    activity(&mut g);
    expiry(&mut g);
    g.finish();
}

criterion_group!(benches, wheel);
criterion_main!(benches);
