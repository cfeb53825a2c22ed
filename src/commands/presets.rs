//! Provider presets for `route add NAME --preset PRESET`: the upstream, methods and the way each
//! API expects its key, so a user does not have to look them up. The README's presets table
//! lists the same data; a test per preset checks that the written route injects as the provider
//! expects.

use crate::config::edit::{NewRoute, NewTokenSource};

/// How a provider takes its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// `Authorization: Bearer KEY`.
    Bearer,
    /// A header holding the bare key.
    Header(&'static str),
    /// A query parameter holding the key.
    Query(&'static str),
    /// An OAuth2 client-credentials token minted from a client id and secret at `token_url`
    /// (`[oauth2.NAME]`), sent as `Authorization: Bearer TOKEN`.
    OAuth2 { token_url: &'static str },
}

/// One provider.
#[derive(Debug, Clone, Copy)]
pub struct Preset {
    pub id: &'static str,
    pub provider: &'static str,
    /// The upstream with `{rest}` where the client path's tail goes.
    pub upstream: &'static str,
    pub methods: &'static [&'static str],
    pub auth: Auth,
    /// Headers the provider requires besides the key (versions).
    pub headers: &'static [(&'static str, &'static str)],
    /// A path under the route to try first, for the hint after `route add`.
    pub example: &'static str,
}

pub const PRESETS: &[Preset] = &[
    Preset {
        id: "openai",
        provider: "OpenAI",
        upstream: "https://api.openai.com/{rest}",
        methods: &["GET", "POST"],
        auth: Auth::Bearer,
        headers: &[],
        example: "v1/models",
    },
    Preset {
        id: "anthropic",
        provider: "Anthropic",
        upstream: "https://api.anthropic.com/{rest}",
        methods: &["GET", "POST"],
        auth: Auth::Header("x-api-key"),
        headers: &[("anthropic-version", "2023-06-01")],
        example: "v1/models",
    },
    Preset {
        id: "github",
        provider: "GitHub",
        upstream: "https://api.github.com/{rest}",
        methods: &["GET", "HEAD"],
        auth: Auth::Bearer,
        headers: &[("X-GitHub-Api-Version", "2022-11-28")],
        example: "user",
    },
    Preset {
        id: "stripe",
        provider: "Stripe",
        upstream: "https://api.stripe.com/{rest}",
        methods: &["GET", "POST", "DELETE"],
        auth: Auth::Bearer,
        headers: &[],
        example: "v1/balance",
    },
    Preset {
        id: "gemini",
        provider: "Google Gemini",
        upstream: "https://generativelanguage.googleapis.com/{rest}",
        methods: &["GET", "POST"],
        auth: Auth::Header("x-goog-api-key"),
        headers: &[],
        example: "v1beta/models",
    },
    Preset {
        id: "mistral",
        provider: "Mistral",
        upstream: "https://api.mistral.ai/{rest}",
        methods: &["GET", "POST"],
        auth: Auth::Bearer,
        headers: &[],
        example: "v1/models",
    },
    Preset {
        id: "sendgrid",
        provider: "SendGrid",
        upstream: "https://api.sendgrid.com/{rest}",
        methods: &["GET", "POST"],
        auth: Auth::Bearer,
        headers: &[],
        example: "v3/scopes",
    },
    Preset {
        id: "openweathermap",
        provider: "OpenWeather",
        upstream: "https://api.openweathermap.org/{rest}",
        methods: &["GET"],
        auth: Auth::Query("appid"),
        headers: &[],
        example: "data/2.5/weather?q=Berlin",
    },
    Preset {
        id: "paypal",
        provider: "PayPal",
        upstream: "https://api-m.paypal.com/{rest}",
        methods: &["GET", "POST", "PATCH", "DELETE"],
        auth: Auth::OAuth2 {
            token_url: "https://api-m.paypal.com/v1/oauth2/token",
        },
        headers: &[],
        example: "v2/checkout/orders/ORDER-ID",
    },
];

/// The preset called `id`, or an error that lists them all.
pub fn find(id: &str) -> anyhow::Result<&'static Preset> {
    PRESETS.iter().find(|p| p.id.eq_ignore_ascii_case(id)).ok_or_else(|| {
        let ids: Vec<&str> = PRESETS.iter().map(|p| p.id).collect();
        anyhow::anyhow!(
            "no preset `{id}`; presets are {}. For another API give --path, --upstream and --bearer/--header/--query",
            ids.join(", ")
        )
    })
}

impl Preset {
    /// The client path for a route called `route`.
    pub fn path(&self, route: &str) -> String {
        format!("/api/{route}/{{*rest}}")
    }

