//! Byte sizes in the config: an integer count, or text with a unit (`"512KiB"`, `"4MiB"`,
//! `"1GB"`). Binary units are powers of 1024, decimal ones powers of 1000.

use std::ops::Range;

use super::ConfigError;
use super::error::Source;
use super::raw::RawSize;

/// Parses `"10MiB"`, `"512 KB"`, `"1048576"`: decimal (`KB`, `MB`, `GB`) and binary (`KiB`,
/// `MiB`, `GiB`) units, case-insensitive.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits.parse().map_err(|_| format!("`{text}` is not a size"))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1000 * 1000,
        "mib" => 1 << 20,
        "g" | "gb" => 1000 * 1000 * 1000,
        "gib" => 1 << 30,
        _ => return Err(format!("`{text}` has an unknown unit")),
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("`{text}` is too large"))
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
        RawSize::Bytes(bytes) => u64::try_from(*bytes).ok(),
        RawSize::Text(text) => parse_size(text).ok(),
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
        assert_eq!(parse_size("4MiB"), Ok(4 << 20));
        assert_eq!(parse_size("512 KiB"), Ok(512 << 10));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("10"), Ok(10));
        assert!(parse_size("1.5MiB").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("3 parsecs").is_err());
    }
}
