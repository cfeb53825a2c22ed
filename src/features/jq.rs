//! The jq engine of `response.transform` (jaq): compiling a program and running it on one JSON
//! document. The daemon compiles each program at config load only to report errors with their
//! position; programs run in a transform worker process ([`super::transform::worker`]), which
//! compiles them again and calls [`Program::run`].
//!
//! What the engine guarantees on its own:
//! - The program sees no environment and cannot end the process: `env`, `input` and `inputs`
//!   are left out, `halt` only stops the program, and the logging filters print nothing.
//! - Input is strict RFC 8259 JSON nesting at most [`MAX_DEPTH`] levels, checked without
//!   recursion before jaq parses it; `fromjson` refuses deeper text the same way, so no JSON an
//!   upstream sends can overflow the stack through a parser.
//! - Output is strict RFC 8259 JSON written here from jaq's value, never jaq's own printer
//!   (which writes `NaN`, `Infinity`, non-string keys and number literals such as `+5.43`):
//!   NaN becomes `null` and infinities the largest finite doubles, as jq does; a non-string
//!   object key fails the program. Output nests at most [`MAX_OUTPUT_DEPTH`] levels and is at
//!   most the caller's byte budget.
//!
//! Memory, CPU time and deep recursion inside the program itself are bounded by the worker
//! process (rlimits, a bigger but finite stack, the daemon's timeout), not here.

use std::fmt;
use std::io::Write as _;

use jaq_core::box_iter::box_once;
use jaq_core::data::JustLut;
use jaq_core::load::{Arena, File, Loader};
use jaq_core::native::{Fun, v};
use jaq_core::{Ctx, Exn, Vars};
use jaq_json::{Num, Val};

use super::transform::strict;

/// Native filters a transform may not call: they read the environment or the process's input.
const WITHHELD_FILTERS: &[&str] = &["env", "input", "inputs"];
/// Native filters that would write to the worker's stderr; here they print nothing.
const SILENCED_FILTERS: &[&str] = &["debug_empty", "stderr_empty"];
/// Native filters replaced by bounded, strict versions below.
const REPLACED_FILTERS: &[&str] = &["fromjson", "tojson"];

/// The deepest nesting of arrays/objects accepted in an upstream body or in `fromjson` text.
pub const MAX_DEPTH: usize = 256;
/// The deepest nesting a transform may output (jq's own printing limit).
pub const MAX_OUTPUT_DEPTH: usize = 10_000;

/// The start of `fromjson`'s refusal; uncaught, it makes the run a [`RunError::Limit`].
const FROMJSON_TOO_DEEP: &str = "fromjson: the text nests deeper than";

/// jq 1.7/1.8 definitions missing from jaq's standard library (or defined differently there),
/// cheap to add as plain jq; they run under the same bounds as the program itself. Later
/// definitions shadow jaq's own.
const EXTRA_DEFS: &str = r#"
def have_decnum: true;
def have_literal_numbers: true;
def IN(s): any(s == .; .);
def IN(src; s): any(src == s; .);
def INDEX(stream; idx_expr): reduce stream as $row ({}; .[$row | idx_expr | tostring] |= $row);
def INDEX(idx_expr): INDEX(.[]; idx_expr);
def JOIN($idx; idx_expr): [.[] | [., $idx[idx_expr]]];
def JOIN($idx; stream; idx_expr): stream | [., $idx[idx_expr]];
def JOIN($idx; stream; idx_expr; join_expr): stream | [., $idx[idx_expr]] | join_expr;
def trimstr($s): ltrimstr($s) | rtrimstr($s);
def nth($n; f): if $n < 0 then error("nth doesn't support negative indices") else first(skip($n; f)) end;
def flatten($d):
  if $d < 0 then error("flatten depth must not be negative")
  elif $d > 0 then map(if isarray then flatten($d - 1) else [.] end) | add // []
  end;
def from_entries: reduce .[] as $x ({};
  . + { ($x | if .key == null then .k // .name // .Name // .K // .Key else .key end
             | if type == "string" then . else tojson end):
        ($x | if has("value") then .value elif has("v") then .v else .Value end) });
"#;

fn extra_defs() -> impl Iterator<Item = jaq_core::load::parse::Def<&'static str>> {
    jaq_core::load::parse(EXTRA_DEFS, |p| p.defs())
        .expect("the extra definitions parse")
        .into_iter()
        .chain(builtins_def())
}