    /// The route as `route add` writes it, injecting secret `secret`.
    pub fn route(&self, route: &str, secret: &str) -> NewRoute {
        let reference = format!("${{{secret}}}");
        let mut headers = Vec::new();
        let mut query = Vec::new();
        match self.auth {
            Auth::Bearer => headers.push(("Authorization".to_string(), format!("Bearer {reference}"))),
            Auth::Header(name) => headers.push((name.to_string(), reference)),
            Auth::Query(name) => query.push((name.to_string(), reference)),
            Auth::OAuth2 { .. } => {}
        }
        headers.extend(self.headers.iter().map(|(n, v)| (n.to_string(), v.to_string())));
        NewRoute {
            name: route.to_string(),
            path: self.path(route),
            upstream: self.upstream.to_string(),
            methods: self.methods.iter().map(|m| m.to_string()).collect(),
            headers,
            query,
            allow_http: false,
            oauth2: matches!(self.auth, Auth::OAuth2 { .. }).then(|| route.to_string()),
        }
    }

    /// The secrets the route needs, for `secret`: the key itself, or an OAuth2 client's id and
    /// secret (`SECRET-client-id`, `SECRET-client-secret`).
    pub fn secrets(&self, secret: &str) -> Vec<String> {
        match self.auth {
            Auth::OAuth2 { .. } => vec![format!("{secret}-client-id"), format!("{secret}-client-secret")],
            _ => vec![secret.to_string()],
        }
    }

    /// The `[oauth2.ROUTE]` token source an OAuth2 preset needs.
    pub fn token_source(&self, route: &str, secret: &str) -> Option<NewTokenSource> {
        let Auth::OAuth2 { token_url } = self.auth else {
            return None;
        };
        Some(NewTokenSource {
            name: route.to_string(),
            token_url: token_url.to_string(),
            client_id: format!("${{{secret}-client-id}}"),
            client_secret: format!("${{{secret}-client-secret}}"),
        })
    }

    /// How the key is sent, for the README table and `--help`.
    pub fn auth_text(&self) -> String {
        match self.auth {
            Auth::Bearer => "`Authorization: Bearer KEY`".to_string(),
            Auth::Header(name) => format!("`{name}: KEY`"),
            Auth::Query(name) => format!("`?{name}=KEY`"),
            Auth::OAuth2 { .. } => "`Authorization: Bearer TOKEN`, an OAuth2 client-credentials token".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_makes_a_valid_route() {
        for preset in PRESETS {
            let route = preset.route(preset.id, preset.id);
            let secrets: String = preset
                .secrets(preset.id)
                .iter()
                .map(|s| format!("[secrets.{s}]\nenv = \"K\"\n"))
                .collect();
            let oauth2 = preset.token_source(preset.id, preset.id).map_or(String::new(), |t| {
                format!(
                    "[oauth2.{}]\ntoken-url = \"{}\"\nclient-id = \"{}\"\nclient-secret = \"{}\"\n",
                    t.name, t.token_url, t.client_id, t.client_secret
                )
            });
            let auth = route
                .oauth2
                .as_ref()
                .map_or(String::new(), |name| format!("auth = {{ oauth2 = \"{name}\" }}\n"));
            let text = format!(
                "{secrets}{oauth2}[routes.{id}]\n{auth}path = \"{path}\"\nupstream = \"{up}\"\nmethods = {methods:?}\nheaders = {{ {headers} }}\nquery = {{ {query} }}\n",
                id = preset.id,
                path = route.path,
                up = route.upstream,
                methods = route.methods,
                headers = route
                    .headers
                    .iter()
                    .map(|(n, v)| format!("{n} = \"{v}\""))
                    .collect::<Vec<_>>()
                    .join(", "),
                query = route
                    .query
                    .iter()
                    .map(|(n, v)| format!("{n} = \"{v}\""))
                    .collect::<Vec<_>>()
                    .join(", "),
            );
            let config =
                crate::config::Config::parse(&text, "t").unwrap_or_else(|e| panic!("{}: {e}\n{text}", preset.id));
            match preset.auth {
                Auth::OAuth2 { .. } => assert_eq!(config.routes[0].oauth2.as_deref(), Some(preset.id)),
                _ => assert!(config.routes[0].secrets.contains(preset.id), "{}", preset.id),
            }
        }
        assert!(find("OpenAI").is_ok());
        assert!(
            find("nope")
                .unwrap_err()
                .to_string()
                .contains("presets are openai, anthropic")
        );
    }
}
