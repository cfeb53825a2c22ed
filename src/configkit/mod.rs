//! The config toolkit: what every feature's validation is built from, importing no feature.
//!
//! Source spans and [`ConfigError`] (`file:line:column: key: message`), value and URL templates
//! with name checks ([`template`]), durations and byte sizes, `strip-headers`, paths relative to
//! the config file, the `[server]` table's raw type (`raw`) and its validated browser boundary
//! and limits ([`access`]). A feature validates its own table with these next to its raw serde
//! type; the `config` module composes the whole file above the features.

pub mod access;
pub(crate) mod duration;
mod error;
pub(crate) mod raw;
mod route;
pub mod size;
pub mod strip;
pub mod template;

use std::path::{Path, PathBuf};

pub(crate) use error::Source;
pub use error::{ConfigError, Location};
pub use route::RouteBase;
pub use strip::{DEFAULT_STRIPPED, StripHeaders};

/// A path from the config, relative to the config file's directory unless absolute.
pub(crate) fn relative_to_config(source: &Source<'_>, path: &Path) -> PathBuf {
    if path.is_absolute() {
        return path.to_path_buf();
    }
    match Path::new(source.name).parent() {
        Some(dir) if !dir.as_os_str().is_empty() && !source.name.starts_with('<') => dir.join(path),
        _ => path.to_path_buf(),
    }
}

/// A `ca-file` key: a PEM file, relative paths taken from the config file's directory (like
/// `static-dir` and schema files).
pub(crate) fn ca_file(path: &toml::Spanned<String>, key: String, source: &Source<'_>) -> Result<PathBuf, ConfigError> {
    let resolved = relative_to_config(source, Path::new(path.get_ref()));
    if !resolved.is_file() {
        return Err(source.error(path.span(), key, format!("`{}` is not a readable file", path.get_ref())));
    }
    Ok(resolved)
}
