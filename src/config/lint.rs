//! `secretproxy check`'s warnings: configs that are valid but almost certainly not what the user
//! meant. Each names `file:line:column`, the key, what is wrong and how to fix it.
//!
//! The lints look at the file as written (the raw, spanned tables) next to the validated
//! [`Config`]. A warning never quotes a value that looks like a secret: for a token typed into
//! the config it says which kind of token it resembles, nothing more.

use std::collections::BTreeSet;

use toml::Spanned;

use super::raw::RawConfig;
use super::{Config, Location};
use crate::configkit::Source;
use crate::configkit::template::{ValuePart, ValueTemplate};

/// One finding of [`lint`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub location: Location,
    pub key: String,
    pub message: String,
    pub help: Option<String>,
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.location, self.key, self.message)?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

/// Known token prefixes, shown instead of the value when one is typed into the config.
const TOKEN_PREFIXES: &[(&str, &str)] = &[
    ("sk-ant-", "an Anthropic API key"),
    ("sk-proj-", "an OpenAI API key"),
    ("sk-", "an OpenAI-style API key"),
    ("sk_live_", "a Stripe secret key"),
    ("sk_test_", "a Stripe test key"),
    ("rk_live_", "a Stripe restricted key"),
    ("ghp_", "a GitHub token"),
    ("gho_", "a GitHub token"),
    ("ghs_", "a GitHub token"),
    ("github_pat_", "a GitHub token"),
    ("glpat-", "a GitLab token"),
    ("xoxb-", "a Slack token"),
    ("xoxp-", "a Slack token"),
    ("AKIA", "an AWS access key"),
    ("AIza", "a Google API key"),
    ("SG.", "a SendGrid API key"),
];

/// Words of an `Authorization` value that must be followed by a credential.
const AUTH_SCHEMES: &[&str] = &["bearer", "basic", "token", "bot", "apikey", "key"];

/// The warnings for `text` (already validated into `config`; `name` is used in locations).
pub fn lint(text: &str, name: &str, config: &Config) -> Vec<Warning> {
    let source = Source { name, text };
    let Ok(raw) = toml::from_str::<RawConfig>(text) else {
        return Vec::new();
    };
    let mut out = Lints {
        source: &source,
        warnings: Vec::new(),
    };

    for (route_name, route) in &raw.routes {
        let route = route.get_ref();
        let key = |field: &str| format!("routes.{route_name}.{field}");
        out.path(&route.path, &key("path"));
        if route.upstream.get_ref().contains("${") {
            out.warn(
                &route.upstream,
                key("upstream"),
                "`${...}` in an upstream is sent as a literal `$` followed by the path parameter",
                "path parameters are written `{rest}`; secrets go in `headers` or `query`, never in the URL",
            );
        }
        for (header, value) in &route.headers {
            out.value(value, format!("routes.{route_name}.headers.{header}"), true);
        }
        for (param, value) in &route.query {
            out.value(value, format!("routes.{route_name}.query.{param}"), false);
        }
        if let Some(validated) = config.route(route_name)
            && validated.secrets.is_empty()
        {
            out.warn(
                &route.path,
                format!("routes.{route_name}"),
                "this route injects no secret",
                "fine for a public API; otherwise add e.g. `auth = { bearer = \"NAME\" }` or `headers = { Authorization = \"Bearer ${NAME}\" }`",
            );
        }
    }

    let mut used: BTreeSet<&str> = config
        .routes
        .iter()
        .flat_map(|r| r.secrets.iter().map(String::as_str))
        .collect();
    used.extend(config.webhooks.iter().map(|w| w.secret.as_str()));
    used.extend(config.server.access.client_token.as_deref());
    for (secret, declared) in &raw.secrets {
        if !used.contains(secret.as_str()) {
            out.warnings.push(Warning {
                location: source.location(declared.span().start),
                key: format!("secrets.{secret}"),
                message: "declared but used by no route, webhook or client-token".to_string(),
                help: Some(format!(
                    "inject it with `${{{secret}}}` in a route's `headers` or `query`, or remove the table"
                )),
            });
        }
    }

    out.warnings.sort_by_key(|w| (w.location.line, w.location.column));
    out.warnings
}

struct Lints<'a> {
    source: &'a Source<'a>,
    warnings: Vec<Warning>,
}

