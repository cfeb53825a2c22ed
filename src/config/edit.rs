//! Edits to the config file for `secretproxy route add|remove` and `secret set --keyring|--env|--file`.
//!
//! Invariants: the file is edited as a `toml_edit` document, so comments, key order and
//! formatting outside the route that changes survive byte for byte; the edited text is validated
//! with [`Config::parse`] before anything is written, and an edit that would make the config
//! invalid leaves the file untouched; the write is atomic (a temp file in the same directory,
//! renamed over the original) and keeps the file's permissions, so a running daemon never reads
//! half a file.

use std::path::{Path, PathBuf};

use toml_edit::{Array, DocumentMut, InlineTable, Item, Table, value};

use super::{Config, ConfigError};

/// Why an edit was not made. The file is unchanged in every case.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error(transparent)]
    Read(Box<ConfigError>),
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid TOML, so it cannot be edited: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("a route named `{0}` already exists; remove it first with `secretproxy route remove {0}`")]
    RouteExists(String),
    #[error("no route named `{name}`{}", known_routes(.known))]
    NoRoute { name: String, known: Vec<String> },
    #[error("`routes` in {0} is not written as `[routes.NAME]` tables; edit it by hand")]
    Shape(PathBuf),
    #[error("refused, {path} is unchanged: the edit would make the config invalid")]
    Invalid {
        path: PathBuf,
        #[source]
        source: Box<ConfigError>,
    },
}

impl From<ConfigError> for EditError {
    fn from(error: ConfigError) -> Self {
        EditError::Read(Box::new(error))
    }
}

impl EditError {
    /// True when the file itself is the problem (exit code 78), not the requested edit.
    pub fn is_config_error(&self) -> bool {
        matches!(
            self,
            EditError::Read(_) | EditError::Syntax { .. } | EditError::Shape(_) | EditError::Invalid { .. }
        )
    }
}

fn known_routes(known: &[String]) -> String {
    if known.is_empty() {
        "; the config has no routes".to_string()
    } else {
        format!("; routes are {}", known.join(", "))
    }
}

/// A route to add, as given on the command line. Values are TOML strings as a user would write
/// them; validation happens on the whole edited file.
#[derive(Debug, Clone, Default)]
pub struct NewRoute {
    pub name: String,
    pub path: String,
    pub upstream: String,
    /// Empty keeps the default (`GET`, `HEAD`).
    pub methods: Vec<String>,
    pub headers: Vec<(String, String)>,
    pub query: Vec<(String, String)>,
    /// Write `allow-http = true` (plain HTTP to a non-loopback upstream).
    pub allow_http: bool,
    /// Write `auth = { oauth2 = "NAME" }`.
    pub oauth2: Option<String>,
}

/// An `[oauth2.NAME]` token source to add (client-credentials grant, Basic client auth).
#[derive(Debug, Clone)]
pub struct NewTokenSource {
    pub name: String,
    pub token_url: String,
    /// Templates, e.g. `${paypal-client-id}`.
    pub client_id: String,
    pub client_secret: String,
}

/// Where a secret declared from the command line comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NewSecret {
    /// `keyring = "ACCOUNT"` (service `secretproxy`).
    Keyring(String),
    /// `env = "VAR"`.
    Env(String),
    /// `file = "PATH"`.
    File(String),
}

/// A config file opened for editing.
pub struct ConfigFile {
    path: PathBuf,
    doc: DocumentMut,
}

