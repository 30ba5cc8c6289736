//! `--output text|json` for the read commands: a table for people, or one JSON document for
//! scripts (never a secret value: the read commands have none to print).

use serde_json::Value;

/// The output format of a read command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// Lines and tables for people.
    Text,
    /// One pretty-printed JSON document (timestamps RFC 3339, enums as lowercase names).
    Json,
}

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct OutputArgs {
    /// `text` (for people) or `json` (for scripts).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub(crate) output: Format,
}

impl OutputArgs {
    pub(crate) fn json(&self) -> bool {
        self.output == Format::Json
    }
}

/// Prints `value` as pretty JSON on stdout.
#[allow(clippy::print_stdout)]
pub(crate) fn print_json(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A timestamp as RFC 3339 to the second, or null.
pub(crate) fn time(t: Option<prost_types::Timestamp>) -> Value {
    t.map_or(Value::Null, |mut t| {
        t.nanos = 0;
        Value::String(t.to_string())
    })
}

/// An enum's Debug name in lowercase (`Present` -> `present`), or `?` for an unknown value.
pub(crate) fn name<E: std::fmt::Debug, X>(e: Result<E, X>) -> Value {
    Value::String(e.map_or("?".to_owned(), |e| format!("{e:?}").to_lowercase()))
}
