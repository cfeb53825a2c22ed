//! The daemon's side of the transform workers: a small pool of worker processes (the same
//! binary re-executed as `secretproxy __transform-worker`, see [`super::worker`]), started
//! lazily on the first transform, shared by every route and every config generation.
//!
//! The pool lives on its own thread with its own single-threaded runtime, so reading and
//! checking worker output never runs on the daemon's async workers, and any runtime (the
//! daemon's, or a test's) can call it. Per call it enforces:
//! - a wall-clock [`CALL_TIMEOUT`]: past it the worker is killed and the call fails;
//! - budgets sent to the worker: address space ([`memory_budget`]) and output size; a reply
//!   longer than the budget is not read;
//! - strict JSON: every output is checked again here (without recursion) before a `200`;
//! - a worker that died (memory or stack limit, crash) fails only its own call; the next call
//!   starts a new one. Workers retire after [`RETIRE_AFTER`] of work (so `RLIMIT_CPU` never
//!   hits a healthy one) and after [`IDLE_FOR`] unused, so an idle daemon keeps no workers.
//!
//! Which binary: [`use_worker_binary`] (the integration tests point it at the built
//! `secretproxy`, since there the current executable is the test binary), else
//! `$SECRETPROXY_TRANSFORM_WORKER`, else the running executable itself (`/proc/self/exe` on
//! Linux, which stays valid when the file is replaced by an upgrade).

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::protocol::{self, RequestHead};
use super::strict;
use crate::features::jq::MAX_OUTPUT_DEPTH;

/// The hidden subcommand that runs a worker.
pub const WORKER_COMMAND: &str = "__transform-worker";
/// The longest a single transform may run (wall clock).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest a call waits for a free worker before it is refused as busy.
pub const QUEUE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a new worker may take to greet.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// A worker retires after this much work (well below its `RLIMIT_CPU`).
pub const RETIRE_AFTER: Duration = Duration::from_secs(20);
/// An idle worker exits after this long unused.
pub const IDLE_FOR: Duration = Duration::from_secs(60);
/// Address space a worker may use beyond what the input needs: its binary, its engine stack and
/// the engine's working memory.
pub const BASE_MEMORY: u64 = 1024 * 1024 * 1024;
/// Address space allowed per byte of input (parsed JSON is several times its text).
pub const MEMORY_PER_INPUT_BYTE: u64 = 32;

/// The worker's address-space budget for an input of `input_len` bytes.
pub fn memory_budget(input_len: usize) -> u64 {
    BASE_MEMORY.saturating_add(MEMORY_PER_INPUT_BYTE.saturating_mul(input_len as u64))
}

static WORKER_BINARY: OnceLock<PathBuf> = OnceLock::new();

/// Runs workers from `path` instead of the current executable (first call wins). The
/// integration tests call this with the built `secretproxy`.
pub fn use_worker_binary(path: impl Into<PathBuf>) {
    let _ = WORKER_BINARY.set(path.into());
}

fn worker_binary() -> PathBuf {
    if let Some(path) = WORKER_BINARY.get() {
        return path.clone();
    }
    if let Some(path) = std::env::var_os("SECRETPROXY_TRANSFORM_WORKER") {
        return PathBuf::from(path);
    }
    if cfg!(target_os = "linux") {
        return PathBuf::from("/proc/self/exe");
    }
    std::env::current_exe().unwrap_or_else(|_| PathBuf::from("secretproxy"))
}

/// Why a call gave no output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// The input is not strict JSON.
    NotJson,
    /// The input nests too deep.
    TooDeep,
    /// The program failed (message from the engine).
    Program(String),
    /// A bound was hit: time, memory, stack or output size (what, for the error text).
    Limit(String),
    /// No worker became free in time.
    Busy,
    /// No worker could be started.
    Unavailable,
}

/// One call's limits.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub max_output: u64,
    pub timeout: Duration,
}

struct Job {
    program: Arc<str>,
    input: Bytes,
    budget: Budget,
    reply: oneshot::Sender<Result<Bytes, CallError>>,
}

