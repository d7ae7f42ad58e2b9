//! The decode step's parallel regions on a pool of persistent spinning threads: the caller and one
//! helper per further rayon thread, which spins between regions instead of sleeping.
//!
//! A decode token runs ~150 short regions (the GEMVs of small matrices, attention), each a few
//! to a few tens of µs, so what a region costs beyond its work is a visible share of a token: a
//! rayon region costs 0.66–0.75 µs, a spin-pool region 0.30–0.33 (`cargo run --release
//! --example region_overhead` measures both), and rayon's idle worker sits in `sched_yield`
//! between regions (~10% of a decode profile) (`bench/NOTES.md`).
//! A helper parks after [`SPIN`] without work, so prefill's rayon GEMMs get the cores back.
//! A helper takes part in a region only if it joins it before the caller has handed out every
//! task, and the caller waits only for those that joined (see [`Shared`]): on a machine shared
//! with other work a helper can be off its core for a time slice.
//! One region at a time: a second caller, or a region started from inside a region, runs on
//! rayon instead.

use std::cell::{Cell, UnsafeCell};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use rayon::prelude::*;

/// How long a helper spins without work before it parks. Within a token the regions come a few
/// µs apart; a longer gap means the caller is serial or off its core, and a parked helper leaves
/// its core free, so the scheduler can run the caller there when other work of a shared machine
/// took the caller's core. 50 µs instead of 200: decode 1.04–1.18× beside two busy processes on
/// 2 cores, 0.94–1.07× beside one or four, the same on a quiet machine (`bench/NOTES.md`,
/// "Sharing the CPU").
const SPIN: Duration = Duration::from_micros(50);

/// `Shared::state`: the region's generation above [`CLOSED`], then the count of helpers in it.
/// One word, so that joining (a helper) and closing (the caller) are ordered against each other.
const IN: u64 = 1;
const IN_MASK: u64 = (1 << 20) - 1;
/// Set by the caller once every task index is handed out: no helper joins from then on.
const CLOSED: u64 = 1 << 20;
/// One generation.
const GEN: u64 = 1 << 21;

/// The region being run: `run(i)` for every index below `n`, handed out by `next`.
///
/// Participant p (helper p, or the caller as the last) owns the p-th of equal contiguous
/// ranges of indices and takes them in order, then helps with the others' ranges. Consecutive
/// tasks are consecutive weight rows: handing them out alternately broke each thread's stream
/// at every task and made q8_0 decode 17% slower.
struct Job {
    run: *const (dyn Fn(usize) + Sync),
    n: usize,
}

/// A value on cache lines of its own: the counters that different threads write would
/// otherwise share a line with what the helpers spin on.
#[repr(align(128))]
struct Line<T>(T);

impl<T> std::ops::Deref for Line<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// A region is joined, not attended: a helper takes part in it only if it joins before the
/// caller closes it, and the caller waits only for the helpers that joined. On a machine
/// shared with other work a helper may be off its core for a whole time slice (milliseconds,
/// against regions of microseconds); waiting for every helper made each region wait for it
/// (`bench/NOTES.md`, "Sharing the CPU"). A helper that comes back late finds its region
/// closed, or a newer one, and never touches the job it missed.
struct Shared {
    /// Generation, [`CLOSED`], and the helpers in the region: joined and not yet left.
    /// A new generation is stored once `job` and `next` are written.
    state: Line<AtomicU64>,
    job: UnsafeCell<Job>,
    /// Per participant: the next index of its range.
    next: Vec<Line<AtomicUsize>>,
    /// A task panicked on a helper; the caller panics after the region.
    panicked: AtomicBool,
    /// Per helper: parked, or about to; the caller unparks it.
    parked: Vec<AtomicBool>,
    threads: OnceLock<Vec<Thread>>,
}

// SAFETY: `job` is written only by the caller holding `Pool::lock`, after it closed the
// previous region and saw every helper that joined it leave (`state`), and before `state`
// publishes the next generation; a helper reads it only between joining a region (a CAS on
// `state`, which fails once the region is closed) and leaving it.
unsafe impl Sync for Shared {}

struct Pool {
    shared: &'static Shared,
    lock: Mutex<()>,
}

thread_local! {
    /// Set on the helpers and on a caller inside a region: a nested region runs on rayon.
    static IN_REGION: Cell<bool> = const { Cell::new(false) };
}

