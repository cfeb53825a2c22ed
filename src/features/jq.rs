//! The jq program of `response.transform`, run with jaq: compiled once at config load (a typo is
//! a config error with its position), then run on one JSON document per response.
//!
//! The program sees no environment and cannot end the process: `env`, `input` and `inputs` are
//! left out, `halt` only stops the program, and the logging filters print nothing. Documents
//! nesting deeper than [`MAX_DEPTH`] are refused before parsing, so an upstream cannot overflow
//! the stack. Buffering, limits and what a failure means for the response are the caller's
//! (see [`super::transform`]).

use std::fmt;

use bytes::Bytes;
use jaq_core::data::JustLut;
use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Ctx, Vars};
use jaq_json::Val;

/// Native filters a transform may not call: they read the environment or the process's input.
const WITHHELD_FILTERS: &[&str] = &["env", "input", "inputs"];
/// Native filters that would write to the daemon's stderr or log; here they print nothing.
const SILENCED_FILTERS: &[&str] = &["debug_empty", "stderr_empty"];

/// A compiled jq program.
pub struct Transform {
    program: String,
    filter: jaq_core::Filter<JustLut<Val>>,
}

impl fmt::Debug for Transform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Transform").field(&self.program).finish()
    }
}

/// A compile error: the byte offset in the program and what is wrong there.
#[derive(Debug)]
pub struct CompileError {
    pub offset: usize,
    pub message: String,
}

impl Transform {
    pub fn compile(program: &str) -> Result<Transform, CompileError> {
        let offset_of = |part: &str| (part.as_ptr() as usize).saturating_sub(program.as_ptr() as usize);
        let defs = jaq_core::defs().chain(jaq_std::defs()).chain(jaq_json::defs());
        let funs = jaq_core::funs()
            .chain(jaq_std::funs())
            .chain(jaq_json::funs())
            .filter(|(name, _, _)| !WITHHELD_FILTERS.contains(name) && !SILENCED_FILTERS.contains(name))
            .chain(SILENCED_FILTERS.iter().map(|name| silent(name)));
        let arena = Arena::default();
        let modules = Loader::new(defs)
            .load(
                &arena,
                File {
                    code: program,
                    path: (),
                },
            )
            .map_err(|errors| {
                let (offset, message) = errors
                    .into_iter()
                    .flat_map(|(_, error)| match error {
                        jaq_core::load::Error::Io(items) => items
                            .into_iter()
                            .map(|(at, why)| (offset_of(at), why))
                            .collect::<Vec<_>>(),
                        jaq_core::load::Error::Lex(items) => items
                            .into_iter()
                            .map(|(expect, at)| (offset_of(at), format!("expected {}", expect.as_str())))
                            .collect(),
                        jaq_core::load::Error::Parse(items) => items
                            .into_iter()
                            .map(|(expect, at)| (offset_of(at), format!("expected {}", expect.as_str())))
                            .collect(),
                    })
                    .next()
                    .unwrap_or((0, "cannot parse the program".to_string()));
                CompileError { offset, message }
            })?;
        let filter = jaq_core::Compiler::default()
            .with_funs(funs)
            .compile(modules)
            .map_err(|errors| {
                let (offset, message) = errors
                    .into_iter()
                    .flat_map(|(_, errors)| errors)
                    .map(|(name, kind)| (offset_of(name), format!("undefined {} `{name}`", kind.as_str())))
                    .next()
                    .unwrap_or((0, "cannot compile the program".to_string()));
                CompileError { offset, message }
            })?;
        Ok(Transform {
            program: program.to_string(),
            filter,
        })
    }

    /// Runs the program on one JSON document; it must yield exactly one value.
    pub fn run(&self, input: &[u8]) -> Result<Bytes, TransformFailure> {
        if nesting_exceeds(input, MAX_DEPTH) {
            return Err(TransformFailure::TooDeep);
        }
        let input = jaq_json::read::parse_single(input).map_err(|_| TransformFailure::NotJson)?;
        let ctx = Ctx::<JustLut<Val>>::new(&self.filter.lut, Vars::new([]));
        let mut outputs = self.filter.id.run((ctx, input));
        let first = outputs.next();
        if outputs.next().is_some() {
            return Err(TransformFailure::Program(
                "the program yields more than one value; wrap it in [ ... ]".into(),
            ));
        }
        let value = match first {
            None => return Err(TransformFailure::Program("the program yields no value".into())),
            Some(Ok(value)) => value,
            Some(Err(exception)) => {
                let message = match exception.get_err() {
                    Ok(error) => format!("the program failed: {}", truncate(&error.to_string(), 200)),
                    Err(_) => "the program stopped (halt)".to_string(),
                };
                return Err(TransformFailure::Program(message));
            }
        };
        Ok(Bytes::from(value.to_string()))
    }
}

