//! A job setting the library refuses, named in the library's terms.

/// `setting` (the library's name for it, e.g. `mha_width`, `temperature`) is unusable, for the
/// reason `problem` (which reads after the name: "must be at least 1, got 0"). A front end shows
/// it under its own name for the setting: a command-line flag, a request field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingError {
    pub setting: &'static str,
    pub problem: String,
}

impl SettingError {
    pub fn new(setting: &'static str, problem: impl Into<String>) -> Self {
        Self { setting, problem: problem.into() }
    }
}

impl std::fmt::Display for SettingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.setting, self.problem)
    }
}

impl std::error::Error for SettingError {}

/// Returns early with a [`SettingError`] for `setting`: `bail_setting!("ratio", "must be ...")`.
#[macro_export]
macro_rules! bail_setting {
    ($setting:expr, $($problem:tt)+) => {
        return Err($crate::setting::SettingError::new($setting, format!($($problem)+)).into())
    };
}
