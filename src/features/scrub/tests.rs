//! The scrubber against the ways a client decodes text: for random secrets, random encodings and
//! random chunkings, decoding the scrubbed output the same way never gives the secret back.

use base64::Engine as _;
use futures_util::stream;
use http_body_util::StreamBody;
use proptest::prelude::*;

use super::*;

fn redactor(secrets: &[&str]) -> Redactor {
    Redactor::from_values(secrets.iter().map(|s| s.as_bytes())).unwrap()
}

/// Scrubs `text` cut at `cuts` (sorted, clamped), as the body wrapper does.
fn scrub_chunked(redactor: &Redactor, text: &[u8], cuts: &[usize]) -> Vec<u8> {
    let mut cuts: Vec<usize> = cuts.iter().map(|&c| c.min(text.len())).collect();
    cuts.sort_unstable();
    let mut scanner = Scanner::default();
    let mut out = Vec::new();
    let mut at = 0;
    for cut in cuts.into_iter().chain([text.len()]) {
        out.extend_from_slice(&scanner.push(&redactor.exact, &Bytes::copy_from_slice(&text[at..cut])));
        at = cut;
    }
    out.extend_from_slice(&scanner.finish(&redactor.exact));
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// How a client could receive a secret.
#[derive(Debug, Clone, Copy)]
enum Form {
    Plain,
    /// Any mix of raw characters and `%XX` in random hex case.
    Percent,
    /// Form encoding: `+` for space.
    PlusForSpace,
    /// A JSON string body: `\/`, `\uXXXX` in random case, `\"`, `\\`.
    Json,
    /// Percent-encoded, then inside a JSON string.
    JsonPercent,
    Base64 {
        url: bool,
        pad: bool,
    },
    Basic,
    Hex {
        upper: bool,
    },
}

fn forms() -> impl Strategy<Value = Form> {
    prop_oneof![
        Just(Form::Plain),
        Just(Form::Percent),
        Just(Form::PlusForSpace),
        Just(Form::Json),
        Just(Form::JsonPercent),
        (any::<bool>(), any::<bool>()).prop_map(|(url, pad)| Form::Base64 { url, pad }),
        Just(Form::Basic),
        any::<bool>().prop_map(|upper| Form::Hex { upper }),
    ]
}

fn hex_escape(prefix: &str, value: u32, width: usize, choice: u8) -> String {
    let digits = format!("{value:0width$x}");
    let digits: String = digits
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if choice >> (i % 8) & 1 == 1 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect();
    format!("{prefix}{digits}")
}

fn percent_mix(secret: &str, choices: &[u8], form: bool) -> String {
    let mut out = String::new();
    for (i, b) in secret.bytes().enumerate() {
        let choice = choices[i % choices.len()];
        let must = b == b'%' || (form && b == b'+');
        if form && b == b' ' && choice & 1 == 0 {
            out.push('+');
        } else if must || choice & 1 == 1 {
            out.push_str(&hex_escape("%", b as u32, 2, choice >> 1));
        } else {
            out.push(b as char);
        }
    }
    out
}

fn json_escape(text: &str, choices: &[u8]) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        let choice = choices[i % choices.len()];
        match c {
            '"' | '\\' if choice & 1 == 0 => {
                out.push('\\');
                out.push(c);
            }
            '/' if choice & 3 == 0 => out.push_str("\\/"),
            _ if choice & 1 == 1 || c == '"' || c == '\\' => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&hex_escape("\\u", *unit as u32, 4, choice >> 1));
                }
            }
            _ => out.push(c),
        }
    }
    out
}

fn encode(form: Form, secret: &str, choices: &[u8]) -> String {
    let around = |n: u8| -> Vec<u8> { choices.iter().take((n % 3) as usize).copied().collect() };
    let wrapped = [
        &around(choices[0])[..],
        secret.as_bytes(),
        &around(choices[1 % choices.len()])[..],
    ]
    .concat();
    match form {
        Form::Plain => secret.to_string(),
        Form::Percent => percent_mix(secret, choices, false),
        Form::PlusForSpace => percent_mix(secret, choices, true),
        Form::Json => json_escape(secret, choices),
        Form::JsonPercent => json_escape(&percent_mix(secret, choices, false), choices),
        Form::Base64 { url, pad } => {
            use base64::engine::general_purpose::*;
            match (url, pad) {
                (false, false) => STANDARD_NO_PAD.encode(&wrapped),
                (false, true) => STANDARD.encode(&wrapped),
                (true, false) => URL_SAFE_NO_PAD.encode(&wrapped),
                (true, true) => URL_SAFE.encode(&wrapped),
            }
        }
        Form::Basic => {
            let user: String = choices.iter().take(5).map(|c| (b'a' + c % 26) as char).collect();
            let pair = format!("{user}:{secret}");
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))
        }
        Form::Hex { upper: false } => hex::encode(&wrapped),
        Form::Hex { upper: true } => hex::encode_upper(&wrapped),
    }
}

