//! The web console (`/ui`) in a real browser: headless Chromium from
//! Debian's packages (`scripts/install-chromium`), driven over WebDriver by
//! fantoccini through a chromedriver this test starts on a free port and
//! kills when it ends. The server is the real binary, with a token, so the
//! console's token form is part of the path. Assertions read what the page
//! shows (texts and attributes), waiting for them with a deadline.
//!
//! `EVENTFOLD_SCREENSHOTS=docs/console` (a folder, relative to the
//! workspace) makes the test save the screenshots that docs/console.md
//! shows.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use eventfold_plugin_builds::{COUNTER, FAILING, SHIPMENT_NOTIFIER};
use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::harness::{Server, data_dir, events};

const TOKEN: &str = "console-secret";
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long the page may take to show what a step waits for.
const DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn the_console_follows_and_drives_plugins_and_events() {
    let dir = data_dir();
    // A rebuild reads at most 1,000 events a second, so that one over the
    // 2,000 events below shows its progress for two seconds.
    let server = Server::start_in(dir.path(), &["--token", TOKEN, "--replay-rate", "1000"]).await;
    for _ in 0..2 {
        server
            .append_created("seed-1", json!("any"), events("Seeded", 1000))
            .await;
    }
    let browser = Browser::start().await;
    let shots = Screenshots::from_env();

    // 1. The console loads without the token, then asks for it.
    browser.goto(&format!("{}/ui", server.url)).await;
    browser.wait_displayed("#login").await;
    shots.page(&browser, "token.png").await;
    browser.fill("#token", TOKEN).await;
    browser.click("#login-form button[type=submit]").await;

    // 2. A plugin deployed by its file (counter.wasm → counter) has its row.
    browser.upload("#deploy-file", COUNTER).await;
    let counter = Row("counter");
    browser.wait_text(&counter.field("state"), "running").await;
    browser
        .wait_text(&counter.field("checkpoint"), "2,000")
        .await;
    browser
        .wait_text(&counter.field("kind"), "projection")
        .await;

    // 3. An event appended with the form shows in the event browser (which
    // follows the log live) and in the plugin's checkpoint.
    append_with_form(
        &browser,
        "console-1",
        "ConsoleTested",
        r#"{"by": "the console"}"#,
    )
    .await;
    browser
        .wait_text("#append-result", "appended at position 2,001")
        .await;
    let row = "#events tbody tr[data-position=\"2001\"]";
    browser
        .wait_text(&format!("{row} [data-field=type]"), "ConsoleTested")
        .await;
    browser
        .wait_text(&format!("{row} [data-field=stream]"), "console-1")
        .await;
    browser
        .wait_text(&counter.field("checkpoint"), "2,001")
        .await;

    // 4. Replay: the rebuild's progress shows, then the swap (generation 2).
    browser.click(&counter.action("replay")).await;
    let progress = counter.part(".progress-line");
    browser.wait_displayed(&progress).await;
    browser
        .wait_text(&progress, "rebuilding generation 2")
        .await;
    browser.wait_text(&counter.field("generation"), "2").await;
    browser.wait_hidden(&progress).await;
    browser
        .wait_text(&counter.field("checkpoint"), "2,001")
        .await;

    // A notifier whose webhook never answers, for its delivery figures and
    // dead letters.
    let notifier = Row("shipment-notifier");
    deploy_failing_notifier(&server).await;
    browser
        .wait_text(&notifier.stat("dead_lettered"), "1")
        .await;

    // 5. A plugin that fails on an event of type Bad is shown as failed...
    let head = server.head().await;
    browser.upload("#deploy-file", FAILING).await;
    let failing = Row("failing");
    browser
        .wait_text(&failing.field("checkpoint"), &thousands(head))
        .await;
    append_with_form(&browser, "console-1", "Bad", "{}").await;
    let bad = thousands(head + 1);
    browser
        .wait_text("#append-result", &format!("appended at position {bad}"))
        .await;
    browser.wait_text(&failing.field("state"), "✖ failed").await;
    browser
        .wait_attr(&failing.selector(), "data-state", "failed")
        .await;
    browser.wait_text("#alert", "failing").await;
    browser
        .wait_text(&failing.field("last_error"), "cannot apply Bad event")
        .await;
    // ...beside a rebuild in progress, for the screenshot of the whole.
    browser.click(&counter.action("replay")).await;
    browser.wait_displayed(&progress).await;
    shots.page(&browser, "plugins.png").await;
    browser.click(&notifier.part("button.link")).await;
    browser
        .wait_text(&notifier.part("[data-list=dead-letters]"), "Retry")
        .await;
    shots
        .element(&browser, "#plugins-section", "details.png")
        .await;
    browser.click(&notifier.part("button.link")).await;

    // ...then Skip parks the event and it runs again, past it.
    browser.click(&failing.action("skip")).await;
    browser.wait_text(&failing.field("state"), "running").await;
    browser.wait_text(&failing.field("checkpoint"), &bad).await;
    browser.wait_hidden("#alert").await;
    browser.click(&failing.part("button.link")).await;
    browser
        .wait_text(&failing.part("[data-list=parked]"), &bad)
        .await;
    browser.wait_text(&counter.field("generation"), "3").await;

    // The browser's filter by category pages the log; its screenshot.
    browser
        .fill("#filters input[name=category]", "console,order")
        .await;
    browser.click("#filters button[type=submit]").await;
    browser
        .wait_text("#events-title", "Events (filtered)")
        .await;
    browser
        .wait_text(
            &format!(
                "#events tbody tr[data-position=\"{}\"] [data-field=type]",
                head + 1
            ),
            "Bad",
        )
        .await;
    shots
        .element(&browser, "#events-section", "events.png")
        .await;
    browser.close().await;
}