impl ConfigFile {
    pub fn open(path: &Path) -> Result<ConfigFile, EditError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let doc = text.parse::<DocumentMut>().map_err(|e| EditError::Syntax {
            path: path.to_path_buf(),
            message: e.message().trim().to_string(),
        })?;
        Ok(ConfigFile {
            path: path.to_path_buf(),
            doc,
        })
    }

    /// Inserts `[routes.NAME]` after the last route, or after the last table when there is
    /// none. Comments at the very end of the file stay at the end.
    pub fn add_route(&mut self, route: &NewRoute) -> Result<(), EditError> {
        let first_table = self.doc.as_table().is_empty();
        let routes = self.routes_mut(true)?.expect("created on demand");
        if routes.contains_key(&route.name) {
            return Err(EditError::RouteExists(route.name.clone()));
        }
        let mut table = Table::new();
        table.decor_mut().set_prefix(if first_table { "" } else { "\n" });
        table.insert("path", value(&route.path));
        if !route.methods.is_empty() {
            let methods: Array = route.methods.iter().map(|m| m.to_ascii_uppercase()).collect();
            table.insert("methods", value(methods));
        }
        table.insert("upstream", value(&route.upstream));
        for (key, pairs) in [("headers", &route.headers), ("query", &route.query)] {
            if !pairs.is_empty() {
                let mut inline = InlineTable::new();
                for (name, template) in pairs {
                    inline.insert(name, template.as_str().into());
                }
                table.insert(key, value(inline));
            }
        }
        if route.allow_http {
            table.insert("allow-http", value(true));
        }
        if let Some(source) = &route.oauth2 {
            let mut auth = InlineTable::new();
            auth.insert("oauth2", source.as_str().into());
            table.insert("auth", value(auth));
        }
        routes.insert(&route.name, Item::Table(table));
        Ok(())
    }

    /// Adds `[oauth2.NAME]` unless a token source of that name exists.
    pub fn add_token_source(&mut self, source: &NewTokenSource) -> Result<(), EditError> {
        let first_table = self.doc.as_table().is_empty();
        if !self.doc.contains_key("oauth2") {
            let mut parent = Table::new();
            parent.set_implicit(true);
            self.doc.insert("oauth2", Item::Table(parent));
        }
        let Some(sources) = self.doc.get_mut("oauth2").and_then(Item::as_table_mut) else {
            return Err(EditError::Shape(self.path.clone()));
        };
        if sources.contains_key(&source.name) {
            return Ok(());
        }
        let mut table = Table::new();
        table.decor_mut().set_prefix(if first_table { "" } else { "\n" });
        table.insert("token-url", value(&source.token_url));
        table.insert("client-id", value(&source.client_id));
        table.insert("client-secret", value(&source.client_secret));
        sources.insert(&source.name, Item::Table(table));
        Ok(())
    }

    /// True when `[routes.NAME]` exists.
    pub fn has_route(&self, name: &str) -> bool {
        self.route_names().iter().any(|n| n == name)
    }

    /// True when `[secrets.NAME]` exists (in any form).
    pub fn has_secret(&self, name: &str) -> bool {
        self.doc
            .get("secrets")
            .and_then(Item::as_table_like)
            .is_some_and(|secrets| secrets.contains_key(name))
    }

    /// Adds `[secrets.NAME]` after the last secret, or before the first route when there is
    /// none yet. The caller checks [`ConfigFile::has_secret`] first; an existing one is kept.
    pub fn declare_secret(&mut self, name: &str, source: &NewSecret) -> Result<(), EditError> {
        if self.has_secret(name) {
            return Ok(());
        }
        let first_route = self
            .doc
            .get("routes")
            .and_then(Item::as_table)
            .and_then(|routes| routes.iter().filter_map(|(_, r)| r.as_table()?.position()).min());
        let first_table = self.doc.as_table().is_empty();
        if !self.doc.contains_key("secrets") {
            let mut secrets = Table::new();
            secrets.set_implicit(true);
            // Rendered just before the first route (tables print in position order).
            secrets.set_position(first_route.map(|p| p - 1));
            self.doc.insert("secrets", Item::Table(secrets));
        }
        let Some(Item::Table(secrets)) = self.doc.get_mut("secrets") else {
            return Err(EditError::Shape(self.path.clone()));
        };
        let mut table = Table::new();
        table.decor_mut().set_prefix(if first_table { "" } else { "\n" });
        if secrets.is_empty() {
            table.set_position(first_route.map(|p| p - 1));
        }
        let (key, text) = match source {
            NewSecret::Keyring(account) => ("keyring", account),
            NewSecret::Env(var) => ("env", var),
            NewSecret::File(path) => ("file", path),
        };
        table.insert(key, value(text.as_str()));
        secrets.insert(name, Item::Table(table));
        Ok(())
    }

    /// Removes `[routes.NAME]` together with the comments written above it.
    pub fn remove_route(&mut self, name: &str) -> Result<(), EditError> {
        let routes = self.routes_mut(false)?;
        let removed = routes.and_then(|routes| routes.remove(name));
        if removed.is_none() {
            return Err(EditError::NoRoute {
                name: name.to_string(),
                known: self.route_names(),
            });
        }
        Ok(())
    }

    fn route_names(&self) -> Vec<String> {
        self.doc
            .get("routes")
            .and_then(Item::as_table_like)
            .map(|routes| routes.iter().map(|(k, _)| k.to_string()).collect())
            .unwrap_or_default()
    }

    fn routes_mut(&mut self, create: bool) -> Result<Option<&mut Table>, EditError> {
        if create && !self.doc.contains_key("routes") {
            let mut routes = Table::new();
            routes.set_implicit(true);
            self.doc.insert("routes", Item::Table(routes));
        }
        match self.doc.get_mut("routes") {
            None => Ok(None),
            Some(Item::Table(routes)) => Ok(Some(routes)),
            Some(_) => Err(EditError::Shape(self.path.clone())),
        }
    }

    /// The edited text.
    pub fn text(&self) -> String {
        self.doc.to_string()
    }

    /// Validates the edited text and, only if it is valid, writes it atomically.
    pub fn save(self) -> Result<Config, EditError> {
        let text = self.text();
        let config = Config::parse(&text, &self.path.display().to_string()).map_err(|source| EditError::Invalid {
            path: self.path.clone(),
            source: Box::new(source),
        })?;
        write_atomic(&self.path, &text).map_err(|source| EditError::Write {
            path: self.path.clone(),
            source,
        })?;
        Ok(config)
    }
}

