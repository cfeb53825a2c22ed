//! Property tests of config parsing: random edits of the example config and random boundary
//! settings never panic, and every error names `file:line:column` and a key.

use proptest::prelude::*;
use secretproxy::config::Config;

const EXAMPLE: &str = include_str!("../../proxy.toml.example");

fn assert_located(text: &str) -> Result<(), TestCaseError> {
    match Config::parse(text, "fuzz.toml") {
        Ok(config) => {
            prop_assert!(config.server.access.listen_refusal(config.server.listen).is_none());
            for route in &config.routes {
                if let Some(narrowed) = &route.allowed_origins {
                    prop_assert!(
                        narrowed
                            .iter()
                            .all(|o| config.server.access.allowed_origins.contains(o))
                    );
                }
            }
        }
        Err(error) => {
            let message = error.to_string();
            let mut parts = message.splitn(4, ':');
            prop_assert_eq!(parts.next(), Some("fuzz.toml"), "{}", message);
            prop_assert!(parts.next().is_some_and(|l| l.parse::<usize>().is_ok()), "{}", message);
            prop_assert!(parts.next().is_some_and(|c| c.parse::<usize>().is_ok()), "{}", message);
        }
    }
    Ok(())
}

/// One edit of a text: delete, insert or replace a run of characters at a position.
fn edit() -> impl Strategy<Value = (usize, usize, &'static str)> {
    (
        0usize..EXAMPLE.len(),
        0usize..8,
        prop::sample::select(vec![
            "",
            "\"",
            "=",
            "[",
            "]",
            "{",
            "}",
            "\n",
            "${",
            "}",
            "..",
            "/",
            "0.0.0.0",
            "*",
            "#",
            ",",
            "'''",
            "1e9",
            "-1",
            "allowed-origins = [\"*\"]\n",
            "max-body = \"10 parsecs\"\n",
            "client-token = \"${nope}\"\n",
        ]),
    )
}

fn apply(edits: &[(usize, usize, &str)]) -> String {
    let mut text = EXAMPLE.to_string();
    for (at, delete, insert) in edits {
        let mut start = (*at).min(text.len());
        while !text.is_char_boundary(start) {
            start -= 1;
        }
        let mut end = (start + delete).min(text.len());
        while !text.is_char_boundary(end) {
            end += 1;
        }
        text.replace_range(start..end, insert);
    }
    text
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn edited_example_never_panics_and_errors_are_located(edits in prop::collection::vec(edit(), 1..4)) {
        assert_located(&apply(&edits))?;
    }

    #[test]
    fn boundary_settings_are_validated(
        origins in prop::collection::vec(prop::sample::select(vec![
            "http://localhost:5173", "HTTP://LOCALHOST:5173/", "https://app.example", "*", "null",
            "http://x/path", "localhost:3000", "chrome-extension://abc", "", "http://[::1]:80",
        ]), 0..4),
        route_origins in prop::option::of(prop::collection::vec(prop::sample::select(vec![
            "http://localhost:5173", "https://other.example",
        ]), 0..2)),
        listen in prop::sample::select(vec!["127.0.0.1:0", "[::1]:8787", "0.0.0.0:8787", "192.168.1.5:80"]),
        remote in any::<bool>(),
        token in any::<bool>(),
        max_body in prop::sample::select(vec!["\"10MiB\"", "1024", "-5", "\"unlimited\"", "\"1 GB\"", "\"x\"", "0"]),
        header_size in prop::sample::select(vec!["\"32KiB\"", "100", "\"2MiB\"", "65536"]),
    ) {
        let list = |items: &[&str]| items.iter().map(|o| format!("{o:?}")).collect::<Vec<_>>().join(", ");
        let mut text = format!(
            "[secrets.t]\nenv = \"T\"\n[server]\nlisten = \"{listen}\"\nallowed-origins = [{}]\nallow-remote = {remote}\nmax-header-size = {header_size}\n",
            list(&origins)
        );
        if token {
            text.push_str("client-token = \"${t}\"\n");
        }
        text.push_str(&format!("[routes.a]\npath = \"/a\"\nupstream = \"https://example.com/\"\nmax-body = {max_body}\n"));
        if let Some(narrowed) = &route_origins {
            text.push_str(&format!("allowed-origins = [{}]\n", list(narrowed)));
        }
        assert_located(&text)?;
    }
}
