//! The streaming scanner: finds every form of a secret in a byte stream that a client could decode
//! back to it, and replaces it with `[REDACTED]`.
//!
//! Rather than a list of pre-encoded patterns, the raw stream is read through four *views*
//! (`view.rs`), each a decoder a client might apply: none (raw), percent-decoding (`%XX` in either hex case, any mix
//! with raw characters, `+` and space counted as one), JSON string unescaping (`\/`, `\"`, `\\`,
//! `\n`..., `\uXXXX` in any case, surrogate pairs), and JSON then percent. Each view decodes as it
//! goes into a small buffer with a map back to raw positions, an Aho-Corasick automaton of the
//! secret's whole-value forms (plain, base64 cores, hex; see `forms.rs`) runs over the decoded
//! bytes, and each match becomes a raw span to redact. Several views are needed because the
//! decodings disagree: `%41` is three characters to a raw reader, and `\u0041` is `A` only to a
//! JSON reader.
//!
//! Streaming: each view keeps only the decoded tail that is still a proper prefix of a pattern
//! (or an escape not yet complete), and the scanner sends every raw byte before the earliest such
//! tail at once. So an SSE event goes out when it arrives, a secret split across chunks is still
//! found, and memory stays bounded by the longest pattern, whatever the stream's length.

use aho_corasick::{AhoCorasick, MatchKind};
use bytes::{Bytes, BytesMut};
use zeroize::Zeroizing;

use super::view::{Decoding, View};

/// What a secret is replaced with.
pub const REDACTED: &[u8] = b"[REDACTED]";

/// The patterns, spelt for the views that read them.
pub struct Engine {
    /// For the raw and JSON views.
    raw: Set,
    /// For the percent views: `+` is written as a space, since form decoding reads it so.
    plus: Set,
    /// Whether both sets are the same (no pattern holds `+` or a space).
    same_sets: bool,
    /// The shortest pattern's length.
    shortest: usize,
}

pub(super) struct Set {
    pub(super) automaton: AhoCorasick,
    patterns: Vec<Zeroizing<Vec<u8>>>,
    /// Whether a pattern starts with this byte: most tail positions are ruled out by one lookup.
    pub(super) first: [bool; 256],
    /// The first two bytes of every pattern (in each case, when caseless) as a bit set indexed by
    /// `first << 8 | second`: bytes in which no such pair occurs hold no match and end in no
    /// proper prefix longer than one byte (see [`Set::pair_free`]). `None` when a pattern is a
    /// single byte.
    pairs: Option<Box<[u64; 1024]>>,
    pub(super) longest: usize,
    caseless: bool,
}

impl Set {
    fn new(patterns: Vec<Zeroizing<Vec<u8>>>, caseless: bool) -> Option<Set> {
        let longest = patterns.iter().map(|p| p.len()).max()?;
        let automaton = AhoCorasick::builder()
            .match_kind(MatchKind::Standard)
            .ascii_case_insensitive(caseless)
            .build(patterns.iter().map(|p| p.as_slice()))
            .ok()?;
        let cases = |byte: u8| {
            if caseless {
                [byte.to_ascii_lowercase(), byte.to_ascii_uppercase()]
            } else {
                [byte, byte]
            }
        };
        let mut first = [false; 256];
        let mut pairs = Box::new([0u64; 1024]);
        let mut every_pattern_has_a_pair = true;
        for pattern in &patterns {
            for a in cases(pattern[0]) {
                first[a as usize] = true;
                match pattern.get(1) {
                    Some(&second) => {
                        for b in cases(second) {
                            let index = (a as usize) << 8 | b as usize;
                            pairs[index >> 6] |= 1 << (index & 63);
                        }
                    }
                    None => every_pattern_has_a_pair = false,
                }
            }
        }
        Some(Set {
            automaton,
            patterns,
            first,
            pairs: every_pattern_has_a_pair.then_some(pairs),
            longest,
            caseless,
        })
    }

