//! Signature schemes of inbound webhooks: GitHub, Stripe, Slack, Standard Webhooks and a generic
//! HMAC-SHA256 header, plus the replay memory of the timestamped ones.
//!
//! Pure functions of (headers, body, secret, now): no I/O, so every scheme is unit-tested here.
//! MACs are compared in constant time (the `hmac` crate's `verify_slice`, backed by `subtle`).
//! For the timestamped schemes (Stripe, Slack, Standard Webhooks) a timestamp outside the
//! tolerance is refused, and a signature already accepted within it is refused as a replay.
//! A [`Rejection`] carries fixed text only: never the secret, never the expected MAC.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use http::{HeaderMap, HeaderName};
use sha2::Sha256;

/// The replay memory never holds more signatures than this.
const MAX_REMEMBERED: usize = 100_000;

/// How a provider signs its requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scheme {
    /// `X-Hub-Signature-256: sha256=<hex HMAC(body)>`.
    GitHub,
    /// `Stripe-Signature: t=<ts>,v1=<hex HMAC("ts.body")>`.
    Stripe,
    /// `X-Slack-Signature: v0=<hex HMAC("v0:ts:body")>` with `X-Slack-Request-Timestamp`.
    Slack,
    /// `webhook-signature: v1,<base64 HMAC("id.ts.body")>` with `webhook-id` and
    /// `webhook-timestamp` (or the same as `svix-*`); the secret is `whsec_<base64 key>` or the
    /// base64 key alone.
    StandardWebhooks,
    /// `<header>: <hex or base64 HMAC(body)>`, optionally prefixed `sha256=`.
    HmacSha256 { header: HeaderName },
}

impl Scheme {
    pub(super) fn timestamped(&self) -> bool {
        matches!(self, Scheme::Stripe | Scheme::Slack | Scheme::StandardWebhooks)
    }
}

/// Why a signature was refused. Fixed text only: never a secret, never the expected MAC.
#[derive(Debug, PartialEq, Eq)]
pub enum Rejection {
    Missing(&'static str),
    Malformed(&'static str),
    Mismatch,
    Stale,
    Replayed,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::Missing(what) => write!(f, "missing {what}"),
            Rejection::Malformed(what) => write!(f, "malformed {what}"),
            Rejection::Mismatch => f.write_str("the signature does not match"),
            Rejection::Stale => f.write_str("the timestamp is outside the allowed tolerance"),
            Rejection::Replayed => f.write_str("this signature was already used"),
        }
    }
}

/// A signature that verified, and (for timestamped schemes) when it stops being fresh.
pub(super) struct Verified {
    replay_key: Option<(Vec<u8>, u64)>,
}

impl Verified {
    /// The signature to remember against replays and the Unix second it goes stale; `None` for
    /// schemes without a timestamp.
    pub(super) fn replay_key(&self) -> Option<(&[u8], u64)> {
        self.replay_key
            .as_ref()
            .map(|(signature, expires)| (signature.as_slice(), *expires))
    }
}

fn mac(key: &[u8], parts: &[&[u8]]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac
}

fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, Rejection> {
    headers
        .get(name)
        .ok_or(Rejection::Missing(name))?
        .to_str()
        .map_err(|_| Rejection::Malformed(name))
}

/// `svix-*` first, then `webhook-*`, one header at a time: what the Svix and Standard Webhooks
/// reference verifiers accept (Svix-powered senders such as Clerk and Resend send `svix-*`).
fn either_header<'a>(headers: &'a HeaderMap, svix: &'static str, standard: &'static str) -> Result<&'a str, Rejection> {
    if headers.contains_key(svix) {
        header(headers, svix)
    } else {
        header(headers, standard)
    }
}

/// The HMAC key of a Standard Webhooks secret, as the reference libraries read it: an optional
/// `whsec_` prefix, then base64 (padding optional). A secret that is not base64 is refused
/// rather than used as raw bytes, which no sender would sign with.
fn standard_webhooks_key(secret: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>, Rejection> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let encoded = secret.strip_prefix(b"whsec_").unwrap_or(secret);
    let key = zeroize::Zeroizing::new(
        LENIENT
            .decode(encoded)
            .map_err(|_| Rejection::Malformed("signing secret (expected base64, with or without `whsec_`)"))?,
    );
    if key.is_empty() {
        return Err(Rejection::Malformed("signing secret (empty)"));
    }
    Ok(key)
}

fn fresh(timestamp: &str, tolerance: Duration, now: u64, what: &'static str) -> Result<u64, Rejection> {
    let ts: u64 = timestamp.trim().parse().map_err(|_| Rejection::Malformed(what))?;
    if now.abs_diff(ts) > tolerance.as_secs() {
        return Err(Rejection::Stale);
    }
    Ok(ts)
}

