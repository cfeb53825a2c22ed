//! Injection: a route's header and query templates rendered with its secrets, and the client's
//! headers as they go upstream (hop-by-hop, withheld and stripped headers removed, injected ones
//! set last so a client can never override them).
//!
//! Rendered text that holds a secret lives in `Zeroizing` buffers and sensitive header values.

use std::sync::Arc;

use base64::Engine;
use http::{HeaderMap, HeaderValue};
use percent_encoding::percent_decode_str;
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use crate::configkit::RouteBase;
use crate::configkit::template::{ValuePart, ValueTemplate};

/// A rendered value template: the secret-bearing text is zeroized when dropped. The buffer is
/// sized up front so it never reallocates (which would leave an unzeroized copy behind).
pub fn render_value(template: &ValueTemplate, secret: impl Fn(&str) -> Arc<SecretString>) -> Zeroizing<String> {
    let size: usize = template
        .parts
        .iter()
        .map(|part| match part {
            ValuePart::Literal(literal) => literal.len(),
            ValuePart::Secret(name) => secret(name).expose_secret().len(),
            ValuePart::Basic { username, secret: name } => {
                (username.len() + secret(name).expose_secret().len()) * 4 / 3 + 8
            }
        })
        .sum();
    let mut text = Zeroizing::new(String::with_capacity(size));
    for part in &template.parts {
        match part {
            ValuePart::Literal(literal) => text.push_str(literal),
            ValuePart::Secret(name) => text.push_str(secret(name).expose_secret()),
            ValuePart::Basic { username, secret: name } => {
                let pair = Zeroizing::new(format!("{username}:{}", secret(name).expose_secret()));
                text.push_str(&base64::engine::general_purpose::STANDARD.encode(pair.as_bytes()));
            }
        }
    }
    text
}

/// A header value holding a secret: marked sensitive so hyper and h2 never index or log it.
pub fn sensitive_header(text: &str) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_str(text).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// The upstream query: the template's own query, then the client's, minus any parameter the
/// route injects, then the injected ones. Returns the real query and a loggable copy with the
/// injected values replaced by `[REDACTED]`.
pub fn build_query(
    template_query: Option<&str>,
    client_query: Option<&str>,
    injected: &[(String, Zeroizing<String>)],
) -> (Zeroizing<String>, String) {
    let mut real = Zeroizing::new(String::new());
    let mut logged = String::new();
    let mut push = |piece: &str, log_piece: &str| {
        if !real.is_empty() {
            real.push('&');
            logged.push('&');
        }
        real.push_str(piece);
        logged.push_str(log_piece);
    };
    for piece in template_query
        .into_iter()
        .chain(client_query)
        .flat_map(|q| q.split('&'))
    {
        if piece.is_empty() {
            continue;
        }
        let raw_name = piece.split_once('=').map_or(piece, |(name, _)| name);
        let name = percent_decode_str(&raw_name.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned();
        if injected.iter().any(|(injected_name, _)| *injected_name == name) {
            continue;
        }
        push(piece, piece);
    }
    for (name, value) in injected {
        let name: String = url::form_urlencoded::byte_serialize(name.as_bytes()).collect();
        let value = Zeroizing::new(url::form_urlencoded::byte_serialize(value.as_bytes()).collect::<String>());
        push(&format!("{name}={}", value.as_str()), &format!("{name}=[REDACTED]"));
    }
    (real, logged)
}

/// Client headers as they go upstream: hop-by-hop, withheld and `strip-headers` ones removed,
/// injected ones set.
pub fn upstream_headers(
    mut headers: HeaderMap,
    route: &RouteBase,
    injected: impl IntoIterator<Item = (http::HeaderName, HeaderValue)>,
) -> HeaderMap {
    use crate::http::headers::WITHHELD_FROM_UPSTREAM;
    crate::http::headers::strip_hop_by_hop(&mut headers);
    // The proxy does not implement 100-continue towards the upstream; the body is streamed. One
    // pass over the names finds which of these are present: only those are removed.
    let mut present = [false; WITHHELD_FROM_UPSTREAM.len() + 1];
    for name in headers.keys() {
        match WITHHELD_FROM_UPSTREAM.iter().position(|withheld| withheld == name) {
            Some(index) => present[index] = true,
            None => present[WITHHELD_FROM_UPSTREAM.len()] |= name == http::header::EXPECT,
        }
    }
    for (name, present) in WITHHELD_FROM_UPSTREAM.iter().zip(present) {
        if present && !route.forward_headers.contains(name) {
            headers.remove(name);
        }
    }
    if present[WITHHELD_FROM_UPSTREAM.len()] {
        headers.remove(http::header::EXPECT);
    }
    // Browser-only headers (the calling page, fetch metadata, client hints) stay behind.
    route.strip_headers.apply(&mut headers);
    for (name, value) in injected {
        // `insert` replaces every value the client sent under the name.
        headers.insert(name, value);
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injected_query_replaces_client_value() {
        let injected = vec![("key".to_string(), Zeroizing::new("s3cr&t".to_string()))];
        let (real, logged) = build_query(Some("v=1"), Some("key=mine&q=a%20b&k%65y=sneaky&&x"), &injected);
        assert_eq!(real.as_str(), "v=1&q=a%20b&x&key=s3cr%26t");
        assert_eq!(logged, "v=1&q=a%20b&x&key=[REDACTED]");
    }

    #[test]
    fn basic_auth_is_base64() {
        let template = ValueTemplate {
            parts: vec![
                ValuePart::Literal("Basic ".into()),
                ValuePart::Basic {
                    username: "me".into(),
                    secret: "pw".into(),
                },
            ],
        };
        let text = render_value(&template, |_| Arc::new(SecretString::from("pass".to_string())));
        assert_eq!(text.as_str(), "Basic bWU6cGFzcw==");
    }
}