fn percent_decode(bytes: &[u8], form: bool) -> Vec<u8> {
    let bytes: Vec<u8> = bytes
        .iter()
        .map(|&b| if form && b == b'+' { b' ' } else { b })
        .collect();
    percent_encoding::percent_decode(&bytes).collect()
}

/// A lenient JSON string unescaper, as a client reading the text as JSON would see it.
fn json_unescape(bytes: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(bytes);
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::new();
    let mut units: Vec<u16> = Vec::new();
    let flush = |units: &mut Vec<u16>, out: &mut String| {
        out.extend(char::decode_utf16(units.drain(..)).map(|c| c.unwrap_or('\u{fffd}')));
    };
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '\\' && i + 1 < chars.len() {
            let simple = match chars[i + 1] {
                '/' => Some('/'),
                '\\' => Some('\\'),
                '"' => Some('"'),
                'n' => Some('\n'),
                't' => Some('\t'),
                'r' => Some('\r'),
                'b' => Some('\u{8}'),
                'f' => Some('\u{c}'),
                _ => None,
            };
            if let Some(c) = simple {
                flush(&mut units, &mut out);
                out.push(c);
                i += 2;
                continue;
            }
            if chars[i + 1] == 'u' && i + 6 <= chars.len() {
                let digits: String = chars[i + 2..i + 6].iter().collect();
                if let Ok(unit) = u16::from_str_radix(&digits, 16)
                    && digits.chars().all(|c| c.is_ascii_hexdigit())
                {
                    units.push(unit);
                    i += 6;
                    continue;
                }
            }
        }
        flush(&mut units, &mut out);
        out.push(chars[i]);
        i += 1;
    }
    flush(&mut units, &mut out);
    out.into_bytes()
}

/// Every byte string a client could get by decoding runs of the alphabet in `out`, at every
/// starting offset.
fn run_decodings(out: &[u8], hex: bool) -> Vec<Vec<u8>> {
    let in_alphabet = |b: u8| {
        if hex {
            b.is_ascii_hexdigit()
        } else {
            b.is_ascii_alphanumeric() || b"+/-_".contains(&b)
        }
    };
    let mut decoded = Vec::new();
    for run in out.split(|&b| !in_alphabet(b)) {
        let run: Vec<u8> = run
            .iter()
            .map(|&b| match b {
                b'-' => b'+',
                b'_' => b'/',
                b => b,
            })
            .collect();
        let group = if hex { 2 } else { 4 };
        for offset in 0..group {
            if run.len() < offset {
                break;
            }
            let part = &run[offset..];
            let bytes = if hex {
                hex::decode(&part[..part.len() - part.len() % 2]).ok()
            } else {
                // A final group of 2 or 3 characters decodes too (1 is no byte).
                let part = &part[..part.len() - usize::from(part.len() % 4 == 1)];
                let lenient = base64::engine::GeneralPurpose::new(
                    &base64::alphabet::STANDARD,
                    base64::engine::GeneralPurposeConfig::new()
                        .with_decode_allow_trailing_bits(true)
                        .with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireNone),
                );
                lenient.decode(part).ok()
            };
            decoded.extend(bytes);
        }
    }
    decoded
}

