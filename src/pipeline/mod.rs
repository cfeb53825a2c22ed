//! The request path: one fixed order of phases for every request.
//!
//! ```text
//! dispatch: guard -> admin | preflight | webhook | route | static site
//! route:    match -> route guard -> validate -> limit -> secrets -> inject -> send
//!           -> scrub -> transform (+ response headers) -> CORS -> access log
//! ```
//!
//! On a `websocket = true` route, an upgrade request leaves after inject: its send is the
//! upstream handshake and the session's relay ([`websocket`]), which writes the access line.
//!
//! Each request takes the current [`Generation`] once and keeps it to the end, so a reload never
//! changes a request midway. A matched request works from its route's [`plan::RoutePlan`], built
//! when the generation was built: nothing here looks anything up by route name or takes a
//! generation-wide lock. Every refusal and failure is a [`ProxyError`], answered through its one
//! code table. Nothing here buffers a body except the schema check (bounded by its limits):
//! request and response bodies stream frame by frame, and the access line is written when the
//! response body ends ([`access`]).

pub mod access;
pub mod admin;
pub mod generation;
pub mod metrics;
pub mod plan;
pub mod routes;
pub mod websocket;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use http::request::Parts;
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, header};
use http_body_util::BodyExt;
use secrecy::SecretString;
use tracing::instrument;

use crate::features::{cors, decode, guard, inject, limit, sign, validate};
use crate::http::body::{BoxError, ClientBody, ProxyBody, Upload};
use crate::http::error::{ProxyError, Side};
use crate::upstream as client;
use access::{AccessRecord, Logged};
use generation::{Generation, Live};
use metrics::RouteMetrics;
use plan::RoutePlan;
use routes::Lookup;

/// The proxy service shared by every connection.
pub struct Proxy {
    live: Arc<Live>,
}

/// What a request's handling learned, for the CORS phase and the access line.
#[derive(Default)]
struct Context {
    /// The matched route's plan index.
    route: Option<usize>,
    /// A webhook's label and metrics, when a webhook answered.
    hook: Option<(Arc<str>, Arc<RouteMetrics>)>,
    /// The query as sent upstream, injected values redacted.
    query: Option<String>,
    upstream_status: Option<u16>,
    error: Option<&'static str>,
    /// Who called (client key, client token, none), decided by the guard.
    caller: guard::Caller,
    /// A WebSocket session that writes the access line when it ends (see [`websocket`]).
    websocket: Option<websocket::LineAtEnd>,
}

impl Proxy {
    pub fn new(live: Arc<Live>) -> Proxy {
        Proxy { live }
    }

    pub fn live(&self) -> &Arc<Live> {
        &self.live
    }

    /// Answers one client request that came in on `connection`. Never fails: errors become JSON
    /// responses.
    #[instrument(skip_all, name = "request", level = "debug")]
    pub async fn handle(&self, request: Request<ClientBody>, connection: guard::Connection) -> Response<Logged> {
        let peer = connection.peer;
        let started = Instant::now();
        let in_flight = self.live.metrics().request_started();
        let generation = self.live.current();
        let bytes_in = Arc::new(AtomicU64::new(0));
        let (mut parts, body) = request.into_parts();
        let method = parts.method.clone();
        let origin = parts.headers.get(header::ORIGIN).cloned();
        let client = generation.config.server.trusted_proxies.client(peer, &parts.headers);
        let mut context = Context::default();
        let mut response = match dispatch(
            &generation,
            &self.live,
            &mut parts,
            body,
            &connection,
            client,
            &bytes_in,
            &mut context,
        )
        .await
        {
            Ok(response) => response,
            Err(error) => {
                let route = context.route.map(|index| &*generation.plans[index].name);
                refused(&error, route, &parts, client);
                context.error = Some(error.code());
                error.into_response(route)
            }
        };
        let plan = context.route.map(|index| &generation.plans[index]);
        cors::decorate(
            &mut response,
            &generation.config.server.access,
            plan.map(|plan| &plan.route),
            origin.as_ref(),
        );
        let session = context.websocket.take();
        let (route, metrics) = match (plan, context.hook) {
            (Some(plan), _) => (Some(plan.name.clone()), plan.metrics.clone()),
            (None, Some((label, metrics))) => (Some(label), metrics),
            (None, None) => (None, generation.unrouted.clone()),
        };
        let record = AccessRecord {
            client,
            method,
            uri: parts.uri,
            route,
            query: context.query,
            upstream: plan
                .filter(|_| context.upstream_status.is_some())
                .map(|plan| plan.upstream_host.clone()),
            status: response.status().as_u16(),
            upstream_status: context.upstream_status,
            error: context.error,
            started,
            bytes_in,
            metrics,
            in_flight,
            client_key: context.caller.name(),
            frames: None,
        };
        // A WebSocket session keeps the record and writes the line when it ends.
        let record = match session {
            Some(session) => match session.send(record) {
                Ok(()) => return response.map(Logged::detached),
                Err(record) => record,
            },
            None => record,
        };
        let length = (record.method != http::Method::HEAD)
            .then(|| response.headers().get(header::CONTENT_LENGTH))
            .flatten()
            .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
        response.map(|body| Logged::new(body, record, length))
    }
}

