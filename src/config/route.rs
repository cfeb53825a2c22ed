//! One `[routes.NAME]` table, validated into a [`Route`]: the path and its parameters, the
//! upstream template (which may only use those parameters, and plain `http` only to loopback or
//! with `allow-http`), the methods, and the injected headers and query parameters (every secret
//! they name is declared; headers that belong to the connection cannot be set).

use std::collections::{BTreeMap, BTreeSet};

use http::{HeaderName, Method};

use super::raw::RawRoute;
use super::{DEFAULT_CONNECT_TIMEOUT, DEFAULT_RESPONSE_TIMEOUT, Route};
use crate::configkit::RouteBase;
use crate::configkit::duration::timeout_or;
use crate::configkit::template::{UrlTemplate, ValuePart, ValueTemplate, is_name};
use crate::configkit::{ConfigError, Source, access};
use crate::secrets::SecretSource;

/// Headers a route may not inject: they belong to the connection or the proxy.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
];

pub(super) fn validate_route(
    name: &str,
    raw: &RawRoute,
    span: std::ops::Range<usize>,
    secrets: &BTreeMap<String, SecretSource>,
    source: &Source<'_>,
) -> Result<Route, ConfigError> {
    let key = |field: &str| format!("routes.{name}.{field}");
    if !is_name(name) {
        return Err(source.error(
            span,
            format!("routes.{name}"),
            "route names may hold only letters, digits, `-` and `_`",
        ));
    }

    let path = raw.path.get_ref();
    let path_params = path_params(path).map_err(|message| source.error(raw.path.span(), key("path"), message))?;

    let upstream = UrlTemplate::parse(raw.upstream.get_ref())
        .map_err(|m| source.error(raw.upstream.span(), key("upstream"), m))?;
    for param in upstream.params() {
        if !path_params.iter().any(|p| p == param) {
            return Err(source
                .error(
                    raw.upstream.span(),
                    key("upstream"),
                    format!("`{{{param}}}` is not a parameter of path `{path}`"),
                )
                .with_help(match path_params.as_slice() {
                    [] => "the path defines no parameters".to_string(),
                    params => format!(
                        "the path defines {}",
                        params
                            .iter()
                            .map(|p| format!("`{{{p}}}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                }));
        }
    }
    if upstream.base.scheme() == "http" && !raw.allow_http && !upstream.is_loopback() {
        return Err(source
            .error(
                raw.upstream.span(),
                key("upstream"),
                "plain http would send the secret unencrypted",
            )
            .with_help("use https, or set `allow-http = true` on this route if the network path is trusted"));
    }

    let methods = match &raw.methods {
        None => vec![Method::GET, Method::HEAD],
        Some(list) => {
            let mut methods = Vec::new();
            for method in list.get_ref() {
                let text = method.get_ref().to_ascii_uppercase();
                let parsed = Method::from_bytes(text.as_bytes())
                    .ok()
                    .filter(|m| text.bytes().all(|b| b.is_ascii_uppercase()) && *m != Method::CONNECT)
                    .ok_or_else(|| {
                        source.error(
                            method.span(),
                            key("methods"),
                            format!("`{}` is not a method a route can take", method.get_ref()),
                        )
                    })?;
                if !methods.contains(&parsed) {
                    methods.push(parsed);
                }
            }
            if methods.is_empty() {
                return Err(source.error(list.span(), key("methods"), "a route needs at least one method"));
            }
            methods
        }
    };

    let mut used = BTreeSet::new();
    let mut check_secrets =
        |template: &ValueTemplate, span: std::ops::Range<usize>, field: String| -> Result<(), ConfigError> {
            for secret in template.secrets() {
                if !secrets.contains_key(secret) {
                    let known = secrets.keys().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ");
                    return Err(source
                        .error(span, field, format!("unknown secret `{secret}`"))
                        .with_help(if known.is_empty() {
                            format!("declare it in a `[secrets.{secret}]` table")
                        } else {
                            format!("declared secrets are {known}; or add a `[secrets.{secret}]` table")
                        }));
                }
                used.insert(secret.to_string());
            }
            Ok(())
        };

    let mut headers: Vec<(HeaderName, ValueTemplate)> = Vec::new();
    for (header, value) in &raw.headers {
        let field = format!("routes.{name}.headers.{header}");
        let header_name = HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
            source.error(
                value.span(),
                field.clone(),
                format!("`{header}` is not a valid header name"),
            )
        })?;
        if RESERVED_HEADERS.contains(&header_name.as_str()) {
            return Err(source.error(
                value.span(),
                field,
                format!("`{header}` is managed by the proxy and cannot be set"),
            ));
        }
        let template =
            ValueTemplate::parse(value.get_ref()).map_err(|m| source.error(value.span(), field.clone(), m))?;
        if template
            .parts
            .iter()
            .any(|p| matches!(p, ValuePart::Literal(text) if text.contains(['\r', '\n', '\0'])))
        {
            return Err(source.error(value.span(), field, "header values may not contain line breaks"));
        }
        check_secrets(&template, value.span(), field)?;
        headers.push((header_name, template));
    }

    let mut oauth2 = None;
    let mut signing = crate::features::sign::Signing::default();
    // The signer's secrets join `used` once `check_secrets` is done with it.
    let mut signed = BTreeSet::new();
    if let Some(auth) = &raw.auth {
        let field = key("auth");
        let shorthand = auth.get_ref();
        // Request signers (features::sign): exclusive with the other shorthands.
        signing.signer = crate::features::sign::Signing::signer_from_auth(
            name,
            shorthand.aws_sigv4.as_ref(),
            shorthand.hmac.as_ref(),
            secrets,
            &mut signed,
            source,
        )?;
        if signing.signer.is_some()
            && (shorthand.bearer.is_some() || shorthand.basic.is_some() || shorthand.oauth2.is_some())
        {
            return Err(source
                .error(
                    auth.span(),
                    field,
                    "give exactly one of `bearer`, `basic`, `oauth2`, `aws-sigv4` or `hmac`",
                )
                .with_help("a request carries one credential in `auth`"));
        }
        let template = match (&shorthand.bearer, &shorthand.basic, &shorthand.oauth2) {
            (Some(secret), None, None) => Some(ValueTemplate {
                parts: vec![ValuePart::Literal("Bearer ".into()), ValuePart::Secret(secret.clone())],
            }),
            (None, Some(basic), None) => Some(ValueTemplate {
                parts: vec![
                    ValuePart::Literal("Basic ".into()),
                    ValuePart::Basic {
                        username: basic.username.clone(),
                        secret: basic.password.clone(),
                    },
                ],
            }),
            // The token source is checked to exist with the `[oauth2]` tables (`config::mod`).
            (None, None, Some(source_name)) => {
                oauth2 = Some(source_name.clone());
                None
            }
            (None, None, None) if signing.signer.is_some() => None,
            _ => {
                return Err(source
                    .error(auth.span(), field, "give exactly one of `bearer`, `basic` or `oauth2`")
                    .with_help("e.g. `auth = { bearer = \"github\" }`, `auth = { basic = { username = \"me\", password = \"secret-name\" } }` or `auth = { oauth2 = \"paypal\" }`"));
            }
        };
        if headers.iter().any(|(h, _)| h == http::header::AUTHORIZATION)
            && !matches!(signing.signer, Some(crate::features::sign::RequestSigner::Hmac(_)))
        {
            return Err(source.error(
                auth.span(),
                field,
                "`auth` and an `Authorization` header both set the same header; keep one",
            ));
        }
        if let Some(template) = template {
            check_secrets(&template, auth.span(), field)?;
            headers.push((http::header::AUTHORIZATION, template));
        }
    }

    let mut query = Vec::new();
    for (param, value) in &raw.query {
        let field = format!("routes.{name}.query.{param}");
        if param.is_empty() {
            return Err(source.error(value.span(), field, "query parameter names may not be empty"));
        }
        let template =
            ValueTemplate::parse(value.get_ref()).map_err(|m| source.error(value.span(), field.clone(), m))?;
        check_secrets(&template, value.span(), field)?;
        query.push((param.clone(), template));
    }

    let mut forward_headers = Vec::new();
    for header in &raw.forward_headers {
        let parsed = HeaderName::from_bytes(header.get_ref().as_bytes()).map_err(|_| {
            source.error(
                header.span(),
                key("forward-headers"),
                format!("`{}` is not a valid header name", header.get_ref()),
            )
        })?;
        if headers.iter().any(|(injected, _)| *injected == parsed)
            || (oauth2.is_some() && parsed == http::header::AUTHORIZATION)
        {
            return Err(source.error(
                header.span(),
                key("forward-headers"),
                format!("`{parsed}` is injected by this route, so the client's cannot be forwarded"),
            ));
        }
        forward_headers.push(parsed);
    }

    let strip_headers =
        crate::configkit::strip::strip_headers(raw.strip_headers.as_ref(), &key("strip-headers"), source)?;
    if let Some(both) = forward_headers.iter().find(|h| strip_headers.strips(h)) {
        let span = raw.strip_headers.as_ref().map_or(span.clone(), |l| l.span());
        return Err(source.error(
            span,
            key("strip-headers"),
            format!("`{both}` is both in `forward-headers` and stripped; keep one"),
        ));
    }

    let timeout = |value: &Option<toml::Spanned<String>>, field: &str, default| {
        timeout_or(
            value.as_ref(),
            &key(field),
            default,
            "e.g. \"500ms\", \"10s\", \"2m\"",
            source,
        )
    };

    let ca_file = match &raw.ca_file {
        None => None,
        Some(path) => Some(crate::configkit::ca_file(path, key("ca-file"), source)?),
    };

    used.extend(signed);
    // mTLS (features::sign::mtls): both secrets or neither, over https only.
    match (&raw.client_cert, &raw.client_key) {
        (None, None) => {}
        (Some(cert), Some(client_key)) => {
            crate::features::sign::declared(cert.get_ref(), cert.span(), &key("client-cert"), secrets, source)?;
            crate::features::sign::declared(
                client_key.get_ref(),
                client_key.span(),
                &key("client-key"),
                secrets,
                source,
            )?;
            if upstream.base.scheme() != "https" {
                return Err(source
                    .error(
                        cert.span(),
                        key("client-cert"),
                        "a client certificate needs an https upstream",
                    )
                    .with_help("use an https:// upstream, or remove `client-cert` and `client-key`"));
            }
            used.insert(cert.get_ref().clone());
            used.insert(client_key.get_ref().clone());
            signing.client_cert = Some(crate::features::sign::ClientCert {
                cert: cert.get_ref().clone(),
                key: client_key.get_ref().clone(),
            });
        }
        (Some(one), None) | (None, Some(one)) => {
            let field = if raw.client_cert.is_some() {
                "client-key"
            } else {
                "client-cert"
            };
            return Err(source
                .error(
                    one.span(),
                    key(field),
                    format!("`client-cert` and `client-key` go together; `{field}` is missing"),
                )
                .with_help("name the secrets holding the PEM certificate chain and its private key"));
        }
    }

    let websocket = crate::features::websocket::WebSocketPolicy::from_raw(
        crate::features::websocket::RawWebSocket {
            websocket: &raw.websocket,
            websocket_idle_timeout: &raw.websocket_idle_timeout,
            websocket_max_duration: &raw.websocket_max_duration,
            websocket_max_message: &raw.websocket_max_message,
        },
        name,
        &methods,
        source,
    )?;
    // In the order they were always checked, so the first mistake reported stays the same.
    let connect_timeout = timeout(&raw.connect_timeout, "connect-timeout", DEFAULT_CONNECT_TIMEOUT)?;
    let response_timeout = timeout(&raw.response_timeout, "response-timeout", DEFAULT_RESPONSE_TIMEOUT)?;
    let response = crate::features::transform::ResponsePolicy::from_raw(raw.response.as_ref(), name, source)?;
    let request = crate::features::validate::RequestRules::from_raw(raw.request.as_ref(), name, source)?;
    let rate_limit = crate::features::ratelimit::RateLimit::from_raw(raw.rate_limit.as_ref(), name, source)?;
    let allowed_origins = match &raw.allowed_origins {
        None => None,
        Some(list) => Some(access::origins(list, &key("allowed-origins"), source)?),
    };
    let max_body = access::max_body(&raw.max_body, &key("max-body"), source)?;
    Ok(Route {
        base: RouteBase {
            name: name.to_string(),
            path: path.clone(),
            methods,
            upstream,
            headers,
            query,
            forward_headers,
            strip_headers,
            keep_set_cookie: raw.keep_set_cookie,
            ca_file,
            connect_timeout,
            response_timeout,
            secrets: used,
            allowed_origins,
            max_body,
            scrub_response: raw.scrub_response.unwrap_or(true),
            oauth2,
            allow_keyless: raw.allow_keyless,
        },
        response,
        request,
        rate_limit,
        signing,
        on_error: match &raw.on_error {
            Some(value) if raw.rate_limit.is_none() => {
                return Err(source
                    .error(
                        value.span(),
                        key("on-error"),
                        "`on-error` applies to the route's shared rate limit, and it has none",
                    )
                    .with_help("add a `rate-limit` or remove the key"));
            }
            Some(value) => Some(crate::features::store::OnError::from_raw(
                value,
                &key("on-error"),
                source,
            )?),
            None => None,
        },
        websocket,
    })
}

/// The parameter names of a route path, checking its shape: absolute, `{name}` segments, a
/// `{*rest}` only at the end.
fn path_params(path: &str) -> Result<Vec<String>, String> {
    if !path.starts_with('/') {
        return Err("a route path must start with `/`".to_string());
    }
    if path.starts_with(crate::features::admin::PREFIX) {
        return Err("paths under `/_secretproxy` are reserved for the proxy itself".to_string());
    }
    let mut params = Vec::new();
    let segments: Vec<&str> = path[1..].split('/').collect();
    for (index, segment) in segments.iter().enumerate() {
        if let Some(inner) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            let (catch_all, name) = match inner.strip_prefix('*') {
                Some(name) => (true, name),
                None => (false, inner),
            };
            if !is_name(name) {
                return Err(format!("`{segment}` is not a valid parameter"));
            }
            if catch_all && index + 1 != segments.len() {
                return Err(format!("`{segment}` must be the last segment"));
            }
            if params.iter().any(|p| p == name) {
                return Err(format!("parameter `{name}` appears twice"));
            }
            params.push(name.to_string());
        } else if segment.contains(['{', '}']) {
            return Err(format!(
                "`{segment}`: a parameter must be a whole segment, like `{{id}}`"
            ));
        } else if *segment == "." || *segment == ".." || (segment.is_empty() && index + 1 != segments.len()) {
            return Err("a route path may not have empty, `.` or `..` segments".to_string());
        }
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{BASE, err};
    use crate::config::{Config, DEFAULT_LISTEN};

    #[test]
    fn full_route_parses() {
        let config = Config::parse(
            &format!("{BASE}[routes.github]\npath = \"/api/github/{{*rest}}\"\nupstream = \"https://api.github.com/{{rest}}\"\nheaders = {{ Authorization = \"Bearer ${{gh}}\" }}\nquery = {{ key = \"${{gh}}\" }}\n"),
            "proxy.toml",
        )
        .unwrap();
        let route = config.route("github").unwrap();
        assert_eq!(route.methods, vec![Method::GET, Method::HEAD]);
        assert_eq!(route.secrets.iter().collect::<Vec<_>>(), ["gh"]);
        assert_eq!(config.server.listen.to_string(), DEFAULT_LISTEN);
    }

    #[test]
    fn unknown_secret_is_an_error() {
        let message = err(&format!(
            "{BASE}[routes.a]\npath = \"/a\"\nupstream = \"https://x/\"\nheaders = {{ X = \"${{nope}}\" }}\n"
        ));
        assert!(
            message.starts_with("proxy.toml:6:17: routes.a.headers.X: unknown secret `nope`"),
            "{message}"
        );
    }

    #[test]
    fn undefined_param_is_an_error() {
        let message = err("[routes.a]\npath = \"/a/{id}\"\nupstream = \"https://x/{rest}\"\n");
        assert!(
            message.contains("routes.a.upstream: `{rest}` is not a parameter of path"),
            "{message}"
        );
    }

    #[test]
    fn plain_http_needs_loopback_or_opt_in() {
        assert!(err("[routes.a]\npath = \"/a\"\nupstream = \"http://example.com/\"\n").contains("plain http"));
        Config::parse("[routes.a]\npath = \"/a\"\nupstream = \"http://127.0.0.1:9/\"\n", "t").unwrap();
        Config::parse(
            "[routes.a]\npath = \"/a\"\nupstream = \"http://example.com/\"\nallow-http = true\n",
            "t",
        )
        .unwrap();
    }

    #[test]
    fn auth_shorthands() {
        let config = Config::parse(
            &format!("{BASE}[routes.a]\npath = \"/a\"\nupstream = \"https://x/\"\nauth = {{ basic = {{ username = \"me\", password = \"gh\" }} }}\n"),
            "t",
        )
        .unwrap();
        assert_eq!(config.routes[0].headers[0].0, http::header::AUTHORIZATION);
        assert!(
            err(&format!(
                "{BASE}[routes.a]\npath = \"/a\"\nupstream = \"https://x/\"\nauth = {{ bearer = \"zz\" }}\n"
            ))
            .contains("unknown secret `zz`")
        );
    }

    #[test]
    fn reserved_prefix_and_bad_paths() {
        assert!(err("[routes.a]\npath = \"/_secretproxy/x\"\nupstream = \"https://x/\"\n").contains("reserved"));
        assert!(err("[routes.a]\npath = \"/a/{*rest}/b\"\nupstream = \"https://x/\"\n").contains("last segment"));
        assert!(err("[routes.a]\npath = \"/a/../b\"\nupstream = \"https://x/\"\n").contains("`..`"));
    }
}
