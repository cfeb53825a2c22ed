//! Response scrubbing: an upstream that echoes a value the route injected (a debug endpoint, an
//! error page quoting the request, a misconfigured API) has it replaced by `[REDACTED]` in the
//! response headers and body before the client sees it.
//!
//! The body is scrubbed while it streams: an Aho-Corasick automaton over every form of every
//! injected secret (plain, URL-encoded, JSON-escaped, and `base64(user:secret)` for Basic auth)
//! runs over each chunk, and a chunk's tail that could be the start of a secret is held back
//! until the next chunk arrives, so a secret split across chunk boundaries is still found. Any
//! other byte goes out at once (an SSE event is not delayed), and nothing else is buffered. Scrubbing needs the plaintext, so scrubbing routes ask the upstream for
//! `Accept-Encoding: identity` and refuse an encoded answer (see [`check_encoding`]).
//! The automaton's pattern memory is not zeroized on drop; it lives for one response.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, header};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use crate::config::Route;
use crate::config::template::ValuePart;
use crate::http::body::{BoxError, ProxyBody};
use crate::http::error::ProxyError;

/// What a secret is replaced with.
pub const REDACTED: &[u8] = b"[REDACTED]";

/// Finds every injected value of one route in response bytes.
pub struct Redactor {
    automaton: AhoCorasick,
    /// The patterns again, to tell whether a chunk's tail may be the start of one.
    patterns: Vec<Zeroizing<Vec<u8>>>,
    longest: usize,
}

/// The redactors of one generation, by route, built once per set of secret values.
///
/// Building the automaton is the expensive part of scrubbing; a route's secrets only change when
/// a missing one arrives (a new `Arc` in the secret cache), so the key is the identity of the
/// value `Arc`s the request read.
#[derive(Default)]
pub struct Redactors {
    by_route: std::sync::Mutex<std::collections::HashMap<String, CachedRedactor>>,
}

/// The identities of the secret values a redactor was built from, and the redactor.
type CachedRedactor = (Vec<usize>, Option<Arc<Redactor>>);

impl std::fmt::Debug for Redactors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Redactors([REDACTED])")
    }
}

impl Redactors {
    /// The route's redactor for these secret values, built on first use.
    pub fn get(
        &self,
        route: &Route,
        values: &[(&str, Arc<SecretString>)],
        secret: impl Fn(&str) -> SecretString,
    ) -> Option<Arc<Redactor>> {
        let identity: Vec<usize> = values.iter().map(|(_, value)| Arc::as_ptr(value) as usize).collect();
        let mut by_route = self.by_route.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((known, redactor)) = by_route.get(&route.name)
            && *known == identity
        {
            return redactor.clone();
        }
        let redactor = Redactor::for_route(route, secret).map(Arc::new);
        by_route.insert(route.name.clone(), (identity, redactor.clone()));
        redactor
    }
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Redactor([REDACTED])")
    }
}

impl Redactor {
    /// The redactor for a route's injected secrets; `None` when the route injects none.
    pub fn for_route(route: &Route, secret: impl Fn(&str) -> SecretString) -> Option<Redactor> {
        Redactor::for_route_and(route, secret, &[])
    }

