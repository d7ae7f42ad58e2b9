//! How long-running library work says how far it is, without printing: the CLI draws progress
//! bars from these calls, a server can log them, tests ignore them ([`Silent`]).

/// Receives the progress of a job. Stages run one after another; each call is cheap.
pub trait Progress: Sync {
    /// A stage named `label` with `total` steps begins.
    fn start(&self, label: &str, total: u64) {
        let _ = (label, total);
    }

    /// `n` more steps of the current stage are done.
    fn advance(&self, n: u64) {
        let _ = n;
    }

    /// A short live status of the current stage (a training loss, a speed), shown beside its bar.
    fn message(&self, text: &str) {
        let _ = text;
    }

    /// The current stage is done.
    fn finish(&self) {}

    /// Something the user should know: a warning, a resumed run, a finished shot.
    fn note(&self, message: &str) {
        let _ = message;
    }
}

/// Progress nobody watches.
pub struct Silent;

impl Progress for Silent {}