/// Logs why a request was refused, with the fix when there is one.
fn refused(error: &ProxyError, route: Option<&str>, parts: &Parts, client: IpAddr) {
    match error {
        ProxyError::Forbidden { code, reason, hint } => tracing::warn!(
            %client,
            path = parts.uri.path(),
            route = route.unwrap_or("-"),
            code = *code,
            hint = hint.as_deref().unwrap_or(""),
            "refused: {reason}"
        ),
        ProxyError::NoRoute { near: Some(near), .. } => {
            tracing::info!(path = parts.uri.path(), closest = %near, "no route matches; did you mean `{near}`?");
        }
        error if error.spec().side == Side::Upstream => {
            tracing::warn!(
                route = route.unwrap_or("-"),
                code = error.code(),
                "upstream failed: {error}"
            );
        }
        _ => {}
    }
}

/// Dispatch: the guard for every path, then the proxy's own endpoints, preflights, webhooks, the
/// routes, and the static site for what no route matches.
#[allow(clippy::too_many_arguments)]
async fn dispatch(
    generation: &Generation,
    live: &Live,
    parts: &mut Parts,
    body: ClientBody,
    connection: &guard::Connection,
    client: IpAddr,
    bytes_in: &Arc<AtomicU64>,
    context: &mut Context,
) -> Result<Response<ProxyBody>, ProxyError> {
    let peer = connection.peer;
    let metrics = live.metrics();
    context.caller = guard::admit(generation, parts, connection).await?;
    // The client token guards everything, as it always has; client keys alone guard routes and
    // the proxy's endpoints (static files and signed webhooks spend no secret for the caller).
    let token = generation.config.server.access.client_token.is_some();
    if crate::features::admin::is_reserved(parts.uri.path()) {
        context.caller.require(None)?;
        return admin::answer(&parts.method, parts.uri.path(), &parts.headers, peer, generation, live);
    }
    if cors::is_preflight(parts) {
        let (response, route) = cors::preflight(generation, parts);
        context.route = route;
        return Ok(response);
    }
    if let Some(hook) = generation.hooks.find(parts.uri.path()) {
        if token {
            context.caller.require(None)?;
        }
        context.hook = generation
            .config
            .webhooks
            .iter()
            .position(|configured| configured.name == hook.name)
            .map(|index| generation.hook_metrics[index].clone());
        // Cold paths are boxed: a future is moved by value, and an inline one would make every
        // request's future as large as its largest branch.
        let handled = Box::pin(
            generation
                .hooks
                .handle(hook, &generation.secrets, parts.clone(), body, bytes_in),
        )
        .await;
        context.upstream_status = handled.target_status;
        context.error = handled.error;
        return Ok(handled.response);
    }
    // Parameters borrow the path; the URI is reference-counted, so the copy is cheap.
    let uri = parts.uri.clone();
    let (index, params) = match generation.table.lookup(&parts.method, uri.path()) {
        Lookup::Found { index, params, .. } => (index, params),
        Lookup::MethodNotAllowed { index, .. } => {
            context.route = Some(index);
            let plan = &generation.plans[index];
            context.caller.require(Some(&plan.route))?;
            return Err(ProxyError::MethodNotAllowed {
                route: plan.route.name.clone(),
                allow: plan.allow.to_str().unwrap_or_default().to_string(),
            });
        }
        Lookup::NotFound => {
            if token {
                context.caller.require(None)?;
            }
            if let Some(site) = &generation.site
                && let Some(served) = Box::pin(site.serve(parts)).await
            {
                context.error = served.error;
                return Ok(served.response);
            }
            // No route, no file: the 404 (and its "did you mean") is for callers with a key.
            context.caller.require(None)?;
            let path = parts.uri.path();
            let near = client
                .is_loopback()
                .then(|| generation.table.closest(path).map(str::to_string))
                .flatten();
            return Err(ProxyError::NoRoute {
                path: path.to_string(),
                near,
            });
        }
    };
    context.route = Some(index);
    let plan = &generation.plans[index];
    let params: Vec<(&str, &str)> = params.iter().collect();
    forward(generation, metrics, plan, parts, &params, body, bytes_in, context).await
}

