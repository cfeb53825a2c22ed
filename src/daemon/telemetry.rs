//! Logging setup: `RUST_LOG`-style filtering (default `info`), human or JSON lines on stderr.
//!
//! When stderr is connected to the journal (systemd sets `$JOURNAL_STREAM` to its device and
//! inode, which are compared with stderr's so an inherited variable is not trusted blindly),
//! human lines carry no ANSI colours and no timestamp (journald stamps every line itself) and
//! start with a `<N>` syslog priority prefix, so `journalctl -p warning` filters by level.
//! `--log-format json` is the same everywhere. Access lines take their own buffered path in the
//! same shape (see [`crate::pipeline::access`]).

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::registry::LookupSpan;

/// The shape of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber. Safe to call more than once (later calls are ignored).
pub fn init(format: LogFormat) {
    let journal = stderr_is_journal();
    let color = std::io::IsTerminal::is_terminal(&std::io::stderr());
    crate::pipeline::access::init(match format {
        LogFormat::Pretty if journal => crate::pipeline::access::Format::Journald,
        LogFormat::Pretty => crate::pipeline::access::Format::Pretty { color },
        LogFormat::Json => crate::pipeline::access::Format::Json,
    });
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info"))
        // tungstenite logs whole WebSocket frames (payloads, close reasons: where an echoed
        // secret travels) at debug and trace: never shown, whatever RUST_LOG asks for.
        .add_directive("tungstenite=info".parse().expect("a valid directive"))
        .add_directive("tokio_tungstenite=info".parse().expect("a valid directive"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Pretty if journal => builder
            .with_ansi(false)
            .event_format(Journald(format::format().with_ansi(false).without_time()))
            .try_init(),
        LogFormat::Pretty => builder.with_ansi(color).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
}

/// True when `$JOURNAL_STREAM` names the file stderr is connected to.
fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;
        use std::os::unix::fs::MetadataExt;
        let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
            return false;
        };
        let Ok(meta) = std::fs::File::from(fd).metadata() else {
            return false;
        };
        stream.to_str() == Some(&format!("{}:{}", meta.dev(), meta.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = stream;
        false
    }
}

/// Wraps a line format with the `<N>` priority prefix journald understands
/// (`SyslogLevelPrefix=`, on by default).
struct Journald<F>(F);

impl<S, N, F> FormatEvent<S, N> for Journald<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        write!(writer, "<{}>", syslog_priority(*event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

/// syslog priorities: 3 err, 4 warning, 6 info, 7 debug.
fn syslog_priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}
