//! Durations in the config: humantime text (`"500ms"`, `"30s"`, `"2m"`, `"1h"`). Every duration
//! key goes through [`duration`], so they all read the same syntax and fail with the same message.

use std::time::Duration;

use toml::Spanned;

use super::ConfigError;
use super::error::Source;

/// Whether a duration key may be `"0s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Zero {
    /// A zero timeout, period or tolerance would refuse everything: it is an error.
    Refused,
    /// Zero means "at once" (e.g. `shutdown-timeout`).
    Allowed,
}

/// Parses the duration at `key`; `help` gives examples that suit the key.
pub(crate) fn duration(
    text: &Spanned<String>,
    key: &str,
    zero: Zero,
    help: Option<&str>,
    source: &Source<'_>,
) -> Result<Duration, ConfigError> {
    humantime::parse_duration(text.get_ref())
        .ok()
        .filter(|d| zero == Zero::Allowed || !d.is_zero())
        .ok_or_else(|| {
            let error = source.error(text.span(), key, format!("`{}` is not a duration", text.get_ref()));
            match help {
                Some(help) => error.with_help(help),
                None => error,
            }
        })
}

/// A timeout key that may be absent: `default` then, else a non-zero duration (`help` as for
/// [`duration`]).
pub(crate) fn timeout_or(
    text: Option<&Spanned<String>>,
    key: &str,
    default: Duration,
    help: &str,
    source: &Source<'_>,
) -> Result<Duration, ConfigError> {
    match text {
        None => Ok(default),
        Some(text) => duration(text, key, Zero::Refused, Some(help), source),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, zero: Zero) -> Result<Duration, String> {
        let toml = format!("d = \"{text}\"");
        let mut table: std::collections::BTreeMap<String, Spanned<String>> = toml::from_str(&toml).unwrap();
        let spanned = table.remove("d").unwrap();
        let source = Source { name: "t", text: &toml };
        duration(&spanned, "d", zero, Some("e.g. \"1s\""), &source).map_err(|e| e.to_string())
    }

    #[test]
    fn humantime_syntax_and_zero() {
        assert_eq!(parse("1m 30s", Zero::Refused), Ok(Duration::from_secs(90)));
        assert_eq!(parse("500ms", Zero::Refused), Ok(Duration::from_millis(500)));
        assert_eq!(parse("0s", Zero::Allowed), Ok(Duration::ZERO));
        assert_eq!(
            parse("0s", Zero::Refused),
            Err("t:1:5: d: `0s` is not a duration\n  help: e.g. \"1s\"".to_string())
        );
        assert!(
            parse("soon", Zero::Allowed)
                .unwrap_err()
                .contains("`soon` is not a duration")
        );
    }
}
