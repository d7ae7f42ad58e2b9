//! What one parallel region costs beyond its work, on the machine that runs this: tasks of
//! ~1 µs of arithmetic in regions of 4, 16 and 64 tasks, against the ideal split over 2
//! threads, run from inside rayon's pool as the decode step is; on rayon, and on the decode
//! step's spin pool (`transact_kernels::spin_pool`, `bench/NOTES.md`).
//!
//! `cargo run --release --example region_overhead`

use rayon::prelude::*;

fn spin(n: usize) -> f32 {
    let mut a = 1.0f32;
    for i in 0..n {
        a = std::hint::black_box(a * 1.0000001 + i as f32 * 1e-9);
    }
    a
}

fn rayon_region(tasks: usize, n: usize) {
    (0..tasks).into_par_iter().for_each(|_| {
        std::hint::black_box(spin(n));
    });
}

fn team_region(tasks: usize, n: usize) {
    transact_kernels::spin_pool::for_each((0..tasks).collect(), |_| {
        std::hint::black_box(spin(n));
    });
}

fn main() {
    rayon::scope(|_| {
        // Work per task calibrated: n iterations.
        let n = 300;
        let t = std::time::Instant::now();
        for _ in 0..100000 {
            std::hint::black_box(spin(n));
        }
        let per_task = t.elapsed().as_secs_f64() / 100000.0;
        for (name, region) in [("rayon", rayon_region as fn(usize, usize)), ("team", team_region)] {
            for tasks in [4usize, 16, 64] {
                let mut best = f64::MAX;
                for _ in 0..5 {
                    let t = std::time::Instant::now();
                    for _ in 0..5000 {
                        region(tasks, n);
                    }
                    best = best.min(t.elapsed().as_secs_f64() / 5000.0);
                }
                let ideal = per_task * tasks as f64 / 2.0;
                println!(
                    "{name}: {tasks} tasks of {:.2} us: region {:.2} us, ideal on 2 threads {:.2} us, overhead {:.2} us",
                    per_task * 1e6,
                    best * 1e6,
                    ideal * 1e6,
                    (best - ideal) * 1e6
                );
            }
        }
    });
}
