//! One decoding of the scanned stream (see `scan.rs`): raw, percent, JSON, or JSON then percent.
//! A view decodes as bytes arrive, keeps the decoded tail that may still begin a match with a map
//! back to raw stream offsets, and reports the raw span of every match.

use super::scan::{Set, plus_to_space};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Decoding {
    Raw,
    Percent,
    Json,
    JsonPercent,
}

impl Decoding {
    pub(super) fn percent(self) -> bool {
        matches!(self, Decoding::Percent | Decoding::JsonPercent)
    }

    fn json(self) -> bool {
        matches!(self, Decoding::Json | Decoding::JsonPercent)
    }

    /// Where the next escape may start in `bytes`.
    fn next_escape(self, bytes: &[u8]) -> Option<usize> {
        match self {
            Decoding::Raw => None,
            Decoding::Percent => memchr::memchr(b'%', bytes),
            Decoding::Json => memchr::memchr(b'\\', bytes),
            Decoding::JsonPercent => memchr::memchr2(b'%', b'\\', bytes),
        }
    }
}

/// A run of decoded bytes and the raw bytes it came from: either the same bytes one for one, or
/// one escape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Segment {
    /// First decoded byte, an index into the view's buffer.
    decoded: usize,
    /// First raw byte, an offset in the whole stream.
    raw: u64,
    decoded_len: usize,
    raw_len: u64,
    literal: bool,
}

/// What the bytes of an escape seen so far amount to.
enum Step {
    /// Not yet known: more bytes needed.
    More,
    /// Not an escape: the first byte stands for itself.
    Literal,
    /// An escape of `raw_len` bytes meaning `bytes[..len]`.
    Decoded { bytes: [u8; 4], len: usize, raw_len: usize },
}

fn hex_value(b: u8) -> Option<u32> {
    (b as char).to_digit(16)
}

fn hex4(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0, |n, &b| n * 16 + hex_value(b).unwrap_or(0))
}

fn decoded_char(c: char, raw_len: usize) -> Step {
    let mut bytes = [0u8; 4];
    let len = c.encode_utf8(&mut bytes).len();
    Step::Decoded { bytes, len, raw_len }
}

fn decoded_byte(b: u8, raw_len: usize) -> Step {
    Step::Decoded {
        bytes: [b, 0, 0, 0],
        len: 1,
        raw_len,
    }
}

/// Reads the JSON escape in `p` (which starts with `\`). At the end of the stream (`last`), an
/// escape still waiting for bytes is read as far as it goes.
fn classify(p: &[u8], last: bool) -> Step {
    let all_hex = |bytes: &[u8]| bytes.iter().all(|&b| hex_value(b).is_some());
    let Some(&kind) = p.get(1) else {
        return if last { Step::Literal } else { Step::More };
    };
    match kind {
        b'/' | b'\\' | b'"' => decoded_byte(kind, 2),
        b'b' => decoded_byte(0x08, 2),
        b'f' => decoded_byte(0x0c, 2),
        b'n' => decoded_byte(b'\n', 2),
        b'r' => decoded_byte(b'\r', 2),
        b't' => decoded_byte(b'\t', 2),
        b'u' => {
            if !all_hex(&p[2..p.len().min(6)]) {
                return Step::Literal;
            }
            if p.len() < 6 {
                return if last { Step::Literal } else { Step::More };
            }
            let unit = hex4(&p[2..6]);
            let lone = decoded_char(char::REPLACEMENT_CHARACTER, 6);
            if (0xDC00..0xE000).contains(&unit) {
                return lone;
            }
            if !(0xD800..0xDC00).contains(&unit) {
                return decoded_char(char::from_u32(unit).unwrap_or(char::REPLACEMENT_CHARACTER), 6);
            }
            // A high surrogate: the pair's low half must follow as `\uDC00`..`\uDFFF`.
            if p.get(6).is_some_and(|&b| b != b'\\')
                || p.get(7).is_some_and(|&b| b != b'u')
                || !all_hex(&p[p.len().min(8)..p.len().min(12)])
            {
                return lone;
            }
            if p.len() < 12 {
                return if last { lone } else { Step::More };
            }
            let low = hex4(&p[8..12]);
            if !(0xDC00..0xE000).contains(&low) {
                return lone;
            }
            let c = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00);
            decoded_char(char::from_u32(c).unwrap_or(char::REPLACEMENT_CHARACTER), 12)
        }
        _ => Step::Literal,
    }
}