    /// Whether no two adjacent bytes of `bytes` begin a pattern (false without the pair set, and
    /// for more than [`PAIR_SCAN_MAX`] bytes). Then no pattern occurs in them, and only their last
    /// byte can begin a proper prefix. One table lookup per byte (two where a pattern could start)
    /// is cheaper than the automaton's search on the short headers and bodies most answers have;
    /// longer text goes to the automaton, whose vectorised prefilter wins there.
    fn pair_free(&self, bytes: &[u8]) -> bool {
        let Some(pairs) = &self.pairs else {
            return false;
        };
        if bytes.len() > PAIR_SCAN_MAX {
            return false;
        }
        let Some((&start, rest)) = bytes.split_first() else {
            return true;
        };
        let mut previous = start;
        for &byte in rest {
            if self.first[previous as usize] {
                let index = (previous as usize) << 8 | byte as usize;
                if pairs[index >> 6] & (1 << (index & 63)) != 0 {
                    return false;
                }
            }
            previous = byte;
        }
        true
    }

    /// Whether `bytes` ends in a proper prefix of a pattern (as [`View::settle`] looks for one).
    pub(super) fn ends_in_prefix(&self, bytes: &[u8]) -> bool {
        let from = bytes.len().saturating_sub(self.longest - 1);
        (from..bytes.len()).any(|q| self.first[bytes[q] as usize] && self.starts_pattern(&bytes[q..]))
    }

    /// Whether `tail` is a proper prefix of a pattern: more bytes could complete a match.
    pub(super) fn starts_pattern(&self, tail: &[u8]) -> bool {
        self.patterns.iter().any(|p| {
            p.len() > tail.len()
                && if self.caseless {
                    p[..tail.len()].eq_ignore_ascii_case(tail)
                } else {
                    p.starts_with(tail)
                }
        })
    }
}

/// The longest text [`Set::pair_free`] scans.
const PAIR_SCAN_MAX: usize = 512;

impl Engine {
    /// An engine for these forms; `None` when there are none. `caseless` matches ASCII letters in
    /// either case (for header names, which HTTP lower-cases).
    pub fn new(forms: &[Zeroizing<Vec<u8>>], caseless: bool) -> Option<Engine> {
        let raw: Vec<_> = forms.iter().filter(|f| !f.is_empty()).cloned().collect();
        let plus: Vec<_> = raw
            .iter()
            .map(|f| Zeroizing::new(f.iter().map(|&b| plus_to_space(b)).collect::<Vec<u8>>()))
            .collect();
        let same_sets = !raw.iter().any(|f| f.contains(&b'+') || f.contains(&b' '));
        let shortest = raw.iter().map(|f| f.len()).min()?;
        Some(Engine {
            shortest,
            raw: Set::new(raw, caseless)?,
            plus: Set::new(plus, caseless)?,
            same_sets,
        })
    }

    fn set(&self, decoding: Decoding) -> &Set {
        if decoding.percent() { &self.plus } else { &self.raw }
    }

    /// True when `bytes` certainly holds no form of a secret: too short for any, or nothing a view
    /// would decode and no pattern found as they are. No allocation.
    pub fn clean(&self, bytes: &[u8]) -> bool {
        // Decoding never lengthens: bytes shorter than every pattern cannot hold one in any view
        // (most header names and many values).
        bytes.len() < self.shortest
            || self.undecoded(bytes, |set| set.pair_free(bytes) || !set.automaton.is_match(bytes))
    }

    /// True when every view would read `bytes` as they are (nothing to decode), find no pattern in
    /// them and keep no tail: what a scanner at rest may pass on untouched.
    pub(super) fn passes(&self, bytes: &[u8]) -> bool {
        self.undecoded(bytes, |set| {
            if set.pair_free(bytes) {
                bytes.last().is_none_or(|&last| !set.first[last as usize])
            } else {
                !set.automaton.is_match(bytes) && !set.ends_in_prefix(bytes)
            }
        })
    }