fn pool() -> Option<&'static Pool> {
    static POOL: OnceLock<Option<Pool>> = OnceLock::new();
    POOL.get_or_init(|| Pool::new(rayon::current_num_threads().saturating_sub(1), || {})).as_ref()
}

fn nothing(_: usize) {}

impl Pool {
    /// A pool with `helpers` threads (none: `None`), each of which calls `hold` before it
    /// serves (the tests hold helpers back to run regions without them).
    fn new(helpers: usize, hold: impl Fn() + Clone + Send + 'static) -> Option<Pool> {
        if helpers == 0 {
            return None;
        }
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            state: Line(AtomicU64::new(CLOSED)),
            job: UnsafeCell::new(Job { run: &nothing as &(dyn Fn(usize) + Sync), n: 0 }),
            next: (0..=helpers).map(|_| Line(AtomicUsize::new(0))).collect(),
            panicked: AtomicBool::new(false),
            parked: (0..helpers).map(|_| AtomicBool::new(false)).collect(),
            threads: OnceLock::new(),
        }));
        let threads = (0..helpers)
            .map(|h| {
                let hold = hold.clone();
                std::thread::Builder::new()
                    .name(format!("transact-spin-{h}"))
                    .spawn(move || {
                        hold();
                        helper(shared, h)
                    })
                    .map(|j| j.thread().clone())
            })
            .collect::<std::io::Result<Vec<_>>>()
            .ok()?;
        shared.threads.set(threads).ok()?;
        Some(Pool { shared, lock: Mutex::new(()) })
    }
}

fn helper(s: &'static Shared, h: usize) {
    IN_REGION.with(|f| f.set(true));
    let mut state = s.state.load(Acquire);
    // The last generation this helper saw, joined or not.
    let mut seen = state / GEN;
    loop {
        let mut idle = Instant::now();
        let mut spins = 0u32;
        while state / GEN == seen {
            spins += 1;
            if !spins.is_multiple_of(64) || idle.elapsed() < SPIN {
                std::hint::spin_loop();
            } else {
                // Park unless a region started meanwhile (the caller reads `parked` after
                // publishing a generation, so one of the two sees the other).
                s.parked[h].store(true, SeqCst);
                if s.state.load(SeqCst) / GEN == seen {
                    std::thread::park();
                }
                s.parked[h].store(false, SeqCst);
                idle = Instant::now();
            }
            state = s.state.load(Acquire);
        }
        seen = state / GEN;
        // Join while the region is open. A closed one is skipped; a CAS that loses to a newer
        // generation leaves `state` on it, which the next turn joins.
        while state / GEN == seen && state & CLOSED == 0 {
            match s.state.compare_exchange_weak(state, state + IN, Acquire, Acquire) {
                Ok(_) => {
                    // SAFETY: see `Shared`: joined, so the region is open and its job written;
                    // the caller waits for this helper to leave before the job goes out of
                    // scope or is rewritten.
                    let job = unsafe { &*s.job.get() };
                    // A panicking task must still leave the region, or the caller waits forever.
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| take_tasks(s, job, h))).is_err() {
                        s.panicked.store(true, Relaxed);
                    }
                    s.state.fetch_sub(IN, Release);
                    break;
                }
                Err(now) => state = now,
            }
        }
    }
}

/// Participant `me`'s range of `job`'s tasks, then what is left of the others'.
fn take_tasks(s: &Shared, job: &Job, me: usize) {
    let p = s.next.len();
    for r in (me..me + p).map(|r| r % p) {
        let end = range(job.n, p, r).end;
        loop {
            let i = s.next[r].fetch_add(1, Relaxed);
            if i >= end {
                break;
            }
            // SAFETY: `run` points at the caller's closure, alive until every helper that joined
            // the region has left it.
            unsafe { (*job.run)(i) };
        }
    }
}

/// The `r`-th of `p` near-equal contiguous ranges of `0..n`.
fn range(n: usize, p: usize, r: usize) -> std::ops::Range<usize> {
    n * r / p..n * (r + 1) / p
}

/// `f(item)` for every item, spread over the pool (or rayon's threads when the pool is busy,
/// inside a region, or absent).
pub fn for_each<T: Send>(items: Vec<T>, f: impl Fn(T) + Sync) {
    run_on(pool().filter(|_| !IN_REGION.with(|r| r.get())), items, f)
}