/// The route phases, from the route guard to the transform.
#[allow(clippy::too_many_arguments)]
async fn forward(
    generation: &Generation,
    metrics: &crate::pipeline::metrics::Metrics,
    plan: &RoutePlan,
    parts: &mut Parts,
    params: &[(&str, &str)],
    body: ClientBody,
    bytes_in: &Arc<AtomicU64>,
    context: &mut Context,
) -> Result<Response<ProxyBody>, ProxyError> {
    let route = &plan.route;

    // Route guard and declared size: refused before anything else is read.
    guard::admit_route(route, &parts.headers)?;
    context.caller.require(Some(route))?;
    limit::check_declared(route, &parts.headers)?;

    // Validate, then limit: a refused request never costs an upstream call or a bucket token.
    let body = if route.request.is_active() {
        route.request.check_head(
            parts.uri.query(),
            &parts.headers,
            !http_body::Body::is_end_stream(&body),
        )?;
        Box::pin(route.request.prepare_body(&parts.headers, body, route.max_body)).await?
    } else {
        validate::RequestBody::Stream(body)
    };
    context.caller.spend()?;
    if let Some(limiter) = &plan.limiter {
        limiter.check(&parts.headers).await?;
    }

    // Secrets: every one the route injects, or a 503 naming the first one missing.
    let mut values: Vec<Arc<SecretString>> = Vec::with_capacity(route.secrets.len());
    for name in &route.secrets {
        match generation.secrets.get(name).await {
            Ok(value) => values.push(value),
            Err(error) => {
                metrics.secret_lookup_failed(name);
                return Err(ProxyError::secret_unavailable(&generation.secrets, name, &error));
            }
        }
    }
    let secret = |name: &str| plan.value_of(&values, name);

    // OAuth2: the route's bearer token, minted or renewed as needed (single flight).
    let token = match &plan.oauth2 {
        Some(source) => Some(source.token(&generation.secrets).await?),
        None => None,
    };

    // Inject: the request target and headers as the upstream gets them.
    let target = route
        .upstream
        .render_target(|name| params.iter().find(|(p, _)| *p == name).map(|(_, v)| *v))
        .ok_or_else(|| ProxyError::BadRequest("the path does not map to a URL under the route's upstream".into()))?;
    let (target_path, template_query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target.as_str(), None),
    };
    let path_and_query = if route.query.is_empty() && template_query.is_none() {
        match parts.uri.query() {
            Some(query) => PathAndQuery::try_from(format!("{target_path}?{query}")),
            None => PathAndQuery::try_from(target_path),
        }
    } else {
        let injected: Vec<(String, zeroize::Zeroizing<String>)> = route
            .query
            .iter()
            .map(|(name, template)| (name.clone(), inject::render_value(template, secret)))
            .collect();
        let (query, logged) = inject::build_query(template_query, parts.uri.query(), &injected);
        context.query = Some(logged);
        let text = zeroize::Zeroizing::new(if query.is_empty() {
            target_path.to_string()
        } else {
            format!("{target_path}?{}", query.as_str())
        });
        PathAndQuery::try_from(text.as_str())
    }
    .map_err(|_| ProxyError::BadRequest("the path does not map to a URL under the route's upstream".into()))?;

    // The route's headers, rendered once per set of secret values (see `RoutePlan`).
    let route_headers = plan.injected_headers(&values)?;
    let token_header = match &token {
        Some(token) => {
            // The token is scrubbed like the route's secrets.
            values.push(token.value.clone());
            Some((header::AUTHORIZATION, bearer(plan, token)?))
        }
        None => None,
    };
    let injected_headers = route_headers.iter().cloned().chain(token_header);
    // A WebSocket route's upgrade request: everything above applied, the handshake goes upstream.
    let upgrade = crate::features::websocket::client_handshake(route, parts)?;
    let mut headers = inject::upstream_headers(std::mem::take(&mut parts.headers), route, injected_headers);
    let mut redactor = route.scrub_response.then(|| plan.redactor(&values)).flatten();
    if let Some(upgrade) = upgrade {
        let opened = Box::pin(websocket::open(
            plan,
            metrics,
            upgrade,
            headers,
            path_and_query,
            redactor,
            &values,
        ))
        .await?;
        context.upstream_status = Some(opened.upstream_status);
        context.websocket = Some(opened.line);
        return Ok(opened.response);
    }
    if redactor.is_some() || route.response.transform.is_some() {
        // Scrubbing and transforms read the body: ask for it unencoded.
        headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    }

    // Sign: SigV4 or HMAC over the request exactly as it goes upstream (features::sign).
    let (body, path_and_query) = match &route.signing.signer {
        Some(signer) => {
            let outgoing = sign::Outgoing {
                method: &parts.method,
                headers: &mut headers,
                path_and_query,
                body,
                host: plan.upstream.host(),
                max_body: route.max_body,
                names: &route.secrets,
                values: &values,
                logged_query: &mut context.query,
            };
            Box::pin(signer.sign(outgoing)).await?
        }
        None => (body, path_and_query),
    };

    // A 401 to a token is retried once with a fresh one when the body can be sent again.
    let (body, replay) = match &plan.oauth2 {
        Some(_) => replayable(body, &headers).await?,
        None => (body, None),
    };
    let retry = replay.map(|bytes| (bytes, headers.clone(), path_and_query.clone()));
    let query = context.query.clone();
    let mut upstream_response = send_upstream(
        plan,
        metrics,
        &parts.method,
        headers,
        body,
        path_and_query,
        query.as_deref(),
        bytes_in.clone(),
        &values,
        redactor.as_ref(),
    )
    .await?;
    if upstream_response.status() == http::StatusCode::UNAUTHORIZED
        && let (Some(source), Some(token)) = (&plan.oauth2, &token)
    {
        source.rejected(token);
        if let Some((bytes, mut headers, path_and_query)) = retry {
            drop(upstream_response);
            let fresh = source.token(&generation.secrets).await?;
            headers.insert(header::AUTHORIZATION, bearer(plan, &fresh)?);
            values.push(fresh.value.clone());
            redactor = route.scrub_response.then(|| plan.redactor(&values)).flatten();
            // The body's bytes were counted on the first attempt.
            upstream_response = send_upstream(
                plan,
                metrics,
                &parts.method,
                headers,
                validate::RequestBody::Buffered(bytes),
                path_and_query,
                query.as_deref(),
                Arc::new(AtomicU64::new(0)),
                &values,
                redactor.as_ref(),
            )
            .await?;
        }
    }

    let upstream_status = upstream_response.status().as_u16();
    context.upstream_status = Some(upstream_status);
    let (mut head, body) = upstream_response.into_parts();
    check_framing(&head.headers)?;
    // The upstream's reason phrase and anything else it attached stay behind: the client gets
    // the canonical reason for the status.
    head.extensions = http::Extensions::new();
    head.version = http::Version::HTTP_11;
    let mut body = body.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync();
    // Scrubbing reads plaintext: decode a compressed answer on the upstream's own headers
    // (before hop-by-hop headers go, so a coding in `Transfer-Encoding` is seen and refused).
    if redactor.is_some() {
        body = decode::decode(&mut head.headers, body)?;
    }
    filter_response_headers(&mut head.headers, route.keep_set_cookie);
    let mut response = Response::from_parts(head, body);

    // Scrub first, so a transform never sees (or reshapes) an echoed secret.
    if let Some(redactor) = redactor {
        redactor.headers(response.headers_mut());
        // Redaction changes the length; a HEAD answer has no body to change.
        if parts.method != http::Method::HEAD {
            response.headers_mut().remove(header::CONTENT_LENGTH);
        }
        response = response.map(|body| redactor.body(body));
    }
    if route.response.is_active() {
        let (response, error) = Box::pin(route.response.apply(&parts.method, &route.name, response)).await;
        context.error = error;
        return Ok(response);
    }
    Ok(response)
}

