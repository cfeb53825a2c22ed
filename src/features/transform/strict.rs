//! A strict RFC 8259 JSON checker: one pass, no recursion (an explicit stack of open containers),
//! no allocation beyond that stack. It decides two things at the transform's boundaries:
//! whether an upstream body may be handed to the engine (jaq's own reader accepts a superset:
//! `NaN`, `Infinity`, `+1`, comments, byte strings), and whether a transform's output may leave
//! with a `200` (the daemon checks every output again, whatever the worker claims).

/// Why a text is not strict JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not RFC 8259 JSON (grammar, encoding or trailing data).
    Invalid,
    /// Arrays/objects nest deeper than the allowed depth.
    TooDeep,
}

/// Checks that `text` is exactly one RFC 8259 JSON value (whitespace around it allowed), valid
/// UTF-8, nesting at most `max_depth` arrays/objects.
pub fn check(text: &[u8], max_depth: usize) -> Result<(), Refusal> {
    if std::str::from_utf8(text).is_err() {
        return Err(Refusal::Invalid);
    }
    let mut parser = Parser { text, at: 0 };
    // One entry per open container: `true` for an object.
    let mut open: Vec<bool> = Vec::new();
    parser.skip_ws();
    'value: loop {
        // A value starts here.
        match parser.peek() {
            Some(b'{') | Some(b'[') => {
                let object = parser.peek() == Some(b'{');
                parser.at += 1;
                if open.len() >= max_depth {
                    return Err(Refusal::TooDeep);
                }
                open.push(object);
                parser.skip_ws();
                let close = if object { b'}' } else { b']' };
                if parser.peek() == Some(close) {
                    parser.at += 1;
                    open.pop();
                } else {
                    if object {
                        parser.key()?;
                    }
                    continue 'value;
                }
            }
            Some(b'"') => parser.string()?,
            Some(b't') => parser.literal(b"true")?,
            Some(b'f') => parser.literal(b"false")?,
            Some(b'n') => parser.literal(b"null")?,
            Some(b'-' | b'0'..=b'9') => parser.number()?,
            _ => return Err(Refusal::Invalid),
        }
        // A value ended: close containers or move to the next element.
        loop {
            parser.skip_ws();
            let Some(&object) = open.last() else {
                return if parser.at == text.len() {
                    Ok(())
                } else {
                    Err(Refusal::Invalid)
                };
            };
            match parser.next() {
                Some(b',') => {
                    parser.skip_ws();
                    if object {
                        parser.key()?;
                    }
                    continue 'value;
                }
                Some(b'}') if object => {
                    open.pop();
                }
                Some(b']') if !object => {
                    open.pop();
                }
                _ => return Err(Refusal::Invalid),
            }
        }
    }
}

struct Parser<'a> {
    text: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.at += 1;
        Some(byte)
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// `"key"` then `:`, leaving the parser at the value.
    fn key(&mut self) -> Result<(), Refusal> {
        if self.peek() != Some(b'"') {
            return Err(Refusal::Invalid);
        }
        self.string()?;
        self.skip_ws();
        if self.next() != Some(b':') {
            return Err(Refusal::Invalid);
        }
        self.skip_ws();
        Ok(())
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), Refusal> {
        if self.text[self.at..].starts_with(word) {
            self.at += word.len();
            Ok(())
        } else {
            Err(Refusal::Invalid)
        }
    }

    /// A string; the text is already known to be UTF-8, so only escapes and control characters
    /// are checked. Lone surrogates in `\u` escapes are allowed, as RFC 8259 does.
    fn string(&mut self) -> Result<(), Refusal> {
        self.at += 1;
        loop {
            match self.next() {
                None => return Err(Refusal::Invalid),
                Some(b'"') => return Ok(()),
                Some(b'\\') => match self.next() {
                    Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {}
                    Some(b'u') => {
                        for _ in 0..4 {
                            if !self.next().is_some_and(|b| b.is_ascii_hexdigit()) {
                                return Err(Refusal::Invalid);
                            }
                        }
                    }
                    _ => return Err(Refusal::Invalid),
                },
                Some(0x00..=0x1f) => return Err(Refusal::Invalid),
                Some(_) => {}
            }
        }
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> Result<(), Refusal> {
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.next() {
            Some(b'0') => {}
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(Refusal::Invalid),
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            self.some_digits()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            self.some_digits()?;
        }
        Ok(())
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
    }

    fn some_digits(&mut self) -> Result<(), Refusal> {
        if !self.peek().is_some_and(|b| b.is_ascii_digit()) {
            return Err(Refusal::Invalid);
        }
        self.digits();
        Ok(())
    }
}