/// A handle to the pool thread.
pub struct Pool {
    jobs: mpsc::Sender<Job>,
}

impl Pool {
    /// The process's pool, started on first use.
    pub fn global() -> &'static Pool {
        static POOL: OnceLock<Pool> = OnceLock::new();
        POOL.get_or_init(Pool::start)
    }

    fn start() -> Pool {
        let (jobs, queue) = mpsc::channel(1024);
        let started = std::thread::Builder::new()
            .name("transform-pool".into())
            .spawn(
                move || match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime.block_on(serve(queue)),
                    Err(error) => tracing::error!(%error, "the transform pool cannot start its runtime"),
                },
            );
        if let Err(error) = started {
            tracing::error!(%error, "the transform pool cannot start its thread");
        }
        Pool { jobs }
    }

    /// Runs `program` on `input` in a worker.
    pub async fn run(&self, program: Arc<str>, input: Bytes, budget: Budget) -> Result<Bytes, CallError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            program,
            input,
            budget,
            reply,
        };
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => return Err(CallError::Busy),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(CallError::Unavailable),
        }
        answer.await.unwrap_or(Err(CallError::Unavailable))
    }
}

struct State {
    slots: Semaphore,
    idle: Mutex<Vec<Worker>>,
}

async fn serve(mut queue: mpsc::Receiver<Job>) {
    let size = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 4);
    let state = Arc::new(State {
        slots: Semaphore::new(size),
        idle: Mutex::new(Vec::new()),
    });
    let mut reap = tokio::time::interval(IDLE_FOR / 2);
    loop {
        tokio::select! {
            job = queue.recv() => {
                let Some(job) = job else { return };
                tokio::spawn(handle(state.clone(), job));
            }
            _ = reap.tick() => {
                // Dropping a worker closes its stdin (it exits) and kills it.
                state.idle.lock().expect("pool lock").retain(|worker| worker.idle_since.elapsed() < IDLE_FOR);
            }
        }
    }
}

async fn handle(state: Arc<State>, job: Job) {
    let Job {
        program,
        input,
        budget,
        mut reply,
    } = job;
    let outcome = tokio::select! {
        outcome = call(&state, &program, &input, budget) => outcome,
        // The client went away: dropping the call kills its worker.
        _ = reply.closed() => return,
    };
    let _ = reply.send(outcome);
}

async fn call(state: &State, program: &str, input: &Bytes, budget: Budget) -> Result<Bytes, CallError> {
    let _slot = tokio::time::timeout(QUEUE_TIMEOUT, state.slots.acquire())
        .await
        .map_err(|_| CallError::Busy)?
        .map_err(|_| CallError::Unavailable)?;
    let idle = state.idle.lock().expect("pool lock").pop();
    let mut worker = match idle {
        Some(worker) => worker,
        None => Worker::start().await.map_err(|error| {
            tracing::error!(
                %error,
                binary = %worker_binary().display(),
                "cannot start a transform worker (set SECRETPROXY_TRANSFORM_WORKER to the secretproxy binary)"
            );
            CallError::Unavailable
        })?,
    };
    let started = Instant::now();
    let answer = tokio::time::timeout(budget.timeout, worker.call(program, input, budget)).await;
    worker.busy += started.elapsed();
    let (kind, payload) = match answer {
        Err(_) => {
            worker.stop().await;
            return Err(CallError::Limit(format!(
                "the transform ran longer than its time limit ({} ms)",
                budget.timeout.as_millis()
            )));
        }
        Ok(Err(Broken::TooLong)) => {
            worker.stop().await;
            return Err(CallError::Limit(
                "the transform's output is larger than its limit".into(),
            ));
        }
        Ok(Err(Broken::Io)) => return Err(CallError::Limit(worker.death().await)),
        Ok(Ok(reply)) => reply,
    };
    if kind == protocol::INTERNAL {
        worker.stop().await;
    } else if worker.busy < RETIRE_AFTER {
        worker.idle_since = Instant::now();
        state.idle.lock().expect("pool lock").push(worker);
    }
    let message = || String::from_utf8_lossy(&payload).into_owned();
    match kind {
        protocol::OK => match strict::check(&payload, MAX_OUTPUT_DEPTH) {
            Ok(()) => Ok(Bytes::from(payload)),
            Err(_) => Err(CallError::Program("the transform's output is not JSON".into())),
        },
        protocol::NOT_JSON => Err(CallError::NotJson),
        protocol::TOO_DEEP => Err(CallError::TooDeep),
        protocol::LIMIT => Err(CallError::Limit(message())),
        protocol::PROGRAM => Err(CallError::Program(message())),
        _ => Err(CallError::Program("the jq engine failed".into())),
    }
}

