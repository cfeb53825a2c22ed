//! Live reload: the config file is watched and SIGHUP reloads it.
//!
//! [`Reloader::apply`] is the one place a reload happens, whatever triggered it: read the file,
//! parse and validate it, read its secrets and build its HTTPS clients (all blocking, all on
//! tokio's blocking pool), and only then swap the new [`Generation`] in. A request holds the
//! generation it started with until it ends, so in-flight requests and streams finish on the old
//! table. Any failure is logged with `file:line:column` and leaves the current generation serving.
//! Reload is a diff: state the edit did not touch carries over (rate-limit buckets, see
//! [`Generation::build_after`]), and settings read only at start are named in a warning.
//!
//! The watcher is quiet: on Linux it asks inotify for exactly the events that can change the
//! config's content — writes to the file itself, and a file of its name created or renamed into
//! its directory (editors that save by renaming a temp file over the original, `route add`) —
//! so reads of the file and writes to other files (a log next to it) never wake the daemon.
//! A symlinked config is watched at every link met on the way to the file it reads, and at that
//! file: a Kubernetes ConfigMap mounts `proxy.toml -> ..data/proxy.toml` with
//! `..data -> ..2026_.../`, and the kubelet updates it by renaming a new `..data` link over the
//! old one, which is a `MOVED_TO ..data` event in the mount's directory (see [`links`]). After
//! each such event the chain is resolved again, so the next swap is seen too. Events are
//! debounced, and a file whose text is the one serving (from the start on) is not rebuilt.
//!
//! The client key file next to the config (`features::clients::state_path`) is watched the same
//! way but reloaded on its own: a new client table is swapped into the registry every
//! generation shares, with no generation rebuilt (SIGHUP reloads it too).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, mpsc};

use crate::config::{Config, ConfigError};
use crate::configkit::access::ServerLimits;
use crate::pipeline::generation::{Generation, Live};
use crate::secrets::SecretStore;
use crate::upstream::ClientError;

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
    /// The text of the generation serving now, when known (from the start on, when the caller
    /// passes it). Held across a whole reload so reloads never interleave.
    serving: Mutex<Option<String>>,
    /// The settings the running server read at start and keeps until a restart.
    started: RestartOnly,
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
        let started = RestartOnly::of(&live.current().config);
        Reloader {
            path,
            store,
            live,
            file_listen,
            serving: Mutex::new(None),
            started,
            local: std::sync::OnceLock::new(),
        }
    }

    /// Records the text the serving generation was built from, so a file event that leaves it
    /// unchanged (the first one included) rebuilds nothing.
    pub fn with_serving_text(mut self, text: String) -> Reloader {
        self.serving = Mutex::new(Some(text));
        self
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
        // Reading and parsing happen on the blocking pool; an unchanged file is not parsed.
        let path = self.path.clone();
        let same_as = (trigger == Trigger::File).then(|| serving.clone()).flatten();
        let read = tokio::task::spawn_blocking(move || -> Result<Option<(String, Config)>, ConfigError> {
            let text = read_text(&path)?;
            if same_as.as_deref() == Some(text.as_str()) {
                return Ok(None);
            }
            let config = Config::parse(&text, &path.display().to_string())?;
            Ok(Some((text, config)))
        })
        .await??;
        let Some((text, mut config)) = read else {
            return Ok(Outcome::Unchanged);
        };
        let current = self.live.current();
        self.note_restart_only_changes(&config);
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
        let generation =
            tokio::task::spawn_blocking(move || Generation::build_after(config, store, number, Some(&current)))
                .await??;
        self.live.swap(generation);
        *serving = Some(text);
        Ok(Outcome::Applied { generation: number })
    }

    /// One warning per setting that differs from what the running server uses and that only a
    /// restart applies; the rest of the edit is applied.
    fn note_restart_only_changes(&self, new: &Config) {
        if let Some(before) = self.file_listen
            && new.server.listen != before
        {
            tracing::warn!(
                setting = "server.listen",
                from = %before,
                to = %new.server.listen,
                "server.listen changed; it takes effect only after a restart"
            );
        }
        for (setting, from, to) in self.started.changes(&RestartOnly::of(new)) {
            tracing::warn!(
                setting,
                %from,
                %to,
                "{setting} changed; it takes effect only after a restart"
            );
        }
    }
}

/// The `[server]` settings read once, when the server starts (see `daemon::server` and
/// `commands::serve`); `listen` is handled on its own since `--listen` may override it.
#[derive(Debug, Clone)]
struct RestartOnly {
    shutdown_timeout: Duration,
    limits: ServerLimits,
}