/// `builtins`: every filter a program can call, as `name/arity` (jq's format; names starting
/// with `_` are internal, as in jq). Built once from the same lists the compiler gets.
fn builtins_def() -> Vec<jaq_core::load::parse::Def<&'static str>> {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let text = TEXT.get_or_init(|| {
        let defs = jaq_core::defs().chain(jaq_std::defs()).chain(jaq_json::defs());
        let mut names: Vec<String> = defs.map(|def| format!("{}/{}", def.name, def.args.len())).collect();
        names.extend(
            jaq_core::load::parse(EXTRA_DEFS, |p| p.defs())
                .into_iter()
                .flatten()
                .map(|def| format!("{}/{}", def.name, def.args.len())),
        );
        let funs = jaq_core::funs::<JustLut<Val>>()
            .chain(jaq_std::funs())
            .chain(jaq_json::funs())
            .filter(|(name, _, _)| !WITHHELD_FILTERS.contains(name));
        names.extend(funs.map(|(name, args, _)| format!("{name}/{}", args.len())));
        names.push("builtins/0".into());
        names.retain(|name| !name.starts_with('_'));
        names.sort();
        names.dedup();
        // One string split at run time: a long array literal would nest deep in jaq's parser.
        format!("def builtins: \"{}\" / \" \";", names.join(" "))
    });
    jaq_core::load::parse(text, |p| p.defs()).expect("the builtins definition parses")
}

/// A compiled jq program.
pub struct Program {
    filter: jaq_core::Filter<JustLut<Val>>,
}

impl fmt::Debug for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Program")
    }
}

/// A compile error: the byte offset in the program and what is wrong there.
#[derive(Debug)]
pub struct CompileError {
    pub offset: usize,
    pub message: String,
}

/// Why a run gave no output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunError {
    /// The input is not strict JSON.
    NotJson,
    /// The input nests deeper than [`MAX_DEPTH`].
    TooDeep,
    /// The program failed, yielded no value or more than one, or its value cannot be JSON.
    Program(String),
    /// A bound was hit: the output's size or depth, or `fromjson` text nesting too deep.
    Limit(String),
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::NotJson => f.write_str("the upstream's body is not JSON"),
            RunError::TooDeep => write!(f, "the upstream's body nests deeper than {MAX_DEPTH} levels"),
            RunError::Program(message) => f.write_str(message),
            RunError::Limit(message) => f.write_str(message),
        }
    }
}

impl Program {
    pub fn compile(program: &str) -> Result<Program, CompileError> {
        let offset_of = |part: &str| (part.as_ptr() as usize).saturating_sub(program.as_ptr() as usize);
        let defs = jaq_core::defs()
            .chain(jaq_std::defs())
            .chain(jaq_json::defs())
            .chain(extra_defs());
        let funs = jaq_core::funs()
            .chain(jaq_std::funs())
            .chain(jaq_json::funs())
            .filter(|(name, _, _)| {
                !WITHHELD_FILTERS.contains(name) && !SILENCED_FILTERS.contains(name) && !REPLACED_FILTERS.contains(name)
            })
            .chain(SILENCED_FILTERS.iter().map(|name| silent(name)))
            .chain([fromjson(), tojson()]);
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
        Ok(Program { filter })
    }

    /// Runs the program on one JSON document; it must yield exactly one value, written as strict
    /// JSON of at most `max_output` bytes.
    pub fn run(&self, input: &[u8], max_output: usize) -> Result<Vec<u8>, RunError> {
        // RFC 8259 (8.1) lets a parser ignore a byte order mark; jq does.
        let input = input.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(input);
        match strict::check(input, MAX_DEPTH) {
            Ok(()) => {}
            Err(strict::Refusal::TooDeep) => return Err(RunError::TooDeep),
            Err(strict::Refusal::Invalid) => return Err(RunError::NotJson),
        }
        let input = jaq_json::read::parse_single(input).map_err(|_| RunError::NotJson)?;
        let ctx = Ctx::<JustLut<Val>>::new(&self.filter.lut, Vars::new([]));
        let mut outputs = self.filter.id.run((ctx, input));
        let first = outputs.next();
        if outputs.next().is_some() {
            return Err(RunError::Program(
                "the program yields more than one value; wrap it in [ ... ]".into(),
            ));
        }
        let value = match first {
            None => return Err(RunError::Program("the program yields no value".into())),
            Some(Ok(value)) => value,
            Some(Err(exception)) => {
                let message = describe(exception);
                // The depth bounds of `fromjson` and `tojson` are limits like the others, not
                // faults of the program (which one a runaway program hits first is a race).
                return Err(
                    if message.contains(FROMJSON_TOO_DEEP) || message.contains(&too_deep()) {
                        RunError::Limit(message)
                    } else {
                        RunError::Program(message)
                    },
                );
            }
        };
        let mut out = Vec::new();
        write_strict(&mut out, &value, 0, max_output).map_err(|error| match error {
            WriteError::TooLarge => RunError::Limit("the transform's output is larger than its limit".into()),
            WriteError::TooDeep => RunError::Limit(too_deep()),
            WriteError::Program(message) => RunError::Program(message),
        })?;
        Ok(out)
    }
}