    /// Whether no view decodes anything in `bytes` (no `%` or `\\`; no `+`, which the percent
    /// views read as a space, when that matters to the patterns) and `plain` holds for each set
    /// the views read them with. A space needs no decoding: with patterns that hold `+` or a space,
    /// the percent views' set is checked as well as the raw one.
    fn undecoded(&self, bytes: &[u8], plain: impl Fn(&Set) -> bool) -> bool {
        memchr::memchr2(b'%', b'\\', bytes).is_none()
            && plain(&self.raw)
            && (self.same_sets || memchr::memchr(b'+', bytes).is_none() && plain(&self.plus))
    }

    /// `bytes` scrubbed whole, and whether anything was redacted.
    pub fn scrub(&self, bytes: &[u8]) -> (Vec<u8>, bool) {
        if self.clean(bytes) {
            return (bytes.to_vec(), false);
        }
        let mut scanner = Scanner::default();
        let mut out = scanner.scan(self, bytes).to_vec();
        out.extend_from_slice(&scanner.finish(self));
        (out, scanner.redacted)
    }
}

pub(super) fn plus_to_space(b: u8) -> u8 {
    if b == b'+' { b' ' } else { b }
}

/// Scrubs one stream: raw bytes in, scrubbed bytes out, holding back only what may still turn
/// out to be part of a secret.
pub struct Scanner {
    /// Made on the first chunk that needs them (a body whose chunks all pass untouched never
    /// does).
    views: Option<Box<[View; 4]>>,
    /// Raw bytes not yet sent; the first is at stream offset `base`.
    held: BytesMut,
    base: u64,
    /// Raw spans to redact that are not sent yet.
    spans: Vec<(u64, u64)>,
    /// Whether anything was redacted so far.
    pub redacted: bool,
    /// Whether a view may copy an equal one instead of scanning (off in tests, to compare).
    pub share: bool,
}

impl Default for Scanner {
    fn default() -> Scanner {
        Scanner {
            views: None,
            held: BytesMut::new(),
            base: 0,
            spans: Vec::new(),
            redacted: false,
            share: true,
        }
    }
}

impl Scanner {
    /// Takes the next chunk; returns what may be sent now (possibly nothing).
    pub fn push(&mut self, engine: &Engine, chunk: &Bytes) -> Bytes {
        // Nothing held, and nothing in this chunk that a view would decode, that matches, or that
        // the next chunk could complete: every view would pass it through unchanged and keep
        // nothing, so it goes out as it is, uncopied (most chunks of most bodies).
        if self.at_rest() && engine.passes(chunk) {
            let end = self.base + chunk.len() as u64;
            self.base = end;
            for view in self.views.iter_mut().flat_map(|views| views.iter_mut()) {
                view.fed = end;
            }
            return chunk.clone();
        }
        self.scan(engine, chunk)
    }

    /// Whether no byte is held back and no view has a tail or a pending escape.
    fn at_rest(&self) -> bool {
        self.held.is_empty()
            && self.spans.is_empty()
            && self.views.as_ref().is_none_or(|views| views.iter().all(View::at_rest))
    }