    /// Like [`Redactor::for_route`], also finding `extra` values the route injects that are not
    /// named secrets (its OAuth2 token).
    pub fn for_route_and(
        route: &Route,
        secret: impl Fn(&str) -> SecretString,
        extra: &[&SecretString],
    ) -> Option<Redactor> {
        let mut patterns: Vec<Zeroizing<Vec<u8>>> = Vec::new();
        let mut add = |value: &str| {
            if value.is_empty() {
                return;
            }
            let forms = [
                value.to_string(),
                url::form_urlencoded::byte_serialize(value.as_bytes()).collect(),
                percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC).to_string(),
                serde_json::to_string(value)
                    .map(|quoted| quoted[1..quoted.len() - 1].to_string())
                    .unwrap_or_default(),
            ];
            for form in forms {
                let form = Zeroizing::new(form.into_bytes());
                if !form.is_empty() && !patterns.contains(&form) {
                    patterns.push(form);
                }
            }
        };
        for name in &route.secrets {
            add(secret(name).expose_secret());
        }
        for value in extra {
            add(value.expose_secret());
        }
        for (_, template) in &route.headers {
            for part in &template.parts {
                if let ValuePart::Basic { username, secret: name } = part {
                    let pair = Zeroizing::new(format!("{username}:{}", secret(name).expose_secret()));
                    add(&base64::engine::general_purpose::STANDARD.encode(pair.as_bytes()));
                }
            }
        }
        Redactor::new(patterns)
    }

    fn new(patterns: Vec<Zeroizing<Vec<u8>>>) -> Option<Redactor> {
        let longest = patterns.iter().map(|p| p.len()).max()?;
        let automaton = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(patterns.iter().map(|p| p.as_slice()))
            .ok()?;
        Some(Redactor {
            automaton,
            patterns,
            longest,
        })
    }

    /// The first position in `from..to` where the rest of `bytes` is a proper prefix of a
    /// pattern, i.e. where a secret may begin that only the next chunk completes.
    fn partial(&self, bytes: &[u8], from: usize, to: usize) -> Option<usize> {
        let from = from.max(bytes.len().saturating_sub(self.longest - 1));
        (from..to).find(|&at| {
            let rest = &bytes[at..];
            self.patterns
                .iter()
                .any(|p| p.len() > rest.len() && p.starts_with(rest))
        })
    }

    fn replace(&self, bytes: &[u8]) -> Vec<u8> {
        self.automaton
            .replace_all_bytes(bytes, &vec![REDACTED; self.automaton.patterns_len()])
    }

    /// `text` with every injected value (in each encoding) replaced by `[REDACTED]`.
    pub fn text(&self, text: &str) -> String {
        String::from_utf8_lossy(&self.replace(text.as_bytes())).into_owned()
    }

    /// Scrubs every header value in place.
    pub fn headers(&self, headers: &mut HeaderMap) {
        for value in headers.values_mut() {
            if self.automaton.is_match(value.as_bytes()) {
                let replaced = self.replace(value.as_bytes());
                *value = HeaderValue::from_bytes(&replaced).unwrap_or(HeaderValue::from_static("[REDACTED]"));
            }
        }
    }

    /// Wraps a response body so it comes out scrubbed.
    pub fn body(self: Arc<Self>, body: ProxyBody) -> ProxyBody {
        Scrubbed {
            inner: body,
            redactor: self,
            held: BytesMut::new(),
            trailers: None,
            done: false,
        }
        .boxed_unsync()
    }
}

/// Refuses an encoded upstream answer on a scrubbing route: a compressed secret cannot be found.
pub fn check_encoding(headers: &HeaderMap) -> Result<(), ProxyError> {
    match headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim())
    {
        None | Some("") => Ok(()),
        Some(encoding) if encoding.eq_ignore_ascii_case("identity") => Ok(()),
        Some(_) => Err(ProxyError::Unscrubbable),
    }
}

struct Scrubbed {
    inner: ProxyBody,
    redactor: Arc<Redactor>,
    /// The unsent tail that may be the start of a secret.
    held: BytesMut,
    /// Trailers that arrived while held bytes still had to go out.
    trailers: Option<HeaderMap>,
    done: bool,
}

impl Scrubbed {
    /// Scrubs `held` and returns what can be sent; unless `last`, keeps the tail from the
    /// first place where more data could still make (or lengthen) a match.
    fn release(&mut self, last: bool) -> Bytes {
        let held = &self.held[..];
        let redactor = &self.redactor;
        let mut out = Vec::with_capacity(held.len());
        let mut at = 0;
        let mut cut = None;
        for found in redactor.automaton.find_iter(held) {
            if !last && let Some(pending) = redactor.partial(held, at, found.start() + 1) {
                cut = Some(pending);
                break;
            }
            out.extend_from_slice(&held[at..found.start()]);
            out.extend_from_slice(REDACTED);
            at = found.end();
        }
        let cut = match cut {
            Some(cut) => cut,
            None if last => held.len(),
            None => redactor.partial(held, at, held.len()).unwrap_or(held.len()),
        };
        out.extend_from_slice(&held[at..cut]);
        let _ = self.held.split_to(cut);
        Bytes::from(out)
    }
}