fn describe(exception: Exn<Val>) -> String {
    match exception.get_err() {
        Ok(error) => format!("the program failed: {}", truncate(&error.to_string(), 200)),
        Err(_) => "the program stopped (halt)".to_string(),
    }
}

enum WriteError {
    TooLarge,
    TooDeep,
    Program(String),
}

/// Writes `value` as strict RFC 8259 JSON (see the module docs for NaN, infinities and keys).
fn write_strict(out: &mut Vec<u8>, value: &Val, depth: usize, budget: usize) -> Result<(), WriteError> {
    match value {
        Val::Null => out.extend_from_slice(b"null"),
        Val::Bool(true) => out.extend_from_slice(b"true"),
        Val::Bool(false) => out.extend_from_slice(b"false"),
        Val::Num(number) => write_number(out, number),
        Val::TStr(bytes) | Val::BStr(bytes) => write_string(out, bytes),
        Val::Arr(items) => {
            if depth >= MAX_OUTPUT_DEPTH {
                return Err(WriteError::TooDeep);
            }
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_strict(out, item, depth + 1, budget)?;
            }
            out.push(b']');
        }
        Val::Obj(entries) => {
            if depth >= MAX_OUTPUT_DEPTH {
                return Err(WriteError::TooDeep);
            }
            out.push(b'{');
            for (i, (key, item)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                match key {
                    Val::TStr(bytes) | Val::BStr(bytes) => write_string(out, bytes),
                    other => {
                        return Err(WriteError::Program(format!(
                            "the program made an object key that is not a string ({}); JSON keys are strings",
                            kind(other)
                        )));
                    }
                }
                out.push(b':');
                write_strict(out, item, depth + 1, budget)?;
            }
            out.push(b'}');
        }
    }
    if out.len() > budget {
        return Err(WriteError::TooLarge);
    }
    Ok(())
}

fn too_deep() -> String {
    format!("the program's value nests deeper than {MAX_OUTPUT_DEPTH} levels")
}

fn kind(value: &Val) -> &'static str {
    match value {
        Val::Null => "null",
        Val::Bool(_) => "boolean",
        Val::Num(_) => "number",
        Val::TStr(_) | Val::BStr(_) => "string",
        Val::Arr(_) => "array",
        Val::Obj(_) => "object",
    }
}

fn write_number(out: &mut Vec<u8>, number: &Num) {
    match number {
        Num::Int(_) | Num::BigInt(_) => {
            let _ = write!(out, "{number}");
        }
        Num::Float(float) => write_float(out, *float),
        // A literal kept as written (jq 1.7 keeps their precision too): pass it on when it is
        // JSON and a finite double, else print its double.
        Num::Dec(text) if strict::is_number(text) && text.parse::<f64>().is_ok_and(f64::is_finite) => {
            out.extend_from_slice(text.as_bytes())
        }
        Num::Dec(text) => match Num::from_dec_str(text) {
            Num::Float(float) => write_float(out, float),
            _ => out.extend_from_slice(b"null"),
        },
    }
}

/// jq's choices for what JSON has no number for: NaN is `null`, infinities the largest doubles.
fn write_float(out: &mut Vec<u8>, float: f64) {
    if float.is_nan() {
        out.extend_from_slice(b"null");
    } else if float.is_infinite() {
        let _ = write!(
            out,
            "{}",
            if float > 0.0 {
                "1.7976931348623157e+308"
            } else {
                "-1.7976931348623157e+308"
            }
        );
    } else {
        // jaq prints finite doubles with ryu, whose output is always a JSON number.
        let _ = write!(out, "{}", Num::Float(float));
    }
}

/// A JSON string; bytes that are not UTF-8 become U+FFFD, as jq does.
fn write_string(out: &mut Vec<u8>, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    // serde_json's string writer escapes quotes, backslashes and control characters.
    let _ = serde_json::to_writer(&mut *out, text.as_ref());
}