/// Whether decoding `out` as a client expecting `form` gives the secret back.
fn decodes_to_secret(form: Form, out: &[u8], secret: &[u8]) -> bool {
    match form {
        Form::Plain => contains(out, secret),
        Form::Percent => contains(&percent_decode(out, false), secret),
        Form::PlusForSpace => contains(&percent_decode(out, true), secret),
        Form::Json => contains(&json_unescape(out), secret),
        Form::JsonPercent => contains(&percent_decode(&json_unescape(out), false), secret),
        Form::Base64 { .. } | Form::Basic => run_decodings(out, false).iter().any(|d| contains(d, secret)),
        Form::Hex { .. } => run_decodings(out, true).iter().any(|d| contains(d, secret)),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// Whatever the form and the chunking, the client cannot decode the secret from the output.
    #[test]
    fn no_decodable_form_of_a_secret_gets_through(
        secret in "[ -~]{8,32}",
        form in forms(),
        choices in prop::collection::vec(any::<u8>(), 1..16),
        before in "[a-zA-Z0-9 .,:;_!?()-]{0,40}",
        after in "[a-zA-Z0-9 .,:;_!?()-]{0,40}",
        cuts in prop::collection::vec(0usize..200, 0..8),
    ) {
        let encoded = encode(form, &secret, &choices);
        let text = format!("{before}{encoded}{after} and again {encoded}");
        // The encoding is faithful: unscrubbed, the client gets the secret.
        prop_assert!(decodes_to_secret(form, text.as_bytes(), secret.as_bytes()), "bad test encoding {encoded:?}");
        let redactor = redactor(&[&secret]);
        let out = scrub_chunked(&redactor, text.as_bytes(), &cuts);
        prop_assert!(
            !decodes_to_secret(form, &out, secret.as_bytes()),
            "{form:?} {encoded:?} came out as {:?}", String::from_utf8_lossy(&out)
        );
        prop_assert!(contains(&out, REDACTED));
    }

    /// Text holding no secret passes byte for byte, however it is cut.
    #[test]
    fn text_without_a_secret_passes_unchanged(
        secret in "[ -~]{8,32}",
        text in "[ -~\n\u{e9}\u{1F600}]{0,300}",
        cuts in prop::collection::vec(0usize..400, 0..8),
    ) {
        let redactor = redactor(&[&secret]);
        let out = scrub_chunked(&redactor, text.as_bytes(), &cuts);
        prop_assert_eq!(String::from_utf8_lossy(&out), text);
    }

    /// The shortcut never calls clean what a full scan would redact (secrets with `+` and spaces,
    /// text with spaces and escapes).
    #[test]
    fn clean_means_a_full_scan_redacts_nothing(
        filler in prop::collection::vec(prop::sample::select(vec![
            "a b", "a", "b", "c", " ", "+", "%20", "%2B", "/", "c/d", " c", "\\u0020", "x y",
        ]), 0..12),
    ) {
        let text = filler.concat().into_bytes();
        let redactor = redactor(&["a b+c/d", "ab cd"]);
        let mut scanner = Scanner::default();
        scanner.share = false;
        let mut scanned = scanner.scan(&redactor.exact, &text).to_vec();
        scanned.extend_from_slice(&scanner.finish(&redactor.exact));
        if redactor.exact.clean(&text) {
            prop_assert_eq!(scanned, text);
        }
    }

    /// However the body is split into chunks, the output equals scrubbing it whole.
    #[test]
    fn chunk_boundaries_do_not_matter(
        filler in prop::collection::vec(prop::sample::select(vec![
            "a", "sk_", "sk%5Flive", "x\n", "sk_live_42", "42", "\\u0073", "%", "\\", "+", " ", "%2", "b+c", "\\/", "%5c",
        ]), 0..20),
        cuts in prop::collection::vec(0usize..200, 0..8),
    ) {
        let text = filler.concat().into_bytes();
        let redactor = redactor(&["sk_live_42", "live_4", "b c/d"]);
        // Whole, and with every view scanning for itself.
        let mut scanner = Scanner::default();
        scanner.share = false;
        let mut whole = scanner.scan(&redactor.exact, &text).to_vec();
        whole.extend_from_slice(&scanner.finish(&redactor.exact));
        let streamed = scrub_chunked(&redactor, &text, &cuts);
        prop_assert_eq!(streamed, whole);
    }
}

proptest! {
    // Each case is a few bytes: many cases, so that short texts hit every kind of pair.
    #![proptest_config(ProptestConfig { cases: 4096, failure_persistence: None, ..ProptestConfig::default() })]

    /// The shortcuts agree with a full scan for any patterns (one byte long too, either case):
    /// bytes that pass leave a fresh scanner holding nothing back, and bytes called clean come out
    /// of it unchanged.
    #[test]
    fn the_shortcuts_agree_with_a_full_scan(
        patterns in prop::collection::vec("[abAB+ %]{1,3}", 1..4),
        text in "[abAB+ %\\\\]{0,8}",
        caseless in any::<bool>(),
    ) {
        let forms: Vec<Zeroizing<Vec<u8>>> =
            patterns.iter().map(|p| Zeroizing::new(p.clone().into_bytes())).collect();
        let engine = Engine::new(&forms, caseless).unwrap();
        let text = text.into_bytes();
        let mut scanner = Scanner::default();
        scanner.share = false;
        let mut scanned = scanner.scan(&engine, &text).to_vec();
        if engine.passes(&text) {
            prop_assert_eq!(&scanned, &text);
        }
        scanned.extend_from_slice(&scanner.finish(&engine));
        if engine.clean(&text) {
            prop_assert_eq!(&scanned, &text);
        }
    }
}

async fn scrub_body(redactor: Redactor, chunks: Vec<Vec<u8>>) -> Vec<u8> {
    let frames = stream::iter(
        chunks
            .into_iter()
            .map(|c| Ok::<_, BoxError>(Frame::data(Bytes::from(c)))),
    );
    let body = Arc::new(redactor).body(StreamBody::new(frames).boxed_unsync());
    body.collect().await.unwrap().to_bytes().to_vec()
}

#[tokio::test]
async fn secret_split_one_byte_per_chunk_is_redacted() {
    let secret = "ghp_SplitAcrossChunks";
    let text = format!("token={secret}; again {secret}");
    let chunks = text.bytes().map(|b| vec![b]).collect();
    let out = scrub_body(redactor(&[secret]), chunks).await;
    assert_eq!(String::from_utf8(out).unwrap(), "token=[REDACTED]; again [REDACTED]");
}

#[tokio::test]
async fn trailers_are_scrubbed_and_names_holding_a_secret_dropped() {
    let secret = "Tr4iler-Secret";
    let mut trailers = HeaderMap::new();
    trailers.insert("x-echo", HeaderValue::from_static("v=Tr4iler-Secret"));
    trailers.insert("x-tr4iler-secret", HeaderValue::from_static("1"));
    trailers.insert("x-fine", HeaderValue::from_static("ok"));
    let frames = stream::iter([
        Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"body Tr4iler-Sec"))),
        Ok(Frame::data(Bytes::from_static(b"ret end"))),
        Ok(Frame::trailers(trailers)),
    ]);
    let body = Arc::new(redactor(&[secret])).body(StreamBody::new(frames).boxed_unsync());
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap();
    assert_eq!(trailers["x-echo"], "v=[REDACTED]");
    assert_eq!(trailers["x-fine"], "ok");
    assert!(!trailers.contains_key("x-tr4iler-secret"));
    assert_eq!(&collected.to_bytes()[..], b"body [REDACTED] end");
}