/// One decoding of the stream, holding only the decoded tail that may still begin a match.
pub(super) struct View {
    pub(super) decoding: Decoding,
    pub(super) decoded: Vec<u8>,
    pub(super) segments: Vec<Segment>,
    /// A JSON escape whose meaning needs more bytes, and where it starts in the stream.
    pending: [u8; 12],
    pending_len: usize,
    pending_at: u64,
    /// The units (byte, stream offset, raw length, literal) of a percent escape begun: `%` and
    /// up to one hex digit, each raw or itself JSON-escaped.
    percent: [(u8, u64, u64, bool); 2],
    percent_len: usize,
    /// How many raw bytes were fed.
    pub(super) fed: u64,
}

impl View {
    pub(super) fn new(decoding: Decoding) -> View {
        View {
            decoding,
            decoded: Vec::new(),
            segments: Vec::new(),
            pending: [0; 12],
            pending_len: 0,
            pending_at: 0,
            percent: [(0, 0, 0, false); 2],
            percent_len: 0,
            fed: 0,
        }
    }

    fn literal(&mut self, bytes: &[u8], at: u64) {
        let start = self.decoded.len();
        self.decoded.extend_from_slice(bytes);
        if self.decoding.percent() {
            for b in &mut self.decoded[start..] {
                *b = plus_to_space(*b);
            }
        }
        let len = bytes.len();
        match self.segments.last_mut() {
            Some(last) if last.literal && last.raw + last.raw_len == at => {
                last.decoded_len += len;
                last.raw_len += len as u64;
            }
            _ => self.segments.push(Segment {
                decoded: start,
                raw: at,
                decoded_len: len,
                raw_len: len as u64,
                literal: true,
            }),
        }
    }

    fn escape(&mut self, bytes: &[u8], at: u64, raw_len: u64) {
        let start = self.decoded.len();
        self.decoded.extend(
            bytes
                .iter()
                .map(|&b| if self.decoding.percent() { plus_to_space(b) } else { b }),
        );
        self.segments.push(Segment {
            decoded: start,
            raw: at,
            decoded_len: bytes.len(),
            raw_len,
            literal: false,
        });
    }

    /// Decodes `chunk`, which starts at stream offset `at`.
    pub(super) fn feed(&mut self, chunk: &[u8], at: u64) {
        let mut i = 0;
        while i < chunk.len() {
            let b = chunk[i];
            if self.pending_len > 0 {
                self.pending[self.pending_len] = b;
                self.pending_len += 1;
                i += 1;
                self.resolve(false);
                continue;
            }
            if self.percent_len == 0 {
                let rest = &chunk[i..];
                let run = self.decoding.next_escape(rest).unwrap_or(rest.len());
                if run > 0 {
                    self.literal(&rest[..run], at + i as u64);
                    i += run;
                    continue;
                }
            }
            if b == b'\\' && self.decoding.json() {
                self.pending[0] = b;
                self.pending_len = 1;
                self.pending_at = at + i as u64;
            } else {
                self.unit(&[b], at + i as u64, 1, true);
            }
            i += 1;
        }
    }

    /// Reads the pending JSON escape as far as its bytes allow; bytes it does not use are read
    /// again.
    fn resolve(&mut self, last: bool) {
        let pending = self.pending;
        let len = self.pending_len;
        let at = self.pending_at;
        self.pending_len = 0;
        let used = match classify(&pending[..len], last) {
            Step::More => {
                self.pending_len = len;
                return;
            }
            Step::Literal => {
                self.unit(&pending[..1], at, 1, true);
                1
            }
            Step::Decoded {
                bytes,
                len: decoded_len,
                raw_len,
            } => {
                self.unit(&bytes[..decoded_len], at, raw_len as u64, false);
                raw_len
            }
        };
        if used < len {
            self.feed(&pending[used..len], at + used as u64);
        }
    }

    /// Takes one decoded unit (one raw byte, or what one JSON escape means) through the percent
    /// layer: a client may JSON-decode and then percent-decode, so `\u0025\u0034\u0031` is `A`.
    fn unit(&mut self, bytes: &[u8], at: u64, raw_len: u64, literal: bool) {
        if !self.decoding.percent() {
            return self.output(bytes, at, raw_len, literal);
        }
        if self.percent_len > 0 {
            if let [digit] = bytes
                && digit.is_ascii_hexdigit()
            {
                if self.percent_len == 2 {
                    let (_, start, _, _) = self.percent[0];
                    let value = hex4(&[self.percent[1].0, *digit]) as u8;
                    self.percent_len = 0;
                    return self.output(&[value], start, at + raw_len - start, false);
                }
                self.percent[1] = (*digit, at, raw_len, literal);
                self.percent_len = 2;
                return;
            }
            self.flush_percent();
        }
        if bytes == b"%" {
            self.percent[0] = (b'%', at, raw_len, literal);
            self.percent_len = 1;
            return;
        }
        self.output(bytes, at, raw_len, literal)
    }

