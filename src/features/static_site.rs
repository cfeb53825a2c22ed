//! The site itself, next to its API: `[server] static-dir` is served at `/` for `GET`/`HEAD`
//! requests that no route matches, so the page and its API share one origin and need no CORS.
//!
//! hyper-staticfile resolves and streams files (content types, `Last-Modified`, `ETag`, ranges,
//! `index.html` for directories, never a listing); this module adds what it leaves out:
//! `If-None-Match`, the single-page-app fallback to `/index.html` for navigations
//! (`spa-fallback = true`), and containment. A path with `..`, a backslash or NUL is refused
//! before the file system is asked, dot files (`.env`, `.git/`) are not served, and a symlink
//! that leads out of the directory is treated as missing.

use std::path::{Path, PathBuf};

use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper_staticfile::{ResolveResult, Resolver, ResponseBuilder};
use percent_encoding::percent_decode_str;

use crate::configkit::raw::RawServer;
use crate::configkit::{ConfigError, Source, relative_to_config};
use crate::http::body::{BoxError, ProxyBody, empty};
use crate::secrets::SecretSource;

/// A validated `static-dir` with its options.
#[derive(Debug, Clone)]
pub struct SiteConfig {
    /// Canonical path of the directory.
    pub dir: PathBuf,
    /// Serve `/index.html` for navigations (`Accept: text/html`) to paths with no file.
    pub spa_fallback: bool,
}

impl SiteConfig {
    pub(crate) fn from_raw(raw: &RawServer, source: &Source<'_>) -> Result<Option<SiteConfig>, ConfigError> {
        let Some(dir) = &raw.static_dir else {
            if let Some(spa) = &raw.spa_fallback {
                return Err(source
                    .error(spa.span(), "server.spa-fallback", "needs `static-dir`")
                    .with_help("set `static-dir` to the directory holding the built site"));
            }
            return Ok(None);
        };
        let path = relative_to_config(source, Path::new(dir.get_ref()));
        let canonical = std::fs::canonicalize(&path)
            .ok()
            .filter(|p| p.is_dir())
            .ok_or_else(|| {
                source.error(
                    dir.span(),
                    "server.static-dir",
                    format!("`{}` is not a directory", path.display()),
                )
            })?;
        Ok(Some(SiteConfig {
            dir: canonical,
            spa_fallback: raw.spa_fallback.as_ref().is_some_and(|s| *s.get_ref()),
        }))
    }
}

impl SiteConfig {
    /// The name of a `file` secret whose file lies inside the served directory, if any. A file
    /// that does not exist yet is judged by its (canonical) parent directory.
    pub fn serves_any_of(&self, secrets: &std::collections::BTreeMap<String, SecretSource>) -> Option<String> {
        let resolved = |path: &Path| {
            std::fs::canonicalize(path).ok().or_else(|| {
                let parent = path
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                Some(std::fs::canonicalize(parent).ok()?.join(path.file_name()?))
            })
        };
        secrets.iter().find_map(|(name, source)| match source {
            SecretSource::File(path) if resolved(path).is_some_and(|p| p.starts_with(&self.dir)) => Some(name.clone()),
            _ => None,
        })
    }
}

/// The site of one config generation.
pub struct Site {
    config: SiteConfig,
    resolver: Resolver,
}

impl std::fmt::Debug for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Site").field("config", &self.config).finish()
    }
}

/// A static answer and the error code for the access line, if any.
pub struct Served {
    pub response: Response<ProxyBody>,
    pub error: Option<&'static str>,
}

impl Site {
    pub fn new(config: SiteConfig) -> Site {
        Site {
            resolver: Resolver::new(config.dir.clone()),
            config,
        }
    }

    /// Serves `GET`/`HEAD` from the directory; `None` for other methods (no route, no file).
    pub async fn serve(&self, parts: &http::request::Parts) -> Option<Served> {
        if parts.method != Method::GET && parts.method != Method::HEAD {
            return None;
        }
        let path = parts.uri.path();
        if !is_safe(path) {
            return Some(Served {
                response: status_only(StatusCode::BAD_REQUEST),
                error: Some("bad_path"),
            });
        }
        let mut result = self.resolve(path).await;
        if matches!(result, ResolveResult::NotFound) && self.config.spa_fallback && wants_html(&parts.headers) {
            result = self.resolve("/").await;
        }
        let found = matches!(result, ResolveResult::Found(_));
        let is_html =
            matches!(&result, ResolveResult::Found(file) if file.path.extension().is_some_and(|e| e == "html"));

        // If-None-Match wins over If-Modified-Since (RFC 9110 §13.2.2).
        let mut conditional = parts.headers.clone();
        if conditional.contains_key(header::IF_NONE_MATCH) {
            conditional.remove(header::IF_MODIFIED_SINCE);
        }
        let built = ResponseBuilder::new()
            .request_parts(&parts.method, &parts.uri, &conditional)
            .build(result);
        let mut response = match built {
            Ok(response) => response.map(|body| body.map_err(|e| Box::new(e) as BoxError).boxed_unsync()),
            Err(_) => status_only(StatusCode::INTERNAL_SERVER_ERROR),
        };
        if found && etag_matches(&parts.headers, response.headers()) {
            let mut not_modified = status_only(StatusCode::NOT_MODIFIED);
            for name in [header::ETAG, header::LAST_MODIFIED] {
                if let Some(value) = response.headers().get(&name) {
                    not_modified.headers_mut().insert(name, value.clone());
                }
            }
            response = not_modified;
        }
        let headers = response.headers_mut();
        headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        if is_html {
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        }
        let error = (response.status() == StatusCode::NOT_FOUND).then_some("not_found");
        Some(Served { response, error })
    }

