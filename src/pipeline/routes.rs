//! The route table: (method, path) -> route. Pure, no I/O.
//!
//! Paths are matched as they arrived (still percent-encoded), so parameter values are passed to
//! the upstream byte for byte; the request guard rejects path tricks before matching.

use http::Method;

use crate::config::{Config, Route};

/// What the table says about one request.
#[derive(Debug)]
pub enum Lookup<'a> {
    Found {
        route: &'a Route,
        /// The route's index in the config (and in the generation's plans).
        index: usize,
        /// Raw parameter values.
        params: matchit::Params<'a, 'a>,
    },
    /// The path matched, not the method; carries the methods the route takes.
    MethodNotAllowed {
        route: &'a Route,
        index: usize,
    },
    NotFound,
}

/// Routes by path, built once per config generation.
#[derive(Debug)]
pub struct RouteTable {
    router: matchit::Router<usize>,
    routes: Vec<Route>,
}

impl RouteTable {
    pub fn new(config: &Config) -> RouteTable {
        let mut router = matchit::Router::new();
        for (index, route) in config.routes.iter().enumerate() {
            router
                .insert(route.path.clone(), index)
                .expect("config validation inserts the same paths and rejects conflicts");
        }
        RouteTable {
            router,
            routes: config.routes.clone(),
        }
    }

    pub fn lookup<'a>(&'a self, method: &Method, path: &'a str) -> Lookup<'a> {
        let Ok(matched) = self.router.at(path) else {
            return Lookup::NotFound;
        };
        let index = *matched.value;
        let route = &self.routes[index];
        let allowed =
            route.methods.contains(method) || (*method == Method::HEAD && route.methods.contains(&Method::GET));
        if !allowed {
            return Lookup::MethodNotAllowed { route, index };
        }
        Lookup::Found {
            route,
            index,
            params: matched.params,
        }
    }

    /// The path of a route a missed `path` was probably meant for: the same path with a
    /// trailing segment more or less, or in another letter case (paths match case-sensitively).
    pub fn closest(&self, path: &str) -> Option<&str> {
        let trimmed = path.trim_end_matches('/');
        let candidates = [
            format!("{trimmed}/"),
            format!("{trimmed}/x"),
            trimmed.to_string(),
            path.to_ascii_lowercase(),
        ];
        candidates
            .iter()
            .filter(|candidate| candidate.as_str() != path && !candidate.is_empty())
            .find_map(|candidate| self.router.at(candidate).ok())
            .map(|matched| self.routes[*matched.value].path.as_str())
    }
}

/// The `Allow` header value for a route.
pub fn allow_header(route: &Route) -> String {
    let mut methods: Vec<&str> = route.methods.iter().map(Method::as_str).collect();
    if route.methods.contains(&Method::GET) && !route.methods.contains(&Method::HEAD) {
        methods.push("HEAD");
    }
    methods.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        let config = Config::parse(
            "[routes.gh]\npath = \"/api/gh/{*rest}\"\nupstream = \"https://api.github.com/{rest}\"\n\
             [routes.item]\npath = \"/items/{id}\"\nmethods = [\"PUT\", \"DELETE\"]\nupstream = \"https://x.example/items/{id}\"\n",
            "t",
        )
        .unwrap();
        RouteTable::new(&config)
    }

    #[test]
    fn matches_params_and_methods() {
        let table = table();
        match table.lookup(&Method::GET, "/api/gh/user/repos") {
            Lookup::Found { route, index, params } => {
                assert_eq!((route.name.as_str(), index), ("gh", 0));
                assert_eq!(params.iter().collect::<Vec<_>>(), vec![("rest", "user/repos")]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(table.lookup(&Method::HEAD, "/api/gh/x"), Lookup::Found { .. }));
        match table.lookup(&Method::GET, "/items/7") {
            Lookup::MethodNotAllowed { route, index } => {
                assert_eq!((allow_header(route).as_str(), index), ("PUT, DELETE", 1));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(table.lookup(&Method::GET, "/nope"), Lookup::NotFound));
    }

    #[test]
    fn a_near_miss_names_the_route() {
        let table = table();
        assert_eq!(table.closest("/api/gh"), Some("/api/gh/{*rest}"));
        assert_eq!(table.closest("/API/GH/user"), Some("/api/gh/{*rest}"));
        assert_eq!(table.closest("/items/7/"), Some("/items/{id}"));
        assert_eq!(table.closest("/elsewhere"), None);
    }
}
