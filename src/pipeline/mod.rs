//! The request pipeline: match -> secrets -> rewrite + inject -> send -> respond.
//!
//! Each request takes the current [`Generation`] once and keeps it to the end, so a reload never
//! changes a request midway. Nothing here buffers a body: request and response bodies are
//! streamed frame by frame. Every failure becomes a JSON error (see [`error`]); the access line
//! is written when the response body ends (see [`body`]).

pub mod generation;
pub mod routes;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use http::{HeaderMap, Request, Response, header};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use secrecy::SecretString;
use tracing::instrument;

use crate::daemon::metrics::Metrics;
use crate::features::admin;
use crate::features::{cors, guard, limit, validate};
use crate::http::body::{self, AccessRecord, Logged, ProxyBody};
use crate::http::error::ProxyError;
use crate::http::headers;
use crate::pipeline::generation::{Generation, Live};
use crate::pipeline::routes::{Lookup, allow_header};

/// The proxy service shared by every connection.
pub struct Proxy {
    live: Arc<Live>,
}

/// What a request's handling produced, before the access line is attached.
struct Outcome {
    response: Response<ProxyBody>,
    route: Option<String>,
    query: Option<String>,
    upstream_status: Option<u16>,
    error: Option<&'static str>,
}

impl Proxy {
    pub fn new(live: Arc<Live>) -> Proxy {
        Proxy { live }
    }

    pub fn live(&self) -> &Arc<Live> {
        &self.live
    }

    /// Answers one client request from `peer`. Never fails: errors become JSON responses.
    #[instrument(skip_all, name = "request")]
    pub async fn handle(&self, request: Request<Incoming>, peer: SocketAddr) -> Response<Logged> {
        let started = Instant::now();
        let in_flight = self.live.metrics().request_started();
        let generation = self.live.current();
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        let origin = request.headers().get(header::ORIGIN).cloned();
        let bytes_in = Arc::new(AtomicU64::new(0));
        let mut outcome = forward(&generation, self.live.metrics(), request, peer, bytes_in.clone()).await;
        cors::decorate(
            &mut outcome.response,
            &generation,
            outcome.route.as_deref(),
            origin.as_ref(),
        );
        let record = AccessRecord {
            method,
            route: outcome.route,
            path,
            query: outcome.query,
            status: outcome.response.status().as_u16(),
            upstream_status: outcome.upstream_status,
            error: outcome.error,
            started,
            bytes_in,
            in_flight,
        };
        outcome.response.map(|body| Logged::new(body, record))
    }
}

