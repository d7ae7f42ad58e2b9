//! Third-party parsers that panic on hostile input (`tokenizers` does, on a `tokenizer.json` cut
//! inside its decoder or with a `continuing_subword_prefix` longer than a merged token), contained
//! into errors: the panic's message becomes the error and is not printed.

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;

use anyhow::{Result, anyhow};

thread_local! {
    static CONTAINING: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`; a panic inside it becomes an error saying `what` failed and why.
pub fn contain<R>(what: &str, f: impl FnOnce() -> R) -> Result<R> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        // Every other panic is reported as before.
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !CONTAINING.with(Cell::get) {
                previous(info);
            }
        }));
    });
    let outer = CONTAINING.with(|c| c.replace(true));
    let r = catch_unwind(AssertUnwindSafe(f));
    CONTAINING.with(|c| c.set(outer));
    r.map_err(|payload| {
        let why = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "an internal error".into());
        anyhow!("{what} failed: {why}")
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn panics_become_errors() {
        assert_eq!(super::contain("adding", || 1 + 1).unwrap(), 2);
        let e = super::contain("parsing the tokenizer", || -> u32 { panic!("subtract with overflow") }).unwrap_err();
        assert_eq!(e.to_string(), "parsing the tokenizer failed: subtract with overflow");
    }
}
