//! Configuration: every bad case refused with its path; `keyrelay check` prints no secret.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod support;

use keyrelay::config::{Config, ConfigErrors, MapEnv};
use std::process::Command;
use support::*;

fn load(text: &str) -> Result<Config, ConfigErrors> {
    Config::from_toml_str(text, &env())
}

fn problems(text: &str) -> ConfigErrors {
    match load(text) {
        Ok(_) => panic!("config was accepted:\n{text}"),
        Err(e) => e,
    }
}

fn assert_problem(text: &str, expected: &str) {
    let e = problems(text);
    assert!(e.mentions(expected), "expected `{expected}` in:\n{e}");
}

const CLIENT: &str = "[[clients]]\nname = \"c\"\ntoken = \"env:KR_TOKEN\"\n";

fn provider(lines: &str) -> String {
    format!("{CLIENT}[[providers]]\nname = \"openai\"\nbase_url = \"https://api.openai.com/v1\"\n{lines}\n")
}

#[test]
fn good_config_loads_with_defaults() {
    let c = load(&provider("keys = \"env:KR_KEY_*\"")).unwrap();
    let p = &c.providers[0];
    assert_eq!(p.route, "/v1");
    assert_eq!(p.keys.len(), 3);
    assert_eq!(p.keys[0].name, "KR_KEY_1");
    assert_eq!(p.max_attempts, 3);
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.server.max_body_bytes, 10 * 1024 * 1024);
}

#[test]
fn the_example_config_toml_is_valid() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../config.toml")).unwrap();
    let env = MapEnv::default()
        .with("KEYRELAY_TOKEN_MY_APP", "tok-my-app")
        .with("OPENAI_API_KEY_1", "sk-one")
        .with("OPENAI_API_KEY_2", "sk-two")
        .with("ANTHROPIC_KEY_A", "ak-a")
        .with("ANTHROPIC_KEY_B", "ak-b");
    let c = Config::from_toml_str(&text, &env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.providers.len(), 2);
    assert_eq!(c.providers[1].keys[1].weight, 2);
    assert_eq!(c.providers[1].route, "/anthropic");
}

#[test]
fn missing_env_var_is_named_with_its_path() {
    let text = provider(
        "keys = [{ name = \"a\", secret = \"env:KR_KEY_1\" }, { name = \"b\", secret = \"env:OPENAI_API_KEY_2\" }]",
    );
    assert_problem(
        &text,
        "providers[0].keys[1].secret: env var OPENAI_API_KEY_2 is not set",
    );
}

#[test]
fn glob_with_no_match_is_refused() {
    assert_problem(
        &provider("keys = \"env:NOTHING_HERE_*\""),
        "providers[0].keys: no env var matches NOTHING_HERE_*",
    );
}

#[test]
fn literal_secret_is_refused_without_echoing_it() {
    let e = problems(&provider(
        "keys = [{ name = \"a\", secret = \"sk-literal-0123456789abcdef\" }]",
    ));
    assert!(
        e.mentions("providers[0].keys[0].secret: literal secrets are not allowed"),
        "{e}"
    );
    assert!(!e.to_string().contains("0123456789"), "{e}");
    let e = problems(&format!(
        "[[clients]]\nname = \"c\"\ntoken = \"plain-token-value\"\n{}",
        provider("keys = \"env:KR_KEY_*\"")
    ));
    assert!(
        e.mentions("clients[0].token: literal secrets are not allowed"),
        "{e}"
    );
    assert!(!e.to_string().contains("plain-token-value"));
}

#[test]
fn unknown_fields_are_named() {
    let text = format!(
        "[server]\nlisen = \"x\"\n{}",
        provider("keys = [{ secret = \"env:KR_KEY_1\", rmp = 3 }]\nbogus = 1")
    );
    let e = problems(&text);
    assert!(e.mentions("server.lisen: unknown field"), "{e}");
    assert!(e.mentions("providers[0].bogus: unknown field"), "{e}");
    assert!(e.mentions("providers[0].keys[0].rmp: unknown field"), "{e}");
}