impl Lints<'_> {
    fn warn(&mut self, at: &Spanned<String>, key: String, message: impl Into<String>, help: impl Into<String>) {
        self.warnings.push(Warning {
            location: self.source.location(at.span().start),
            key,
            message: message.into(),
            help: Some(help.into()),
        });
    }

    /// Paths that look like another router's wildcard or parameter syntax.
    fn path(&mut self, path: &Spanned<String>, key: &str) {
        for segment in path.get_ref().split('/') {
            if segment.starts_with('{') {
                continue;
            }
            if segment.contains('*') {
                self.warn(
                    path,
                    key.to_string(),
                    format!("`{segment}` matches only a literal `{segment}`, not any path"),
                    format!(
                        "write `{}` to match everything below, and `{{rest}}` in the upstream",
                        path.get_ref().replacen(segment, "{*rest}", 1)
                    ),
                );
                return;
            }
            if let Some(param) = segment
                .strip_prefix(':')
                .filter(|p| crate::configkit::template::is_name(p))
            {
                self.warn(
                    path,
                    key.to_string(),
                    format!("`{segment}` matches only a literal `{segment}`"),
                    format!("path parameters are written `{{{param}}}`"),
                );
                return;
            }
        }
    }

    /// A header or query value: secrets written the wrong way, an empty credential, or a
    /// credential typed in literally.
    fn value(&mut self, value: &Spanned<String>, key: String, is_header: bool) {
        let Ok(template) = ValueTemplate::parse(value.get_ref()) else {
            return;
        };
        let literal: String = template
            .parts
            .iter()
            .filter_map(|p| match p {
                ValuePart::Literal(text) => Some(text.as_str()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join(" ");
        let has_secret = template.secrets().next().is_some();

        if let Some(name) = dollar_name(&literal) {
            self.warn(
                value,
                key,
                format!("`${name}` is sent literally, not replaced by the secret"),
                format!("write `${{{name}}}`"),
            );
            return;
        }
        if let Some(name) = braced_name(value.get_ref()) {
            self.warn(
                value,
                key,
                format!("`{{{name}}}` is sent literally, not replaced by the secret"),
                format!("write `${{{name}}}`"),
            );
            return;
        }
        if is_header && !has_secret {
            let trimmed = literal.trim();
            let lower = trimmed.to_ascii_lowercase();
            if AUTH_SCHEMES.contains(&lower.as_str()) || trimmed.is_empty() {
                let shown = if trimmed.is_empty() { "the value" } else { trimmed };
                self.warn(
                    value,
                    key,
                    format!("{shown} has nothing after it: no credential is sent"),
                    format!(
                        "write `{}${{NAME}}`; on a command line, quote it with single quotes so the shell does not expand `${{NAME}}` to nothing",
                        if trimmed.is_empty() { String::new() } else { format!("{trimmed} ") }
                    ),
                );
                return;
            }
        }
        for word in literal.split([' ', ',', ';', '=', ':']) {
            if let Some(kind) = token_kind(word) {
                self.warn(
                    value,
                    key,
                    format!("this looks like {kind} written into the config file"),
                    "keep secret values out of the config: store it with `secretproxy secret set NAME` and write `${NAME}` here",
                );
                return;
            }
        }
    }
}

/// `name` of the first `$name` (a `$` followed by a name, not by `{`).
fn dollar_name(text: &str) -> Option<&str> {
    text.match_indices('$').find_map(|(at, _)| {
        let rest = &text[at + 1..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .unwrap_or(rest.len());
        let name = &rest[..end];
        name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            .then_some(name)
    })
}

/// `name` of the first `{name}` not preceded by `$` in the value as written.
fn braced_name(text: &str) -> Option<&str> {
    text.match_indices('{').find_map(|(at, _)| {
        if text[..at].ends_with('$') {
            return None;
        }
        let rest = &text[at + 1..];
        let name = &rest[..rest.find('}')?];
        crate::configkit::template::is_name(name).then_some(name)
    })
}

/// What kind of credential `word` looks like, if it looks like one.
fn token_kind(word: &str) -> Option<&'static str> {
    let word = word.trim_matches(|c: char| c == '"' || c == '\'');
    if word.len() >= 16
        && let Some((_, kind)) = TOKEN_PREFIXES.iter().find(|(prefix, _)| word.starts_with(prefix))
    {
        return Some(kind);
    }
    let charset = word
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'+' | b'/' | b'=' | b'.'));
    let digits = word.bytes().any(|b| b.is_ascii_digit());
    let letters = word.bytes().any(|b| b.is_ascii_alphabetic());
    (word.len() >= 24 && charset && digits && letters && entropy(word) >= 3.5).then_some("a secret value")
}

