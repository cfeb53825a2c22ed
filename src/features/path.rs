//! The request-target check and normalisation that run before route matching.
//!
//! One path, decoded once: after the checks below, [`normalise_path`] decodes every escape of an
//! unreserved character (RFC 3986 2.3: `A-Z a-z 0-9 - . _ ~`, either hex case) and upper-cases
//! the hex of every other escape (RFC 3986 6.2.2.1), and the guard rewrites the request's URI to
//! that form. Routes match it and parameter values go to the upstream byte for byte, so the route
//! that matched is the route the upstream sees: `/api/x/%61dmin/y` *is* `/api/x/admin/y`, and
//! `%2f` and `%2F` are one form. Matching is case-sensitive (`/Admin` is not `/admin`).
//!
//! The checks run on the raw path, before normalisation, and refuse what is not canonical: no `.` or `..` segment in any
//! encoding (`%2e`, `%252e`, ...) nor a segment of only dots and spaces (`...`, `..%20`), no encoded `/` or `\`, no raw `\`, no empty segment, no `;`
//! parameters (`..;`), no control characters, only origin-form targets (`/path`), never CONNECT.
//! A path that passes means the same thing to every server that decodes it any number of times
//! (up to [`MAX_DECODE_DEPTH`]), so no upstream can resolve it outside the route's base path.

use http::{Method, Uri};
use percent_encoding::percent_decode;

pub use crate::http::error::PathError;

/// How many rounds of percent-decoding are looked through; deeper nesting is refused.
pub const MAX_DECODE_DEPTH: usize = 4;

/// Accepts a canonical origin-form target, refuses every path trick listed in the module docs.
pub fn check(method: &Method, uri: &Uri) -> Result<(), PathError> {
    if *method == Method::CONNECT {
        return Err(PathError::Connect);
    }
    if uri.scheme().is_some() || uri.authority().is_some() {
        return Err(PathError::NotOriginForm);
    }
    check_path(uri.path())
}

/// The path rules alone, on the raw (still encoded) path.
pub fn check_path(path: &str) -> Result<(), PathError> {
    if plain(path.as_bytes()) {
        return Ok(());
    }
    check_segments(path)
}

/// Whether `path` is `/` and segments of letters, digits and `-_~!$&'()*+,=:@` only, none
/// empty but a trailing one: nothing to decode, no dot, nothing [`check_segments`] refuses. Most
/// paths are; one pass over the bytes decides.
fn plain(path: &[u8]) -> bool {
    let [b'/', rest @ ..] = path else {
        return false;
    };
    let mut after_slash = true;
    for &byte in rest {
        after_slash = match byte {
            b'/' if after_slash => return false,
            b'/' => true,
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => false,
            b'-' | b'_' | b'~' | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'=' | b':' | b'@' => {
                false
            }
            _ => return false,
        };
    }
    true
}

/// [`check_path`] segment by segment.
fn check_segments(path: &str) -> Result<(), PathError> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(PathError::NotOriginForm);
    };
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        // A single trailing slash (`/api/items/`) is an ordinary path; `//` anywhere is not.
        if segment.is_empty() {
            if segments.peek().is_none() {
                continue;
            }
            return Err(PathError::EmptySegment);
        }
        check_segment(segment.as_bytes())?;
    }
    Ok(())
}

fn check_segment(raw: &[u8]) -> Result<(), PathError> {
    if !well_formed(raw) {
        return Err(PathError::Encoding);
    }
    // Most segments hold no escape: checked where they lie, copied only to be decoded.
    let mut level = std::borrow::Cow::Borrowed(raw);
    for depth in 0..=MAX_DECODE_DEPTH {
        // `.` and `..`, and lookalikes that some servers trim into them (`...`, `..%20`: Windows
        // drops trailing dots and spaces, URL parsers trim spaces at the end).
        if level.iter().all(|b| *b == b'.' || *b == b' ') && level.contains(&b'.') {
            return Err(PathError::DotSegment);
        }
        for &byte in level.iter() {
            match byte {
                b'\\' => return Err(PathError::Slash),
                b'/' if depth > 0 => return Err(PathError::Slash),
                b';' => return Err(PathError::Semicolon),
                0..=0x1f | 0x7f => return Err(PathError::Control),
                _ => {}
            }
        }
        if !has_escape(&level) {
            return Ok(());
        }
        if depth == MAX_DECODE_DEPTH {
            break;
        }
        let decoded: Vec<u8> = percent_decode(&level).collect();
        // Overlong and other invalid UTF-8 (`%c0%ae`) decodes to different things on different
        // servers; refuse it rather than guess.
        if std::str::from_utf8(&decoded).is_err() {
            return Err(PathError::Encoding);
        }
        level = std::borrow::Cow::Owned(decoded);
    }
    Err(PathError::TooDeep)
}

