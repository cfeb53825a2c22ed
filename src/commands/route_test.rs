//! `secretproxy route test NAME [PATH] [--method M] [--send]`: the request a call would send
//! upstream — method, URL, headers — built by the same functions the proxy injects with
//! ([`crate::features::inject::render_value`], [`build_query`], [`upstream_headers`]), with
//! every secret shown as `****` and each injected value's source named. Nothing is sent unless
//! `--send`; then the response status and headers are printed with every injected value
//! redacted, as the proxy itself would.
//!
//! A route with a request signer (SigV4, HMAC) is signed as the proxy signs it; the printed
//! request shows the signature, the session token and the keys as `****`.

use std::fmt::Write as _;

use std::sync::Arc;

use anyhow::Context;
use http::{HeaderMap, HeaderValue, Method};
use http_body_util::BodyExt;
use zeroize::Zeroizing;

use crate::cli::RouteTestArgs;
use crate::config::{self, Config, Route};
use crate::configkit::template::ValueTemplate;
use crate::features::inject::{build_query, render_value, upstream_headers};
use crate::http::error_chain;
use crate::secrets::{ExposeSecret, SecretStore, SecretString, SystemStore};
use crate::upstream::{UpstreamBody, Upstreams};

/// What a masked secret looks like in the printed request.
const MASK: &str = "****";

pub fn run(args: RouteTestArgs) -> anyhow::Result<()> {
    let path = config::locate(args.config.config.as_deref())?;
    let config = config::load(&path)?;
    let route = config.route(&args.name).ok_or_else(|| no_route(&config, &args.name))?;
    let method = match &args.method {
        Some(text) => Method::from_bytes(text.to_ascii_uppercase().as_bytes())
            .map_err(|_| anyhow::anyhow!("`{text}` is not an HTTP method"))?,
        None => route.methods[0].clone(),
    };
    if !route.methods.contains(&method) {
        let allowed: Vec<&str> = route.methods.iter().map(Method::as_str).collect();
        anyhow::bail!(
            "route `{}` answers {method} with 405: it allows {}; add the method with `methods = [...]` in [routes.{}]",
            route.name,
            allowed.join(", "),
            route.name
        );
    }
    let (client_path, client_query) = match &args.path {
        Some(text) => match text.split_once('?') {
            Some((p, q)) => (Some(p.to_string()), Some(q.to_string())),
            None => (Some(text.clone()), None),
        },
        None => (None, None),
    };

    let masked = |_: &str| SecretString::from(MASK.to_string());
    let mut request = outbound(route, &method, client_path.as_deref(), client_query.as_deref(), &masked)?;
    mask_signature(route, &mut request);
    out!("{}", describe(route, &config, &request));
    if !args.send {
        outln!("\nnot sent; add --send to send it (without a body) and see the response");
        return Ok(());
    }
    send(route, &config, &method, client_path.as_deref(), client_query.as_deref())
}

/// A request as it would leave the proxy.
struct Outbound {
    method: Method,
    /// The URL, with the injected query values as the secret function gave them.
    url: String,
    headers: HeaderMap,
}

