//! Configuration: every bad case refused with its path; `keyrelay check` prints no secret.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_lines,
    reason = "tests; a scenario reads best whole"
)]

mod support;

use keyrelay::config::{Config, ConfigError, MapEnv};
use std::process::Command;
use support::*;

fn load(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str(text, &env())
}

fn problems(text: &str) -> ConfigError {
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
    assert_eq!(c.server.max_body_bytes, 512 * 1024 * 1024);
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
    assert_eq!(e.problems().len(), 7, "{e}");
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

/// `keyrelay check` names each key's `tpm` and key group where it has them, for a shared pool
/// and a tenant's alike.
#[test]
fn check_names_each_keys_tpm_and_group() {
    let dir = std::env::temp_dir().join(format!("keyrelay-check-groups-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("groups.toml");
    let keys = r#"keys = [{ name = "live-1", secret = "env:KR_KEY_1", tpm = 500, group = "live" }, { name = "plain", secret = "env:KR_KEY_2" }]"#;
    let tenant = r#"
[[tenants]]
name = "acme"
[[tenants.clients]]
name = "acme-app"
token = "env:KR_TENANT_TOKEN"
[[tenants.providers]]
name = "openai"
keys = [{ name = "acme-1", secret = "env:KR_KEY_3", group = "batch" }]
"#;
    std::fs::write(&path, format!("{}{tenant}", provider(keys))).unwrap();
    let envs = [
        ("KR_TOKEN", TOKEN),
        ("KR_KEY_1", KEYS[0]),
        ("KR_KEY_2", KEYS[1]),
        ("KR_KEY_3", KEYS[2]),
        ("KR_TENANT_TOKEN", "kr-check-tenant-token-7d2f9a41c6"),
    ];
    let out = keyrelay(&["check", "--config", path.to_str().unwrap()], &envs);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = |name: &str| {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("key {name} ")))
            .unwrap_or_else(|| panic!("no line for key {name}: {stdout}"))
            .to_owned()
    };
    assert!(line("live-1").ends_with("tpm 500  group live"), "{stdout}");
    assert!(
        !line("plain").contains("group") && !line("plain").contains("tpm"),
        "{stdout}"
    );
    assert!(line("acme-1").ends_with("group batch"), "{stdout}");
    assert_no_secret(&stdout, "keyrelay check's output");
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
    assert_no_secret(&stdout, "keyrelay check's output");
    assert_no_secret(&stderr, "keyrelay check's log");

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

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config.toml");

/// One `Default: <value>` documented in the example config, and the field it belongs to.
#[derive(Debug)]
struct Documented {
    section: String,
    field: String,
    value: toml::Value,
}

/// Every documented default in `text`: a comment holding `Default: <TOML value>` belongs to the
/// next `field = value` line, written out or commented out (`# field = value`); sections
/// commented out (`# [store]`) count as sections.
fn documented_defaults(text: &str) -> Vec<Documented> {
    let mut out = Vec::new();
    let mut section = String::new();
    let mut pending: Option<toml::Value> = None;
    for line in text.lines() {
        let bare = line.trim_start_matches('#').trim();
        if bare.starts_with('[') {
            section = bare.trim_matches(['[', ']']).to_owned();
            assert!(
                pending.is_none(),
                "a default documented for no field before [{section}]"
            );
            continue;
        }
        if let Some((_, literal)) = bare.split_once("Default: ") {
            let parsed: toml::Table = toml::from_str(&format!("v = {}", literal.trim()))
                .unwrap_or_else(|e| panic!("`{line}`: the default is not a TOML value: {e}"));
            pending = Some(parsed["v"].clone());
            continue;
        }
        let field_line = toml::from_str::<toml::Table>(bare)
            .ok()
            .filter(|t| t.len() == 1);
        if let (Some(t), Some(value)) = (field_line, pending.take()) {
            let field = t.keys().next().unwrap().clone();
            out.push(Documented {
                section: section.clone(),
                field,
                value,
            });
        }
    }
    out
}

/// The smallest config that loads, with `[store]` so its defaults apply too.
fn minimal() -> toml::Table {
    toml::from_str(
        "[[clients]]\nname = \"c\"\ntoken = \"env:KR_TOKEN\"\n\
         [[providers]]\nname = \"openai\"\nbase_url = \"http://127.0.0.1:1\"\nkeys = \"env:KR_KEY_1\"\n\
         [store]\nurl = \"redis://127.0.0.1:6390\"\n\
         [[tenants]]\nname = \"t\"\n[[tenants.clients]]\nname = \"tc\"\ntoken = \"env:KR_ADMIN\"\n\
         [[tenants.providers]]\nname = \"openai\"\nkeys = \"env:KR_KEY_2\"\n\
         [registry]\nmaster_key = \"env:KR_MASTER\"\n",
    )
    .unwrap()
}

/// `minimal()` with `section.field = value` set (`providers` means the first provider).
fn with(d: &Documented, value: toml::Value) -> String {
    let mut t = minimal();
    // A dotted section (`tenants.providers`) is walked down, through each array's first item.
    let mut table = &mut t;
    for part in d.section.split('.') {
        let section = table
            .entry(part.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = match section {
            toml::Value::Array(items) => items[0].as_table_mut().unwrap(),
            other => other.as_table_mut().unwrap(),
        };
    }
    table.insert(d.field.clone(), value);
    toml::to_string(&t).unwrap()
}

/// The same value, changed: a number plus one, a bool flipped, a string with `1ms` appended
/// (still a duration when it was one).
fn changed(v: &toml::Value) -> toml::Value {
    match v {
        toml::Value::Integer(n) => toml::Value::Integer(n + 1),
        toml::Value::Boolean(b) => toml::Value::Boolean(!b),
        toml::Value::String(s) => toml::Value::String(format!("{s}1ms")),
        other => panic!("no change for {other}"),
    }
}

fn loaded(text: &str) -> String {
    format!("{:?}", load(text).unwrap_or_else(|e| panic!("{e}\n{text}")))
}

#[test]
fn every_default_the_example_documents_is_the_one_applied() {
    let text = std::fs::read_to_string(EXAMPLE).unwrap();
    let documented = documented_defaults(&text);
    let mut named: Vec<String> = documented
        .iter()
        .map(|d| format!("{}.{}", d.section, d.field))
        .collect();
    named.sort();
    let expected = [
        "admin.listen",
        "affinity.map_ttl",
        "affinity.max_rewrite_bytes",
        "affinity.mode",
        "affinity.unknown_ids",
        "metrics.runtime_tenant_labels",
        "providers.allow_link_local_base_url",
        "providers.auth",
        "providers.cooldown",
        "providers.deadline",
        "providers.max_attempts",
        "providers.max_cooldown",
        "providers.max_wait",
        "providers.quarantine",
        "providers.refusal_memory",
        "providers.retry_after_send",
        "providers.retry_budget_min_per_second",
        "providers.retry_budget_percent",
        "providers.rpm",
        "providers.strategy",
        "providers.websocket",
        "providers.weight",
        "registry.file",
        "server.allow_unauthenticated",
        "server.body_read_timeout",
        "server.header_read_timeout",
        "server.keepalive_timeout",
        "server.listen",
        "server.max_body_bytes",
        "server.max_buffered_bytes",
        "server.max_connections",
        "server.max_spill_bytes",
        "server.replay_memory_bytes",
        "server.shutdown_grace",
        "store.command_timeout",
        "store.connect_timeout",
        "store.instances",
        "store.lease_max",
        "store.lease_time",
        "store.probe_interval",
        "store.probe_max_interval",
        "store.wait_timeout",
        "tenants.fallback",
        "tenants.providers.rpm",
        "upstream.connect_timeout",
        "upstream.first_byte_timeout",
        "upstream.forwarded_for",
        "upstream.idle_timeout",
        "upstream.use_env_proxy",
        "websocket.enabled",
        "websocket.idle_timeout",
        "websocket.max_duration",
    ];
    assert_eq!(
        named, expected,
        "fields whose default config.toml documents"
    );

    let omitted = loaded(&toml::to_string(&minimal()).unwrap());
    let mut sensitive = 0;
    for d in &documented {
        let written = loaded(&with(d, d.value.clone()));
        assert_eq!(
            written, omitted,
            "config.toml documents {}.{} = {} as the default, but leaving it out loads otherwise",
            d.section, d.field, d.value
        );
        // The comparison sees this field: another value, where valid, loads differently.
        if let Ok(other) = Config::from_toml_str(&with(d, changed(&d.value)), &env()) {
            assert_ne!(format!("{other:?}"), omitted, "{}.{}", d.section, d.field);
            sensitive += 1;
        }
    }
    // All but the two addresses, auth and strategy (a changed string is no longer valid there).
    assert!(
        sensitive >= 26,
        "only {sensitive} defaults were shown to matter"
    );
}

#[test]
fn the_documented_default_route_is_applied() {
    // config.toml: Default "/v1" for a provider named openai, "/<name>" for others.
    let text = std::fs::read_to_string(EXAMPLE).unwrap();
    assert!(
        text.contains("Default \"/v1\" for a provider named openai,\n# \"/<name>\" for others.")
    );
    assert_eq!(
        load(&provider("keys = \"env:KR_KEY_1\""))
            .unwrap()
            .providers[0]
            .route,
        "/v1"
    );
    let other = provider("keys = \"env:KR_KEY_1\"").replace("\"openai\"", "\"mistral\"");
    assert_eq!(load(&other).unwrap().providers[0].route, "/mistral");
}

#[test]
fn load_keeps_the_cause_and_prints_as_before() {
    use std::error::Error;
    let missing =
        std::env::temp_dir().join(format!("keyrelay-no-such-{}.toml", std::process::id()));
    let e = Config::load(&missing).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }), "{e:?}");
    let io = e.source().and_then(|s| s.downcast_ref::<std::io::Error>());
    assert_eq!(
        io.map(std::io::Error::kind),
        Some(std::io::ErrorKind::NotFound)
    );
    assert_eq!(
        e.to_string(),
        format!(
            "invalid configuration (1 problems):\n  - cannot read {}: {}\n",
            missing.display(),
            io.unwrap()
        )
    );

    let e = problems("[server\nlisten = 1");
    assert!(matches!(e, ConfigError::Parse(_)), "{e:?}");
    assert!(e.source().is_some_and(|s| s.is::<toml::de::Error>()));
    assert!(
        e.to_string()
            .starts_with("invalid configuration (1 problems):\n  - not valid config TOML: "),
        "{e}"
    );

    let e = problems(&provider("keys = [{ name = \"a\", secret = \"env:KR_KEY_1\" }, { name = \"b\", secret = \"env:OPENAI_API_KEY_2\" }]\nrpm = 0"));
    assert!(matches!(e, ConfigError::Invalid(_)), "{e:?}");
    assert_eq!(
        e.to_string(),
        "invalid configuration (2 problems):\n  - providers[0].rpm: must be a whole number from 1 to 4294967295, got 0\n  - providers[0].keys[1].secret: env var OPENAI_API_KEY_2 is not set\n"
    );
}

#[test]
fn workers_default_to_one_per_core_and_must_be_a_whole_number() {
    let base = provider("keys = \"env:KR_KEY_*\"");
    let cores = std::thread::available_parallelism().unwrap().get();
    assert_eq!(load(&base).unwrap().server.workers, cores);
    let zero = load(&format!("[server]\nworkers = 0\n{base}")).unwrap();
    assert_eq!(zero.server.workers, 0);
    assert_problem(
        &format!("[server]\nworkers = -1\n{base}"),
        "server.workers: must be a whole number from 0 to 1024, got -1",
    );
}