/// Why a worker cannot go on.
enum Broken {
    /// Its pipe closed or failed: it died.
    Io,
    /// It sent a longer reply than the budget.
    TooLong,
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// Time spent in calls, for retirement.
    busy: Duration,
    idle_since: Instant,
}

impl Worker {
    async fn start() -> std::io::Result<Worker> {
        let mut child = Command::new(worker_binary())
            .arg(WORKER_COMMAND)
            .env_clear()
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(std::io::Error::other("the worker has no pipes"));
        };
        let mut worker = Worker {
            child,
            stdin,
            stdout: BufReader::new(stdout),
            busy: Duration::ZERO,
            idle_since: Instant::now(),
        };
        let greeting = tokio::time::timeout(START_TIMEOUT, worker.read_reply(u64::from(protocol::MAX_MESSAGE))).await;
        match greeting {
            Ok(Ok((protocol::HELLO, text))) if text == protocol::GREETING => Ok(worker),
            Ok(Ok((protocol::INTERNAL, text))) => Err(std::io::Error::other(format!(
                "the transform worker {}",
                String::from_utf8_lossy(&text)
            ))),
            Err(_) => Err(std::io::Error::other("the worker did not greet in time")),
            _ => Err(std::io::Error::other(
                "the program is not a secretproxy transform worker",
            )),
        }
    }

    async fn call(&mut self, program: &str, input: &[u8], budget: Budget) -> Result<(u8, Vec<u8>), Broken> {
        let head = RequestHead {
            program_len: u32::try_from(program.len()).map_err(|_| Broken::TooLong)?,
            input_len: u32::try_from(input.len()).map_err(|_| Broken::TooLong)?,
            memory: memory_budget(input.len()),
            max_output: budget.max_output,
        };
        let write = async {
            self.stdin.write_all(&head.encode()).await?;
            self.stdin.write_all(program.as_bytes()).await?;
            self.stdin.write_all(input).await?;
            self.stdin.flush().await
        };
        write.await.map_err(|_| Broken::Io)?;
        self.read_reply(budget.max_output.max(u64::from(protocol::MAX_MESSAGE)))
            .await
    }

    async fn read_reply(&mut self, max: u64) -> Result<(u8, Vec<u8>), Broken> {
        let mut head = [0u8; 5];
        self.stdout.read_exact(&mut head).await.map_err(|_| Broken::Io)?;
        let (kind, len) = protocol::decode_reply_head(&head);
        if u64::from(len) > max {
            return Err(Broken::TooLong);
        }
        let mut payload = vec![0u8; len as usize];
        self.stdout.read_exact(&mut payload).await.map_err(|_| Broken::Io)?;
        Ok((kind, payload))
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// Waits for a worker whose pipe broke and says what ended it.
    async fn death(mut self) -> String {
        let status = match tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await {
            Ok(Ok(status)) => status,
            _ => {
                self.stop().await;
                return "the transform worker stopped answering".into();
            }
        };
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt;
            match status.signal() {
                // Allocation failures and stack overflows both end in abort().
                Some(6) | Some(11) | Some(7) => {
                    return "the transform exceeded its memory or stack limit".into();
                }
                Some(9) | Some(24) => return "the transform exceeded its CPU time limit".into(),
                _ => {}
            }
        }
        format!("the transform worker stopped ({status})")
    }
}