impl RestartOnly {
    fn of(config: &Config) -> RestartOnly {
        RestartOnly {
            shutdown_timeout: config.server.shutdown_timeout,
            limits: config.server.limits.clone(),
        }
    }

    /// `(setting, running value, value in the file)` for each setting that differs.
    fn changes(&self, new: &RestartOnly) -> Vec<(&'static str, String, String)> {
        let time = |d: Duration| humantime::format_duration(d).to_string();
        let mut changes = Vec::new();
        let mut compare = |setting: &'static str, from: String, to: String| {
            if from != to {
                changes.push((setting, from, to));
            }
        };
        compare(
            "server.shutdown-timeout",
            time(self.shutdown_timeout),
            time(new.shutdown_timeout),
        );
        compare(
            "server.header-timeout",
            time(self.limits.header_timeout),
            time(new.limits.header_timeout),
        );
        compare(
            "server.max-header-size",
            self.limits.max_header_size.to_string(),
            new.limits.max_header_size.to_string(),
        );
        compare(
            "server.max-connections",
            self.limits.max_connections.to_string(),
            new.limits.max_connections.to_string(),
        );
        changes
    }
}

/// Reads the config file's text (blocking).
pub fn read_text(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
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

    let clients_path = crate::features::clients::state_path(reloader.path());
    let clients = reloader.live.current().clients.clone();
    // Loaded before the server accepts its first request (the file is small).
    clients.load_logged(&clients_path);
    let reload_clients = {
        let clients = clients.clone();
        let path = clients_path.clone();
        move || {
            let (clients, path) = (clients.clone(), path.clone());
            tokio::task::spawn_blocking(move || clients.load_logged(&path))
        }
    };

    #[cfg(unix)]
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(mut hangup) => {
            let reloader = reloader.clone();
            let reload_clients = reload_clients.clone();
            tasks.push(tokio::spawn(async move {
                while hangup.recv().await.is_some() {
                    let _ = reload_clients().await;
                    let _ = reloader.apply(Trigger::Signal).await;
                }
            }));
        }
        Err(error) => tracing::warn!(%error, "cannot install a SIGHUP handler; reload by file change only"),
    }

    let (events, changed) = mpsc::unbounded_channel::<()>();
    match watch::start(reloader.path(), events) {
        Ok(task) => tasks.push(task),
        Err(error) => {
            tracing::warn!(
                config = %reloader.path().display(),
                %error,
                "cannot watch the config file; reload with SIGHUP instead"
            );
        }
    }
    tasks.push(tokio::spawn(debounced(changed, move || {
        let reloader = reloader.clone();
        async move {
            let _ = reloader.apply(Trigger::File).await;
        }
    })));

    let (events, changed) = mpsc::unbounded_channel::<()>();
    match watch::start(&clients_path, events) {
        Ok(task) => tasks.push(task),
        Err(error) => tracing::warn!(
            file = %clients_path.display(),
            %error,
            "cannot watch the client key file; `client add`/`revoke` take effect after SIGHUP"
        ),
    }
    tasks.push(tokio::spawn(debounced(changed, move || {
        let reload = reload_clients();
        async move {
            let _ = reload.await;
        }
    })));
    Watch { tasks }
}

/// Runs `action` once per burst of events: after an event, waits until none came for
/// [`DEBOUNCE`]; ends when the watcher's channel closes.
async fn debounced<F, Fut>(mut changed: mpsc::UnboundedReceiver<()>, action: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    while changed.recv().await.is_some() {
        loop {
            tokio::select! {
                more = changed.recv() => if more.is_none() { return },
                () = tokio::time::sleep(DEBOUNCE) => break,
            }
        }
        action().await;
    }
}

/// What the config path depends on: every `(directory, name)` entry whose replacement changes
/// what the path reads — each symlink met while resolving it, and the name of the file finally
/// read — and that file. For a ConfigMap mount `/etc/sp/proxy.toml` this is `(/etc/sp,
/// proxy.toml)`, `(/etc/sp, ..data)`, `(/etc/sp/..2026_x, proxy.toml)` and the file
/// `/etc/sp/..2026_x/proxy.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Links {
    pub entries: Vec<(PathBuf, std::ffi::OsString)>,
    pub file: PathBuf,
}