/// The path with unreserved characters decoded and the remaining escapes in upper-case hex; only
/// valid on a path that passed [`check_path`] (every `%` starts a `%XX` escape). Borrowed when
/// nothing changes, which is the common case.
pub fn normalise_path(path: &str) -> std::borrow::Cow<'_, str> {
    let bytes = path.as_bytes();
    let needs_work = bytes.windows(3).any(|w| {
        w[0] == b'%'
            && match (hex_value(w[1]), hex_value(w[2])) {
                (Some(high), Some(low)) => {
                    is_unreserved(high << 4 | low) || w[1].is_ascii_lowercase() || w[2].is_ascii_lowercase()
                }
                _ => false,
            }
    });
    if !needs_work {
        return std::borrow::Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(high), Some(low)) = (
                bytes.get(i + 1).copied().and_then(hex_value),
                bytes.get(i + 2).copied().and_then(hex_value),
            )
        {
            let byte = high << 4 | low;
            if is_unreserved(byte) {
                out.push(char::from(byte));
            } else {
                out.push('%');
                out.push(char::from(bytes[i + 1].to_ascii_uppercase()));
                out.push(char::from(bytes[i + 2].to_ascii_uppercase()));
            }
            i += 3;
        } else {
            // Copy the run up to the next `%` whole (keeps multi-byte characters intact).
            let end = bytes[i + 1..]
                .iter()
                .position(|b| *b == b'%')
                .map_or(bytes.len(), |p| i + 1 + p);
            out.push_str(&path[i..end]);
            i = end;
        }
    }
    std::borrow::Cow::Owned(out)
}

/// RFC 3986 2.3: the characters whose escapes mean the same as the characters themselves.
fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(digit: u8) -> Option<u8> {
    char::from(digit).to_digit(16).map(|v| v as u8)
}