/// `fromjson`, refusing text that nests deeper than [`MAX_DEPTH`] before jaq's recursive
/// parser sees it.
fn fromjson() -> Fun<JustLut<Val>> {
    jaq_core::native::run(("fromjson", v(0), |cv| {
        let parsed = cv.1.try_as_utf8_bytes_owned().and_then(|text| {
            // jq reads `nan` (jaq only `NaN`).
            if text.trim_ascii() == b"nan" {
                return Ok(vec![Val::Num(Num::Float(f64::NAN))]);
            }
            if nesting_exceeds(&text, MAX_DEPTH) {
                return Err(jaq_json::Error::str(format_args!(
                    "{FROMJSON_TOO_DEEP} {MAX_DEPTH} levels"
                )));
            }
            jaq_json::read::parse_many(&text)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|error| jaq_json::Error::str(format_args!("fromjson: cannot parse the text as JSON: {error}")))
        });
        match parsed {
            Ok(values) => Box::new(values.into_iter().map(Ok)),
            Err(error) => box_once(Err(Exn::from(error))),
        }
    }))
}

/// `tojson` through the strict writer, so its text is JSON too.
fn tojson() -> Fun<JustLut<Val>> {
    jaq_core::native::run(("tojson", v(0), |cv| {
        let mut out = Vec::new();
        match write_strict(&mut out, &cv.1, 0, usize::MAX) {
            Ok(()) => box_once(Ok(Val::utf8_str(out))),
            Err(WriteError::Program(message)) => box_once(Err(Exn::from(jaq_json::Error::str(message)))),
            Err(WriteError::TooDeep) => box_once(Err(Exn::from(jaq_json::Error::str(too_deep())))),
            Err(WriteError::TooLarge) => box_once(Err(Exn::from(jaq_json::Error::str("tojson: too large")))),
        }
    }))
}