/// Builds the upstream request the way the proxy does, with `secret` supplying the values.
fn outbound(
    route: &Route,
    method: &Method,
    client_path: Option<&str>,
    client_query: Option<&str>,
    secret: &dyn Fn(&str) -> SecretString,
) -> anyhow::Result<Outbound> {
    let injected_query: Vec<(String, Zeroizing<String>)> = route
        .query
        .iter()
        .map(|(name, template)| (name.clone(), render_value(template, |n| Arc::new(secret(n)))))
        .collect();
    let url = match client_path {
        Some(client_path) => {
            let mut router = matchit::Router::new();
            router.insert(route.path.clone(), ()).context("the route's path")?;
            let matched = router.at(client_path).map_err(|_| {
                anyhow::anyhow!(
                    "`{client_path}` is not a path of route `{}` (`{}`); give one it matches, e.g. `{}`",
                    route.name,
                    route.path,
                    route.path.replace("{*rest}", "x").replace(['{', '}'], "")
                )
            })?;
            let params: Vec<(&str, &str)> = matched.params.iter().collect();
            // The same target the proxy builds (see `pipeline::forward`).
            let target = route
                .upstream
                .render_target(|name| params.iter().find(|(p, _)| *p == name).map(|(_, v)| *v))
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "`{client_path}` does not map to a URL under the route's upstream; the proxy answers 400"
                    )
                })?;
            let (path, template_query) = target
                .split_once('?')
                .map_or((target.as_str(), None), |(p, q)| (p, Some(q)));
            let (query, _) = build_query(template_query, client_query, &injected_query);
            let origin = route.upstream.base.origin().ascii_serialization();
            if query.is_empty() {
                format!("{origin}{path}")
            } else {
                format!("{origin}{path}?{}", query.as_str())
            }
        }
        None => {
            // No client path: the upstream template itself, parameters left as `{name}`.
            let (query, _) = build_query(route.upstream.base.query(), client_query, &injected_query);
            let template = route.upstream.to_string();
            let bare = template.split_once('?').map_or(template.as_str(), |(b, _)| b);
            if query.is_empty() {
                bare.to_string()
            } else {
                format!("{bare}?{}", query.as_str())
            }
        }
    };
    let mut injected = Vec::new();
    for (name, template) in &route.headers {
        let text = render_value(template, |n| Arc::new(secret(n)));
        let mut value = HeaderValue::from_str(&text)
            .map_err(|_| anyhow::anyhow!("the value of `{name}` cannot be a header value (control characters)"))?;
        value.set_sensitive(true);
        injected.push((name.clone(), value));
    }
    let headers = upstream_headers(HeaderMap::new(), route, injected);
    let mut request = Outbound {
        method: method.clone(),
        url,
        headers,
    };
    sign(route, &mut request, secret)?;
    Ok(request)
}

/// Signs `request` as the proxy would (`features::sign`), with `secret` supplying the values.
/// A template URL (no client path, `{param}` left in) cannot be signed and is shown unsigned.
fn sign(route: &Route, request: &mut Outbound, secret: &dyn Fn(&str) -> SecretString) -> anyhow::Result<()> {
    let Some(signer) = &route.signing.signer else {
        return Ok(());
    };
    let url = url::Url::parse(&request.url).context("the upstream URL")?;
    let target = match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_string(),
    };
    let Ok(path_and_query) = http::uri::PathAndQuery::try_from(target) else {
        return Ok(());
    };
    let host = url[url::Position::BeforeHost..url::Position::AfterPort].to_string();
    let values: Vec<Arc<SecretString>> = route.secrets.iter().map(|name| Arc::new(secret(name))).collect();
    let mut logged = None;
    let outgoing = crate::features::sign::Outgoing {
        method: &request.method,
        headers: &mut request.headers,
        path_and_query,
        body: crate::features::validate::RequestBody::Buffered(bytes::Bytes::new()),
        host: &host,
        max_body: route.max_body,
        names: &route.secrets,
        values: &values,
        logged_query: &mut logged,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .context("cannot start the async runtime")?;
    let (_, signed) = runtime
        .block_on(signer.sign(outgoing))
        .map_err(|error| anyhow::anyhow!("cannot sign the request: {error}"))?;
    request.url = format!("{}{signed}", url.origin().ascii_serialization());
    Ok(())
}

