//! Enumerations a user picks by name (weight types, KV-cache types, scorers, formats): their
//! names, one line about each, and parsing. Front ends build their own parsers and help text from
//! these, so the library needs no argument parser.

/// A value picked by name.
pub trait Choice: Copy + Sized + 'static {
    /// Every value, in the order help lists them.
    const ALL: &'static [Self];

    /// The name users type and reports write (the serde name too).
    fn name(self) -> &'static str;

    /// One line on what this value does.
    fn about(self) -> &'static str;

    /// The value called `name`.
    fn parse(name: &str) -> Result<Self, UnknownChoice> {
        Self::ALL.iter().copied().find(|v| v.name() == name).ok_or_else(|| UnknownChoice {
            given: name.to_string(),
            known: Self::ALL.iter().map(|v| v.name()).collect(),
        })
    }
}

/// Implements [`Choice`] for an enum from one line per variant: `Variant => "name", "about"`.
#[macro_export]
macro_rules! impl_choice {
    ($ty:ty { $($variant:ident => $name:literal, $about:literal;)+ }) => {
        impl $crate::choice::Choice for $ty {
            const ALL: &'static [Self] = &[$(Self::$variant),+];

            fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)+
                }
            }

            fn about(self) -> &'static str {
                match self {
                    $(Self::$variant => $about,)+
                }
            }
        }
    };
}

/// A name that is none of a [`Choice`]'s values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownChoice {
    pub given: String,
    pub known: Vec<&'static str>,
}

impl std::fmt::Display for UnknownChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` is not one of {}", self.given, self.known.join(", "))
    }
}

impl std::error::Error for UnknownChoice {}