fn run_on<T: Send>(pool: Option<&Pool>, items: Vec<T>, f: impl Fn(T) + Sync) {
    if items.len() <= 1 {
        return items.into_iter().for_each(f);
    }
    let Some((pool, _guard)) = pool.and_then(|t| t.lock.try_lock().ok().map(|g| (t, g))) else {
        return items.into_par_iter().for_each(&f);
    };
    // Each slot is taken by exactly one task index.
    struct Slots<T>(Vec<UnsafeCell<Option<T>>>);
    // SAFETY: index i is handed out once (`next`), so no two threads touch one slot.
    unsafe impl<T: Send> Sync for Slots<T> {}
    impl<T> Slots<T> {
        /// # Safety
        /// No other thread may take slot `i`.
        unsafe fn take(&self, i: usize) -> Option<T> {
            // SAFETY: the caller guarantees that no other thread takes slot `i`, and nothing else
            // reaches the cells while the region runs, so this `&mut` to the cell is the only
            // reference to it (`self.0[i]` is bounds-checked).
            unsafe { (*self.0[i].get()).take() }
        }
    }
    let slots = Slots(items.into_iter().map(|t| UnsafeCell::new(Some(t))).collect());
    let run = |i: usize| {
        // SAFETY: `i` comes from `take_tasks`, which hands out every index below `n` once (one
        // `fetch_add` on the counter of the one range that holds it), so no other thread takes
        // slot `i`.
        if let Some(t) = unsafe { slots.take(i) } {
            f(t)
        }
    };
    let run: &(dyn Fn(usize) + Sync) = &run;
    let s = pool.shared;
    // The previous region is closed and empty (`Wait`), or none ran yet: no helper can join.
    let state = s.state.load(Relaxed);
    debug_assert!(state & CLOSED != 0 && state & IN_MASK == 0);
    // SAFETY: the previous region was closed and every helper that joined it left (`Wait`), so
    // none reads `job` now, and none joins before the store to `state` below. The lifetime is
    // erased: this function waits for every helper that joins before `run` goes out of scope.
    unsafe {
        *s.job.get() = Job { run: std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static (dyn Fn(usize) + Sync)>(run), n: slots.0.len() };
    }
    for (r, next) in s.next.iter().enumerate() {
        next.store(range(slots.0.len(), s.next.len(), r).start, Relaxed);
    }
    // Open: the next generation, no one in. A plain store: while closed no helper writes `state`.
    s.state.store((state / GEN + 1) * GEN, SeqCst);
    let threads = s.threads.get().expect("the pool's threads are set when it is built");
    for (parked, t) in s.parked.iter().zip(threads) {
        if parked.load(SeqCst) {
            t.unpark();
        }
    }
    // Closes the region and waits for the helpers in it, even if a task panics here: they may
    // still be running `run`, which borrows this frame. Helpers that have not joined by then
    // are not waited for: one off its core for a time slice must not stall the region.
    struct Wait<'a>(&'a Shared);
    impl Drop for Wait<'_> {
        fn drop(&mut self) {
            IN_REGION.with(|r| r.set(false));
            let mut state = self.0.state.fetch_or(CLOSED, Acquire);
            while state & IN_MASK != 0 {
                std::hint::spin_loop();
                state = self.0.state.load(Acquire);
            }
        }
    }
    let wait = Wait(s);
    IN_REGION.with(|r| r.set(true));
    // SAFETY: just written above; helpers only read it.
    take_tasks(s, unsafe { &*s.job.get() }, threads.len());
    // Every index is handed out: close.
    drop(wait);
    if s.panicked.swap(false, Relaxed) {
        panic!("a task of a spin-pool region panicked on a helper thread");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn every_item_runs_once_from_several_callers_and_nested() {
        // Several threads at once: one holds the pool, the others fall back to rayon; items
        // of an inner call run inside the outer region.
        std::thread::scope(|sc| {
            for c in 0..4u64 {
                sc.spawn(move || {
                    for round in 0..200u64 {
                        let sum = AtomicU64::new(0);
                        let items: Vec<u64> = (0..37).map(|i| i + round + c).collect();
                        for_each(items.clone(), |v| {
                            sum.fetch_add(v, Relaxed);
                            if v % 17 == 0 {
                                for_each(vec![1u64, 2, 3], |w| {
                                    sum.fetch_add(w * 1000, Relaxed);
                                });
                            }
                        });
                        let nested = items.iter().filter(|v| *v % 17 == 0).count() as u64 * 6000;
                        assert_eq!(sum.into_inner(), items.iter().sum::<u64>() + nested);
                    }
                });
            }
        });
    }

    /// Runs `f` on a thread of its own and fails the test if it takes over `secs`, rather than
    /// hang it (a caller that waited for a helper that never comes would).
    fn within(secs: u64, f: impl FnOnce() + Send + 'static) {
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            f();
            tx.send(()).ok();
        });
        match rx.recv_timeout(Duration::from_secs(secs)) {
            Ok(()) => t.join().unwrap(),
            // The sender dropped without sending: `f` panicked; pass its panic on.
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => std::panic::resume_unwind(t.join().unwrap_err()),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("a region waited more than {secs} s"),
        }
    }

    /// Every item ran exactly once (`runs[i]` counts item i).
    fn check_once(runs: &[AtomicU64]) {
        for (i, r) in runs.iter().enumerate() {
            assert_eq!(r.load(Relaxed), 1, "item {i} ran {} times", r.load(Relaxed));
        }
    }

    /// Busy work of about `n` cheap steps.
    fn busy(n: u32) {
        let mut a = 1.0f32;
        for i in 0..n {
            a = std::hint::black_box(a * 1.000_001 + i as f32);
        }
        std::hint::black_box(a);
    }

    #[test]
    fn regions_finish_without_helpers_that_never_join_and_late_helpers_skip_them() {
        within(120, || {
            // Two helpers held back before they serve: the caller must run every region alone,
            // without waiting for them, as it must when a helper is off its core.
            let gate = std::sync::Arc::new((Mutex::new(false), std::sync::Condvar::new()));
            let held = gate.clone();
            let pool = Pool::new(2, move || {
                let (open, cv) = &*held;
                let _open = cv.wait_while(open.lock().unwrap(), |o| !*o).unwrap();
            })
            .unwrap();
            let me = std::thread::current().id();
            for n in (2..40).cycle().take(2000) {
                let runs: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
                run_on(Some(&pool), (0..n).collect(), |i: usize| {
                    assert_eq!(std::thread::current().id(), me, "a held helper ran a task");
                    runs[i].fetch_add(1, Relaxed);
                });
                check_once(&runs);
            }
            // Let the helpers go: each first sees the 2000th region, closed, and skips it; then
            // they join new regions (tasks long enough that an unparked helper arrives in time).
            *gate.0.lock().unwrap() = true;
            gate.1.notify_all();
            let mut helped = 0;
            for _ in 0..5000 {
                let runs: Vec<AtomicU64> = (0..24).map(|_| AtomicU64::new(0)).collect();
                let on_helper = AtomicU64::new(0);
                run_on(Some(&pool), (0..24).collect(), |i: usize| {
                    busy(20_000);
                    runs[i].fetch_add(1, Relaxed);
                    if std::thread::current().id() != me {
                        on_helper.fetch_add(1, Relaxed);
                    }
                });
                check_once(&runs);
                helped += (on_helper.into_inner() > 0) as u32;
                if helped >= 10 {
                    break;
                }
            }
            assert!(helped >= 10, "the released helpers joined only {helped} regions");
        });
    }

    #[test]
    fn every_item_runs_once_beside_busy_threads() {
        within(300, || {
            // More threads than cores, all runnable: helpers (and the caller) are descheduled
            // at any point, before joining, while in a region, between regions.
            let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
            let stop = std::sync::Arc::new(AtomicBool::new(false));
            let hogs: Vec<_> = (0..2 * cores)
                .map(|_| {
                    let stop = stop.clone();
                    std::thread::spawn(move || {
                        while !stop.load(Relaxed) {
                            busy(1000);
                        }
                    })
                })
                .collect();
            let private = Pool::new(3, || {}).unwrap();
            for (k, pool) in [pool(), Some(&private)].into_iter().enumerate() {
                let start = Instant::now();
                let mut round = 0usize;
                while round < 20_000 && start.elapsed() < Duration::from_secs(5) {
                    let n = 2 + (round * 7 + k) % 61;
                    let runs: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
                    run_on(pool, (0..n).collect(), |i: usize| {
                        busy(((i * 37 + round) % 5) as u32 * 200);
                        runs[i].fetch_add(1, Relaxed);
                    });
                    check_once(&runs);
                    round += 1;
                }
            }
            stop.store(true, Relaxed);
            for h in hogs {
                h.join().unwrap();
            }
        });
    }
}