#[test]
fn provider_with_no_keys_is_refused() {
    assert_problem(
        &provider("keys = []"),
        "providers[0].keys: the provider has no keys",
    );
    assert_problem(&provider(""), "providers[0].keys: missing");
}

#[test]
fn duplicate_routes_are_refused() {
    let text = format!(
        "{}[[providers]]\nname = \"other\"\nbase_url = \"http://127.0.0.1:1\"\nroute = \"/v1/\"\nkeys = \"env:KR_KEY_1\"\n",
        provider("keys = \"env:KR_KEY_2\"")
    );
    assert_problem(&text, "providers[1].route: duplicate route \"/v1\"");
}

#[test]
fn bad_url_zero_limit_and_bad_values_are_each_named() {
    let text = format!(
        "{CLIENT}[[providers]]\nname = \"p\"\nbase_url = \"not a url\"\nrpm = 0\nmax_attempts = 0\nstrategy = \"random\"\nauth = \"basic\"\ncooldown = \"30\"\nkeys = [{{ secret = \"env:KR_KEY_1\", weight = -1 }}]\n"
    );
    let e = problems(&text);
    for expected in [
        "providers[0].base_url: \"not a url\" is not a URL",
        "providers[0].rpm: must be a whole number from 1",
        "providers[0].max_attempts: must be a whole number from 1",
        "providers[0].strategy: \"random\" is not one of",
        "providers[0].auth: \"basic\" is not one of",
        "providers[0].cooldown: \"30\" needs a unit",
        "providers[0].keys[0].weight: must be a whole number from 1",
    ] {
        assert!(e.mentions(expected), "expected `{expected}` in:\n{e}");
    }
    assert_eq!(e.0.len(), 7, "{e}");
    assert_problem(
        &provider("base_url = \"ftp://x\"\nkeys = \"env:KR_KEY_1\"")
            .replace("base_url = \"https://api.openai.com/v1\"\n", ""),
        "must start with http:// or https://",
    );
}

#[test]
fn no_clients_needs_explicit_opt_in_and_loopback() {
    let p = "[[providers]]\nname = \"openai\"\nbase_url = \"http://127.0.0.1:1\"\nkeys = \"env:KR_KEY_1\"\n";
    assert_problem(p, "clients: no clients configured");
    assert!(load(&format!("[server]\nallow_unauthenticated = true\n{p}")).is_ok());
    assert_problem(
        &format!("[server]\nlisten = \"0.0.0.0:8080\"\nallow_unauthenticated = true\n{p}"),
        "server.allow_unauthenticated: refused on the non-loopback listener 0.0.0.0:8080",
    );
}

#[test]
fn duplicate_secrets_and_names_are_refused() {
    let e = problems(&provider("keys = [{ name = \"a\", secret = \"env:KR_KEY_1\" }, { name = \"a\", secret = \"env:KR_KEY_1\" }]"));
    assert!(e.mentions("duplicate key name \"a\""), "{e}");
    assert!(e.mentions("have the same secret"), "{e}");
}

#[test]
fn broken_toml_is_reported() {
    assert_problem("[server\nlisten = 1", "not valid config TOML");
}

