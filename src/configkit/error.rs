//! Config errors that point at the file, line, column and key that are wrong.
//!
//! Every validation failure carries the byte span of the offending TOML value so the message can
//! name `file:line:column`; the dotted key path is recovered from the document itself.

use std::ops::Range;
use std::path::PathBuf;

use toml::de::{DeTable, DeValue};

/// Why a config could not be used. Messages are lowercase and never contain a secret value
/// (config files hold secret *names* and sources only).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `serve --listen` asked for an address the config does not open up.
    #[error("{0}")]
    Listen(String),
    #[error("no config file found (looked for {tried}); create one with `secretproxy init`")]
    NotFound { tried: String },
    #[error("{location}: {key}: {message}{}", help.as_ref().map(|h| format!("\n  help: {h}")).unwrap_or_default())]
    Invalid {
        location: Location,
        key: String,
        message: String,
        help: Option<String>,
    },
    /// Every mistake validation found, in file order; printed one `error:` block each, so a
    /// user fixes them all in one pass instead of one per run.
    #[error("{}", several(.0))]
    Several(Vec<ConfigError>),
}

fn several(errors: &[ConfigError]) -> String {
    let blocks: Vec<String> = errors.iter().map(ToString::to_string).collect();
    format!("{}\n{} errors in the config", blocks.join("\nerror: "), errors.len())
}

/// `file:line:column`, 1-based.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    pub line: usize,
    pub column: usize,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// The text being validated and its name, so errors can be placed.
pub(crate) struct Source<'a> {
    pub name: &'a str,
    pub text: &'a str,
}

impl Source<'_> {
    pub fn location(&self, offset: usize) -> Location {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        Location {
            file: self.name.to_string(),
            line,
            column,
        }
    }

    /// An error at `span`, with the key path given by the caller.
    pub fn error(&self, span: Range<usize>, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            location: self.location(span.start),
            key: key.into(),
            message: message.into(),
            help: None,
        }
    }

    /// Turns a TOML syntax or shape error into one that names the key found at its span.
    pub fn toml_error(&self, err: &toml::de::Error) -> ConfigError {
        let span = err.span().unwrap_or(0..0);
        let key = key_at(self.text, span.start).unwrap_or_else(|| "(document)".to_string());
        let message = err.message().trim().to_string();
        let help = unknown_field_hint(&message).or_else(|| list_hint(&key, &message));
        ConfigError::Invalid {
            location: self.location(span.start),
            key,
            message,
            help,
        }
    }
}

impl ConfigError {
    /// One error for a list of them: the single error itself, or [`ConfigError::Several`]
    /// sorted by place in the file. `None` when the list is empty.
    pub fn collect(mut errors: Vec<ConfigError>) -> Option<ConfigError> {
        errors.sort_by_key(|e| match e {
            ConfigError::Invalid { location, .. } => (location.line, location.column),
            _ => (0, 0),
        });
        match errors.len() {
            0 => None,
            1 => errors.pop(),
            _ => Some(ConfigError::Several(errors)),
        }
    }

    /// Adds a suggestion to an `Invalid` error.
    pub fn with_help(mut self, text: impl Into<String>) -> Self {
        if let ConfigError::Invalid { help, .. } = &mut self {
            *help = Some(text.into());
        }
        self
    }
}

/// For serde's "unknown field `x`, expected one of `a`, `b`" message, a "did you mean" line.
fn unknown_field_hint(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (unknown, rest) = rest.split_once('`')?;
    let expected: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    let best = expected
        .iter()
        .map(|candidate| (edit_distance(unknown, candidate), *candidate))
        .filter(|(distance, candidate)| *distance <= (candidate.len() / 3).max(2))
        .min()?;
    Some(format!("did you mean `{}`?", best.1))
}

/// For "invalid type: string \"x\", expected a sequence": the same value written as a list.
fn list_hint(key: &str, message: &str) -> Option<String> {
    let rest = message.strip_prefix("invalid type: string \"")?;
    let (value, expected) = rest.rsplit_once('"')?;
    if !expected.contains("expected a sequence") {
        return None;
    }
    let field = key.rsplit('.').next().unwrap_or(key);
    Some(format!(
        "`{field}` takes a list, even for one value: {field} = [\"{value}\"]"
    ))
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let current = row[j + 1];
            row[j + 1] = if ca == *cb {
                previous
            } else {
                1 + previous.min(row[j]).min(current)
            };
            previous = current;
        }
    }
    row[b.len()]
}

/// The dotted key path of the innermost key or value that covers `offset`.
pub(crate) fn key_at(text: &str, offset: usize) -> Option<String> {
    let (table, _) = DeTable::parse_recoverable(text);
    let mut path = Vec::new();
    find_in_table(table.get_ref(), offset, &mut path).then(|| path.join("."))
}

fn find_in_table(table: &DeTable<'_>, offset: usize, path: &mut Vec<String>) -> bool {
    for (key, value) in table {
        let covers_key = key.span().contains(&offset);
        let covers_value = value.span().contains(&offset);
        path.push(key.get_ref().to_string());
        if covers_key {
            return true;
        }
        let found_deeper = find_in_value(value.get_ref(), offset, path);
        if found_deeper || covers_value {
            return true;
        }
        path.pop();
    }
    false
}

fn find_in_value(value: &DeValue<'_>, offset: usize, path: &mut Vec<String>) -> bool {
    match value {
        DeValue::Table(table) => find_in_table(table, offset, path),
        DeValue::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                let len = path.len();
                if let Some(last) = path.last_mut() {
                    last.push_str(&format!("[{index}]"));
                }
                if find_in_value(item.get_ref(), offset, path) || item.span().contains(&offset) {
                    return true;
                }
                path.truncate(len);
                if let Some(last) = path.last_mut()
                    && let Some(at) = last.rfind('[')
                {
                    last.truncate(at);
                }
            }
            false
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_key() {
        let text = "[server]\nlisten = \"x\"\n\n[routes.github]\npath = \"/a\"\nupstrem = \"b\"\n";
        let offset = text.find("upstrem").unwrap();
        assert_eq!(key_at(text, offset).as_deref(), Some("routes.github.upstrem"));
        let offset = text.find("\"x\"").unwrap();
        assert_eq!(key_at(text, offset).as_deref(), Some("server.listen"));
    }

    #[test]
    fn suggests_close_field() {
        let hint = unknown_field_hint("unknown field `upstrem`, expected one of `path`, `upstream`");
        assert_eq!(hint.as_deref(), Some("did you mean `upstream`?"));
        assert_eq!(unknown_field_hint("unknown field `zzzzzz`, expected `path`"), None);
    }

    #[test]
    fn a_string_where_a_list_belongs_gets_the_list_form() {
        let hint = list_hint(
            "server.allowed-origins",
            "invalid type: string \"http://localhost:5173\", expected a sequence",
        );
        assert_eq!(
            hint.as_deref(),
            Some("`allowed-origins` takes a list, even for one value: allowed-origins = [\"http://localhost:5173\"]")
        );
    }

    #[test]
    fn location_is_one_based() {
        let source = Source {
            name: "f.toml",
            text: "a\nbc = 1\n",
        };
        assert_eq!(source.location(4).to_string(), "f.toml:2:3");
    }
}
