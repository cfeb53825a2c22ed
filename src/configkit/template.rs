//! The two template languages of a route.
//!
//! * [`ValueTemplate`]: header and query values, where `${name}` is the secret `name` and `$${`
//!   is a literal `${`.
//! * [`UrlTemplate`]: the upstream URL, where `{param}` is a path parameter of the route's
//!   `path`. Parameters may only stand in the URL's path: scheme, host and port are fixed at load
//!   time, which is what keeps a secret on its own upstream origin.

use url::Url;

/// One piece of a header or query value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValuePart {
    Literal(String),
    /// The value of the secret with this name.
    Secret(String),
    /// `base64(username:secret)`, for HTTP Basic auth.
    Basic {
        username: String,
        secret: String,
    },
}

/// A header or query value with `${secret}` placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueTemplate {
    pub parts: Vec<ValuePart>,
}

impl ValueTemplate {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(at) = rest.find('$') {
            literal.push_str(&rest[..at]);
            rest = &rest[at..];
            if let Some(after) = rest.strip_prefix("$${") {
                literal.push_str("${");
                rest = after;
            } else if let Some(after) = rest.strip_prefix("${") {
                let end = after
                    .find('}')
                    .ok_or_else(|| "unclosed `${` in template (write `$${` for a literal `${`)".to_string())?;
                let name = &after[..end];
                if !is_name(name) {
                    return Err(format!(
                        "`${{{name}}}` is not a secret name (letters, digits, `-` and `_`)"
                    ));
                }
                if !literal.is_empty() {
                    parts.push(ValuePart::Literal(std::mem::take(&mut literal)));
                }
                parts.push(ValuePart::Secret(name.to_string()));
                rest = &after[end + 1..];
            } else {
                literal.push('$');
                rest = &rest[1..];
            }
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(ValuePart::Literal(literal));
        }
        Ok(ValueTemplate { parts })
    }

    /// Names of the secrets this template uses.
    pub fn secrets(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|part| match part {
            ValuePart::Secret(name) | ValuePart::Basic { secret: name, .. } => Some(name.as_str()),
            ValuePart::Literal(_) => None,
        })
    }

    /// The template with every secret shown as `${name}`; safe to print.
    pub fn describe(&self) -> String {
        self.parts
            .iter()
            .map(|part| match part {
                ValuePart::Literal(text) => text.replace("${", "$${"),
                ValuePart::Secret(name) => format!("${{{name}}}"),
                ValuePart::Basic { username, secret } => format!("base64({username}:${{{secret}}})"),
            })
            .collect()
    }
}

/// Secret and parameter names: ASCII letters, digits, `-` and `_`.
pub fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// One piece of an upstream URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlPart {
    Literal(String),
    /// The raw (still percent-encoded) value of this path parameter.
    Param(String),
}

/// The upstream URL of a route, split around its `{param}` placeholders.
#[derive(Debug, Clone)]
pub struct UrlTemplate {
    pub parts: Vec<UrlPart>,
    /// The URL with every parameter empty: gives the fixed scheme, host, port and base path.
    pub base: Url,
    /// The path every rendered URL must stay under (the literal path before the first param).
    pub base_path: String,
    /// `parts` from the path on (the authority cut off), filled in per request by
    /// [`UrlTemplate::render_target`]: scheme, host and port come from `base` only, so no request
    /// can change them.
    path_parts: Vec<UrlPart>,
}

