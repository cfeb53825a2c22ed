//! Byte sizes in the config: an integer count, or text with a unit (`"512KiB"`, `"4MiB"`,
//! `"1GB"`). Binary units are powers of 1024, decimal ones powers of 1000.

use std::ops::Range;

use super::ConfigError;
use super::error::Source;
use super::raw::RawSize;

/// Parses `"4MiB"`-style text into bytes.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let count: u64 = digits.parse().ok()?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "kib" | "k" => 1024,
        "mb" => 1000 * 1000,
        "mib" | "m" => 1024 * 1024,
        "gb" => 1000 * 1000 * 1000,
        "gib" | "g" => 1024 * 1024 * 1024,
        _ => return None,
    };
    count.checked_mul(factor)
}

/// A validated size from the raw config, or `default` when absent. Zero is refused.
pub(crate) fn size(
    raw: Option<&toml::Spanned<RawSize>>,
    key: &str,
    default: u64,
    source: &Source<'_>,
) -> Result<u64, ConfigError> {
    let Some(raw) = raw else { return Ok(default) };
    let span: Range<usize> = raw.span();
    let parsed = match raw.get_ref() {
        RawSize::Bytes(bytes) => Some(*bytes),
        RawSize::Text(text) => parse_size(text),
    };
    parsed.filter(|n| *n > 0).ok_or_else(|| {
        source
            .error(span, key, "is not a byte size")
            .with_help("write a number of bytes or a size with a unit, e.g. \"512KiB\", \"4MiB\", \"1GB\"")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_size("4MiB"), Some(4 << 20));
        assert_eq!(parse_size("512 KiB"), Some(512 << 10));
        assert_eq!(parse_size("1GB"), Some(1_000_000_000));
        assert_eq!(parse_size("10"), Some(10));
        assert_eq!(parse_size("1.5MiB"), None);
        assert_eq!(parse_size("MiB"), None);
        assert_eq!(parse_size("3 parsecs"), None);
    }
}
