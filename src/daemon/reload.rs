//! Live reload: the config file is watched and SIGHUP reloads it.
//!
//! [`Reloader::apply`] is the one place a reload happens, whatever triggered it: read the file,
//! parse and validate it, read its secrets and build its HTTPS clients (blocking, off the async
//! threads), and only then swap the new [`Generation`] in. A request holds the generation it
//! started with until it ends, so in-flight requests and streams finish on the old table. Any
//! failure is logged with `file:line:column` and leaves the current generation serving.
//!
//! The watcher observes the file's *directory*, not the file: editors that save by writing a
//! temp file and renaming it over the original replace the inode a file watch would be on.
//! Events are debounced, and a file whose text is the one already serving is not reloaded.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::{Mutex, mpsc};

use crate::config::{Config, ConfigError};
use crate::pipeline::client::ClientError;
use crate::pipeline::generation::{Generation, Live};
use crate::secrets::SecretStore;

/// How long the file must stay quiet before it is read: an editor's save is several events.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The config file changed on disk.
    File,
    /// SIGHUP (`systemctl reload`). Always reloads, which also reads every secret again.
    Signal,
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Trigger::File => "file change",
            Trigger::Signal => "SIGHUP",
        })
    }
}

/// The result of a reload that did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A new generation with this number serves from now on.
    Applied { generation: u64 },
    /// The file holds the text already serving; nothing was done.
    Unchanged,
}

/// Why a reload was refused; the previous generation keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Clients(#[from] ClientError),
    #[error("the reload task failed")]
    Task(#[from] tokio::task::JoinError),
}

/// Rebuilds and swaps the live generation from the config file.
pub struct Reloader {
    path: PathBuf,
    store: Arc<dyn SecretStore>,
    live: Arc<Live>,
    /// `[server] listen` as the file said when the socket was bound; `None` when `--listen`
    /// overrides the file.
    file_listen: Option<SocketAddr>,
    /// The text of the generation serving now, once a reload has read it. Held across a whole
    /// reload so reloads never interleave.
    serving: Mutex<Option<String>>,
    /// The bound address, for the `STATUS=` line sent to systemd after each reload.
    local: std::sync::OnceLock<SocketAddr>,
}

impl Reloader {
    pub fn new(
        path: PathBuf,
        store: Arc<dyn SecretStore>,
        live: Arc<Live>,
        file_listen: Option<SocketAddr>,
    ) -> Reloader {
        Reloader {
            path,
            store,
            live,
            file_listen,
            serving: Mutex::new(None),
            local: std::sync::OnceLock::new(),
        }
    }