/// True when arrays/objects nest deeper than `max` in text jaq's reader accepts (strings,
/// escapes and `#` comments skipped); counts without recursion.
fn nesting_exceeds(input: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped, mut in_comment) = (0usize, false, false, false);
    for byte in input {
        if in_comment {
            in_comment = *byte != b'\n';
            continue;
        }
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
            b'#' => in_comment = true,
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
fn silent(name: &'static str) -> Fun<JustLut<Val>> {
    jaq_core::native::run((name, v(0), |_| Box::new(std::iter::empty())))
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(program: &str, input: &str) -> Result<String, RunError> {
        Program::compile(program)
            .unwrap()
            .run(input.as_bytes(), 1 << 20)
            .map(|out| String::from_utf8(out).unwrap())
    }

    #[test]
    fn reshapes_a_product_list() {
        let out = run(
            "[.[] | {id, name: .title, price, imageUrl: .images[0].url}]",
            r#"[{"id":1,"title":"Mug","price":9.5,"stock":3,"images":[{"url":"a.png"},{"url":"b.png"}]}]"#,
        )
        .unwrap();
        let value: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            value,
            json!([{"id": 1, "name": "Mug", "price": 9.5, "imageUrl": "a.png"}])
        );
    }

    #[test]
    fn compile_errors_have_positions() {
        let error = Program::compile(".a | nosuchfilter(1)").unwrap_err();
        assert_eq!(error.offset, 5);
        assert!(error.message.contains("undefined filter"), "{}", error.message);
        let error = Program::compile("{a: }").unwrap_err();
        assert_eq!(error.offset, 4, "{}", error.message);
    }

    #[test]
    fn environment_is_withheld_and_halt_does_not_exit() {
        assert!(Program::compile("env").is_err());
        assert!(Program::compile("input").is_err());
        assert!(Program::compile("$ENV").is_err());
        assert!(matches!(run("halt_error(1)", "1"), Err(RunError::Program(m)) if m.contains("halt")));
        assert_eq!(run("debug | . + 1", "1").unwrap(), "2");
    }

    #[test]
    fn deep_or_loose_input_is_refused_before_parsing() {
        let deep = format!("{}{}", "[".repeat(200_000), "]".repeat(200_000));
        assert_eq!(run(".", &deep), Err(RunError::TooDeep));
        let fine = format!("{}\"[[[\\\"{{\"{}", "[".repeat(200), "]".repeat(200));
        assert!(run(".", &fine).is_ok(), "{fine}");
        for loose in ["NaN", "[Infinity]", "+5.43", "{1:2}", "[1] # c", "b\"x\"", "<html>"] {
            assert_eq!(run(".", loose), Err(RunError::NotJson), "{loose}");
        }
    }

    #[test]
    fn fromjson_refuses_deep_text_without_overflowing() {
        // 16 KB of brackets in a string: jaq's recursive parser would get them all.
        let input = serde_json::to_string(&"[".repeat(16 * 1024)).unwrap();
        let out = run("try fromjson catch \"refused: \\(.)\"", &input).unwrap();
        assert!(out.contains("nests deeper than 256"), "{out}");
        assert!(matches!(run("fromjson", &input), Err(RunError::Limit(_))));
        let out = run(r##""# [[[[\n[1]" | fromjson"##, "null").unwrap();
        assert_eq!(out, "[1]");
        assert_eq!(run(r#""nan" | fromjson | isnan"#, "null").unwrap(), "true");
    }

    #[test]
    fn output_is_strict_json() {
        assert_eq!(
            run("[nan, infinite, -infinite]", "null").unwrap(),
            "[null,1.7976931348623157e+308,-1.7976931348623157e+308]"
        );
        assert_eq!(run("\"+5.43\" | tonumber", "null").unwrap(), "5.43");
        assert_eq!(
            run("[1.50, 100000000000000000000000, 1e1000]", "null").unwrap(),
            "[1.50,100000000000000000000000,1.7976931348623157e+308]"
        );
        assert_eq!(run("\"\\u0000\\n\\\"\" ", "null").unwrap(), r#""\u0000\n\"""#);
        assert!(matches!(run("{(1): 2}", "null"), Err(RunError::Program(m)) if m.contains("not a string")));
        assert!(matches!(run("{(null): 2}", "null"), Err(RunError::Program(_))));
        assert_eq!(run("[nan] | tojson", "null").unwrap(), r#""[null]""#);
        for out in [
            run("[.[] | tostring]", "[1, \"a\", null]").unwrap(),
            run("{a: 1e308 * 10}", "null").unwrap(),
        ] {
            assert!(strict::check(out.as_bytes(), 64).is_ok(), "{out}");
        }
    }

    #[test]
    fn output_is_bounded() {
        let program = Program::compile("[range(1000)]").unwrap();
        assert!(matches!(program.run(b"null", 100), Err(RunError::Limit(_))));
        // Values this deep recurse in jaq itself: run where workers run, on the engine's stack.
        let deep = std::thread::Builder::new()
            .stack_size(super::super::transform::worker::ENGINE_STACK)
            .spawn(|| run("reduce range(10001) as $i (0; [.])", "null"))
            .unwrap()
            .join()
            .unwrap();
        assert!(matches!(deep, Err(RunError::Limit(m)) if m.contains("nests deeper")));
    }

    #[test]
    fn jq_definitions_added_to_jaqs() {
        assert_eq!(run("[nth(5,7; range(9;0;-1))]", "null").unwrap(), "[4,2]");
        assert!(matches!(run("nth(-1; 1)", "null"), Err(RunError::Program(m)) if m.contains("negative")));
        assert_eq!(run("flatten(1)", "[0,[1,[2]]]").unwrap(), "[0,1,[2]]");
        assert!(matches!(run("flatten(-1)", "[]"), Err(RunError::Program(m)) if m.contains("negative")));
        assert_eq!(run("[.[] | trimstr(\"a\")]", r#"["aba","b"]"#).unwrap(), r#"["b","b"]"#);
        assert_eq!(
            run("from_entries", r#"[{"k":"a","v":1},{"Name":"b","Value":2}]"#).unwrap(),
            r#"{"a":1,"b":2}"#
        );
        assert_eq!(
            run("INDEX(.id) | keys", r#"[{"id":1},{"id":2}]"#).unwrap(),
            r#"["1","2"]"#
        );
        assert_eq!(run("[.[] | IN(2, 3)]", "[1,2]").unwrap(), "[false,true]");
        assert_eq!(
            run("builtins | map(select(startswith(\"map\"))) | sort", "null").unwrap(),
            r#"["map/1","map_values/1"]"#
        );
        assert_eq!(
            run(
                "[builtins[] | select(startswith(\"env\") or startswith(\"input\"))]",
                "null"
            )
            .unwrap(),
            "[]"
        );
    }

    #[test]
    fn runtime_failures() {
        assert!(matches!(run(".[]", "[1,2]"), Err(RunError::Program(_))));
        assert!(matches!(run(".[]", "[]"), Err(RunError::Program(_))));
        assert!(matches!(run("error(\"boom\")", "1"), Err(RunError::Program(m)) if m.contains("boom")));
    }
}
