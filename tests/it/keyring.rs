//! Secrets from the real Secret Service (gnome-keyring on the test script's private bus).

use crate::harness::{TestProxy, Upstream, client, require_session_bus, secret_tool_store, unique};

#[tokio::test]
async fn keyring_secret_is_injected() {
    require_session_bus();
    let account = unique("gh");
    let value = format!("keyring-value-{account}");
    secret_tool_store("secretproxy", &account, &value);
    let other_account = unique("other");
    secret_tool_store("some-other-tool", &other_account, "other-tool-value");

    let upstream = Upstream::echo().await;
    let proxy = TestProxy::builder()
        .secret_toml(&format!(
            "[secrets.gh]\nkeyring = \"{account}\"\n[secrets.reused]\nkeyring = {{ service = \"some-other-tool\", account = \"{other_account}\" }}\n"
        ))
        .toml(&format!(
            "[routes.gh]\npath = \"/gh/{{*rest}}\"\nupstream = \"{}/{{rest}}\"\nheaders = {{ Authorization = \"token ${{gh}}\", X-Other = \"${{reused}}\" }}\n",
            upstream.url()
        ))
        .start()
        .await;
    let response = client().get(proxy.url("/gh/user")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let seen = upstream.only();
    assert_eq!(seen.target, "/user");
    assert_eq!(seen.header("authorization"), Some(format!("token {value}").as_str()));
    assert_eq!(seen.header("x-other"), Some("other-tool-value"));
}

#[tokio::test]
async fn missing_keyring_entry_answers_503_with_the_command_that_sets_it() {
    require_session_bus();
    let account = unique("never-stored");
    let upstream = Upstream::echo().await;
    let proxy = TestProxy::builder()
        .secret_toml(&format!("[secrets.absent]\nkeyring = \"{account}\"\n"))
        .toml(&format!(
            "[routes.r]\npath = \"/r\"\nupstream = \"{}/r\"\nauth = {{ bearer = \"absent\" }}\n",
            upstream.url()
        ))
        .start()
        .await;
    let response = client().get(proxy.url("/r")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(body["code"], "secret_missing");
    let hint = body["hint"].as_str().unwrap();
    assert!(
        hint.contains(&format!(
            "secret-tool store --label='secretproxy absent' service secretproxy username {account}"
        )),
        "{hint}"
    );
    assert!(upstream.received().is_empty());
}