#[test]
fn a_chunk_that_cannot_begin_a_secret_goes_out_at_once() {
    let redactor = redactor(&["sk_live_abcdef"]);
    let mut scanner = Scanner::default();
    // An SSE event: nothing at its end could start a secret, so nothing is held back.
    let event = b"data: {\"token\": \"hello\"}\n\n";
    assert_eq!(&scanner.push(&redactor.exact, &Bytes::from_static(event))[..], event);
    // A tail that may begin a secret (raw, or as an escape) waits for the next chunk.
    assert_eq!(
        &scanner.push(&redactor.exact, &Bytes::from_static(b"data: sk_li"))[..],
        b"data: "
    );
    assert_eq!(
        &scanner.push(&redactor.exact, &Bytes::from_static(b"ve_abcdef!\n"))[..],
        b"[REDACTED]!\n"
    );
    assert_eq!(&scanner.push(&redactor.exact, &Bytes::from_static(b"x %7"))[..], b"x ");
    assert_eq!(
        &scanner.push(&redactor.exact, &Bytes::from_static(b"3k_live_abcdef"))[..],
        b"[REDACTED]"
    );
    assert_eq!(&scanner.finish(&redactor.exact)[..], b"");
}

#[test]
fn spaces_alone_are_clean_unless_a_pattern_reads_them() {
    let redactor = redactor(&["a b+c/d"]);
    // A `Date` header: spaces, nothing to decode, no pattern.
    assert!(redactor.exact.clean(b"Tue, 01 Dec 2026 19:28:31 GMT"));
    // The percent views read the secret's `+` as a space: this spelling is a match.
    assert!(!redactor.exact.clean(b"x a b c/d y"));
    assert_eq!(redactor.text("x a b c/d y"), "x [REDACTED] y");
}

#[test]
fn a_clean_chunk_at_rest_is_passed_on_uncopied() {
    let redactor = redactor(&["sk_live_abcdef"]);
    let mut scanner = Scanner::default();
    let chunk = Bytes::from_static(b"{\"ok\":true}");
    let out = scanner.push(&redactor.exact, &chunk);
    assert_eq!(out.as_ptr(), chunk.as_ptr());
    // The stream offsets moved on: a secret split over the next chunks is still found whole.
    assert_eq!(
        &scanner.push(&redactor.exact, &Bytes::from_static(b" sk_live"))[..],
        b" "
    );
    assert_eq!(
        &scanner.push(&redactor.exact, &Bytes::from_static(b"_abcdef."))[..],
        b"[REDACTED]."
    );
    // Not at rest (an escape begun): scanned, even though the chunk itself is clean.
    assert_eq!(&scanner.push(&redactor.exact, &Bytes::from_static(b"%"))[..], b"");
    assert_eq!(
        &scanner.push(&redactor.exact, &Bytes::from_static(b"73k_live_abcdef"))[..],
        b"[REDACTED]"
    );
    assert_eq!(&scanner.finish(&redactor.exact)[..], b"");
}