    async fn resolve(&self, path: &str) -> ResolveResult {
        let hidden = percent_decode_str(path)
            .decode_utf8_lossy()
            .split('/')
            .any(|segment| segment.starts_with('.') && segment != ".well-known");
        if hidden {
            return ResolveResult::NotFound;
        }
        let result = match self
            .resolver
            .resolve_path(path, hyper_staticfile::AcceptEncoding::none())
            .await
        {
            Ok(result) => result,
            Err(_) => return ResolveResult::NotFound,
        };
        match result {
            ResolveResult::Found(file) => {
                if self.contains(&file.path).await {
                    ResolveResult::Found(file)
                } else {
                    ResolveResult::NotFound
                }
            }
            ResolveResult::PermissionDenied => ResolveResult::NotFound,
            other => other,
        }
    }

    /// True when `relative` (inside the directory) really lies inside it after symlinks. The
    /// file system walk runs on the blocking pool, never on an async worker.
    async fn contains(&self, relative: &Path) -> bool {
        let full = self.config.dir.join(relative);
        let dir = self.config.dir.clone();
        tokio::task::spawn_blocking(move || std::fs::canonicalize(full).is_ok_and(|real| real.starts_with(&dir)))
            .await
            .unwrap_or(false)
    }
}

/// Refuses `..` segments (plain or percent-encoded), backslashes and NUL.
fn is_safe(path: &str) -> bool {
    let decoded = percent_decode_str(path).collect::<Vec<u8>>();
    !decoded.contains(&b'\\') && !decoded.contains(&0) && !decoded.split(|b| *b == b'/').any(|segment| segment == b"..")
}

fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.contains("text/html")))
}

fn etag_matches(request: &HeaderMap, response: &HeaderMap) -> bool {
    let Some(etag) = response.get(header::ETAG).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let strip = |tag: &str| tag.trim().trim_start_matches("W/").to_string();
    request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|candidate| candidate.trim() == "*" || strip(candidate) == strip(etag))
}

fn status_only(status: StatusCode) -> Response<ProxyBody> {
    let mut response = Response::new(empty());
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_files_inside_the_site_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let site = dir.path().join("dist");
        std::fs::create_dir(&site).unwrap();
        std::fs::write(site.join("key.secret"), "sk_inside_the_site").unwrap();
        let config = |secret: &Path| {
            format!(
                "[server]\nstatic-dir = {:?}\n[secrets.key]\nfile = {:?}\n",
                site.display().to_string(),
                secret.display().to_string()
            )
        };
        let refused = crate::config::Config::parse(&config(&site.join("key.secret")), "t")
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("server.static-dir: the file of secret `key` is inside it"),
            "{refused}"
        );
        assert!(!refused.contains("sk_inside_the_site"), "{refused}");
        // Not created yet, but it would land in the site.
        assert!(crate::config::Config::parse(&config(&site.join("later.secret")), "t").is_err());
        // Through `..` from outside is still inside.
        assert!(crate::config::Config::parse(&config(&dir.path().join("dist/../dist/key.secret")), "t").is_err());
        crate::config::Config::parse(&config(&dir.path().join("elsewhere.secret")), "t").unwrap();
    }

    #[test]
    fn unsafe_paths() {
        assert!(is_safe("/app/main.js"));
        assert!(is_safe("/a..b/c"));
        assert!(!is_safe("/../etc/passwd"));
        assert!(!is_safe("/a/%2e%2e/%2E%2e/etc/passwd"));
        assert!(!is_safe("/a/..%2f..%2fetc"));
        assert!(!is_safe("/a\\..\\b"));
        assert!(!is_safe("/a%5c..%5cb"));
        assert!(!is_safe("/a%00.html"));
    }

    #[test]
    fn weak_and_strong_etags_compare() {
        let mut request = HeaderMap::new();
        request.insert(header::IF_NONE_MATCH, "\"x\", W/\"abc\"".parse().unwrap());
        let mut response = HeaderMap::new();
        response.insert(header::ETAG, "W/\"abc\"".parse().unwrap());
        assert!(etag_matches(&request, &response));
        response.insert(header::ETAG, "W/\"abd\"".parse().unwrap());
        assert!(!etag_matches(&request, &response));
    }
}