/// The request with its signature shown as `****` (the keys are masked by their values).
fn mask_signature(route: &Route, request: &mut Outbound) {
    use crate::features::sign::RequestSigner;
    match &route.signing.signer {
        Some(RequestSigner::SigV4(_)) => {
            if let Some(value) = request
                .headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
            {
                let masked = match value.split_once("Signature=") {
                    Some((head, _)) => format!("{head}Signature={MASK}"),
                    None => MASK.to_string(),
                };
                if let Ok(value) = HeaderValue::from_str(&masked) {
                    request.headers.insert(http::header::AUTHORIZATION, value);
                }
            }
        }
        Some(RequestSigner::Hmac(scheme)) => match scheme.masked_names() {
            (Some(header), _) => {
                if request.headers.contains_key(header) {
                    request.headers.insert(header.clone(), HeaderValue::from_static(MASK));
                }
            }
            (_, Some(param)) => {
                for separator in ['&', '?'] {
                    let needle = format!("{separator}{param}=");
                    if let Some(at) = request.url.rfind(&needle) {
                        request.url.truncate(at + needle.len());
                        request.url.push_str(MASK);
                        break;
                    }
                }
            }
            (None, None) => {}
        },
        None => {}
    }
}

/// The masked request, with the source of every injected value.
fn describe(route: &Route, config: &Config, request: &Outbound) -> String {
    let mut text = String::new();
    // The mask is percent-encoded in a query; shown as written.
    let url = request.url.replace("%2A%2A%2A%2A", MASK);
    let _ = writeln!(text, "{} {url}", request.method);
    for (name, value) in &request.headers {
        let shown = value.to_str().unwrap_or("(not text)");
        let origin = route
            .headers
            .iter()
            .find(|(h, _)| h == name)
            .map(|(_, template)| sources(template, config))
            .unwrap_or_default();
        let _ = writeln!(text, "{}: {shown}{origin}", title_case(name.as_str()));
    }
    for (param, template) in &route.query {
        let from = sources(template, config);
        if !from.is_empty() {
            let _ = writeln!(text, "query {param}={}{from}", mask(template));
        }
    }
    for (signer, names) in route.signing.describe() {
        let states: Vec<String> = names
            .iter()
            .map(|name| {
                format!(
                    "secret {name}, {}: {}",
                    config.secrets[name],
                    state(&config.secrets[name])
                )
            })
            .collect();
        let _ = writeln!(text, "signed: {signer}  ({})", states.join("; "));
    }
    let _ = writeln!(
        text,
        "\nclient headers: Authorization, Cookie and Host are withheld{}; stripped: {}",
        if route.forward_headers.is_empty() {
            String::new()
        } else {
            let names: Vec<&str> = route.forward_headers.iter().map(|h| h.as_str()).collect();
            format!(" (except {}, forwarded)", names.join(", "))
        },
        {
            let entries = route.strip_headers.entries();
            if entries.is_empty() {
                "none".to_string()
            } else {
                entries.join(", ")
            }
        }
    );
    text
}

/// `  (secret NAME, SOURCE: present)` for each secret of `template`; empty for a literal.
fn sources(template: &ValueTemplate, config: &Config) -> String {
    let parts: Vec<String> = template
        .secrets()
        .map(|name| {
            let source = &config.secrets[name];
            format!("secret {name}, {source}: {}", state(source))
        })
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("  ({})", parts.join("; "))
    }
}

/// Whether a secret can be read now (the value is dropped at once).
fn state(source: &crate::secrets::SecretSource) -> &'static str {
    match SystemStore.fetch(source) {
        Ok(_) => "present",
        Err(error) if error.is_unreachable() => "store unreachable",
        Err(_) => "missing",
    }
}

/// A template with each secret as `****`.
fn mask(template: &ValueTemplate) -> String {
    render_value(template, |_| Arc::new(SecretString::from(MASK.to_string()))).to_string()
}

