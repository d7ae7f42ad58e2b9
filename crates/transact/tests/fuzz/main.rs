//! Structured fuzzing on stable Rust (issue 23): every parser of an untrusted file is fed seeds
//! written by our own writers from a tiny random model, then lied to the way a hostile file lies:
//! counts, dims, offsets, types, alignment, lengths, duplicates, values (NaN, huge, negative,
//! wrong JSON types), truncation. Byte flips alone find nothing; these lies found every bug of
//! the issue. A case passes when the parser returns a value or an error; a panic, or a result
//! that breaks an invariant (a tokenizer id past the embedding, a NaN statistic), is a finding.
//!
//! `cargo test --release --test fuzz` runs a short pass (CI); the long run sets the cases per
//! target: `TRANSACT_FUZZ_CASES=1000000 cargo test --release --test fuzz -- --nocapture`.
//! `TRANSACT_FUZZ_CASE=N` replays case N of each target (a finding prints its number).

mod fixture;
mod gguf;
mod hf;
mod inputs;
mod lies;

use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use rand::SeedableRng;
use rand::rngs::StdRng;

thread_local! {
    static FUZZING: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// While a case runs, a panic's message is kept for the report instead of printed.
fn quiet_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let caught = FUZZING.with(|f| {
                let mut f = f.borrow_mut();
                f.as_mut().map(|msg| *msg = format!("{info}"))
            });
            if caught.is_none() {
                default(info);
            }
        }));
    });
}

/// What one case did.
pub enum Outcome {
    /// The input was accepted (and its result checked).
    Accepted,
    /// The input was refused with an error.
    Refused,
}

/// Runs `cases` cases of one target (`TRANSACT_FUZZ_CASES` overrides `default_cases`); each gets
/// a generator seeded by its number, so any case replays alone. Fails listing the findings.
pub fn run_target(name: &str, default_cases: u64, mut case: impl FnMut(&mut StdRng, &mut Vec<String>) -> Result<Outcome, String>) {
    quiet_panics();
    let cases = std::env::var("TRANSACT_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default_cases);
    let only: Option<u64> = std::env::var("TRANSACT_FUZZ_CASE").ok().and_then(|v| v.parse().ok());
    let salt = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    let t0 = Instant::now();
    let (mut accepted, mut refused, mut slowest) = (0u64, 0u64, (0f64, 0u64));
    let mut findings = Vec::new();
    let range = match only {
        Some(n) => n..n + 1,
        None => 0..cases,
    };
    for i in range {
        let mut rng = StdRng::seed_from_u64(salt ^ i);
        let mut lies = Vec::new();
        let t = Instant::now();
        FUZZING.with(|f| *f.borrow_mut() = Some(String::new()));
        let r = catch_unwind(AssertUnwindSafe(|| case(&mut rng, &mut lies)));
        let panic = FUZZING.with(|f| f.borrow_mut().take()).unwrap_or_default();
        let secs = t.elapsed().as_secs_f64();
        if secs > slowest.0 {
            slowest = (secs, i);
        }
        match r {
            Ok(Ok(Outcome::Accepted)) => accepted += 1,
            Ok(Ok(Outcome::Refused)) => refused += 1,
            Ok(Err(broken)) => findings.push(format!("case {i}: {broken}; lies: {lies:?}")),
            Err(_) => findings.push(format!("case {i}: panic: {panic}; lies: {lies:?}")),
        }
        if secs > 5.0 {
            findings.push(format!("case {i}: took {secs:.1} s; lies: {lies:?}"));
        }
    }
    let n = accepted + refused + findings.len() as u64;
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "fuzz {name}: {n} cases in {secs:.1} s ({:.0}/s): {accepted} accepted, {refused} refused, {} findings; slowest case {} ({:.3} s)",
        n as f64 / secs,
        findings.len(),
        slowest.1,
        slowest.0
    );
    assert!(findings.is_empty(), "fuzz {name}: {} findings, first ones:\n{}", findings.len(), findings[..findings.len().min(5)].join("\n"));
}
