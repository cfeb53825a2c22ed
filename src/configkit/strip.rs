//! A route's `strip-headers`: client request headers that never go upstream, so a third-party
//! API does not learn which page or browser made the call.
//!
//! An entry is a header name (`Referer`) or a prefix ending in `*` (`Sec-Fetch-*`), matched
//! case-insensitively. A route without the key strips [`DEFAULT_STRIPPED`]; a route that lists
//! its own replaces the default (`strip-headers = []` forwards everything). Headers the route
//! injects are set after stripping, so an injected `User-Agent` always goes out.

use http::{HeaderMap, HeaderName};
use toml::Spanned;

use super::ConfigError;
use super::error::Source;

/// Browser-only headers stripped by default: they name the calling page (`Origin`, `Referer`)
/// or describe the browser and the fetch (`Sec-Fetch-*`, `Sec-CH-*` client hints, `Sec-GPC`,
/// `DNT`). `User-Agent` is not in the list: several APIs (GitHub among them) refuse requests
/// without one; list it and inject your own (`headers = { User-Agent = "my-app" }`) to hide it.
pub const DEFAULT_STRIPPED: &[&str] = &["origin", "referer", "sec-fetch-*", "sec-ch-*", "sec-gpc", "dnt"];

/// Validated `strip-headers`: exact names and lowercase prefixes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StripHeaders {
    pub names: Vec<HeaderName>,
    /// Lowercase, without the `*`: `sec-fetch-`.
    pub prefixes: Vec<String>,
}

impl Default for StripHeaders {
    fn default() -> Self {
        let mut strip = StripHeaders {
            names: Vec::new(),
            prefixes: Vec::new(),
        };
        for entry in DEFAULT_STRIPPED {
            strip.push(entry).expect("the default list is valid");
        }
        strip
    }
}

impl StripHeaders {
    /// True when a client header called `name` must not go upstream.
    pub fn strips(&self, name: &HeaderName) -> bool {
        self.names.contains(name) || self.prefixes.iter().any(|p| name.as_str().starts_with(p.as_str()))
    }

    /// Removes every stripped header from `headers` (the client's, before injection).
    pub fn apply(&self, headers: &mut HeaderMap) {
        let doomed: Vec<HeaderName> = headers.keys().filter(|name| self.strips(name)).cloned().collect();
        for name in doomed {
            headers.remove(name);
        }
    }

    /// The entries as written in the config, lowercase (`sec-fetch-*`).
    pub fn entries(&self) -> Vec<String> {
        self.names
            .iter()
            .map(|n| n.as_str().to_string())
            .chain(self.prefixes.iter().map(|p| format!("{p}*")))
            .collect()
    }

    fn push(&mut self, entry: &str) -> Result<(), String> {
        let lower = entry.trim().to_ascii_lowercase();
        match lower.strip_suffix('*') {
            Some(prefix) => {
                if prefix.is_empty() || prefix.contains('*') || HeaderName::from_bytes(prefix.as_bytes()).is_err() {
                    return Err(format!(
                        "`{entry}` is not a header name or prefix; write e.g. \"Referer\" or \"Sec-Fetch-*\""
                    ));
                }
                if !self.prefixes.contains(&prefix.to_string()) {
                    self.prefixes.push(prefix.to_string());
                }
            }
            None => {
                let name = HeaderName::from_bytes(lower.as_bytes()).map_err(|_| {
                    format!("`{entry}` is not a header name or prefix; write e.g. \"Referer\" or \"Sec-Fetch-*\"")
                })?;
                if !self.names.contains(&name) {
                    self.names.push(name);
                }
            }
        }
        Ok(())
    }
}

/// Validates a route's `strip-headers` (`None`: the default list).
pub(crate) fn strip_headers(
    raw: Option<&Spanned<Vec<Spanned<String>>>>,
    key: &str,
    source: &Source<'_>,
) -> Result<StripHeaders, ConfigError> {
    let Some(list) = raw else {
        return Ok(StripHeaders::default());
    };
    let mut strip = StripHeaders {
        names: Vec::new(),
        prefixes: Vec::new(),
    };
    for entry in list.get_ref() {
        strip
            .push(entry.get_ref())
            .map_err(|message| source.error(entry.span(), key, message))?;
    }
    Ok(strip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn route_strip(extra: &str) -> Result<StripHeaders, String> {
        Config::parse(
            &format!("[routes.a]\npath = \"/a\"\nupstream = \"https://x.example/\"\n{extra}"),
            "proxy.toml",
        )
        .map(|c| c.routes[0].strip_headers.clone())
        .map_err(|e| e.to_string())
    }

    #[test]
    fn default_strips_browser_headers_only() {
        let strip = route_strip("").unwrap();
        let mut headers = HeaderMap::new();
        for name in [
            "origin",
            "referer",
            "sec-fetch-site",
            "sec-fetch-mode",
            "sec-ch-ua-platform",
            "sec-gpc",
            "dnt",
            "user-agent",
            "accept",
            "content-type",
        ] {
            headers.insert(HeaderName::from_static(name), "x".parse().unwrap());
        }
        strip.apply(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort();
        assert_eq!(left, ["accept", "content-type", "user-agent"]);
        assert_eq!(
            strip.entries(),
            ["origin", "referer", "sec-gpc", "dnt", "sec-fetch-*", "sec-ch-*"]
        );
    }

    #[test]
    fn a_list_replaces_the_default() {
        let strip = route_strip("strip-headers = [\"User-Agent\", \"X-Debug-*\"]\n").unwrap();
        assert!(strip.strips(&HeaderName::from_static("user-agent")));
        assert!(strip.strips(&HeaderName::from_static("x-debug-trace")));
        assert!(!strip.strips(&HeaderName::from_static("origin")));
        let none = route_strip("strip-headers = []\n").unwrap();
        assert!(!none.strips(&HeaderName::from_static("origin")));
    }

    #[test]
    fn bad_entries_name_the_place() {
        let message = route_strip("strip-headers = [\"Referer\", \"bad header\"]\n").unwrap_err();
        assert_eq!(
            message,
            "proxy.toml:4:29: routes.a.strip-headers: `bad header` is not a header name or prefix; write e.g. \"Referer\" or \"Sec-Fetch-*\""
        );
        assert!(route_strip("strip-headers = [\"*\"]\n").is_err());
    }
}