/// `x-api-key` -> `X-Api-Key`: how people write header names.
fn title_case(name: &str) -> String {
    name.split('-')
        .map(|word| {
            let mut chars = word.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join("-")
}

fn no_route(config: &Config, name: &str) -> anyhow::Error {
    let known: Vec<&str> = config.routes.iter().map(|r| r.name.as_str()).collect();
    anyhow::anyhow!(
        "no route named `{name}`{}",
        if known.is_empty() {
            "; the config has no routes".to_string()
        } else {
            format!("; routes are {}", known.join(", "))
        }
    )
}

/// Sends the request with the real secrets and prints the response status and headers, with
/// every injected value redacted.
fn send(
    route: &Route,
    config: &Config,
    method: &Method,
    client_path: Option<&str>,
    client_query: Option<&str>,
) -> anyhow::Result<()> {
    if client_path.is_none() && route.upstream.params().next().is_some() {
        anyhow::bail!("give a PATH to send: the upstream has parameters ({})", route.upstream);
    }
    let mut values: Vec<(String, SecretString)> = Vec::new();
    for name in &route.secrets {
        let source = &config.secrets[name];
        let value = SystemStore
            .fetch(source)
            .map_err(|error| anyhow::anyhow!("secret `{name}`: {error}; {}", source.how_to_fix(name, &error)))?;
        values.push((name.clone(), value));
    }
    let secret = |name: &str| -> SecretString {
        values
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .expect("route.secrets lists every used secret")
    };
    let client_path = client_path.map_or_else(|| route.path.clone(), str::to_string);
    let request = outbound(route, method, Some(&client_path), client_query, &secret)?;
    let redactor = crate::features::scrub::Redactor::for_route(route, secret);
    // With a client certificate, the connection presents it as the proxy's would.
    let identity = match &route.signing.client_cert {
        Some(names) => Some(
            crate::upstream::ClientIdentity::from_pem(
                secret(&names.cert).expose_secret().as_bytes(),
                secret(&names.key).expose_secret().as_bytes(),
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?,
        ),
        None => None,
    };
    let upstream = Upstreams::default()
        .for_origin_with(
            &route.upstream.base,
            route.ca_file.as_deref(),
            route.connect_timeout,
            identity.as_ref(),
        )
        .map_err(|e| anyhow::anyhow!("route `{}`: {e}", route.name))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let url = url::Url::parse(&request.url).context("the upstream URL")?;
    let target = match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_string(),
    };
    let target = http::uri::PathAndQuery::try_from(target).context("the upstream URL")?;
    let body: UpstreamBody = http_body_util::Empty::new().map_err(|never| match never {}).boxed();
    let mut outbound = http::Request::new(body);
    *outbound.method_mut() = request.method.clone();
    *outbound.headers_mut() = request.headers;
    let timeout = route.response_timeout;
    let response = runtime.block_on(async { tokio::time::timeout(timeout, upstream.send(target, outbound)).await });
    let mut response = match response {
        Err(_) => anyhow::bail!("no response within {}", humantime::format_duration(timeout)),
        Ok(Err(error)) => {
            let text = error_chain(&error);
            let text = redactor.as_ref().map_or(text.clone(), |r| r.text(&text));
            anyhow::bail!("the request failed: {text}");
        }
        Ok(Ok(response)) => response,
    };
    if let Some(redactor) = &redactor {
        redactor.headers(response.headers_mut());
    }
    outln!("\nsent; the upstream answered {}", response.status());
    for (name, value) in response.headers() {
        outln!(
            "{}: {}",
            title_case(name.as_str()),
            value.to_str().unwrap_or("(not text)")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_request_never_holds_the_value() {
        let config = Config::parse(
            "[secrets.k]\nenv = \"ROUTE_TEST_UNIT_NOT_SET\"\n[routes.a]\npath = \"/a/{*rest}\"\nupstream = \"https://x.example/v1/{rest}?fixed=1\"\nheaders = { Authorization = \"Bearer ${k}\" }\nquery = { key = \"${k}\" }\n",
            "t",
        )
        .unwrap();
        let route = &config.routes[0];
        let real = |_: &str| SecretString::from("s3cret-value".to_string());
        let sent = outbound(route, &Method::GET, Some("/a/items/7"), Some("q=1"), &real).unwrap();
        assert_eq!(sent.url, "https://x.example/v1/items/7?fixed=1&q=1&key=s3cret-value");
        let masked = |_: &str| SecretString::from(MASK.to_string());
        let shown = outbound(route, &Method::GET, Some("/a/items/7"), Some("q=1"), &masked).unwrap();
        let text = describe(route, &config, &shown);
        assert!(!text.contains("s3cret"), "{text}");
        assert!(
            text.starts_with("GET https://x.example/v1/items/7?fixed=1&q=1&key=****\nAuthorization: Bearer ****  (secret k, environment variable `ROUTE_TEST_UNIT_NOT_SET`: missing)\n"),
            "{text}"
        );
        let Err(unmatched) = outbound(route, &Method::GET, Some("/b"), None, &masked) else {
            panic!("`/b` matched");
        };
        assert!(
            unmatched.to_string().contains("is not a path of route `a`"),
            "{unmatched}"
        );
    }

    #[test]
    fn signed_requests_show_their_signature_masked() {
        let config = Config::parse(
            "[secrets.id]\nenv = \"ROUTE_TEST_UNIT_ID\"\n[secrets.key]\nenv = \"ROUTE_TEST_UNIT_KEY\"\n[secrets.tok]\nenv = \"ROUTE_TEST_UNIT_TOK\"\n\
             [routes.s3]\npath = \"/s3/{*key}\"\nupstream = \"https://bucket.s3.eu-west-1.amazonaws.com/{key}\"\nmethods = [\"PUT\"]\n\
             auth = { aws-sigv4 = { service = \"s3\", region = \"eu-west-1\", access-key-id = \"${id}\", secret-access-key = \"${key}\", session-token = \"${tok}\" } }\n\
             [routes.ex]\npath = \"/ex/{*rest}\"\nupstream = \"https://api.exchange.example/{rest}\"\nheaders = { X-MBX-APIKEY = \"${id}\" }\n\
             auth = { hmac = { secret = \"key\", message = \"{query}{body}\", signature-query = \"signature\", timestamp = \"unix-ms\", timestamp-query = \"timestamp\" } }\n",
            "t",
        )
        .unwrap();
        let masked = |_: &str| SecretString::from(MASK.to_string());
        let real = |name: &str| SecretString::from(format!("real-{name}-value"));
        for route in &config.routes {
            let method = route.methods[0].clone();
            let sent = outbound(
                route,
                &method,
                Some(&format!("/{}/a b.txt", route.name)),
                Some("x=1"),
                &real,
            )
            .unwrap();
            let mut shown = outbound(
                route,
                &method,
                Some(&format!("/{}/a b.txt", route.name)),
                Some("x=1"),
                &masked,
            )
            .unwrap();
            mask_signature(route, &mut shown);
            let text = describe(route, &config, &shown);
            assert!(!text.contains("real-"), "{text}");
            match route.name.as_str() {
                "s3" => {
                    let authorization = sent.headers["authorization"].to_str().unwrap();
                    assert!(
                        authorization.starts_with("AWS4-HMAC-SHA256 Credential=real-id-value/"),
                        "{authorization}"
                    );
                    assert_eq!(sent.headers["x-amz-content-sha256"], "UNSIGNED-PAYLOAD");
                    assert!(text.contains("Signature=****\n"), "{text}");
                    assert!(text.contains("X-Amz-Security-Token: ****\n"), "{text}");
                    assert!(
                        text.contains("PUT https://bucket.s3.eu-west-1.amazonaws.com/a%20b.txt?x=1\n"),
                        "{text}"
                    );
                    assert!(
                        text.contains("signed: aws-sigv4 (s3 eu-west-1, unsigned payload)"),
                        "{text}"
                    );
                }
                _ => {
                    assert!(sent.url.contains("?x=1&timestamp="), "{}", sent.url);
                    assert!(!sent.url.ends_with("&signature=****"), "{}", sent.url);
                    assert!(text.contains("&signature=****\n"), "{text}");
                    assert!(text.contains("signed: hmac-sha256 (hex in query signature)"), "{text}");
                }
            }
        }
    }
}