/// The largest request body kept in memory so an OAuth2 route can send it again after a 401.
const REPLAY_LIMIT: u64 = 64 * 1024;

/// The body and, when it can be sent twice, its bytes: no body, a body the schema check already
/// buffered, or one that declares at most [`REPLAY_LIMIT`] bytes (read here). A chunked or larger
/// body streams and is not retried: its 401 goes to the client (the token is still renewed).
async fn replayable(
    body: validate::RequestBody,
    headers: &http::HeaderMap,
) -> Result<(validate::RequestBody, Option<bytes::Bytes>), ProxyError> {
    match body {
        validate::RequestBody::Buffered(bytes) => Ok((validate::RequestBody::Buffered(bytes.clone()), Some(bytes))),
        validate::RequestBody::Stream(stream) if http_body::Body::is_end_stream(&stream) => {
            Ok((validate::RequestBody::Stream(stream), Some(bytes::Bytes::new())))
        }
        validate::RequestBody::Stream(stream) => {
            let declared = headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            match declared {
                Some(length) if length <= REPLAY_LIMIT => {
                    let bytes = http_body_util::Limited::new(stream, REPLAY_LIMIT as usize)
                        .collect()
                        .await
                        .map_err(|_| ProxyError::BadBody)?
                        .to_bytes();
                    Ok((validate::RequestBody::Buffered(bytes.clone()), Some(bytes)))
                }
                _ => Ok((validate::RequestBody::Stream(stream), None)),
            }
        }
    }
}

