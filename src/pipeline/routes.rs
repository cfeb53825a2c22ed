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
        /// Raw parameter values, in the path's order.
        params: Vec<(&'a str, &'a str)>,
    },
    /// The path matched, not the method; carries the methods the route takes.
    MethodNotAllowed {
        route: &'a Route,
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
        let route = &self.routes[*matched.value];
        let allowed =
            route.methods.contains(method) || (*method == Method::HEAD && route.methods.contains(&Method::GET));
        if !allowed {
            return Lookup::MethodNotAllowed { route };
        }
        Lookup::Found {
            route,
            params: matched.params.iter().collect(),
        }
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
            Lookup::Found { route, params } => {
                assert_eq!(route.name, "gh");
                assert_eq!(params, vec![("rest", "user/repos")]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(table.lookup(&Method::HEAD, "/api/gh/x"), Lookup::Found { .. }));
        match table.lookup(&Method::GET, "/items/7") {
            Lookup::MethodNotAllowed { route } => assert_eq!(allow_header(route), "PUT, DELETE"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(table.lookup(&Method::GET, "/nope"), Lookup::NotFound));
    }
}