/// The parser recurses per nesting level; deeper documents are refused before parsing so an
/// upstream cannot overflow the stack (as serde_json's own limit of 128 does elsewhere).
pub const MAX_DEPTH: usize = 256;

/// True when arrays/objects nest deeper than `max` (strings and escapes are skipped).
fn nesting_exceeds(input: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for byte in input {
        if in_string {
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// A native filter that yields nothing and has no side effect.
fn silent(name: &'static str) -> jaq_core::native::Fun<JustLut<Val>> {
    jaq_core::native::run((name, jaq_core::native::v(0), |_| Box::new(std::iter::empty())))
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_string(),
    }
}

/// Why a body was not transformed.
#[derive(Debug)]
pub enum TransformFailure {
    TooLarge(u64),
    NotJson,
    TooDeep,
    Program(String),
    Upstream(String),
}

impl fmt::Display for TransformFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransformFailure::TooLarge(limit) => {
                write!(
                    f,
                    "the upstream's body is larger than the transform limit ({limit} bytes)"
                )
            }
            TransformFailure::NotJson => f.write_str("the upstream's body is not JSON"),
            TransformFailure::TooDeep => write!(f, "the upstream's body nests deeper than {MAX_DEPTH} levels"),
            TransformFailure::Program(message) => f.write_str(message),
            TransformFailure::Upstream(message) => write!(f, "reading the upstream's body failed: {message}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reshapes_a_product_list() {
        let transform = Transform::compile("[.[] | {id, name: .title, price, imageUrl: .images[0].url}]").unwrap();
        let out = transform
            .run(br#"[{"id":1,"title":"Mug","price":9.5,"stock":3,"images":[{"url":"a.png"},{"url":"b.png"}]}]"#)
            .unwrap();
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            value,
            json!([{"id": 1, "name": "Mug", "price": 9.5, "imageUrl": "a.png"}])
        );
    }

    #[test]
    fn compile_errors_have_positions() {
        let error = Transform::compile(".a | nosuchfilter(1)").unwrap_err();
        assert_eq!(error.offset, 5);
        assert!(error.message.contains("undefined filter"), "{}", error.message);
        let error = Transform::compile("{a: }").unwrap_err();
        assert_eq!(error.offset, 4, "{}", error.message);
    }

    #[test]
    fn environment_is_withheld_and_halt_does_not_exit() {
        assert!(Transform::compile("env").is_err());
        assert!(Transform::compile("input").is_err());
        let halts = Transform::compile("halt_error(1)").unwrap();
        assert!(matches!(halts.run(b"1"), Err(TransformFailure::Program(m)) if m.contains("halt")));
        let debugs = Transform::compile("debug | . + 1").unwrap();
        assert_eq!(debugs.run(b"1").unwrap(), Bytes::from("2"));
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let transform = Transform::compile(".").unwrap();
        let deep = format!("{}{}", "[".repeat(200_000), "]".repeat(200_000));
        assert!(matches!(transform.run(deep.as_bytes()), Err(TransformFailure::TooDeep)));
        let fine = format!("{}\"[[[\\\"{{\"{}", "[".repeat(200), "]".repeat(200));
        assert!(transform.run(fine.as_bytes()).is_ok(), "{fine}");
    }

    #[test]
    fn runtime_failures() {
        let transform = Transform::compile(".[]").unwrap();
        assert!(matches!(transform.run(b"[1,2]"), Err(TransformFailure::Program(_))));
        assert!(matches!(transform.run(b"<html>"), Err(TransformFailure::NotJson)));
        let transform = Transform::compile("error(\"boom\")").unwrap();
        assert!(matches!(transform.run(b"1"), Err(TransformFailure::Program(m)) if m.contains("boom")));
    }
}
