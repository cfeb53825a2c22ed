//! The transform worker process: `secretproxy __transform-worker`, started by the daemon's
//! [`super::pool`], never by a user. It runs jq programs on JSON documents, one call at a time,
//! reading requests on stdin and writing replies on stdout ([`super::protocol`]).
//!
//! The sandbox, and what it does not do:
//! - Memory: `RLIMIT_AS` is set per call to the daemon's budget; an allocation past it aborts
//!   this process, not the daemon.
//! - Stack: programs run on one thread with a fixed [`ENGINE_STACK`]; overflowing it aborts this
//!   process (Rust's guard page), not the daemon.
//! - CPU: the daemon kills a call that runs past its wall-clock timeout; `RLIMIT_CPU` is a
//!   backstop for a worker the daemon lost track of (the daemon retires workers well before it).
//! - Files and network: `RLIMIT_NOFILE` is lowered to the descriptors already open (stdin,
//!   stdout, stderr on `/dev/null`), so no file, socket or pipe can be opened; `RLIMIT_FSIZE` is
//!   0 and `RLIMIT_CORE` is 0 (a crash writes nothing). The environment is empty (the daemon
//!   clears it: secrets from `env` sources are not inherited) and jq's `env`/`input` are left
//!   out of the language.
//! - Not enforced: system calls that need no new descriptor (there is no seccomp filter), and
//!   the user id is the daemon's. Nothing in the jq language reaches those.
//!
//! A worker exits when its stdin closes (the daemon went away or retired it).

use std::collections::HashMap;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::rc::Rc;

use super::protocol;
use crate::features::jq::{Program, RunError};

/// Stack of the thread that runs programs: deep enough for any document within the depth
/// limits, finite so that runaway recursion ends in an abort of this process.
pub const ENGINE_STACK: usize = 256 * 1024 * 1024;
/// `RLIMIT_CPU` soft limit in seconds (the hard limit is a few seconds later).
pub const CPU_SECONDS: u64 = 60;
/// Compiled programs kept per worker; past this the cache starts over.
const CACHED_PROGRAMS: usize = 64;

/// Runs the worker until stdin closes. Exit status 0 at a clean end, 70 after an engine panic.
pub fn run() -> anyhow::Result<()> {
    let engine = std::thread::Builder::new()
        .name("transform-engine".into())
        .stack_size(ENGINE_STACK)
        .spawn(serve)?;
    match engine.join() {
        Ok(result) => result.map_err(Into::into),
        Err(_) => std::process::exit(70),
    }
}