/// True when `text` is one strict JSON number (used for number literals the engine kept as
/// written, which may come from a program rather than from JSON).
pub fn is_number(text: &str) -> bool {
    let mut parser = Parser {
        text: text.as_bytes(),
        at: 0,
    };
    matches!(parser.peek(), Some(b'-' | b'0'..=b'9')) && parser.number().is_ok() && parser.at == text.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_rfc_8259_allows() {
        for text in [
            "0",
            "-0",
            "-0.5e+10",
            "1E3",
            " \t\n\r[ ] ",
            "{}",
            r#"{"a":[1,{"b":null}],"c":"\u00e9\ud800\"\\\/"}"#,
            "\"é😀\"",
            "[true,false,null]",
        ] {
            assert_eq!(check(text.as_bytes(), 64), Ok(()), "{text}");
        }
    }

    #[test]
    fn refuses_the_superset_jq_engines_print_or_read() {
        for text in [
            "NaN",
            "Infinity",
            "-Infinity",
            "+5.43",
            "01",
            "1.",
            ".5",
            "1e",
            "{1:2}",
            "{null:1}",
            r#"{"a" 1}"#,
            "[1,]",
            "[1 2]",
            "{\"a\":1,}",
            "\"\u{1}\"",
            r#""\x41""#,
            r#""\u12""#,
            "b\"ab\"",
            "1 2",
            "[1] # comment",
            "",
            "nul",
            "[",
            "\"abc",
        ] {
            assert_eq!(check(text.as_bytes(), 64), Err(Refusal::Invalid), "{text}");
        }
        assert_eq!(check(b"\"\xff\"", 64), Err(Refusal::Invalid));
    }

    #[test]
    fn depth_is_counted_without_recursion() {
        let deep = format!("{}{}", "[".repeat(1_000_000), "]".repeat(1_000_000));
        assert_eq!(check(deep.as_bytes(), 256), Err(Refusal::TooDeep));
        let fine = format!("{}1{}", "[{\"a\":".repeat(128), "}]".repeat(128));
        assert_eq!(check(fine.as_bytes(), 256), Ok(()));
        assert_eq!(check(fine.as_bytes(), 255), Err(Refusal::TooDeep));
        // Brackets inside strings are text.
        assert_eq!(check(format!("\"{}\"", "[".repeat(10_000)).as_bytes(), 1), Ok(()));
    }

    #[test]
    fn agrees_with_serde_json_on_random_texts() {
        // serde_json is strict RFC 8259 (below its depth limit): the two must agree.
        use proptest::prelude::*;
        let alphabet = prop::sample::select(vec![
            "[", "]", "{", "}", ",", ":", "\"", "\\", "a", "1", "0", "-", "+", ".", "e", "E", " ", "u", "true", "null",
            "\"k\":", "\\u00", "\n", "\u{1}",
        ]);
        let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
            cases: 4000,
            failure_persistence: None,
            ..Default::default()
        });
        runner
            .run(&prop::collection::vec(alphabet, 0..16), |parts| {
                let text = parts.concat();
                let serde = serde_json::from_str::<serde::de::IgnoredAny>(&text).is_ok();
                prop_assert_eq!(check(text.as_bytes(), 64).is_ok(), serde, "{}", text);
                Ok(())
            })
            .unwrap();
    }
}