async fn forward(
    generation: &Generation,
    metrics: &Metrics,
    request: Request<Incoming>,
    peer: SocketAddr,
    bytes_in: Arc<AtomicU64>,
) -> Outcome {
    let fail = |error: ProxyError, route: Option<&str>| Outcome {
        error: Some(error.code()),
        response: error.into_response(route),
        route: route.map(str::to_string),
        query: None,
        upstream_status: None,
    };

    let refused = |response: Response<ProxyBody>, route: Option<&str>, code: Option<&'static str>| Outcome {
        response,
        route: route.map(str::to_string),
        query: None,
        upstream_status: None,
        error: code,
    };

    // The guard runs first for every path, the proxy's own included (DNS rebinding, origins).
    let (mut parts, body) = request.into_parts();
    if let Err(error) = guard::admit(generation, &mut parts).await {
        return fail(error, None);
    }
    if admin::is_reserved(parts.uri.path()) {
        let (response, error) = admin::answer(&parts.method, parts.uri.path(), peer, generation, metrics);
        return refused(response, None, error);
    }
    if cors::is_preflight(&parts) {
        let (response, route) = cors::preflight(generation, &parts);
        return Outcome {
            route,
            ..refused(response, None, None)
        };
    }
    if let Some(hook) = generation.hooks.find(parts.uri.path()) {
        let handled = generation.hooks.handle(hook, &generation.secrets, parts, body).await;
        return Outcome {
            upstream_status: handled.target_status,
            ..refused(handled.response, Some(&format!("webhook:{}", hook.name)), handled.error)
        };
    }
    let (route, params) = match generation.table.lookup(&parts.method, parts.uri.path()) {
        Lookup::Found { route, params } => (route, params),
        Lookup::MethodNotAllowed { route } => {
            let error = ProxyError::MethodNotAllowed {
                route: route.name.clone(),
                allow: allow_header(route),
            };
            return fail(error, Some(&route.name));
        }
        Lookup::NotFound => {
            if let Some(site) = &generation.site
                && let Some(served) = site.serve(&parts).await
            {
                return refused(served.response, None, served.error);
            }
            return fail(ProxyError::NoRoute, None);
        }
    };
    let route_name = Some(route.name.as_str());
    if let Err(error) =
        guard::admit_route(route, &parts.headers).and_then(|()| limit::check_declared(route, &parts.headers))
    {
        return fail(error, route_name);
    }

    // Validation, then the rate limit: a refused request never costs an upstream call.
    let body = if route.request.is_active() {
        if let Err(refusal) = route
            .request
            .check_head(parts.uri.query(), &parts.headers, !body.is_end_stream())
        {
            let code = refusal.code;
            return refused(refusal.into_response(&route.name), route_name, Some(code));
        }
        match route.request.prepare_body(&parts.headers, body).await {
            Ok(body) => body,
            Err(refusal) => {
                let code = refusal.code;
                return refused(refusal.into_response(&route.name), route_name, Some(code));
            }
        }
    } else {
        validate::RequestBody::Stream(body)
    };
    if let Err(limited) = generation.limits.check(&route.name, &parts.headers) {
        let code = limited.code();
        return refused(limited.into_response(&route.name), route_name, Some(code));
    }

    // Every secret the route injects, or a 503 naming the first one that is missing.
    let mut values: Vec<(&str, Arc<SecretString>)> = Vec::with_capacity(route.secrets.len());
    for name in &route.secrets {
        match generation.secrets.get(name).await {
            Ok(value) => values.push((name.as_str(), value)),
            Err(error) => {
                metrics.secret_lookup_failed(name);
                return fail(
                    ProxyError::secret_unavailable(&generation.secrets, name, &error),
                    route_name,
                );
            }
        }
    }
    let secret = |name: &str| -> SecretString {
        let value = &values
            .iter()
            .find(|(n, _)| *n == name)
            .expect("route.secrets lists every used secret")
            .1;
        SecretString::clone(value)
    };

    let mut url = match route
        .upstream
        .render(|name| params.iter().find(|(p, _)| *p == name).map(|(_, v)| *v))
    {
        url if route.upstream.contains(&url) => url,
        _ => {
            return fail(
                ProxyError::BadRequest("the path does not map to a URL under the route's upstream".into()),
                route_name,
            );
        }
    };
    let injected_query: Vec<(String, zeroize::Zeroizing<String>)> = route
        .query
        .iter()
        .map(|(name, template)| (name.clone(), upstream::render_value(template, secret)))
        .collect();
    let (query, logged_query) = upstream::build_query(url.query(), parts.uri.query(), &injected_query);
    url.set_query((!query.is_empty()).then_some(query.as_str()));
    drop(query);

    let mut injected_headers = Vec::with_capacity(route.headers.len());
    for (name, template) in &route.headers {
        let text = upstream::render_value(template, secret);
        match upstream::sensitive_header(&text) {
            Some(value) => injected_headers.push((name.clone(), value)),
            None => {
                return fail(
                    ProxyError::SecretUnavailable {
                        secret: template.secrets().collect::<Vec<_>>().join(","),
                        unreachable: false,
                        reason: format!("its value cannot be used in the `{name}` header (control characters)"),
                        hint: "store the value without line breaks".into(),
                    },
                    route_name,
                );
            }
        }
    }
    let mut headers = upstream::upstream_headers(&parts.headers, route, injected_headers);
    let redactor = route
        .scrub_response
        .then(|| generation.redactors.get(route, &values, secret))
        .flatten();
    if redactor.is_some() || route.response.transform.is_some() {
        // Scrubbing and transforms read the body: ask for it unencoded.
        headers.insert(header::ACCEPT_ENCODING, http::HeaderValue::from_static("identity"));
    }

    let mut outbound = reqwest::Request::new(parts.method.clone(), url);
    *outbound.headers_mut() = headers;
    let overrun = limit::Overrun::default();
    *outbound.body_mut() = body.into_upstream(bytes_in, route.max_body, &overrun);

    let client = generation.clients.get(&route.name);
    let sent_at = Instant::now();
    let sent = tokio::time::timeout(route.response_timeout, client.execute(outbound)).await;
    if let Ok(Ok(_)) = &sent {
        metrics.upstream_answered(&route.name, sent_at.elapsed());
    }
    let upstream_response = match sent {
        Err(_) => {
            return Outcome {
                query: Some(logged_query),
                ..fail(ProxyError::Timeout(route.response_timeout), route_name)
            };
        }
        Ok(Err(_)) if overrun.happened() => {
            let limit = route.max_body.unwrap_or_default();
            return Outcome {
                query: Some(logged_query),
                ..fail(ProxyError::BodyTooLarge { limit }, route_name)
            };
        }
        Ok(Err(err)) => {
            let err = err.without_url();
            let error = if err.is_timeout() {
                ProxyError::Timeout(route.connect_timeout)
            } else {
                // Error text is scrubbed like a response, whether or not the route scrubs those.
                let text = upstream::error_chain(&err);
                let redactor = redactor
                    .clone()
                    .or_else(|| generation.redactors.get(route, &values, secret));
                ProxyError::Unreachable(redactor.map_or(text.clone(), |r| r.text(&text)))
            };
            tracing::warn!(route = %route.name, error = %error, "upstream request failed");
            return Outcome {
                query: Some(logged_query),
                ..fail(error, route_name)
            };
        }
        Ok(Ok(response)) => response,
    };

    let upstream_status = upstream_response.status().as_u16();
    let mut response: Response<reqwest::Body> = upstream_response.into();
    // The status line carries the canonical reason phrase, never the upstream's (it may echo a secret).
    response.extensions_mut().remove::<hyper::ext::ReasonPhrase>();
    let mut response = response.map(|body| {
        body.map_err(|e| Box::new(e.without_url()) as body::BoxError)
            .boxed_unsync()
    });
    // Scrubbing reads plaintext: decode a compressed answer (before hop-by-hop headers go, so a
    // coding in `Transfer-Encoding` is seen and refused).
    if redactor.is_some() {
        let (mut head, body) = response.into_parts();
        match crate::features::decode::decode(&mut head.headers, body) {
            Ok(body) => response = Response::from_parts(head, body),
            Err(error) => {
                return Outcome {
                    query: Some(logged_query),
                    upstream_status: Some(upstream_status),
                    ..fail(error, route_name)
                };
            }
        }
    }
    filter_response_headers(response.headers_mut(), route.keep_set_cookie);
    // Scrub first, so a transform never sees (or reshapes) an echoed secret.
    if let Some(redactor) = redactor {
        redactor.headers(response.headers_mut());
        // Redaction changes the length; a HEAD answer has no body to change.
        if parts.method != http::Method::HEAD {
            response.headers_mut().remove(header::CONTENT_LENGTH);
        }
        response = response.map(|body| redactor.body(body));
    }
    let (response, error) = if route.response.is_active() {
        route.response.apply(&parts.method, &route.name, response).await
    } else {
        (response, None)
    };
    Outcome {
        response,
        route: Some(route.name.clone()),
        query: Some(logged_query),
        upstream_status: Some(upstream_status),
        error,
    }
}

fn filter_response_headers(headers: &mut HeaderMap, keep_set_cookie: bool) {
    headers::strip_hop_by_hop(headers);
    cors::strip_upstream(headers);
    if !keep_set_cookie {
        headers.remove(header::SET_COOKIE);
    }
}