/// Resolves `config` one component at a time, recording every symlink on the way (at most 40,
/// as the kernel allows). A name that does not exist ends the walk: it is watched for.
pub fn links(config: &Path) -> std::io::Result<Links> {
    use std::collections::VecDeque;
    use std::ffi::OsString;
    use std::path::Component;

    /// The components still to resolve, in order (`..` included; `.` and the root dropped).
    fn names(path: &Path) -> impl DoubleEndedIterator<Item = OsString> + '_ {
        path.components()
            .filter(|c| matches!(c, Component::Normal(_) | Component::ParentDir))
            .map(|c| c.as_os_str().to_owned())
    }
    let mut pending: VecDeque<OsString> = names(&std::path::absolute(config)?).collect();
    let mut current = PathBuf::from("/");
    let mut entries = Vec::new();
    let mut hops = 0;
    while let Some(name) = pending.pop_front() {
        if name == ".." {
            // `current` holds no symlink, so going up is lexical.
            current.pop();
            continue;
        }
        let next = current.join(&name);
        match std::fs::symlink_metadata(&next) {
            Ok(meta) if meta.file_type().is_symlink() => {
                hops += 1;
                if hops > 40 {
                    return Err(std::io::Error::other("too many levels of symbolic links"));
                }
                let target = std::fs::read_link(&next)?;
                entries.push((current.clone(), name));
                if target.is_absolute() {
                    current = PathBuf::from("/");
                }
                for name in names(&target).rev() {
                    pending.push_front(name);
                }
            }
            _ => {
                if pending.is_empty() {
                    entries.push((current.clone(), name));
                }
                current = next;
            }
        }
    }
    Ok(Links { entries, file: current })
}

#[cfg(target_os = "linux")]
mod watch {
    //! inotify with exact masks: the kernel wakes the daemon only for the entries the config
    //! path depends on (see [`super::links`]).

    use std::collections::{HashMap, HashSet};
    use std::ffi::OsString;
    use std::path::{Path, PathBuf};

    use futures_util::StreamExt;
    use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
    use tokio::sync::mpsc;

    /// On the file itself: its content was written.
    const FILE: WatchMask = WatchMask::MODIFY.union(WatchMask::CLOSE_WRITE);
    /// On its directory: an entry appeared under a name (created, or renamed into place).
    const DIR: WatchMask = WatchMask::CREATE.union(WatchMask::MOVED_TO).union(WatchMask::ONLYDIR);

    /// The watches of one resolution of the config path.
    #[derive(Default)]
    struct Watching {
        /// Directory watch -> the names in it that matter.
        dirs: HashMap<WatchDescriptor, HashSet<OsString>>,
        file: Option<WatchDescriptor>,
    }

    impl Watching {
        /// Watches what `config` depends on now, dropping watches it no longer needs.
        fn renew(&mut self, watches: &mut Watches, config: &Path) -> std::io::Result<()> {
            let links = super::links(config)?;
            let mut dirs: HashMap<WatchDescriptor, HashSet<OsString>> = HashMap::new();
            for (dir, name) in links.entries {
                let wd = watches.add(&dir, DIR)?;
                dirs.entry(wd).or_default().insert(name);
            }
            // A file that does not exist (yet) is watched once a directory event announces it.
            let file = watches.add(&links.file, FILE).ok();
            for stale in self.dirs.keys().filter(|wd| !dirs.contains_key(*wd)) {
                let _ = watches.remove(stale.clone());
            }
            if let Some(stale) = self.file.take().filter(|old| Some(old) != file.as_ref()) {
                let _ = watches.remove(stale);
            }
            self.dirs = dirs;
            self.file = file;
            Ok(())
        }
    }

    pub(super) fn start(
        config: &Path,
        events: mpsc::UnboundedSender<()>,
    ) -> std::io::Result<tokio::task::JoinHandle<()>> {
        let config: PathBuf = std::path::absolute(config)?;
        let inotify = Inotify::init()?;
        let mut watching = Watching::default();
        watching.renew(&mut inotify.watches(), &config)?;
        let mut stream = inotify.into_event_stream([0u8; 4096])?;
        Ok(tokio::spawn(async move {
            while let Some(event) = stream.next().await {
                let Ok(event) = event else { break };
                if event.mask.contains(EventMask::IGNORED) || event.mask.contains(EventMask::Q_OVERFLOW) {
                    // A watch that went away (its file was replaced, an old ConfigMap directory
                    // removed) is renewed by the directory event that replaced it; an overflow
                    // may have hidden a change.
                    if event.mask.contains(EventMask::Q_OVERFLOW) {
                        let _ = watching.renew(&mut stream.watches(), &config);
                        let _ = events.send(());
                    }
                    continue;
                }
                if let Some(names) = watching.dirs.get(&event.wd) {
                    if !event.name.as_ref().is_some_and(|name| names.contains(name)) {
                        continue;
                    }
                    // A link or the file was replaced: follow the path anew (a kubelet's swap
                    // points `..data` at a new directory).
                    if let Err(error) = watching.renew(&mut stream.watches(), &config) {
                        tracing::debug!(%error, "the config path did not resolve; watching what is left");
                    }
                } else if Some(&event.wd) != watching.file.as_ref() {
                    // A watch this resolution no longer uses.
                    continue;
                }
                let _ = events.send(());
            }
            tracing::warn!("the config watcher stopped; reload with SIGHUP instead");
        }))
    }
}