fn keyrelay(args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keyrelay"));
    cmd.args(args)
        .env_remove("KEYRELAY_CONFIG")
        .current_dir(std::env::temp_dir());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn check_prints_pools_with_fingerprints_and_never_a_secret() {
    let dir = std::env::temp_dir().join(format!("keyrelay-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("good.toml");
    std::fs::write(&path, provider("keys = \"env:KR_KEY_*\"")).unwrap();
    let envs = [
        ("KR_TOKEN", TOKEN),
        ("KR_KEY_1", KEYS[0]),
        ("KR_KEY_2", KEYS[1]),
    ];
    let out = keyrelay(&["check", "--config", path.to_str().unwrap()], &envs);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("KR_KEY_1") && stdout.contains(&keyrelay_pool::fingerprint(KEYS[0])),
        "{stdout}"
    );
    for secret in [TOKEN, KEYS[0], KEYS[1]] {
        for frag in secret.as_bytes().windows(12) {
            let frag = std::str::from_utf8(frag).unwrap();
            assert!(
                !stdout.contains(frag) && !stderr.contains(frag),
                "secret fragment {frag} printed"
            );
        }
    }

    let bad = dir.join("bad.toml");
    std::fs::write(&bad, provider("keys = \"env:MISSING_*\"\nrpm = 0")).unwrap();
    let out = keyrelay(&["check", "--config", bad.to_str().unwrap()], &envs);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("providers[0].keys: no env var matches MISSING_*"),
        "{stderr}"
    );
    assert!(stderr.contains("providers[0].rpm"), "{stderr}");

    let out = keyrelay(&["--config", bad.to_str().unwrap()], &envs);
    assert!(!out.status.success(), "keyrelay started on a bad config");
    assert!(String::from_utf8_lossy(&out.stderr).contains("providers[0].rpm"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn store_section_is_checked() {
    let base = provider("keys = \"env:KR_KEY_*\"");
    let c = load(&format!("{base}[store]\nurl = \"redis://127.0.0.1:6390/0\"\ninstances = 3\ncommand_timeout = \"30ms\"\n")).unwrap();
    let s = c.store.unwrap();
    assert_eq!(s.display, "127.0.0.1:6390");
    assert_eq!(s.settings.instances, 3);
    assert_eq!(
        s.settings.command_timeout,
        std::time::Duration::from_millis(30)
    );
    assert!(load(&base).unwrap().store.is_none(), "no [store]: embedded");

    let e = problems(&format!(
        "{base}[store]\nurl = \"redis://:hunter2secret@127.0.0.1:6390\"\n"
    ));
    assert!(
        e.mentions("store.url: a password in the config is a literal secret"),
        "{e}"
    );
    assert!(!e.to_string().contains("hunter2"), "{e}");
    assert_problem(
        &format!("{base}[store]\nurl = \"http://127.0.0.1:6390\"\n"),
        "store.url: must be a redis:// or rediss:// URL",
    );
    assert_problem(
        &format!("{base}[store]\nurl = \"redis://a:1\"\ncluster = [\"redis://b:2\"]\n"),
        "store: give either url or cluster, not both",
    );
    assert_problem(
        &format!("{base}[store]\ncluster = [\"redis://b:2\", \"nope\"]\n"),
        "store.cluster[1]: must be a redis:// or rediss:// URL",
    );
    assert_problem(
        &format!("{base}[store]\nurl = \"redis://a:1\"\npassword = \"env:NO_SUCH_PW\"\n"),
        "store.password: env var NO_SUCH_PW is not set",
    );
    assert_problem(
        &format!("{base}[store]\nurl = \"redis://a:1\"\ncommand_timeout = \"0ms\"\n"),
        "store.command_timeout: must be more than zero",
    );
    assert_problem(
        &format!("{base}[store]\nurl = \"redis://a:1\"\ntimeout = \"1s\"\n"),
        "store.timeout: unknown field",
    );

    let env = env().with("REDIS_PW", "p@ss word");
    let c = Config::from_toml_str(
        &format!("{base}[store]\nurl = \"rediss://cache:6380\"\npassword = \"env:REDIS_PW\"\n"),
        &env,
    )
    .unwrap();
    let s = c.store.unwrap();
    assert_eq!(s.display, "cache:6380");
    assert!(
        !format!("{:?}", s.target).contains("p%40ss"),
        "target debug shows the password"
    );
}

#[test]
fn dotenv_in_the_working_directory_is_loaded() {
    let dir = std::env::temp_dir().join(format!("keyrelay-dotenv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("keyrelay.toml"),
        provider("keys = \"env:KR_DOTENV_KEY_*\"").replace("env:KR_TOKEN", "env:KR_DOTENV_TOKEN"),
    )
    .unwrap();
    std::fs::write(
        dir.join(".env"),
        "KR_DOTENV_TOKEN=tok-from-dotenv\nKR_DOTENV_KEY_1=sk-from-dotenv-1\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keyrelay"))
        .args(["check", "--config", "keyrelay.toml"])
        .env_remove("KEYRELAY_CONFIG")
        .current_dir(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("KR_DOTENV_KEY_1"), "{stdout}");
    assert!(!stdout.contains("from-dotenv"), "secret printed: {stdout}");
    std::fs::remove_dir_all(&dir).unwrap();
}