fn serve() -> io::Result<()> {
    let stdin = io::stdin();
    let stdout = io::stdout();
    let mut input = BufReader::new(stdin.lock());
    let mut output = BufWriter::new(stdout.lock());
    // Fail closed: a worker that cannot limit itself runs nothing (e.g. a system-call filter
    // that blocks setrlimit; the systemd units allow it).
    if let Err(error) = sandbox() {
        let message = format!("cannot set its resource limits: {error}");
        let _ = protocol::write_reply(&mut output, protocol::INTERNAL, message.as_bytes());
        return Err(error);
    }
    protocol::write_reply(&mut output, protocol::HELLO, protocol::GREETING)?;
    let mut programs: HashMap<String, Rc<Result<Program, String>>> = HashMap::new();
    while let Some(head) = protocol::read_head(&mut input)? {
        if head.program_len > protocol::MAX_PROGRAM {
            return Err(io::Error::other("program too long"));
        }
        if let Err(error) = set_memory(head.memory) {
            let message = format!("cannot set its memory limit: {error}");
            let _ = protocol::write_reply(&mut output, protocol::INTERNAL, message.as_bytes());
            return Err(error);
        }
        let program = read_text(&mut input, head.program_len)?;
        let mut document = vec![0u8; head.input_len as usize];
        input.read_exact(&mut document)?;
        let compiled = match programs.get(&program) {
            Some(compiled) => compiled.clone(),
            None => {
                if programs.len() >= CACHED_PROGRAMS {
                    programs.clear();
                }
                let compiled = Rc::new(Program::compile(&program).map_err(|e| e.message));
                programs.insert(program, compiled.clone());
                compiled
            }
        };
        let max_output = usize::try_from(head.max_output).unwrap_or(usize::MAX);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match compiled.as_ref() {
            Ok(program) => program.run(&document, max_output),
            Err(message) => Err(RunError::Program(format!("the program does not compile: {message}"))),
        }));
        drop(document);
        match outcome {
            Ok(Ok(json)) => protocol::write_reply(&mut output, protocol::OK, &json)?,
            Ok(Err(error)) => {
                let kind = match error {
                    RunError::NotJson => protocol::NOT_JSON,
                    RunError::TooDeep => protocol::TOO_DEEP,
                    RunError::Program(_) => protocol::PROGRAM,
                    RunError::Limit(_) => protocol::LIMIT,
                };
                let message = error.to_string();
                let cut = message.len().min(protocol::MAX_MESSAGE as usize / 2);
                let cut = (0..=cut).rev().find(|at| message.is_char_boundary(*at)).unwrap_or(0);
                protocol::write_reply(&mut output, kind, &message.as_bytes()[..cut])?;
            }
            Err(panic) => {
                // State behind a panic is suspect: say so, then start over in a new process. A
                // collection that could not grow under `RLIMIT_AS` panics rather than aborting
                // (`capacity overflow`, a failed reserve): that is the memory limit at work.
                let text = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("");
                let (kind, message): (u8, &[u8]) = if text.contains("capacity overflow") || text.contains("alloc") {
                    (protocol::LIMIT, b"the transform ran out of memory")
                } else {
                    (protocol::INTERNAL, b"the jq engine failed")
                };
                let _ = protocol::write_reply(&mut output, kind, message);
                std::process::exit(70);
            }
        }
    }
    output.flush()
}

fn read_text(input: &mut impl Read, len: u32) -> io::Result<String> {
    let mut bytes = vec![0u8; len as usize];
    input.read_exact(&mut bytes)?;
    String::from_utf8(bytes).map_err(|_| io::Error::other("program is not UTF-8"))
}

/// Limits that hold for the worker's whole life; see the module docs.
#[cfg(unix)]
fn sandbox() -> io::Result<()> {
    use rlimit::Resource;
    Resource::CORE.set(0, 0)?;
    Resource::FSIZE.set(0, 0)?;
    Resource::CPU.set(CPU_SECONDS, CPU_SECONDS + 5)?;
    // Descriptors 0, 1 and 2 stay usable; no new one can be made.
    Resource::NOFILE.set(3, 3)
}

/// Without rlimits the daemon's timeout and output budget still hold.
#[cfg(not(unix))]
fn sandbox() -> io::Result<()> {
    Ok(())
}

/// The call's address-space budget (soft limit; the hard limit stays as inherited).
#[cfg(unix)]
fn set_memory(bytes: u64) -> io::Result<()> {
    use rlimit::Resource;
    let (_, hard) = Resource::AS.get()?;
    Resource::AS.set(bytes.min(hard), hard)
}

#[cfg(not(unix))]
fn set_memory(_bytes: u64) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The worker loop itself runs in the integration tests, as the real process.
    use super::*;
    use crate::features::transform::protocol::RequestHead;

    #[test]
    fn texts_are_read_exactly() {
        let mut input = &b"abcdef"[..];
        assert_eq!(read_text(&mut input, 3).unwrap(), "abc");
        assert!(read_text(&mut &b"\xff"[..], 1).is_err());
        assert!(read_text(&mut &b"ab"[..], 3).is_err());
    }

    #[test]
    fn requests_fit_the_head() {
        let head = RequestHead {
            program_len: 1,
            input_len: 2,
            memory: 3,
            max_output: 4,
        };
        assert_eq!(head.encode().len(), RequestHead::LEN);
    }
}