impl UrlTemplate {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            let close = rest[open..]
                .find('}')
                .map(|i| open + i)
                .ok_or_else(|| "unclosed `{` in upstream URL".to_string())?;
            if open > 0 {
                parts.push(UrlPart::Literal(rest[..open].to_string()));
            }
            let name = rest[open + 1..close].trim_start_matches('*');
            if !is_name(name) {
                return Err(format!("`{{{name}}}` is not a parameter name"));
            }
            parts.push(UrlPart::Param(name.to_string()));
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(UrlPart::Literal(rest.to_string()));
        }

        let first_literal = match parts.first() {
            Some(UrlPart::Literal(text)) => text.as_str(),
            _ => "",
        };
        // Everything up to the first parameter must already hold the whole authority and the
        // start of the path, so no parameter can reach the host.
        if !text.contains("://") {
            return Err(format!(
                "`{text}` has no scheme; write \"https://{}\"",
                text.trim_start_matches('/')
            ));
        }
        let prefix = Url::parse(first_literal).map_err(|e| format!("not a valid URL: {e}"))?;
        let after_scheme = first_literal.split_once("://").map_or("", |(_, rest)| rest);
        if parts.len() > 1 && !after_scheme.contains('/') {
            return Err("parameters may only appear in the URL's path, after the host".to_string());
        }
        if prefix.query().is_some() && parts.len() > 1 {
            return Err("parameters may not appear in the upstream's query string".to_string());
        }
        if !matches!(prefix.scheme(), "http" | "https") {
            return Err(format!("scheme `{}` is not supported; use https", prefix.scheme()));
        }
        if prefix.host_str().is_none_or(str::is_empty) {
            return Err("the upstream URL has no host".to_string());
        }
        if !prefix.username().is_empty() || prefix.password().is_some() {
            return Err(
                "credentials in the upstream URL are not allowed; use a secret in `headers` or `auth`".to_string(),
            );
        }
        if prefix.fragment().is_some() {
            return Err("the upstream URL may not have a fragment".to_string());
        }
        let base_path = prefix.path().to_string();
        let mut path_parts = parts.clone();
        if let Some(UrlPart::Literal(first)) = path_parts.first_mut() {
            let authority_end = first.find("://").map_or(0, |i| i + 3);
            *first = first[authority_end..]
                .find(['/', '?'])
                .map_or(String::new(), |i| first[authority_end + i..].to_string());
        }
        let full: String = parts
            .iter()
            .map(|part| match part {
                UrlPart::Literal(literal) => literal.as_str(),
                UrlPart::Param(_) => "",
            })
            .collect();
        let base = Url::parse(&full).map_err(|e| format!("not a valid URL: {e}"))?;
        Ok(UrlTemplate {
            parts,
            base,
            base_path,
            path_parts,
        })
    }

    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|part| match part {
            UrlPart::Param(name) => Some(name.as_str()),
            UrlPart::Literal(_) => None,
        })
    }

    /// The request target (path and query) for the upstream, without building a URL: literal
    /// text and parameter values (as they came in the canonical request path, which the guard
    /// has already checked for dot segments and encoded separators) laid end to end. `None`
    /// when the result is not a valid origin-form target.
    pub fn render_target<'a>(&self, mut value: impl FnMut(&str) -> Option<&'a str>) -> Option<String> {
        let mut text = String::with_capacity(64);
        for part in &self.path_parts {
            match part {
                UrlPart::Literal(literal) => text.push_str(literal),
                UrlPart::Param(name) => text.push_str(value(name).unwrap_or("")),
            }
        }
        if !text.starts_with('/') {
            text.insert(0, '/');
        }
        let path_end = text.find('?').unwrap_or(text.len());
        let path = &text[..path_end];
        let escapes = path.split('/').any(|segment| matches!(segment, "." | ".."));
        (!escapes && path.starts_with(&self.base_path)).then_some(text)
    }

    /// True when the host is a loopback name or address.
    pub fn is_loopback(&self) -> bool {
        is_loopback_url(&self.base)
    }
}

/// True when `url`'s host is `localhost` or a loopback address.
pub fn is_loopback_url(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

impl std::fmt::Display for UrlTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for part in &self.parts {
            match part {
                UrlPart::Literal(text) => f.write_str(text)?,
                UrlPart::Param(name) => write!(f, "{{{name}}}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_template_parts() {
        let t = ValueTemplate::parse("Bearer ${github} $${x} $5").unwrap();
        assert_eq!(
            t.parts,
            vec![
                ValuePart::Literal("Bearer ".into()),
                ValuePart::Secret("github".into()),
                ValuePart::Literal(" ${x} $5".into()),
            ]
        );
        assert_eq!(t.describe(), "Bearer ${github} $${x} $5");
        assert!(ValueTemplate::parse("${oops").is_err());
        assert!(ValueTemplate::parse("${a b}").is_err());
    }

    #[test]
    fn url_template_params_only_in_path() {
        let t = UrlTemplate::parse("https://api.github.com/{rest}").unwrap();
        assert_eq!(t.params().collect::<Vec<_>>(), ["rest"]);
        assert_eq!(t.base_path, "/");
        assert_eq!(t.render_target(|_| Some("user/repos")).as_deref(), Some("/user/repos"));
        assert!(UrlTemplate::parse("https://{sub}.example.com/").is_err());
        assert!(UrlTemplate::parse("https://example.com{rest}").is_err());
        assert!(UrlTemplate::parse("https://u:p@example.com/").is_err());
        assert!(UrlTemplate::parse("ftp://example.com/").is_err());
    }

    #[test]
    fn targets_reject_escapes() {
        let t = UrlTemplate::parse("https://api.example.com/v1/{rest}").unwrap();
        assert_eq!(t.render_target(|_| Some("../admin")), None);
        assert_eq!(t.render_target(|_| Some("x/./y")), None);
        let with_query = UrlTemplate::parse("https://api.example.com/v1/{id}?format=json").unwrap();
        assert_eq!(
            with_query.render_target(|_| Some("7")).as_deref(),
            Some("/v1/7?format=json")
        );
        let fixed = UrlTemplate::parse("https://api.example.com").unwrap();
        assert_eq!(fixed.render_target(|_| None).as_deref(), Some("/"));
    }
}
