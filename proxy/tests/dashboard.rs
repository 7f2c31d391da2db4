//! The admin dashboard in a real headless browser (Debian's chromium, driven by chromedriver
//! over WebDriver): it loads, shows every key with its group, and a click on reset changes the
//! key's state.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]
#![allow(
    clippy::too_many_lines,
    reason = "each test is one scenario, read top to bottom"
)]

mod support;

use http::Request;
use http_body_util::Full;
use keyrelay_mock::{MockUpstream, Reply as Script};
use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};
use support::process::Proc;
use support::*;

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Driver {
    _child: Proc,
    base: String,
    session: String,
    profile: std::path::PathBuf,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

async fn call(method: &str, url: &str, body: Value) -> Value {
    let req = Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::from(body.to_string()))
        .unwrap();
    let r = send(&http_client(), req).await;
    let v = r.json();
    assert!(r.status.is_success(), "webdriver {method} {url}: {v}");
    v["value"].clone()
}

impl Driver {
    async fn start() -> Driver {
        // chromedriver binds port 0 and says which port it got.
        let mut child = Proc::spawn(
            Command::new("chromedriver").arg("--port=0"),
            "Debian package chromium-driver; ./install-test-deps.sh installs it",
        );
        let port: u16 = child
            .wait_line(Duration::from_secs(20), |l| {
                let rest = l.strip_prefix("ChromeDriver was started successfully on port ")?;
                rest.trim_end_matches('.').parse().ok()
            })
            .await;
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let req = Request::get(format!("{base}/status"))
                .body(Full::default())
                .unwrap();
            if let Ok(Ok(r)) =
                tokio::time::timeout(Duration::from_secs(1), http_client().request(req)).await
            {
                if r.status().is_success() {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver never answered");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile =
            std::env::temp_dir().join(format!("keyrelay-chromium-{}-{port}", std::process::id()));
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--disable-quic", "--no-first-run", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync",
                         format!("--user-data-dir={}", profile.display())]
            }
        }}});
        let v = call("POST", &format!("{base}/session"), caps).await;
        let session = v["sessionId"].as_str().unwrap().to_owned();
        Driver {
            _child: child,
            base,
            session,
            profile,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/session/{}{path}", self.base, self.session)
    }

    async fn script(&self, script: &str, args: Value) -> Value {
        call(
            "POST",
            &self.url("/execute/sync"),
            json!({"script": script, "args": args}),
        )
        .await
    }

    async fn wait_for(&self, script: &str, want: Value, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.script(script, json!([])).await == want {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }
}

const STATE_OF_KEY_1: &str =
    "const el = document.querySelector('tr[data-key=\"KR_KEY_1\"] .state'); return el ? el.textContent : null;";

#[tokio::test]
async fn dashboard_shows_every_key_and_reset_works() {
    // The second key in a key group, the others in none.
    let tables = r#"keys = [
  { name = "KR_KEY_1", secret = "env:KR_KEY_1" },
  { name = "KR_KEY_2", secret = "env:KR_KEY_2", group = "live" },
  { name = "KR_KEY_3", secret = "env:KR_KEY_3" },
]"#;
    let mock = MockUpstream::start().await.unwrap();
    let text = config_text(&mock.url(), r#"strategy = "round-robin""#, "")
        .replace("keys = \"env:KR_KEY_*\"", tables);
    let h = Harness::on(mock, &text, &env()).await;
    h.mock
        .set(KEYS[0], Script::rate_limited(&[("retry-after", "120")]));
    assert_eq!(h.chat(CHAT).await.status, 200);
    let driver = Driver::start().await;
    let page = format!("http://{}/admin", h.proxy.admin_addr().unwrap());
    call("POST", &driver.url("/url"), json!({"url": page})).await;
    driver
        .script(
            "const t = document.getElementById('token'); t.value = arguments[0]; t.dispatchEvent(new Event('change'));",
            json!([ADMIN_TOKEN]),
        )
        .await;
    let rows = "return document.querySelectorAll('tbody tr').length;";
    assert!(
        driver
            .wait_for(rows, json!(3), Duration::from_secs(10))
            .await,
        "the page never showed all keys"
    );
    // Each row's key and group, in order.
    let rows = driver
        .script(
            "return Array.from(document.querySelectorAll('tbody tr')).map(r => [r.dataset.key, r.querySelector('td.group').textContent]);",
            json!([]),
        )
        .await;
    assert_eq!(
        rows,
        json!([["KR_KEY_1", "–"], ["KR_KEY_2", "live"], ["KR_KEY_3", "–"]])
    );
    assert!(
        driver
            .wait_for(STATE_OF_KEY_1, json!("cooling"), Duration::from_secs(5))
            .await
    );
    let page_text = driver
        .script("return document.body.innerText;", json!([]))
        .await;
    assert_no_secret(page_text.as_str().unwrap(), "the page");

    let button = call(
        "POST",
        &driver.url("/element"),
        json!({"using": "css selector", "value": "tr[data-key=\"KR_KEY_1\"] button[data-action=\"reset\"]"}),
    )
    .await;
    let id = button[ELEMENT]
        .as_str()
        .unwrap_or_else(|| panic!("no element in {button}"))
        .to_owned();
    call(
        "POST",
        &driver.url(&format!("/element/{id}/click")),
        json!({}),
    )
    .await;
    assert!(
        driver
            .wait_for(STATE_OF_KEY_1, json!("ready"), Duration::from_secs(5))
            .await,
        "click on reset did not change the key"
    );
    let req = Request::get(format!(
        "http://{}/admin/api-keys/status",
        h.proxy.admin_addr().unwrap()
    ))
    .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
    .body(Full::default())
    .unwrap();
    let doc = h.send(req).await.json();
    assert_eq!(doc["pools"][0]["keys"][0]["state"], "ready");
    call("DELETE", &driver.url(""), json!({})).await;
}