    /// [`Scanner::push`] through every view.
    pub(super) fn scan(&mut self, engine: &Engine, chunk: &[u8]) -> Bytes {
        let at = self.base + self.held.len() as u64;
        self.held.extend_from_slice(chunk);
        let end = at + chunk.len() as u64;
        let mut hold = end;
        // Views start where scanning starts: everything before went out untouched at rest.
        let views = self.views.get_or_insert_with(|| {
            Box::new(
                [Decoding::Raw, Decoding::Percent, Decoding::Json, Decoding::JsonPercent].map(|decoding| {
                    let mut view = View::new(decoding);
                    view.fed = at;
                    view
                }),
            )
        });
        // A view whose state equals an earlier view's, and that sees none of its escapes in this
        // chunk, would decode and match exactly as that one does: it takes that one's result
        // instead of scanning again (most chunks of most bodies have no escapes at all).
        let twins = if self.share {
            Scanner::twins(views, engine, chunk)
        } else {
            [None; 4]
        };
        let mut holds = [end; 4];
        for i in 0..views.len() {
            let (done, rest) = views.split_at_mut(i);
            let view = &mut rest[0];
            if let Some(twin) = twins[i] {
                view.copy_from(&done[twin]);
                holds[i] = holds[twin];
            } else {
                let set = engine.set(view.decoding);
                view.feed(chunk, at);
                view.fed = end;
                view.matches(set, &mut self.spans);
                holds[i] = view.settle(set);
            }
            hold = hold.min(holds[i]);
        }
        self.release(hold)
    }

    /// For each view, an earlier view it may copy for this chunk (see [`Scanner::push`]).
    fn twins(views: &[View; 4], engine: &Engine, chunk: &[u8]) -> [Option<usize>; 4] {
        let [raw, percent, json, json_percent] = views;
        let no_backslash = memchr::memchr(b'\\', chunk).is_none();
        // Percent decoding changes nothing without `%`; its `+`/space spelling matters only if the
        // patterns or the text hold one.
        let percent_like_raw = memchr::memchr(b'%', chunk).is_none()
            && (engine.same_sets
                || memchr::memchr2(b'+', b' ', chunk).is_none()
                    && memchr::memchr2(b'+', b' ', &percent.decoded).is_none());
        [
            None,
            (percent_like_raw && percent.same_state(raw)).then_some(0),
            (no_backslash && json.same_state(raw)).then_some(0),
            (no_backslash && json_percent.same_state(percent)).then_some(1),
        ]
    }

    /// Ends the stream: returns everything still held, scrubbed.
    pub fn finish(&mut self, engine: &Engine) -> Bytes {
        if self.at_rest() {
            return Bytes::new();
        }
        for view in self.views.iter_mut().flat_map(|views| views.iter_mut()) {
            view.finish();
            view.matches(engine.set(view.decoding), &mut self.spans);
            view.decoded.clear();
            view.segments.clear();
        }
        self.release(self.base + self.held.len() as u64)
    }

    /// Sends the held bytes before `hold`, redacted.
    fn release(&mut self, hold: u64) -> Bytes {
        let base = self.base;
        let mut hold = hold.max(base);
        // Merge the spans; a span that reaches past `hold` is held back whole.
        self.spans.sort_unstable();
        let mut merged = 0;
        for read in 0..self.spans.len() {
            let (start, end) = self.spans[read];
            let start = start.max(base);
            if end <= start {
                continue;
            }
            if merged > 0 && start < self.spans[merged - 1].1 {
                let last = &mut self.spans[merged - 1].1;
                *last = (*last).max(end);
            } else {
                self.spans[merged] = (start, end);
                merged += 1;
            }
        }
        self.spans.truncate(merged);
        if let Some(&(start, _)) = self.spans.iter().find(|&&(start, end)| start < hold && end > hold) {
            hold = start;
        }
        let front = self.held.split_to((hold - base) as usize);
        self.base = hold;
        let within = self.spans.partition_point(|&(start, _)| start < hold);
        if within == 0 {
            return front.freeze();
        }
        self.redacted = true;
        let mut out = Vec::with_capacity(front.len() + within * REDACTED.len());
        let mut at = 0;
        for &(start, end) in &self.spans[..within] {
            out.extend_from_slice(&front[at..(start - base) as usize]);
            out.extend_from_slice(REDACTED);
            at = (end - base) as usize;
        }
        out.extend_from_slice(&front[at..]);
        self.spans.drain(..within);
        Bytes::from(out)
    }
}
