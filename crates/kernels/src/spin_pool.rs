//! The decode step's parallel regions on a pool of persistent spinning threads: the caller and one
//! helper per further rayon thread, which spins between regions instead of sleeping.
//!
//! A decode token runs ~150 short regions (the GEMVs of small matrices, attention), each a few
//! to a few tens of µs, so what a region costs beyond its work is a visible share of a token: a
//! rayon region costs 0.66–0.75 µs, a spin-pool region 0.30–0.33 (`cargo run --release
//! --example region_overhead` measures both), and rayon's idle worker sits in `sched_yield`
//! between regions (~10% of a decode profile) (`bench/NOTES.md`).
//! A helper parks after [`SPIN`] without work, so prefill's rayon GEMMs get the cores back.
//! One region at a time: a second caller, or a region started from inside a region, runs on
//! rayon instead.

use std::cell::{Cell, UnsafeCell};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::*};
use std::sync::{Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use rayon::prelude::*;

/// How long a helper spins without work before it parks.
const SPIN: Duration = Duration::from_micros(200);

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

struct Shared {
    /// Bumped once per region, after `job` is written.
    generation: AtomicUsize,
    job: UnsafeCell<Job>,
    /// Per participant: the next index of its range.
    next: Vec<Line<AtomicUsize>>,
    /// Helpers done with the current region.
    done: Line<AtomicUsize>,
    /// A task panicked on a helper; the caller panics after the region.
    panicked: AtomicBool,
    /// Per helper: parked, or about to; the caller unparks it.
    parked: Vec<AtomicBool>,
    threads: OnceLock<Vec<Thread>>,
}

// SAFETY: `job` is written only by the caller holding `Pool::lock`, while every helper has
// finished the previous region (`done`) and before `generation` publishes it; helpers read it
// only between seeing a new generation and reporting `done`.
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
    POOL.get_or_init(|| {
        let helpers = rayon::current_num_threads().saturating_sub(1);
        if helpers == 0 {
            return None;
        }
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            generation: AtomicUsize::new(0),
            job: UnsafeCell::new(Job { run: &nothing as &(dyn Fn(usize) + Sync), n: 0 }),
            next: (0..=helpers).map(|_| Line(AtomicUsize::new(0))).collect(),
            done: Line(AtomicUsize::new(0)),
            panicked: AtomicBool::new(false),
            parked: (0..helpers).map(|_| AtomicBool::new(false)).collect(),
            threads: OnceLock::new(),
        }));
        let threads = (0..helpers)
            .map(|h| std::thread::Builder::new().name(format!("transact-spin-{h}")).spawn(move || helper(shared, h)).map(|j| j.thread().clone()))
            .collect::<std::io::Result<Vec<_>>>()
            .ok()?;
        shared.threads.set(threads).ok()?;
        Some(Pool { shared, lock: Mutex::new(()) })
    })
    .as_ref()
}

fn nothing(_: usize) {}

fn helper(s: &'static Shared, h: usize) {
    IN_REGION.with(|f| f.set(true));
    let mut seen = 0;
    loop {
        let mut idle = Instant::now();
        let mut spins = 0u32;
        loop {
            let g = s.generation.load(Acquire);
            if g != seen {
                seen = g;
                break;
            }
            spins += 1;
            if !spins.is_multiple_of(64) || idle.elapsed() < SPIN {
                std::hint::spin_loop();
                continue;
            }
            // Park unless a region started meanwhile (the caller reads `parked` after bumping
            // `generation`, so one of the two sees the other).
            s.parked[h].store(true, SeqCst);
            if s.generation.load(SeqCst) == seen {
                std::thread::park();
            }
            s.parked[h].store(false, SeqCst);
            idle = Instant::now();
        }
        // SAFETY: see `Shared`; the job outlives the region, which waits for `done`.
        let job = unsafe { &*s.job.get() };
        // A panicking task must still report done, or the caller waits forever.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| take_tasks(s, job, h))).is_err() {
            s.panicked.store(true, Relaxed);
        }
        s.done.fetch_add(1, Release);
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
            // SAFETY: `run` points at the caller's closure, alive until every helper reports done.
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
    if items.len() <= 1 {
        return items.into_iter().for_each(f);
    }
    let pool = pool().filter(|_| !IN_REGION.with(|r| r.get()));
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
    // SAFETY: the previous region ended with every helper done, so none reads `job` now. The
    // lifetime is erased: this function waits for every helper before `run` goes out of scope.
    unsafe {
        *s.job.get() = Job { run: std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static (dyn Fn(usize) + Sync)>(run), n: slots.0.len() };
    }
    for (r, next) in s.next.iter().enumerate() {
        next.store(range(slots.0.len(), s.next.len(), r).start, Relaxed);
    }
    s.done.store(0, Relaxed);
    s.generation.fetch_add(1, SeqCst);
    let threads = s.threads.get().expect("the pool's threads are set when it is built");
    for (parked, t) in s.parked.iter().zip(threads) {
        if parked.load(SeqCst) {
            t.unpark();
        }
    }
    // Waits for the helpers even if a task panics here: they may still be running `run`,
    // which borrows this frame.
    struct Wait<'a>(&'a Shared, usize);
    impl Drop for Wait<'_> {
        fn drop(&mut self) {
            IN_REGION.with(|r| r.set(false));
            while self.0.done.load(Acquire) != self.1 {
                std::hint::spin_loop();
            }
        }
    }
    let _wait = Wait(s, threads.len());
    IN_REGION.with(|r| r.set(true));
    // SAFETY: just written above; helpers only read it.
    take_tasks(s, unsafe { &*s.job.get() }, threads.len());
    drop(_wait);
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
}