    /// A begun percent escape that will not complete: its units stand for themselves.
    fn flush_percent(&mut self) {
        let units = self.percent;
        let len = self.percent_len;
        self.percent_len = 0;
        for (byte, at, raw_len, literal) in &units[..len] {
            self.output(&[*byte], *at, *raw_len, *literal);
        }
    }

    fn output(&mut self, bytes: &[u8], at: u64, raw_len: u64, literal: bool) {
        if literal {
            self.literal(bytes, at)
        } else {
            self.escape(bytes, at, raw_len)
        }
    }

    /// Ends the stream: whatever escape is pending is read as far as it goes.
    pub(super) fn finish(&mut self) {
        while self.pending_len > 0 {
            self.resolve(true);
        }
        self.flush_percent();
    }

    /// Whether this view would decode what comes next as `other` does: same tail, nothing pending.
    pub(super) fn same_state(&self, other: &View) -> bool {
        self.pending_len == 0
            && self.percent_len == 0
            && other.pending_len == 0
            && other.percent_len == 0
            && self.decoded == other.decoded
            && self.segments == other.segments
    }

    /// Takes `other`'s decoding state (see [`Scanner::push`]).
    pub(super) fn copy_from(&mut self, other: &View) {
        self.decoded.clone_from(&other.decoded);
        self.segments.clone_from(&other.segments);
        self.pending = other.pending;
        self.pending_len = other.pending_len;
        self.pending_at = other.pending_at;
        self.percent = other.percent;
        self.percent_len = other.percent_len;
        self.fed = other.fed;
    }

    /// Whether this view holds nothing: no decoded tail, no escape pending.
    pub(super) fn at_rest(&self) -> bool {
        self.decoded.is_empty() && self.segments.is_empty() && self.pending_len == 0 && self.percent_len == 0
    }

    /// Where this view's undecided raw bytes begin, if any.
    pub(super) fn undecided(&self) -> Option<u64> {
        let json = (self.pending_len > 0).then_some(self.pending_at);
        let percent = (self.percent_len > 0).then_some(self.percent[0].1);
        json.into_iter().chain(percent).min()
    }

    fn segment(&self, index: usize) -> &Segment {
        let at = self.segments.partition_point(|s| s.decoded + s.decoded_len <= index);
        &self.segments[at]
    }

    /// The stream offset of the first raw byte behind decoded byte `index`.
    fn raw_start(&self, index: usize) -> u64 {
        let s = self.segment(index);
        if s.literal {
            s.raw + (index - s.decoded) as u64
        } else {
            s.raw
        }
    }

    /// The stream offset just past the raw bytes behind decoded byte `index`.
    fn raw_end(&self, index: usize) -> u64 {
        let s = self.segment(index);
        if s.literal {
            s.raw + (index - s.decoded) as u64 + 1
        } else {
            s.raw + s.raw_len
        }
    }

    /// Adds the raw span of every match in the decoded buffer to `spans`.
    pub(super) fn matches(&self, set: &Set, spans: &mut Vec<(u64, u64)>) {
        for found in set.automaton.find_overlapping_iter(&self.decoded[..]) {
            spans.push((self.raw_start(found.start()), self.raw_end(found.end() - 1)));
        }
    }

    /// Drops the decoded bytes that can no longer begin a match, and returns the stream offset
    /// from which raw bytes must still be held back for this view.
    pub(super) fn settle(&mut self, set: &Set) -> u64 {
        let from = self.decoded.len().saturating_sub(set.longest - 1);
        let partial = (from..self.decoded.len())
            .find(|&q| set.first[self.decoded[q] as usize] && set.starts_pattern(&self.decoded[q..]));
        let Some(mut keep) = partial else {
            let hold = self.undecided().unwrap_or(self.fed);
            self.decoded.clear();
            self.segments.clear();
            return hold;
        };
        let first = self.segments.partition_point(|s| s.decoded + s.decoded_len <= keep);
        // A match never starts inside an escape's UTF-8 bytes; if one seemed to, keep the escape.
        if !self.segments[first].literal {
            keep = self.segments[first].decoded;
        }
        let hold = self.raw_start(keep);
        self.segments.drain(..first);
        if let Some(s) = self.segments.first_mut()
            && s.decoded < keep
        {
            let cut = keep - s.decoded;
            s.raw += cut as u64;
            s.raw_len -= cut as u64;
            s.decoded_len -= cut;
            s.decoded = keep;
        }
        for s in &mut self.segments {
            s.decoded -= keep;
        }
        self.decoded.drain(..keep);
        hold
    }
}