/// `Authorization: Bearer <token>` for the route's token.
fn bearer(plan: &RoutePlan, token: &crate::features::oauth2::Token) -> Result<HeaderValue, ProxyError> {
    crate::features::oauth2::bearer_header(token).ok_or_else(|| ProxyError::TokenRefused {
        token_source: plan.route.oauth2.clone().unwrap_or_default(),
        reason: "the token cannot be sent in a header".into(),
    })
}

/// Send: one exchange with the upstream. The response timeout counts from the end of the
/// request body, so an upload that keeps going is never cut.
#[allow(clippy::too_many_arguments)]
async fn send_upstream(
    plan: &RoutePlan,
    metrics: &crate::pipeline::metrics::Metrics,
    method: &http::Method,
    headers: http::HeaderMap,
    body: validate::RequestBody,
    path_and_query: PathAndQuery,
    logged_query: Option<&str>,
    bytes_in: Arc<AtomicU64>,
    values: &[Arc<SecretString>],
    redactor: Option<&Arc<crate::features::scrub::Redactor>>,
) -> Result<Response<client::PooledBody>, ProxyError> {
    let route = &plan.route;
    let upload = Arc::new(Upload::default());
    let overrun = limit::Overrun::default();
    let mut outbound = Request::new(body.into_upstream(bytes_in, route.max_body, &overrun, upload.clone()));
    *outbound.method_mut() = method.clone();
    *outbound.headers_mut() = headers;
    if tracing::enabled!(tracing::Level::DEBUG) {
        let query = logged_query.or(path_and_query.query());
        tracing::debug!(
            route = %route.name,
            "sending upstream: {} {}://{}{}{}{} headers: {}",
            method,
            route.upstream.base.scheme(),
            plan.upstream_host,
            path_and_query.path(),
            if query.is_some() { "?" } else { "" },
            query.unwrap_or(""),
            Outbound { headers: outbound.headers(), route }
        );
    }
    let sent_at = Instant::now();
    let timeout = route.response_timeout;
    let upstream = plan.upstream_for(values)?;
    let exchange = upstream.send(path_and_query, outbound);
    let deadline = async {
        upload.ended().await;
        crate::http::deadline::Deadline::after(timeout).await;
    };
    let sent = tokio::select! {
        sent = exchange => Some(sent),
        () = deadline => None,
    };
    match sent {
        None => Err(ProxyError::Timeout(timeout)),
        Some(Ok(response)) => {
            plan.metrics.upstream_answered(metrics, sent_at.elapsed());
            Ok(response)
        }
        Some(Err(_)) if overrun.happened() => Err(ProxyError::BodyTooLarge {
            limit: route.max_body.unwrap_or_default(),
        }),
        Some(Err(_)) if upload.failed() => Err(ProxyError::BadBody),
        Some(Err(client::SendError::ConnectTimeout(after))) => Err(ProxyError::Timeout(after)),
        Some(Err(err)) if err.tls_refusal().is_some() => {
            Err(ProxyError::UpstreamTlsRefused(err.tls_refusal().unwrap_or_default()))
        }
        Some(Err(err)) => {
            // Error text is scrubbed like a response, whether or not the route scrubs those.
            let text = err.chain();
            let text = match redactor.cloned().or_else(|| plan.redactor(values)) {
                Some(redactor) => redactor.text(&text),
                None => text,
            };
            Err(ProxyError::Unreachable(text))
        }
    }
}