/// Shannon entropy in bits per character.
fn entropy(word: &str) -> f64 {
    let mut counts = [0usize; 256];
    for b in word.bytes() {
        counts[b as usize] += 1;
    }
    let len = word.len() as f64;
    counts
        .iter()
        .filter(|c| **c > 0)
        .map(|c| {
            let p = *c as f64 / len;
            -p * p.log2()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warnings(text: &str) -> Vec<String> {
        let config = Config::parse(text, "proxy.toml").unwrap();
        lint(text, "proxy.toml", &config)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    const GH: &str = "[secrets.github]\nenv = \"GH\"\n";

    fn route(extra: &str) -> String {
        format!(
            "{GH}[routes.gh]\npath = \"/api/gh/{{*rest}}\"\nupstream = \"https://api.github.com/{{rest}}\"\n{extra}"
        )
    }

    #[test]
    fn a_clean_config_has_no_warnings() {
        assert_eq!(
            warnings(&route(
                "headers = { Authorization = \"Bearer ${github}\", Accept = \"application/json\", X-GitHub-Api-Version = \"2022-11-28\" }\n"
            )),
            Vec::<String>::new()
        );
    }

    #[test]
    fn template_mistakes() {
        let dollar = warnings(&route("headers = { Authorization = \"Bearer $github\" }\n"));
        // The secret is then unused and the route injects nothing: both said too.
        assert_eq!(dollar.len(), 3, "{dollar:?}");
        assert_eq!(
            dollar[2],
            "proxy.toml:6:29: routes.gh.headers.Authorization: `$github` is sent literally, not replaced by the secret\n  help: write `${github}`"
        );
        let braces = warnings(&route("headers = { Authorization = \"Bearer {github}\" }\n"));
        assert!(braces[2].contains("`{github}` is sent literally"), "{braces:?}");
        let empty = warnings(&route("headers = { Authorization = \"Bearer \" }\n"));
        assert!(empty[2].contains("Bearer has nothing after it"), "{empty:?}");
        let upstream = warnings(&format!(
            "{GH}[routes.gh]\npath = \"/api/gh/{{*rest}}\"\nupstream = \"https://api.github.com/${{rest}}\"\nauth = {{ bearer = \"github\" }}\n"
        ));
        assert!(
            upstream[0].starts_with("proxy.toml:5:12: routes.gh.upstream: `${...}` in an upstream"),
            "{upstream:?}"
        );
    }

    #[test]
    fn literal_tokens_are_flagged_without_quoting_them() {
        for token in [
            "sk-proj-abcdefghijklmnop1234",
            "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
            "Zx8Qw3Lp0Vb7Tn2Rk5Yh9Md4Fs6Gc1Ja",
        ] {
            let found = warnings(&route(&format!(
                "headers = {{ Authorization = \"Bearer {token}\", X-Other = \"${{github}}\" }}\n"
            )));
            assert_eq!(found.len(), 1, "{token}: {found:?}");
            assert!(found[0].contains("written into the config file"), "{found:?}");
            assert!(
                !found[0].contains(token) && !found[0].contains(&token[4..12]),
                "{found:?}"
            );
        }
    }

    #[test]
    fn unused_secrets_keyless_routes_and_wildcards() {
        let text =
            "[secrets.spare]\nenv = \"S\"\n[routes.open]\npath = \"/api/open/*\"\nupstream = \"https://x.example/\"\n";
        assert_eq!(
            warnings(text),
            [
                "proxy.toml:1:1: secrets.spare: declared but used by no route, webhook or client-token\n  help: inject it with `${spare}` in a route's `headers` or `query`, or remove the table",
                "proxy.toml:4:8: routes.open.path: `*` matches only a literal `*`, not any path\n  help: write `/api/open/{*rest}` to match everything below, and `{rest}` in the upstream",
                "proxy.toml:4:8: routes.open: this route injects no secret\n  help: fine for a public API; otherwise add e.g. `auth = { bearer = \"NAME\" }` or `headers = { Authorization = \"Bearer ${NAME}\" }`",
            ]
        );
    }
}