/// A position as the console writes it: `2,001`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// The console on a large log shows the newest page of events, never the
/// whole log, and says how long it took to show its plugins and events
/// (the page's own timing: the HTML received, the DOM ready, and the
/// `console-ready` mark app.js sets once both are on screen). It seeds a
/// log of 100,000 events of its own, or measures the server at
/// `EVENTFOLD_CONSOLE_URL` (one with 1,000,000 events, say; no token: the
/// figures in docs/console.md).
#[tokio::test]
async fn the_console_pages_a_large_log() {
    let dir = data_dir();
    let (_server, url) = match std::env::var("EVENTFOLD_CONSOLE_URL") {
        Ok(url) => (None, url),
        Err(_) => {
            let server = Server::start_in(dir.path(), &[]).await;
            for batch in 0..100 {
                let events: Vec<Value> = (0..1000)
                    .map(|i| json!({"type": "Seeded", "data": {"i": batch * 1000 + i}}))
                    .collect();
                let appends =
                    json!({"appends": [{"stream": format!("seed-{batch}"), "events": events}]});
                let (status, body) = server.post("/batch", &appends).await;
                assert_eq!(status, StatusCode::CREATED, "{body}");
            }
            let url = server.url.clone();
            (Some(server), url)
        }
    };
    let browser = Browser::start().await;
    let script = "const ready = performance.getEntriesByName('console-ready')[0];
        if (!ready) return null;
        const nav = performance.getEntriesByType('navigation')[0];
        return [nav.responseEnd, nav.domContentLoadedEventEnd, ready.startTime];";
    let mut loads: Vec<Vec<f64>> = Vec::new();
    for load in 1..=7 {
        browser.goto(&format!("{url}/ui")).await;
        let times: Vec<f64> = browser
            .until("the console ready", || async {
                let value = browser
                    .client()
                    .execute(script, Vec::new())
                    .await
                    .map_err(|e| e.to_string())?;
                serde_json::from_value::<Vec<f64>>(value).map_err(|e| e.to_string())
            })
            .await;
        println!(
            "load {load}: HTML {:.0} ms, DOM ready {:.0} ms, plugins and events shown {:.0} ms",
            times[0], times[1], times[2]
        );
        loads.push(times);
        let rows = browser
            .client()
            .execute(
                "return document.querySelectorAll('#events tbody tr').length;",
                Vec::new(),
            )
            .await
            .expect("counting the event rows");
        let rows = rows.as_u64().expect("a count");
        assert!(
            (1..=50).contains(&rows),
            "one page of events, not {rows} rows"
        );
    }
    let median = |i: usize| {
        let mut figures: Vec<f64> = loads.iter().map(|times| times[i]).collect();
        figures.sort_by(f64::total_cmp);
        figures[figures.len() / 2]
    };
    println!(
        "median of {} loads: HTML {:.0} ms, DOM ready {:.0} ms, plugins and events shown {:.0} ms",
        loads.len(),
        median(0),
        median(1),
        median(2)
    );
    browser.close().await;
}