/// An upstream answer with both `Content-Length` and `Transfer-Encoding`, or a transfer coding
/// other than `chunked`, may be truncated or smuggled: refused.
fn check_framing(headers: &http::HeaderMap) -> Result<(), ProxyError> {
    let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter().peekable();
    if codings.peek().is_none() {
        return Ok(());
    }
    let only_chunked = codings.all(|value| {
        value.to_str().is_ok_and(|text| {
            text.split(',')
                .all(|coding| coding.trim().eq_ignore_ascii_case("chunked"))
        })
    });
    if !only_chunked || headers.contains_key(header::CONTENT_LENGTH) {
        return Err(ProxyError::UpstreamFraming);
    }
    Ok(())
}

/// The outbound headers for the debug log: injected values shown as their template (`Bearer
/// ${openai}`), credentials and other sensitive values as `****`, the rest as sent.
struct Outbound<'a> {
    headers: &'a http::HeaderMap,
    route: &'a crate::config::Route,
}

impl std::fmt::Display for Outbound<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (index, (name, value)) in self.headers.iter().enumerate() {
            if index > 0 {
                f.write_str("; ")?;
            }
            if let Some((_, template)) = self.route.headers.iter().find(|(n, _)| n == name) {
                write!(f, "{name}: {} (injected)", template.describe())?;
            } else if value.is_sensitive()
                || matches!(name.as_str(), "authorization" | "cookie" | "proxy-authorization")
            {
                write!(f, "{name}: ****")?;
            } else {
                write!(f, "{name}: {}", String::from_utf8_lossy(value.as_bytes()))?;
            }
        }
        Ok(())
    }
}

fn filter_response_headers(headers: &mut http::HeaderMap, keep_set_cookie: bool) {
    crate::http::headers::strip_hop_by_hop(headers);
    cors::strip_upstream(headers);
    if !keep_set_cookie {
        headers.remove(header::SET_COOKIE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ambiguous_upstream_framing_is_refused() {
        let mut headers = http::HeaderMap::new();
        assert!(check_framing(&headers).is_ok());
        headers.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        assert!(check_framing(&headers).is_ok());
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        assert!(check_framing(&headers).is_err());
        headers.remove(header::CONTENT_LENGTH);
        headers.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("gzip, chunked"));
        assert!(check_framing(&headers).is_err());
    }
}
