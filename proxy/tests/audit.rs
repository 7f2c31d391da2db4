//! The audit file: each operator action on the admin listener (key disable, enable, reset, and
//! reload, whatever its result) appends exactly one JSON line naming who, what, the pool, the
//! key's name and fingerprint, and the result; `[admin] audit_file` needs no `[registry]`; no
//! secret or fragment of one is ever written.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod support;

use http::Request;
use http_body_util::Full;
use keyrelay::config::Config;
use serde_json::Value;
use support::*;

/// A secret file only its owner may read, as keyrelay requires.
fn write_secret(path: &std::path::Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A config file with `file:` secrets (no process environment needed), keys k0 and k1, and
/// `[admin] audit_file`; `extra` ends the file.
fn write_config(dir: &std::path::Path, mock_url: &str, extra: &str) -> std::path::PathBuf {
    for (i, k) in KEYS.iter().enumerate() {
        write_secret(&dir.join(format!("key{i}")), k);
    }
    write_secret(&dir.join("token"), TOKEN);
    write_secret(&dir.join("admin"), ADMIN_TOKEN);
    let key = |i: usize| {
        format!(
            "{{ name = \"k{i}\", secret = \"file:{}\" }}",
            dir.join(format!("key{i}")).display()
        )
    };
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"file:{admin}\"\naudit_file = \"{audit}\"\n[[clients]]\nname = \"t\"\ntoken = \"file:{token}\"\n[[providers]]\nname = \"openai\"\nbase_url = \"{mock_url}/v1\"\nkeys = [{k0}, {k1}]\n{extra}",
        admin = dir.join("admin").display(),
        audit = dir.join("audit.jsonl").display(),
        token = dir.join("token").display(),
        k0 = key(0),
        k1 = key(1),
    );
    let path = dir.join("keyrelay.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Every line of the audit file, parsed (each must be one JSON object).
fn lines(dir: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

async fn post_admin(proxy: &keyrelay::Running, path: &str) -> Reply {
    let req = Request::post(format!("http://{}{path}", proxy.admin_addr().unwrap()))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .body(Full::default())
        .unwrap();
    send(&http_client(), req).await
}

/// POST `path`; the one audit line it appended.
async fn one_line(proxy: &keyrelay::Running, dir: &std::path::Path, path: &str) -> (u16, Value) {
    let before = lines(dir).len();
    let status = post_admin(proxy, path).await.status.as_u16();
    let after = lines(dir);
    assert_eq!(after.len(), before + 1, "{path}: {after:?}");
    let line = after[before].clone();
    assert_eq!(line["who"], "admin", "{line}");
    assert!(line["at"].as_str().unwrap().ends_with('Z'), "{line}");
    (status, line)
}

#[tokio::test]
async fn each_admin_action_appends_one_audit_line_and_no_secret() {
    let dir = std::env::temp_dir().join(format!("keyrelay-audit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mock = keyrelay_mock::MockUpstream::start().await.unwrap();
    let path = write_config(&dir, &mock.url(), "");
    let proxy = keyrelay::start_from_file(path.clone()).await.unwrap();
    let status = send(
        &http_client(),
        Request::get(format!(
            "http://{}/admin/api-keys/status",
            proxy.admin_addr().unwrap()
        ))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .body(Full::default())
        .unwrap(),
    )
    .await
    .json();
    let fingerprint = status["pools"][0]["keys"][0]["fingerprint"].clone();
    assert_eq!(fingerprint.as_str().unwrap().len(), 12);
    key_actions_are_audited(&proxy, &dir, &fingerprint).await;
    // Reloads: one line each, applied or refused.
    let (code, line) = one_line(&proxy, &dir, "/admin/reload").await;
    assert_eq!(code, 200);
    assert_eq!(
        (&line["action"], &line["result"]),
        (&"reload".into(), &"reloaded".into())
    );
    write_config(&dir, &mock.url(), "bogus_field = 1\n");
    let (code, line) = one_line(&proxy, &dir, "/admin/reload").await;
    assert_eq!(code, 400);
    assert_eq!(line["result"], "invalid_config", "{line}");
    assert_eq!(lines(&dir).len(), 8);
    let text = std::fs::read_to_string(dir.join("audit.jsonl")).unwrap();
    assert_no_secret(&text, "the audit file");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Disable, enable, reset (by name and by fingerprint), and refusals: one line each.
async fn key_actions_are_audited(
    proxy: &keyrelay::Running,
    dir: &std::path::Path,
    fingerprint: &Value,
) {
    for (action, result) in [
        ("disable", "disabled"),
        ("enable", "ready"),
        ("reset", "ready"),
    ] {
        let (code, line) = one_line(proxy, dir, &format!("/admin/keys/openai/k0/{action}")).await;
        assert_eq!(code, 200);
        assert_eq!(line["action"], action, "{line}");
        assert_eq!(line["provider"], "openai", "{line}");
        assert_eq!(line["key"], "k0", "{line}");
        assert_eq!(&line["fingerprint"], fingerprint, "{line}");
        assert_eq!(line["result"], result, "{line}");
    }
    // Named by fingerprint: the line still carries the key's name.
    let by_fp = format!(
        "/admin/keys/openai/{}/disable",
        fingerprint.as_str().unwrap()
    );
    let (_, line) = one_line(proxy, dir, &by_fp).await;
    assert_eq!(
        (&line["key"], &line["result"]),
        (&"k0".into(), &"disabled".into())
    );
    // Refused actions are audited too; a name that matched no key (here a pasted secret) is
    // not written.
    let pasted = format!("/admin/keys/openai/{}/disable", KEYS[1]);
    let (code, line) = one_line(proxy, dir, &pasted).await;
    assert_eq!(code, 404);
    assert_eq!(
        (&line["key"], &line["result"]),
        (&"".into(), &"no_such_key".into())
    );
    let (code, line) = one_line(proxy, dir, "/admin/keys/nowhere/k0/reset").await;
    assert_eq!(code, 404);
    assert_eq!(line["result"], "no_such_provider", "{line}");
    assert_eq!(line["provider"], "", "{line}");
}

#[test]
fn the_audit_file_is_one_whether_set_under_admin_or_registry() {
    let base = config_text("http://127.0.0.1:1", "", "");
    let registry = "\n[registry]\nmaster_key = \"env:KR_MASTER\"\naudit_file = \"/tmp/r.jsonl\"\n";
    let c = Config::from_toml_str(&format!("{base}{registry}"), &env()).unwrap();
    assert_eq!(
        c.admin.audit_file.as_deref(),
        Some(std::path::Path::new("/tmp/r.jsonl"))
    );
    let admin = base.replace(
        "token = \"env:KR_ADMIN\"",
        "token = \"env:KR_ADMIN\"\naudit_file = \"/tmp/a.jsonl\"",
    );
    let c = Config::from_toml_str(&admin, &env()).unwrap();
    assert!(c.registry.is_none());
    assert_eq!(
        c.admin.audit_file.as_deref(),
        Some(std::path::Path::new("/tmp/a.jsonl"))
    );
    let e = Config::from_toml_str(&format!("{admin}{registry}"), &env())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("registry.audit_file: differs from admin.audit_file"),
        "{e}"
    );
}

/// A key registered at run time (never in any config or environment).
const REGISTERED: &str = "sk-audit-registered-7Kp2Wq9Zx4";

#[tokio::test]
async fn registry_actions_write_one_line_each_to_the_admin_audit_file() {
    let dir = std::env::temp_dir().join(format!("keyrelay-audit-reg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mock = keyrelay_mock::MockUpstream::start().await.unwrap();
    let base = config_text(&mock.url(), "", "").replace(
        "token = \"env:KR_ADMIN\"",
        &format!(
            "token = \"env:KR_ADMIN\"\naudit_file = \"{}\"",
            dir.join("audit.jsonl").display()
        ),
    );
    let text = format!(
        "{base}\n[[tenants]]\nname = \"t0\"\n[[tenants.clients]]\nname = \"t0-c\"\ntoken = \"env:T0_TOKEN\"\n[[tenants.providers]]\nname = \"openai\"\nkeys = \"env:KR_KEY_3\"\n[registry]\nmaster_key = \"env:KR_MASTER\"\nfile = \"{}\"\n",
        dir.join("keys.json").display()
    );
    let env = env().with("T0_TOKEN", "kr-audit-tenant-client-5Hn8Jd2");
    let config = Config::from_toml_str(
        &text.replace("keys = \"env:KR_KEY_*\"", "keys = \"env:KR_KEY_1\""),
        &env,
    )
    .unwrap();
    let proxy = keyrelay::start(config).await.unwrap();
    let key = serde_json::json!({"name": "extra", "provider": "openai", "secret": REGISTERED});
    let added = call(&proxy, "POST", "/admin/tenants/t0/keys", Some(key)).await;
    assert_eq!(added.status, 200, "{}", added.text());
    let fingerprint = added.json()["fingerprint"].clone();
    let removed = call(&proxy, "DELETE", "/admin/tenants/t0/keys/extra", None).await;
    assert_eq!(removed.status, 200);
    let pasted = format!("/admin/tenants/t0/keys/{REGISTERED}");
    assert_eq!(call(&proxy, "DELETE", &pasted, None).await.status, 404);
    let all = lines(&dir);
    assert_eq!(all.len(), 3, "{all:?}");
    for (line, (action, key, fp, result)) in all.iter().zip([
        ("register", "extra", &fingerprint, "stored"),
        ("remove", "extra", &fingerprint, "removed"),
        ("remove", "", &"".into(), "not_found"),
    ]) {
        assert_eq!(line["who"], "admin", "{line}");
        assert_eq!(line["tenant"], "t0", "{line}");
        assert_eq!(line["action"], action, "{line}");
        assert_eq!(line["key"], key, "{line}");
        assert_eq!(&line["fingerprint"], fp, "{line}");
        assert_eq!(line["result"], result, "{line}");
    }
    let text = std::fs::read_to_string(dir.join("audit.jsonl")).unwrap();
    assert_no_secret(&text, "the audit file");
    for f in REGISTERED.as_bytes().windows(12) {
        assert!(!text.contains(std::str::from_utf8(f).unwrap()), "{text}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `method path` on the admin listener with the admin token, and a JSON body when given.
async fn call(proxy: &keyrelay::Running, method: &str, path: &str, body: Option<Value>) -> Reply {
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", proxy.admin_addr().unwrap()))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .body(Full::new(bytes::Bytes::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        )))
        .unwrap();
    send(&http_client(), req).await
}