/// Checks one request's signature. `now` is Unix seconds.
pub(super) fn verify(
    scheme: &Scheme,
    headers: &HeaderMap,
    body: &[u8],
    secret: &[u8],
    tolerance: Duration,
    now: u64,
) -> Result<Verified, Rejection> {
    let expires = |ts: u64| ts + tolerance.as_secs();
    match scheme {
        Scheme::GitHub => {
            let value = header(headers, "x-hub-signature-256")?;
            let hex_mac = value
                .strip_prefix("sha256=")
                .ok_or(Rejection::Malformed("x-hub-signature-256"))?;
            let given = hex::decode(hex_mac).map_err(|_| Rejection::Malformed("x-hub-signature-256"))?;
            mac(secret, &[body])
                .verify_slice(&given)
                .map_err(|_| Rejection::Mismatch)?;
            Ok(Verified { replay_key: None })
        }
        Scheme::Stripe => {
            let value = header(headers, "stripe-signature")?;
            let mut timestamp = None;
            let mut signatures = Vec::new();
            for item in value.split(',') {
                match item.trim().split_once('=') {
                    Some(("t", ts)) => timestamp = Some(ts),
                    Some(("v1", sig)) => signatures.push(sig),
                    _ => {}
                }
            }
            let ts_text = timestamp.ok_or(Rejection::Malformed("stripe-signature"))?;
            if signatures.is_empty() {
                return Err(Rejection::Malformed("stripe-signature"));
            }
            let ts = fresh(ts_text, tolerance, now, "stripe-signature")?;
            let expected = mac(secret, &[ts_text.as_bytes(), b".", body]);
            let matched = signatures.iter().find_map(|sig| {
                let given = hex::decode(sig).ok()?;
                expected.clone().verify_slice(&given).ok().map(|()| given)
            });
            let given = matched.ok_or(Rejection::Mismatch)?;
            Ok(Verified {
                replay_key: Some((given, expires(ts))),
            })
        }
        Scheme::Slack => {
            let ts_text = header(headers, "x-slack-request-timestamp")?;
            let value = header(headers, "x-slack-signature")?;
            let ts = fresh(ts_text, tolerance, now, "x-slack-request-timestamp")?;
            let hex_mac = value
                .strip_prefix("v0=")
                .ok_or(Rejection::Malformed("x-slack-signature"))?;
            let given = hex::decode(hex_mac).map_err(|_| Rejection::Malformed("x-slack-signature"))?;
            mac(secret, &[b"v0:", ts_text.as_bytes(), b":", body])
                .verify_slice(&given)
                .map_err(|_| Rejection::Mismatch)?;
            Ok(Verified {
                replay_key: Some((given, expires(ts))),
            })
        }
        Scheme::StandardWebhooks => {
            let id = either_header(headers, "svix-id", "webhook-id")?;
            let ts_text = either_header(headers, "svix-timestamp", "webhook-timestamp")?;
            let value = either_header(headers, "svix-signature", "webhook-signature")?;
            let ts = fresh(ts_text, tolerance, now, "webhook-timestamp")?;
            let key = standard_webhooks_key(secret)?;
            let expected = mac(&key, &[id.as_bytes(), b".", ts_text.as_bytes(), b".", body]);
            let matched = value.split(' ').find_map(|candidate| {
                let encoded = candidate.strip_prefix("v1,")?;
                let given = base64::engine::general_purpose::STANDARD.decode(encoded).ok()?;
                expected.clone().verify_slice(&given).ok().map(|()| given)
            });
            let given = matched.ok_or(Rejection::Mismatch)?;
            Ok(Verified {
                replay_key: Some((given, expires(ts))),
            })
        }
        Scheme::HmacSha256 { header: name } => {
            let value = headers
                .get(name)
                .ok_or(Rejection::Missing("signature header"))?
                .to_str()
                .map_err(|_| Rejection::Malformed("signature header"))?;
            let text = value.trim();
            let text = text.strip_prefix("sha256=").unwrap_or(text);
            let given = hex::decode(text)
                .ok()
                .filter(|bytes| bytes.len() == 32)
                .or_else(|| base64::engine::general_purpose::STANDARD.decode(text).ok())
                .ok_or(Rejection::Malformed("signature header"))?;
            mac(secret, &[body])
                .verify_slice(&given)
                .map_err(|_| Rejection::Mismatch)?;
            Ok(Verified { replay_key: None })
        }
    }
}

/// Signatures accepted recently, each with the Unix second it stops being fresh.
#[derive(Default)]
pub(super) struct Replays {
    seen: Mutex<HashMap<Vec<u8>, u64>>,
}