/// Every `%` in the raw path starts a `%XX` escape.
fn well_formed(raw: &[u8]) -> bool {
    raw.iter().enumerate().all(|(i, &b)| {
        b != b'%'
            || (raw.get(i + 1).is_some_and(u8::is_ascii_hexdigit) && raw.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    })
}

/// Holds at least one `%XX` escape that a decoder would turn into another byte.
fn has_escape(bytes: &[u8]) -> bool {
    bytes
        .windows(3)
        .any(|w| w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn target(text: &str) -> Result<(), PathError> {
        let uri: Uri = text.parse().expect("a parseable target");
        check(&Method::GET, &uri)
    }

    #[test]
    fn accepts_ordinary_paths() {
        for ok in [
            "/",
            "/api/github/user/repos",
            "/api/x/",
            "/api/a%20b/%41",
            "/api/@scope/pkg",
            "/api/100%25",
            "/api/.well-known/x",
            "/api/x?q=../../etc",
        ] {
            assert_eq!(target(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn normalises_unreserved_escapes_and_hex_case() {
        for (raw, normal) in [
            ("/api/x/%61dmin/y", "/api/x/admin/y"),
            ("/api/%41%5a%7E%7e%2D%5F%2e%30", "/api/AZ~~-_.0"),
            ("/api/a%2fb%2Fc", "/api/a%2Fb%2Fc"),
            ("/api/%c3%a9/%e2%82%ac", "/api/%C3%A9/%E2%82%AC"),
            ("/api/100%25", "/api/100%25"),
            ("/api/%2561", "/api/%2561"),
            ("/api/é%61", "/api/éa"),
            ("/api/plain", "/api/plain"),
        ] {
            assert_eq!(normalise_path(raw), normal, "{raw}");
        }
        assert!(matches!(normalise_path("/api/%2F"), std::borrow::Cow::Borrowed(_)));
    }

    #[test]
    fn refuses_each_trick() {
        let cases = [
            ("/api/../admin", PathError::DotSegment),
            ("/api/./x", PathError::DotSegment),
            ("/api/..", PathError::DotSegment),
            ("/api/...", PathError::DotSegment),
            ("/api/..%20", PathError::DotSegment),
            ("/api/%20.", PathError::DotSegment),
            ("/api/%2e%2e/admin", PathError::DotSegment),
            ("/api/.%2E/admin", PathError::DotSegment),
            ("/api/%252e%252e/admin", PathError::DotSegment),
            ("/api/%25252e/admin", PathError::DotSegment),
            ("/api/x%2fy", PathError::Slash),
            ("/api/x%2Fy", PathError::Slash),
            ("/api/x%5cy", PathError::Slash),
            ("/api/x%252fy", PathError::Slash),
            ("/api//x", PathError::EmptySegment),
            ("//evil.example/x", PathError::EmptySegment),
            ("/api/..;/admin", PathError::Semicolon),
            ("/api/x;jsessionid=1", PathError::Semicolon),
            ("/api/x%3b", PathError::Semicolon),
            ("/api/x%00", PathError::Control),
            ("/api/x%0d%0aHost:%20evil", PathError::Control),
            ("/api/%zz", PathError::Encoding),
            ("/api/%c0%ae%c0%ae/x", PathError::Encoding),
            ("/api/%2525252525252e", PathError::TooDeep),
            ("http://evil.example/api/x", PathError::NotOriginForm),
            ("evil.example:443", PathError::NotOriginForm),
            ("*", PathError::NotOriginForm),
        ];
        for (text, expected) in cases {
            assert_eq!(target(text), Err(expected), "{text}");
        }
        assert_eq!(check_path("/api/x\\..\\y"), Err(PathError::Slash));
        let connect: Uri = "evil.example:443".parse().unwrap();
        assert_eq!(check(&Method::CONNECT, &connect), Err(PathError::Connect));
    }

    /// Pieces that make up hostile and harmless segments.
    fn piece() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "a", "Z", "0", ".", "..", "%2e", "%2E", "%252e", "%2f", "%5c", "%25", "%", "/", "//", ";", "\\", "%00",
            "%41", "@", "~", "-", "%c0%ae", "%20", " ", "%2520", "é",
        ])
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

        /// Whatever is accepted stays under the upstream's base path, however many times a
        /// server down the line decodes it.
        #[test]
        fn accepted_paths_stay_under_the_base(pieces in prop::collection::vec(piece(), 0..12)) {
            let path = format!("/{}", pieces.concat());
            if check_path(&path).is_ok() {
                let mut current = path.clone();
                for _ in 0..=MAX_DECODE_DEPTH {
                    let url = url::Url::parse(&format!("https://upstream.example/base{current}")).unwrap();
                    prop_assert_eq!(url.host_str(), Some("upstream.example"));
                    prop_assert!(url.path().starts_with("/base/"), "{} escaped as {}", path, url.path());
                    prop_assert!(!url.path().contains("//"), "{}", path);
                    current = percent_decode(current.as_bytes()).decode_utf8_lossy().into_owned();
                }
            }
        }

        /// A dot segment in any encoding, anywhere, is refused.
        #[test]
        fn dot_segments_are_always_refused(
            before in prop::collection::vec("[a-z0-9]{1,4}", 0..4),
            after in prop::collection::vec("[a-z0-9]{1,4}", 0..4),
            dots in prop::sample::select(vec![".", "..", "%2e", "%2E%2e", ".%2e", "%252e%252E", "%25252e"]),
        ) {
            let mut segments = before.clone();
            segments.push(dots.to_string());
            segments.extend(after);
            let path = format!("/{}", segments.join("/"));
            prop_assert_eq!(check_path(&path), Err(PathError::DotSegment));
        }

        /// The shortcut accepts only what the segment checks accept.
        #[test]
        fn plain_paths_pass_the_segment_checks(
            text in "[/a-zA-Z0-9._~!$&'()*+,;=:@%\\\\ -]{0,24}",
            pieces in prop::collection::vec(piece(), 0..8),
        ) {
            for path in [text, format!("/{}", pieces.concat())] {
                if plain(path.as_bytes()) {
                    prop_assert_eq!(check_segments(&path), Ok(()), "{}", path);
                }
            }
        }

        /// Arbitrary input never panics.
        #[test]
        fn never_panics(text in "\\PC{0,64}") {
            let _ = check_path(&text);
        }

        /// Normalising is idempotent, keeps an accepted path accepted, and means the same
        /// bytes once decoded.
        #[test]
        fn normalising_keeps_the_meaning(pieces in prop::collection::vec(piece(), 0..12)) {
            let path = format!("/{}", pieces.concat());
            if check_path(&path).is_ok() {
                let normal = normalise_path(&path).into_owned();
                prop_assert_eq!(check_path(&normal), Ok(()));
                let again = normalise_path(&normal).into_owned();
                prop_assert_eq!(&again, &normal);
                let decoded: Vec<u8> = percent_decode(path.as_bytes()).collect();
                let decoded_normal: Vec<u8> = percent_decode(normal.as_bytes()).collect();
                prop_assert_eq!(decoded, decoded_normal);
            }
        }
    }
}