    /// Records the address the listener is bound to (known only after binding).
    pub fn set_local(&self, local: SocketAddr) {
        let _ = self.local.set(local);
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reloads now and logs the outcome. This is where a reload starts and ends.
    pub async fn apply(&self, trigger: Trigger) -> Result<Outcome, ReloadError> {
        crate::daemon::notify::reloading();
        let result = self.reload(trigger).await;
        let metrics = self.live.metrics();
        match &result {
            Ok(Outcome::Applied { .. }) => metrics.reload_succeeded(),
            Ok(Outcome::Unchanged) => {}
            Err(_) => metrics.reload_failed(),
        }
        let current = self.live.current();
        crate::daemon::notify::ready_serving(
            &current,
            self.local.get().copied().unwrap_or(current.config.server.listen),
        );
        match &result {
            Ok(Outcome::Applied { generation }) => {
                let current = self.live.current();
                tracing::info!(
                    %trigger,
                    generation,
                    routes = current.config.routes.len(),
                    config = %self.path.display(),
                    "config reloaded"
                );
                current.log_missing_secrets();
            }
            Ok(Outcome::Unchanged) => tracing::debug!(%trigger, "config unchanged; not reloaded"),
            Err(error) => tracing::error!(
                %trigger,
                config = %self.path.display(),
                error = %with_causes(error),
                "config reload failed; the previous config stays live"
            ),
        }
        result
    }

    async fn reload(&self, trigger: Trigger) -> Result<Outcome, ReloadError> {
        let mut serving = self.serving.lock().await;
        let text = tokio::fs::read_to_string(&self.path)
            .await
            .map_err(|source| ConfigError::Read {
                path: self.path.clone(),
                source,
            })?;
        if trigger == Trigger::File && serving.as_deref() == Some(text.as_str()) {
            return Ok(Outcome::Unchanged);
        }
        let mut config = Config::parse(&text, &self.path.display().to_string())?;
        let current = self.live.current();
        self.note_restart_only_changes(&current.config, &config);
        // The socket stays where it is; the generation says where that is. The new config must
        // still be allowed to serve on it (e.g. it may not drop the client token of a socket that
        // is open to the network).
        config.server.listen = current.config.server.listen;
        let bound = self.local.get().copied().unwrap_or(config.server.listen);
        if let Some(message) = config.server.access.listen_refusal(bound) {
            return Err(ConfigError::Listen(message).into());
        }

        let store = self.store.clone();
        let number = self.live.next_number();
        let generation = tokio::task::spawn_blocking(move || Generation::build(config, store, number)).await??;
        self.live.swap(generation);
        *serving = Some(text);
        Ok(Outcome::Applied { generation: number })
    }

    fn note_restart_only_changes(&self, current: &Config, new: &Config) {
        if let Some(before) = self.file_listen
            && new.server.listen != before
        {
            tracing::warn!(
                from = %before,
                to = %new.server.listen,
                listening = %current.server.listen,
                "server.listen changed; it takes effect only after a restart"
            );
        }
        if new.server.shutdown_timeout != current.server.shutdown_timeout {
            tracing::warn!(
                from = %humantime::format_duration(current.server.shutdown_timeout),
                to = %humantime::format_duration(new.server.shutdown_timeout),
                "server.shutdown-timeout changed; it takes effect only after a restart"
            );
        }
    }
}

/// `error: cause: cause`, as the command line prints errors.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The running watcher and SIGHUP handler; dropping it stops both.
pub struct Watch {
    _watcher: Option<notify::RecommendedWatcher>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Starts watching the config file and listening for SIGHUP. The SIGHUP handler is installed
/// before this returns, so a SIGHUP can never hit the default action (exit) once serving.
/// A watcher that cannot start (e.g. no inotify instances left) is logged; SIGHUP still works.
pub fn spawn(reloader: Arc<Reloader>) -> Watch {
    let mut tasks = Vec::new();

    #[cfg(unix)]
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(mut hangup) => {
            let reloader = reloader.clone();
            tasks.push(tokio::spawn(async move {
                while hangup.recv().await.is_some() {
                    let _ = reloader.apply(Trigger::Signal).await;
                }
            }));
        }
        Err(error) => tracing::warn!(%error, "cannot install a SIGHUP handler; reload by file change only"),
    }

    let (events, mut changed) = mpsc::unbounded_channel::<()>();
    let watcher = match watch_file(reloader.path(), events) {
        Ok(watcher) => Some(watcher),
        Err(error) => {
            tracing::warn!(
                config = %reloader.path().display(),
                %error,
                "cannot watch the config file; reload with SIGHUP instead"
            );
            None
        }
    };
    tasks.push(tokio::spawn(async move {
        while changed.recv().await.is_some() {
            // Debounce: wait until no event came for DEBOUNCE.
            loop {
                tokio::select! {
                    more = changed.recv() => if more.is_none() { return },
                    () = tokio::time::sleep(DEBOUNCE) => break,
                }
            }
            let _ = reloader.apply(Trigger::File).await;
        }
    }));
    Watch {
        _watcher: watcher,
        tasks,
    }
}

/// Watches the directories holding `path` (and, for a symlink, its target) and sends one
/// message per event that may have changed the file's content.
fn watch_file(path: &Path, events: mpsc::UnboundedSender<()>) -> notify::Result<notify::RecommendedWatcher> {
    let absolute = std::path::absolute(path)?;
    let mut watched = vec![absolute.clone()];
    if let Ok(target) = std::fs::canonicalize(&absolute)
        && target != absolute
    {
        watched.push(target);
    }
    let names: Vec<_> = watched
        .iter()
        .filter_map(|p| p.file_name().map(ToOwned::to_owned))
        .collect();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        let writes = match event.kind {
            EventKind::Access(notify::event::AccessKind::Close(notify::event::AccessMode::Write)) => true,
            EventKind::Access(_) => false,
            _ => true,
        };
        if writes
            && event
                .paths
                .iter()
                .any(|p| p.file_name().is_some_and(|name| names.iter().any(|n| n == name)))
        {
            let _ = events.send(());
        }
    })?;
    for file in &watched {
        let dir = file.parent().unwrap_or(Path::new("/"));
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
    }
    Ok(watcher)
}