impl Replays {
    /// Refuses a signature seen before within its tolerance; remembers new ones.
    pub(super) fn remember(&self, verified: Verified, now: u64) -> Result<(), Rejection> {
        let Some((signature, expires)) = verified.replay_key else {
            return Ok(());
        };
        let mut seen = self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if seen.get(&signature).is_some_and(|until| *until >= now) {
            return Err(Rejection::Replayed);
        }
        if seen.len() >= MAX_REMEMBERED {
            seen.retain(|_, until| *until >= now);
        }
        seen.insert(signature, expires);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::webhooks::DEFAULT_TOLERANCE;

    fn hex_mac(key: &[u8], parts: &[&[u8]]) -> String {
        hex::encode(mac(key, parts).finalize().into_bytes())
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap()))
            .collect()
    }

    const TOL: Duration = DEFAULT_TOLERANCE;

    #[test]
    fn github() {
        let sig = format!("sha256={}", hex_mac(b"s", &[b"{}"]));
        let ok = headers(&[("x-hub-signature-256", &sig)]);
        assert!(verify(&Scheme::GitHub, &ok, b"{}", b"s", TOL, 0).is_ok());
        assert_eq!(
            verify(&Scheme::GitHub, &ok, b"{ }", b"s", TOL, 0).err(),
            Some(Rejection::Mismatch)
        );
        assert!(matches!(
            verify(&Scheme::GitHub, &HeaderMap::new(), b"{}", b"s", TOL, 0),
            Err(Rejection::Missing(_))
        ));
    }

    #[test]
    fn slack_and_standard_webhooks() {
        let sig = format!("v0={}", hex_mac(b"s", &[b"v0:1000:", b"body"]));
        let ok = headers(&[("x-slack-request-timestamp", "1000"), ("x-slack-signature", &sig)]);
        assert!(verify(&Scheme::Slack, &ok, b"body", b"s", TOL, 1100).is_ok());
        assert_eq!(
            verify(&Scheme::Slack, &ok, b"body", b"s", TOL, 2000).err(),
            Some(Rejection::Stale)
        );

        let key = b"0123456789abcdef";
        let secret = format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(key));
        let raw = mac(key, &[b"msg_1.1000.body"]).finalize().into_bytes();
        let sig = format!("v1,bogus v1,{}", base64::engine::general_purpose::STANDARD.encode(raw));
        let ok = headers(&[
            ("webhook-id", "msg_1"),
            ("webhook-timestamp", "1000"),
            ("webhook-signature", &sig),
        ]);
        assert!(verify(&Scheme::StandardWebhooks, &ok, b"body", secret.as_bytes(), TOL, 1000).is_ok());
        assert_eq!(
            verify(&Scheme::StandardWebhooks, &ok, b"body!", secret.as_bytes(), TOL, 1000).err(),
            Some(Rejection::Mismatch)
        );
    }

    #[test]
    fn standard_webhooks_svix_names_and_unprefixed_secrets() {
        let key = b"another key, 24 bytes..";
        let b64 = base64::engine::general_purpose::STANDARD.encode(key);
        let raw = mac(key, &[b"msg_2.1000.body"]).finalize().into_bytes();
        let sig = format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(raw));
        let svix = headers(&[
            ("svix-id", "msg_2"),
            ("svix-timestamp", "1000"),
            ("svix-signature", &sig),
        ]);
        let unpadded = b64.trim_end_matches('=').to_string();
        for secret in [format!("whsec_{b64}"), b64.clone(), unpadded] {
            assert!(
                verify(&Scheme::StandardWebhooks, &svix, b"body", secret.as_bytes(), TOL, 1000).is_ok(),
                "{secret}"
            );
        }
        // The svix-* header wins over webhook-* where both are sent, as in the reference.
        let mut both = svix.clone();
        both.insert("webhook-id", "msg_other".parse().unwrap());
        assert!(verify(&Scheme::StandardWebhooks, &both, b"body", b64.as_bytes(), TOL, 1000).is_ok());
        // A secret that is not base64 is refused, never used as raw bytes.
        assert!(matches!(
            verify(&Scheme::StandardWebhooks, &svix, b"body", b"not base64!", TOL, 1000),
            Err(Rejection::Malformed(_))
        ));
    }

    #[test]
    fn generic_hmac_accepts_hex_and_base64() {
        let scheme = Scheme::HmacSha256 {
            header: HeaderName::from_static("x-signature"),
        };
        let raw = mac(b"k", &[b"b"]).finalize().into_bytes();
        for value in [
            hex::encode(raw),
            format!("sha256={}", hex::encode(raw)),
            base64::engine::general_purpose::STANDARD.encode(raw),
        ] {
            let map = headers(&[("x-signature", &value)]);
            assert!(verify(&scheme, &map, b"b", b"k", TOL, 0).is_ok(), "{value}");
        }
    }
}