/// Replaces the file at `path` with `text` in one rename, keeping its permissions. A symlink is
/// followed, so the link stays and its target changes.
pub fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let target = match std::fs::canonicalize(path) {
        Ok(target) => target,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::path::absolute(path)?,
        Err(e) => return Err(e),
    };
    let dir = target.parent().unwrap_or(Path::new("."));
    let mut temp = tempfile::Builder::new()
        .prefix(".secretproxy-")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    temp.write_all(text.as_bytes())?;
    // A file that does not exist yet keeps tempfile's owner-only mode.
    if let Ok(meta) = std::fs::metadata(&target) {
        temp.as_file().set_permissions(meta.permissions())?;
    }
    temp.as_file().sync_all()?;
    temp.persist(&target).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMENTED: &str = "# top comment\n[server]\nlisten   =   \"127.0.0.1:8787\"  # odd spacing\n\n[secrets.gh]\nenv = \"GH\"\n\n# the first route\n[routes.a]\npath = \"/a\"\nupstream = \"https://a.example/\"   # trailing\n\n# a comment kept with [routes.b]\n[routes.b]\npath = \"/b/{*rest}\"\nupstream = \"https://b.example/{rest}\"\n# the end\n";

    fn open(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn add_then_remove_is_byte_identical() {
        let (_dir, path) = open(COMMENTED);
        let mut file = ConfigFile::open(&path).unwrap();
        file.add_route(&NewRoute {
            name: "new".into(),
            path: "/new/{id}".into(),
            upstream: "https://n.example/{id}".into(),
            methods: vec!["get".into(), "POST".into()],
            headers: vec![("X-Key".into(), "${gh}".into())],
            query: vec![("k".into(), "v".into())],
            allow_http: false,
            oauth2: None,
        })
        .unwrap();
        let config = file.save().unwrap();
        assert_eq!(config.route("new").unwrap().methods.len(), 2);
        let added = std::fs::read_to_string(&path).unwrap();
        assert!(added.contains("\n[routes.new]\npath = \"/new/{id}\"\nmethods = [\"GET\", \"POST\"]\nupstream = \"https://n.example/{id}\"\nheaders = { X-Key = \"${gh}\" }\nquery = { k = \"v\" }\n"), "{added}");

        let mut file = ConfigFile::open(&path).unwrap();
        file.remove_route("new").unwrap();
        file.save().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), COMMENTED);
    }

    #[test]
    fn remove_takes_the_comment_above_and_nothing_else() {
        let (_dir, path) = open(COMMENTED);
        let mut file = ConfigFile::open(&path).unwrap();
        file.remove_route("a").unwrap();
        let expected = COMMENTED.replace(
            "\n# the first route\n[routes.a]\npath = \"/a\"\nupstream = \"https://a.example/\"   # trailing\n",
            "",
        );
        assert_eq!(file.text(), expected);
    }

    #[test]
    fn invalid_edit_is_refused_and_file_unchanged() {
        let (_dir, path) = open(COMMENTED);
        let mut file = ConfigFile::open(&path).unwrap();
        file.add_route(&NewRoute {
            name: "bad".into(),
            path: "/bad".into(),
            upstream: "https://x/".into(),
            headers: vec![("X".into(), "${nope}".into())],
            ..NewRoute::default()
        })
        .unwrap();
        let err = file.save().unwrap_err();
        assert!(matches!(err, EditError::Invalid { .. }), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), COMMENTED);

        let mut file = ConfigFile::open(&path).unwrap();
        let exists = file
            .add_route(&NewRoute {
                name: "a".into(),
                ..NewRoute::default()
            })
            .unwrap_err();
        assert!(exists.to_string().contains("already exists"));
        let missing = file.remove_route("zz").unwrap_err().to_string();
        assert_eq!(missing, "no route named `zz`; routes are a, b");
    }

    #[test]
    fn routes_table_is_created_in_an_empty_file() {
        let (_dir, path) = open("# nothing yet\n");
        let mut file = ConfigFile::open(&path).unwrap();
        file.add_route(&NewRoute {
            name: "a".into(),
            path: "/a".into(),
            upstream: "https://a.example/".into(),
            ..NewRoute::default()
        })
        .unwrap();
        assert_eq!(
            file.text(),
            "[routes.a]\npath = \"/a\"\nupstream = \"https://a.example/\"\n# nothing yet\n"
        );
    }

    #[test]
    fn secrets_are_declared_before_the_routes_or_after_the_last_secret() {
        let (_dir, path) = open(COMMENTED);
        let mut file = ConfigFile::open(&path).unwrap();
        assert!(file.has_secret("gh"));
        file.declare_secret("openai", &NewSecret::Keyring("openai".into()))
            .unwrap();
        file.declare_secret("gh", &NewSecret::Env("OTHER".into())).unwrap();
        assert_eq!(
            file.text(),
            COMMENTED.replace(
                "env = \"GH\"\n",
                "env = \"GH\"\n\n[secrets.openai]\nkeyring = \"openai\"\n"
            )
        );

        let (_dir, path) = open(
            "[server]\nlisten = \"127.0.0.1:1\"\n\n# a route\n[routes.a]\npath = \"/a\"\nupstream = \"https://a.example/\"\n",
        );
        let mut file = ConfigFile::open(&path).unwrap();
        file.declare_secret("k", &NewSecret::File("/home/me/k".into())).unwrap();
        assert_eq!(
            file.text(),
            "[server]\nlisten = \"127.0.0.1:1\"\n\n[secrets.k]\nfile = \"/home/me/k\"\n\n# a route\n[routes.a]\npath = \"/a\"\nupstream = \"https://a.example/\"\n"
        );
        file.save().unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn atomic_write_keeps_permissions_and_follows_symlinks() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, path) = open("a");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let link = dir.path().join("link.toml");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        write_atomic(&link, "b").unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "b");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640);
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 2, "temp file left behind");
    }
}