/// Appends one event with the console's append form.
async fn append_with_form(browser: &Browser, stream: &str, event_type: &str, data: &str) {
    browser.fill("#append input[name=stream]", stream).await;
    browser.fill("#append input[name=type]", event_type).await;
    browser.fill("#append textarea[name=data]", data).await;
    browser.click("#append button[type=submit]").await;
}

/// Deploys the shipment notifier with a webhook on a closed port, tried
/// twice per notification, and ships one order: one dead letter.
async fn deploy_failing_notifier(server: &Server) {
    server
        .deploy_expecting("shipment-notifier", SHIPMENT_NOTIFIER, StatusCode::CREATED)
        .await;
    let closed = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let webhook = json!({
        "url": format!("http://127.0.0.1:{closed}/hooks"),
        "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "max_attempts": 2, "backoff_ms": 10,
    });
    let (status, body) = crate::harness::into_json(
        server
            .request(reqwest::Method::PUT, "/plugins/shipment-notifier/webhook")
            .json(&webhook)
            .send()
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let order: Value = json!([
        {"type": "OrderPlaced", "data": {"customerId": "c7", "amount": 30}},
        {"type": "OrderShipped", "data": {"carrier": "ups"}},
    ]);
    server.append_created("order-42", json!("any"), order).await;
}

/// A plugin's rows in the console, by name.
struct Row(&'static str);

impl Row {
    /// The plugin's `<tbody>`: its figures, progress, delivery and details.
    fn selector(&self) -> String {
        format!("tbody[data-plugin=\"{}\"]", self.0)
    }

    fn part(&self, css: &str) -> String {
        format!("{} {css}", self.selector())
    }

    fn field(&self, name: &str) -> String {
        self.part(&format!("[data-field={name}]"))
    }

    fn action(&self, name: &str) -> String {
        self.part(&format!("button[data-action={name}]"))
    }

    fn stat(&self, name: &str) -> String {
        self.part(&format!("[data-stat={name}] b"))
    }
}

// ---------------------------------------------------------------------------
// The browser: chromedriver on a free port, a Chromium session through it.

/// A headless Chromium session; its chromedriver (and the browser under it)
/// is killed when this is dropped.
struct Browser {
    client: Option<Client>,
    driver: Child,
    /// The browser's fresh, empty user-data-dir.
    profile: TempDir,
}

impl Browser {
    /// Starts chromedriver on a free port and a fresh headless Chromium.
    async fn start() -> Browser {
        for path in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(path).exists(),
                "{path} is missing: run scripts/install-chromium"
            );
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, so that Drop can end the browser with it.
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let profile = tempfile::Builder::new()
            .prefix("eventfold-chromium-")
            .tempdir()
            .expect("temp dir");
        let mut browser = Browser {
            client: None,
            driver,
            profile,
        };
        let url = format!("http://127.0.0.1:{port}");
        browser.client = Some(browser.connect(&url).await);
        browser
    }

    /// A WebDriver session, once chromedriver answers.
    async fn connect(&self, url: &str) -> Client {
        // Without the background-networking flags Chromium reaches out to
        // the network, which is closed here, and its connections are refused.
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1400,1000",
            &format!("--user-data-dir={}", self.profile.path().display()),
        ];
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        });
        let capabilities = capabilities.as_object().expect("an object").clone();
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match ClientBuilder::new(connector.clone())
                .capabilities(capabilities.clone())
                .connect(url)
                .await
            {
                Ok(client) => return client,
                Err(error) => assert!(
                    Instant::now() < deadline,
                    "no WebDriver session from chromedriver: {error}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("a session")
    }

    async fn goto(&self, url: &str) {
        self.client().goto(url).await.expect("navigate");
    }

    /// Ends the session (and so the browser) cleanly.
    async fn close(mut self) {
        if let Some(client) = self.client.take() {
            let _ = client.close().await;
        }
    }

    /// Waits until `check` answers `Some`, polling the page; panics with
    /// `what` and the last value seen after the deadline.
    async fn until<T, F, Fut>(&self, what: &str, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, String>>,
    {
        let deadline = Instant::now() + DEADLINE;
        loop {
            match check().await {
                Ok(value) => return value,
                Err(seen) => assert!(
                    Instant::now() < deadline,
                    "the console never showed {what}; last seen: {seen}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The text the page shows in the first element matching `css`.
    async fn text(&self, css: &str) -> Result<String, String> {
        let element = self
            .client()
            .find(Locator::Css(css))
            .await
            .map_err(|e| format!("no {css}: {e}"))?;
        element.text().await.map_err(|e| e.to_string())
    }

    async fn wait_text(&self, css: &str, expected: &str) -> String {
        self.until(&format!("{expected:?} in {css}"), || async {
            let text = self.text(css).await?;
            if text.contains(expected) {
                Ok(text)
            } else {
                Err(format!("{text:?}"))
            }
        })
        .await
    }

    async fn wait_attr(&self, css: &str, name: &str, expected: &str) {
        self.until(&format!("{name}={expected:?} on {css}"), || async {
            let element = self
                .client()
                .find(Locator::Css(css))
                .await
                .map_err(|e| e.to_string())?;
            match element.attr(name).await.map_err(|e| e.to_string())? {
                Some(value) if value == expected => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await
    }

    async fn displayed(&self, css: &str) -> Result<bool, String> {
        match self.client().find(Locator::Css(css)).await {
            Ok(element) => element.is_displayed().await.map_err(|e| e.to_string()),
            Err(_) => Ok(false),
        }
    }

    async fn wait_displayed(&self, css: &str) {
        self.until(&format!("{css} shown"), || async {
            match self.displayed(css).await? {
                true => Ok(()),
                false => Err("hidden".to_owned()),
            }
        })
        .await
    }

    async fn wait_hidden(&self, css: &str) {
        self.until(&format!("{css} hidden"), || async {
            match self.displayed(css).await? {
                false => Ok(()),
                true => Err("shown".to_owned()),
            }
        })
        .await
    }

    /// Clicks the element, once it is there and enabled.
    async fn click(&self, css: &str) {
        self.until(&format!("{css} to click"), || async {
            let element = self
                .client()
                .find(Locator::Css(css))
                .await
                .map_err(|e| e.to_string())?;
            element.click().await.map_err(|e| e.to_string())
        })
        .await
    }

    /// Replaces the text of an input or textarea.
    async fn fill(&self, css: &str, text: &str) {
        let element = self
            .client()
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"));
        element.clear().await.expect("clear");
        element.send_keys(text).await.expect("type");
    }

    /// Removes the page's passing notes (toasts), which would cover part of
    /// a screenshot.
    async fn clear_notes(&self) {
        let script = "document.getElementById('toasts').replaceChildren()";
        self.client()
            .execute(script, Vec::new())
            .await
            .expect("run a script");
    }

    /// Chooses `path` in a file input, as a person choosing a file does.
    async fn upload(&self, css: &str, path: &str) {
        let input = self
            .client()
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"));
        input.send_keys(path).await.expect("choose the file");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver and the Chromium it started share its process group.
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.driver.wait();
    }
}

/// Where screenshots go, if `EVENTFOLD_SCREENSHOTS` names a folder.
struct Screenshots(Option<PathBuf>);

impl Screenshots {
    fn from_env() -> Screenshots {
        Screenshots(std::env::var_os("EVENTFOLD_SCREENSHOTS").map(|dir| {
            // Relative to the workspace, not to host/ where the test runs.
            let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(dir);
            std::fs::create_dir_all(&dir).expect("the screenshots' folder");
            dir
        }))
    }

    /// The whole window.
    async fn page(&self, browser: &Browser, name: &str) {
        if let Some(dir) = &self.0 {
            browser.clear_notes().await;
            let png = browser.client().screenshot().await.expect("screenshot");
            std::fs::write(dir.join(name), png).expect("write the screenshot");
        }
    }

    /// One element of the page.
    async fn element(&self, browser: &Browser, css: &str, name: &str) {
        if let Some(dir) = &self.0 {
            browser.clear_notes().await;
            let script = "document.querySelector(arguments[0]).scrollIntoView()";
            browser
                .client()
                .execute(script, vec![json!(css)])
                .await
                .expect("scroll to the element");
            let element = browser
                .client()
                .find(Locator::Css(css))
                .await
                .expect("the element");
            let png = element.screenshot().await.expect("screenshot");
            std::fs::write(dir.join(name), png).expect("write the screenshot");
        }
    }
}