#[cfg(not(target_os = "linux"))]
mod watch {
    //! The portable watcher (notify): it observes the directories of the config's links (resolved
    //! at start) and filters by name and kind.

    use std::path::Path;

    use notify::{EventKind, RecursiveMode, Watcher};
    use tokio::sync::mpsc;

    pub(super) fn start(
        config: &Path,
        events: mpsc::UnboundedSender<()>,
    ) -> std::io::Result<tokio::task::JoinHandle<()>> {
        let links = super::links(config)?;
        let names: Vec<_> = links.entries.iter().map(|(_, name)| name.clone()).collect();
        let dirs: std::collections::BTreeSet<_> = links.entries.iter().map(|(dir, _)| dir.clone()).collect();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            let writes = matches!(
                event.kind,
                EventKind::Create(_)
                    | EventKind::Modify(
                        notify::event::ModifyKind::Data(_)
                            | notify::event::ModifyKind::Name(_)
                            | notify::event::ModifyKind::Any
                    )
                    | EventKind::Access(notify::event::AccessKind::Close(notify::event::AccessMode::Write))
            );
            if writes
                && event
                    .paths
                    .iter()
                    .any(|p| p.file_name().is_some_and(|name| names.iter().any(|n| n == name)))
            {
                let _ = events.send(());
            }
        })
        .map_err(std::io::Error::other)?;
        for dir in &dirs {
            watcher
                .watch(dir, RecursiveMode::NonRecursive)
                .map_err(std::io::Error::other)?;
        }
        // The watcher lives as long as the task holding it.
        Ok(tokio::spawn(async move {
            let _watcher = watcher;
            std::future::pending::<()>().await
        }))
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn links_follow_a_configmap_mount() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().canonicalize().unwrap();
        std::fs::create_dir(dir.join("..2026_12_01_00_00_00.1")).unwrap();
        std::fs::write(dir.join("..2026_12_01_00_00_00.1/proxy.toml"), "").unwrap();
        symlink("..2026_12_01_00_00_00.1", dir.join("..data")).unwrap();
        symlink("..data/proxy.toml", dir.join("proxy.toml")).unwrap();
        let found = links(&dir.join("proxy.toml")).unwrap();
        let entry = |d: &Path, n: &str| (d.to_path_buf(), std::ffi::OsString::from(n));
        assert_eq!(
            found,
            Links {
                entries: vec![
                    entry(&dir, "proxy.toml"),
                    entry(&dir, "..data"),
                    entry(&dir.join("..2026_12_01_00_00_00.1"), "proxy.toml"),
                ],
                file: dir.join("..2026_12_01_00_00_00.1/proxy.toml"),
            }
        );
    }

    #[test]
    fn links_of_a_plain_file_an_absolute_link_and_a_missing_file() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().canonicalize().unwrap();
        std::fs::create_dir(dir.join("etc")).unwrap();
        std::fs::write(dir.join("etc/real.toml"), "").unwrap();
        let plain = links(&dir.join("etc/real.toml")).unwrap();
        assert_eq!(plain.entries, vec![(dir.join("etc"), "real.toml".into())]);
        assert_eq!(plain.file, dir.join("etc/real.toml"));

        symlink(dir.join("etc/real.toml"), dir.join("abs.toml")).unwrap();
        symlink("etc/../etc", dir.join("up")).unwrap();
        let linked = links(&dir.join("up/../abs.toml")).unwrap();
        assert_eq!(linked.file, dir.join("etc/real.toml"));
        assert_eq!(linked.entries.len(), 3, "{linked:?}");

        let missing = links(&dir.join("none.toml")).unwrap();
        assert_eq!(missing.entries, vec![(dir.clone(), "none.toml".into())]);

        symlink("loop", dir.join("loop")).unwrap();
        assert!(links(&dir.join("loop")).is_err());
    }
}