#[test]
fn json_escapes_and_surrogate_pairs_are_decoded() {
    let secret = "k\u{e9}y/\u{1F600}\"x";
    let redactor = redactor(&[secret]);
    for encoded in [
        "k\\u00e9y\\/\\uD83D\\uDE00\\\"x",
        "k\\u00E9y/\\ud83d\\ude00\\u0022x",
        "\\u006b\u{e9}y\\u002F\u{1F600}\\\"x",
    ] {
        assert_eq!(
            redactor.text(&format!("{{\"a\":\"{encoded}\"}}")),
            "{\"a\":\"[REDACTED]\"}"
        );
    }
    // A lone surrogate is not the secret's emoji.
    let lone = "k\\u00e9y\\/\\uD83D\\\"x";
    assert_eq!(redactor.text(lone), lone);
}

#[test]
fn percent_mixes_in_either_case_and_plus_for_space() {
    let redactor = redactor(&["tok/abc+ d"]);
    for encoded in [
        "tok/abc%2B%20d",
        "tok%2fabc%2b+d",
        "tok%2Fabc+%20d",
        "%74ok/abc%2b d",
        "tok\\/abc+ d",
        "tok\\/abc%2B%20d",
    ] {
        assert_eq!(redactor.text(&format!("x={encoded}&y")), "x=[REDACTED]&y", "{encoded}");
    }
}

#[test]
fn headers_lose_names_and_values_holding_a_secret() {
    let redactor = redactor(&["S3cret-Name"]);
    let mut headers = HeaderMap::new();
    headers.insert("x-echo", "Bearer S3cret-Name".parse().unwrap());
    headers.insert("x-s3cret-name", "1".parse().unwrap());
    headers.insert("x-s3cret%2dname", "1".parse().unwrap());
    headers.insert("x-ok", "fine".parse().unwrap());
    redactor.headers(&mut headers);
    assert_eq!(headers["x-echo"], "Bearer [REDACTED]");
    assert_eq!(headers["x-ok"], "fine");
    assert_eq!(headers.len(), 2, "{headers:?}");
}

#[test]
fn text_is_scrubbed_plain_and_encoded() {
    let config = crate::config::Config::parse(
        "[secrets.k]\nenv = \"K\"\n[routes.r]\npath = \"/r\"\nupstream = \"https://x.example/\"\nquery = { key = \"${k}\" }\n",
        "t",
    )
    .unwrap();
    let redactor = Redactor::for_route(&config.routes[0], |_| SecretString::from("a b/c".to_string())).unwrap();
    assert_eq!(redactor.text("x a b/c y a+b%2Fc"), "x [REDACTED] y [REDACTED]");
}

/// Throughput on 8 MiB in 16 KiB chunks, of typical JSON (no escapes) and of JSON full of
/// escapes, with two secrets and one echo at the end.
/// Run with `cargo test --release --lib scrub::tests::throughput -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement; run in release"]
fn throughput() {
    let secret = "sk_live_0123456789abcdef";
    let redactor = redactor(&[secret, "another-secret-value"]);
    for line in [
        "{\"id\":12345,\"name\":\"some text with spaces\",\"url\":\"https://x.example/a?b=c\"}\n",
        "{\"id\":12345,\"name\":\"some text with spaces\",\"url\":\"https:\\/\\/x.example\\/a%20b?c=d+e\"}\n",
    ] {
        let mut text = line.repeat(8 * 1024 * 1024 / line.len());
        text.push_str(secret);
        let chunks: Vec<Bytes> = text.as_bytes().chunks(16 * 1024).map(Bytes::copy_from_slice).collect();
        let started = std::time::Instant::now();
        let mut scanner = Scanner::default();
        let mut out = 0usize;
        for chunk in &chunks {
            out += scanner.push(&redactor.exact, chunk).len();
        }
        out += scanner.finish(&redactor.exact).len();
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "scrubbed {} bytes of {line:?} at {:.0} MB/s",
            text.len(),
            text.len() as f64 / seconds / 1e6
        );
        assert_eq!(out, text.len() - secret.len() + REDACTED.len());
    }
}