impl Body for Scrubbed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if self.done {
                return Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        self.held.extend_from_slice(&data);
                        let out = self.release(false);
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    Err(frame) => {
                        if let Ok(mut trailers) = frame.into_trailers() {
                            self.redactor.headers(&mut trailers);
                            self.trailers = Some(trailers);
                        }
                        self.done = true;
                        let out = self.release(true);
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                },
                Poll::Ready(None) => {
                    self.done = true;
                    let out = self.release(true);
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::stream;
    use http_body_util::StreamBody;
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn redactors_are_built_once_per_set_of_secret_values() {
        let config = crate::config::Config::parse(
            "[secrets.k]\nenv = \"K\"\n[routes.r]\npath = \"/r\"\nupstream = \"https://x.example/\"\nauth = { bearer = \"k\" }\n",
            "t",
        )
        .unwrap();
        let route = &config.routes[0];
        let cache = Redactors::default();
        let first = Arc::new(SecretString::from("value-one".to_string()));
        let values = [("k", first.clone())];
        let a = cache.get(route, &values, |_| SecretString::clone(&first)).unwrap();
        let b = cache
            .get(route, &values, |_| panic!("a cached redactor reads no secret"))
            .unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        // A new value (a secret that arrived later) gets a new redactor that knows it.
        let second = Arc::new(SecretString::from("value-two".to_string()));
        let c = cache
            .get(route, &[("k", second.clone())], |_| SecretString::clone(&second))
            .unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
        let mut headers = HeaderMap::new();
        headers.insert("x-echo", HeaderValue::from_static("value-two"));
        c.headers(&mut headers);
        assert_eq!(headers["x-echo"], "[REDACTED]");
        assert!(!format!("{cache:?}{c:?}").contains("value"));
    }

    fn redactor(secrets: &[&str]) -> Arc<Redactor> {
        let patterns: Vec<_> = secrets.iter().map(|s| Zeroizing::new(s.as_bytes().to_vec())).collect();
        Arc::new(Redactor::new(patterns).unwrap())
    }

    async fn scrub_chunks(redactor: Arc<Redactor>, chunks: Vec<Vec<u8>>) -> Vec<u8> {
        let frames = stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, BoxError>(Frame::data(Bytes::from(c)))),
        );
        let body = redactor.body(StreamBody::new(frames).boxed_unsync());
        body.collect().await.unwrap().to_bytes().to_vec()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

        /// However the body is split into chunks, the output equals scrubbing it whole.
        #[test]
        fn chunk_boundaries_do_not_matter(
            filler in prop::collection::vec(prop::sample::select(vec!["a", "sk_", "sk_live", "x\n", "sk_live_42", "42"]), 0..20),
            cuts in prop::collection::vec(0usize..200, 0..8),
        ) {
            let text = filler.concat().into_bytes();
            let redactor = redactor(&["sk_live_42", "live_4"]);
            let whole = redactor.replace(&text);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(text.len())).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut at = 0;
            for cut in cuts.into_iter().chain([text.len()]) {
                chunks.push(text[at..cut].to_vec());
                at = cut;
            }
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let streamed = runtime.block_on(scrub_chunks(redactor, chunks));
            prop_assert_eq!(streamed, whole);
        }
    }

    #[tokio::test]
    async fn secret_split_one_byte_per_chunk_is_redacted() {
        let secret = "ghp_SplitAcrossChunks";
        let text = format!("token={secret}; again {secret}");
        let chunks = text.bytes().map(|b| vec![b]).collect();
        let out = scrub_chunks(redactor(&[secret]), chunks).await;
        assert_eq!(String::from_utf8(out).unwrap(), "token=[REDACTED]; again [REDACTED]");
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

    #[test]
    fn headers_and_encoding() {
        let mut headers = HeaderMap::new();
        headers.insert("x-echo", "Bearer s3cret!".parse().unwrap());
        headers.insert(header::CONTENT_ENCODING, "gzip".parse().unwrap());
        redactor(&["s3cret!"]).headers(&mut headers);
        assert_eq!(headers["x-echo"], "Bearer [REDACTED]");
        assert!(check_encoding(&headers).is_err());
        headers.remove(header::CONTENT_ENCODING);
        assert!(check_encoding(&headers).is_ok());
    }
}
