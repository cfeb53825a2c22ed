//! TLS client certificates to the upstream (mTLS): a route's `client-cert` and `client-key`
//! secrets (PEM) become the identity its connections present.
//!
//! The route's plan holds a [`ClientCertSlot`]: the upstream (client config and pool) built for
//! the current values of the two secrets. It is built on the first request and again only when
//! a value changes (a new `Arc` in the secret cache, e.g. after `secret set` or a replaced
//! file), so the request path compares two pointers and nothing else. A changed certificate
//! gets a new pool: no connection authenticated with the old one carries a request after that.
//! A reload carries the pool over ([`ClientCertSlot::carry_from`]) while the upstream settings
//! are equal; the first request of the new generation keeps it when the certificate and key
//! are the same (by fingerprint), so reloads do not reconnect.
//!
//! The PEM values are route secrets like any other: read in the secrets phase (503 naming the
//! secret when missing) and scrubbed from what the upstream echoes. Errors are fixed text.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use secrecy::SecretString;

use crate::configkit::RouteBase;
use crate::http::error::ProxyError;
use crate::upstream::{ClientIdentity, Upstream, Upstreams};

/// The mTLS upstream of one route, for the current certificate and key.
pub struct ClientCertSlot {
    /// Positions of the certificate and key in the route's secrets (and the request's values).
    cert: usize,
    key: usize,
    base: url::Url,
    ca_file: Option<PathBuf>,
    connect_timeout: Duration,
    cached: ArcSwapOption<Cached>,
}

struct Cached {
    /// The values the upstream was built from, held so their addresses stay theirs; `None`
    /// when carried over from the previous generation (compared by fingerprint then).
    values: Option<(Arc<SecretString>, Arc<SecretString>)>,
    fingerprint: [u8; 32],
    upstream: Arc<Upstream>,
}

impl ClientCertSlot {
    /// The slot of a route with `client-cert` and `client-key`, else `None`.
    pub fn for_route(route: &RouteBase, signing: &super::Signing) -> Option<ClientCertSlot> {
        let names = signing.client_cert.as_ref()?;
        let position = |name: &str| route.secrets.iter().position(|n| n == name);
        Some(ClientCertSlot {
            cert: position(&names.cert)?,
            key: position(&names.key)?,
            base: route.upstream.base.clone(),
            ca_file: route.ca_file.clone(),
            connect_timeout: route.connect_timeout,
            cached: ArcSwapOption::empty(),
        })
    }

    /// The upstream presenting the certificate in `values` (the route's secret values).
    pub fn upstream(&self, values: &[Arc<SecretString>]) -> Result<Arc<Upstream>, ProxyError> {
        let (cert, key) = (&values[self.cert], &values[self.key]);
        let cached = self.cached.load_full();
        if let Some(cached) = &cached
            && let Some((known_cert, known_key)) = &cached.values
            && Arc::ptr_eq(known_cert, cert)
            && Arc::ptr_eq(known_key, key)
        {
            return Ok(cached.upstream.clone());
        }
        let unusable = |reason: String| ProxyError::SignerUnusable { reason };
        let client = ClientIdentity::from_pem(super::expose(cert), super::expose(key)).map_err(unusable)?;
        let upstream = match cached {
            // The same certificate in new values (a reload): the pool stays.
            Some(cached) if cached.fingerprint == client.fingerprint() => cached.upstream.clone(),
            _ => Upstreams::default()
                .for_origin_with(&self.base, self.ca_file.as_deref(), self.connect_timeout, Some(&client))
                .map_err(unusable)?,
        };
        self.cached.store(Some(Arc::new(Cached {
            values: Some((cert.clone(), key.clone())),
            fingerprint: client.fingerprint(),
            upstream: upstream.clone(),
        })));
        Ok(upstream)
    }

    /// Takes over `previous`'s pool (from the last generation's plan of the same route) when
    /// the upstream settings are equal; the certificate itself is compared on first use.
    pub fn carry_from(&self, previous: &ClientCertSlot) {
        if self.base != previous.base
            || self.ca_file != previous.ca_file
            || self.connect_timeout != previous.connect_timeout
        {
            return;
        }
        if let Some(cached) = previous.cached.load_full() {
            self.cached.store(Some(Arc::new(Cached {
                values: None,
                fingerprint: cached.fingerprint,
                upstream: cached.upstream.clone(),
            })));
        }
    }
}
