//! `GET /metrics` against a real server: the per-plugin series (checkpoint,
//! lag, state, events handled, handle time, failures, retries, parked,
//! recycles, memory) and the server-wide gauges carry the values the
//! plugins' statuses and the log show, and a removed plugin's series go.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use eventfold_plugin_builds::{COUNTER, FAILING, TRAP};
use reqwest::StatusCode;
use serde_json::json;

use crate::harness::{Server, data_dir, events, wait_until};

/// One scrape, parsed: every sample by name and labels, and each family's type.
struct Scrape {
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
    types: HashMap<String, String>,
}

impl Scrape {
    /// Scrapes the server's `/metrics`.
    async fn of(server: &Server) -> Scrape {
        let response = server
            .request(reqwest::Method::GET, "/metrics")
            .send()
            .await
            .expect("GET /metrics");
        assert_eq!(response.status(), StatusCode::OK);
        Scrape::parse(&response.text().await.expect("body"))
    }

    /// Parses the OpenMetrics text exposition: `# TYPE` lines, and samples
    /// `name{label="value",...} value`, with escapes in label values.
    fn parse(text: &str) -> Scrape {
        assert!(text.ends_with("# EOF\n"), "no end marker: {text}");
        let mut scrape = Scrape {
            samples: Vec::new(),
            types: HashMap::new(),
        };
        for line in text.lines() {
            if let Some(declaration) = line.strip_prefix("# TYPE ") {
                let (name, kind) = declaration.split_once(' ').expect("TYPE line");
                scrape.types.insert(name.to_owned(), kind.to_owned());
            } else if !line.starts_with('#') && !line.is_empty() {
                scrape.samples.push(parse_sample(line));
            }
        }
        scrape
    }

    /// The value of the sample `name` whose labels are exactly `labels`.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|(n, l, _)| n == name && *l == wanted)
            .map(|(_, _, value)| *value)
    }

    /// The value of `name` for `plugin`, which must be there.
    fn plugin(&self, name: &str, plugin: &str) -> f64 {
        self.get(name, &[("plugin", plugin)])
            .unwrap_or_else(|| panic!("no {name}{{plugin=\"{plugin}\"}}"))
    }

    /// The value of the server-wide `name`, which must be there.
    fn value(&self, name: &str) -> f64 {
        self.get(name, &[])
            .unwrap_or_else(|| panic!("no sample {name}"))
    }

    /// The states `plugin` shows as 1 (exactly one is expected), after
    /// checking that every state has a series.
    fn state(&self, plugin: &str) -> String {
        let states = [
            "compiling",
            "catching-up",
            "running",
            "replaying",
            "paused",
            "failed",
        ];
        let on: Vec<&str> = states
            .into_iter()
            .filter(|state| {
                let labels = [("plugin", plugin), ("state", *state)];
                let value = self
                    .get("eventfold_plugin_state", &labels)
                    .unwrap_or_else(|| panic!("no state series {state} for {plugin}"));
                assert!(value == 0.0 || value == 1.0, "{plugin} {state} = {value}");
                value == 1.0
            })
            .collect();
        assert_eq!(on.len(), 1, "{plugin} is in states {on:?}");
        on[0].to_owned()
    }

    /// Whether any sample is labelled with `plugin`.
    fn mentions(&self, plugin: &str) -> bool {
        self.samples
            .iter()
            .any(|(_, labels, _)| labels.get("plugin").map(String::as_str) == Some(plugin))
    }

    /// The declared type of family `name`.
    fn kind(&self, name: &str) -> &str {
        self.types
            .get(name)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("no TYPE for {name}"))
    }
}

/// Scrapes until `settled` holds for the scrape (the runner updates its
/// series just after it publishes the status a test waits on); that scrape.
async fn scrape_when(server: &Server, what: &str, settled: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let scrape = Scrape::of(server).await;
        if settled(&scrape) {
            return scrape;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the metrics never showed {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Whether the scrape shows each of `plugins` at checkpoint `head`, running.
fn caught_up(scrape: &Scrape, plugins: &[&str], head: u64) -> bool {
    plugins.iter().all(|plugin| {
        let checkpoint = [("plugin", *plugin)];
        let running = [("plugin", *plugin), ("state", "running")];
        scrape.get("eventfold_plugin_checkpoint", &checkpoint) == Some(head as f64)
            && scrape.get("eventfold_plugin_state", &running) == Some(1.0)
    })
}

/// One sample line: its name, its labels and its value.
fn parse_sample(line: &str) -> (String, BTreeMap<String, String>, f64) {
    let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        v => v.parse().unwrap_or_else(|e| panic!("{line}: {e}")),
    };
    let Some((name, labels)) = series.split_once('{') else {
        return (series.to_owned(), BTreeMap::new(), value);
    };
    let labels = labels.strip_suffix('}').expect("labels end with }");
    (name.to_owned(), parse_labels(labels), value)
}

/// `key="value",key="value"`, with `\"`, `\\` and `\n` in values.
fn parse_labels(mut text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    while !text.is_empty() {
        let (key, rest) = text.split_once("=\"").expect("label=\"value\"");
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next().expect("an unterminated label value") {
                (i, '"') => break i,
                (_, '\\') => match chars.next().expect("an escape").1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.to_owned(), value);
        text = rest[end + 1..].trim_start_matches(',');
    }
    labels
}

#[test]
fn the_parser_reads_labels_escapes_and_bare_samples() {
    let scrape = Scrape::parse(
        "# TYPE a counter\na_total{plugin=\"x\",why=\"say \\\"hi\\\"\\\\\"} 3\nb 1.5\n# EOF\n",
    );
    assert_eq!(scrape.get("b", &[]), Some(1.5));
    assert_eq!(
        scrape.get("a_total", &[("plugin", "x"), ("why", "say \"hi\"\\")]),
        Some(3.0)
    );
    assert_eq!(scrape.kind("a"), "counter");
}

/// Three plugins follow the log: one handles everything, one rejects an
/// event, one traps on another; both failures are counted, retried,
/// given up on and skipped, and the metrics say so with the figures the
/// statuses show.
#[tokio::test]
async fn plugin_and_server_metrics_carry_real_values() {
    let dir = data_dir();
    let server = Server::start_in(
        dir.path(),
        // No checkpoint during the test: the WAL holds every append.
        &["--checkpoint-interval", "1h", "--sse-keep-alive", "100ms"],
    )
    .await;
    let plugins = [("counter", COUNTER), ("failer", FAILING), ("trapper", TRAP)];
    server.deploy_all(&plugins).await;
    server
        .append_created("work-1", json!("any"), events("Fine", 5))
        .await;
    let names = ["counter", "failer", "trapper"];
    let scrape = scrape_when(&server, "all caught up", |s| caught_up(s, &names, 5)).await;
    for name in names {
        assert_eq!(scrape.state(name), "running");
        assert_eq!(scrape.plugin("eventfold_plugin_checkpoint", name), 5.0);
        assert_eq!(scrape.plugin("eventfold_plugin_lag_events", name), 0.0);
        assert_eq!(scrape.plugin("eventfold_plugin_lag_seconds", name), 0.0);
        assert_eq!(
            scrape.plugin("eventfold_plugin_events_handled_total", name),
            5.0
        );
        assert_eq!(scrape.plugin("eventfold_plugin_failures_total", name), 0.0);
        let calls = scrape.plugin("eventfold_plugin_handle_seconds_count", name);
        assert!((1.0..=5.0).contains(&calls), "{name}: {calls} handle calls");
        assert!(scrape.plugin("eventfold_plugin_handle_seconds_sum", name) > 0.0);
        assert!(scrape.plugin("eventfold_plugin_memory_peak_bytes", name) > 0.0);
    }

    // `Bad` is rejected by the failer, `Boom` traps the trapper.
    let bad = server
        .append_created("work-1", json!("any"), json!([{"type": "Bad", "data": {}}]))
        .await;
    let boom = server
        .append_created(
            "work-1",
            json!("any"),
            json!([{"type": "Boom", "data": {}}]),
        )
        .await;
    let (bad, boom) = (position(&bad), position(&boom));
    failures_are_counted(&server, bad, boom).await;

    skips_are_parked(&server).await;
    server_wide_gauges(&server).await;

    // A removed plugin's series go.
    let (status, _) = crate::harness::into_json(
        server
            .request(reqwest::Method::DELETE, "/plugins/trapper")
            .send()
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let scrape = Scrape::of(&server).await;
    assert!(
        !scrape.mentions("trapper"),
        "the removed plugin's series stay"
    );
    assert!(scrape.mentions("counter"));
}

/// The first position of an append's answer.
fn position(answer: &serde_json::Value) -> u64 {
    answer["first_position"].as_u64().expect("first_position")
}

/// The failer gave up on `bad` after three attempts (two retries); the
/// trapper on `boom`, each of its failures a trap that threw its instance
/// away; both show as failed, behind, with the age of the event they are
/// stuck on.
async fn failures_are_counted(server: &Server, bad: u64, boom: u64) {
    let head = server.head().await;
    let scrape = scrape_when(server, "two failed plugins", |s| {
        let failed = |plugin| {
            s.get(
                "eventfold_plugin_state",
                &[("plugin", plugin), ("state", "failed")],
            )
        };
        failed("failer") == Some(1.0)
            && failed("trapper") == Some(1.0)
            && caught_up(s, &["counter"], head)
    })
    .await;
    let head = head as f64;
    assert_eq!(scrape.state("failer"), "failed");
    assert_eq!(scrape.state("trapper"), "failed");
    assert_eq!(scrape.state("counter"), "running");
    assert_eq!(
        scrape.plugin("eventfold_plugin_failures_total", "failer"),
        3.0
    );
    assert_eq!(
        scrape.plugin("eventfold_plugin_retries_total", "failer"),
        2.0
    );
    let checkpoint = (bad - 1) as f64;
    assert_eq!(
        scrape.plugin("eventfold_plugin_checkpoint", "failer"),
        checkpoint
    );
    assert_eq!(
        scrape.plugin("eventfold_plugin_lag_events", "failer"),
        head - checkpoint
    );
    let age = scrape.plugin("eventfold_plugin_lag_seconds", "failer");
    assert!(age > 0.2 && age < 60.0, "the failer's lag is {age} s");
    assert_eq!(
        scrape.plugin("eventfold_plugin_checkpoint", "trapper"),
        (boom - 1) as f64
    );
    let traps = scrape.plugin("eventfold_plugin_failures_total", "trapper");
    assert!(traps >= 3.0, "{traps} failures of the trapper");
    let recycled = [("plugin", "trapper"), ("reason", "trap")];
    assert_eq!(
        scrape.get("eventfold_plugin_instance_recycles_total", &recycled),
        Some(traps),
        "every failure of the trapper was a trap that threw its instance away"
    );
    let kept = [("plugin", "failer"), ("reason", "trap")];
    assert_eq!(
        scrape.get("eventfold_plugin_instance_recycles_total", &kept),
        Some(0.0),
        "a rejection keeps the instance"
    );
    assert_eq!(
        scrape.plugin("eventfold_plugin_failures_total", "counter"),
        0.0
    );
    assert_eq!(
        scrape.plugin("eventfold_plugin_checkpoint", "counter"),
        head
    );
}

/// Skipping parks the events, and the plugins go on: all but the parked
/// event handled, caught up, running.
async fn skips_are_parked(server: &Server) {
    for name in ["failer", "trapper"] {
        server
            .post_expecting(&format!("/plugins/{name}/skip"), &json!({}), StatusCode::OK)
            .await;
    }
    server
        .append_created("work-2", json!("any"), events("Fine", 3))
        .await;
    let head = server.head().await;
    let names = ["counter", "failer", "trapper"];
    let scrape = scrape_when(server, "all caught up", |s| caught_up(s, &names, head)).await;
    let head = head as f64;
    for (name, parked) in [("counter", 0.0), ("failer", 1.0), ("trapper", 1.0)] {
        assert_eq!(scrape.state(name), "running");
        assert_eq!(scrape.plugin("eventfold_plugin_checkpoint", name), head);
        assert_eq!(scrape.plugin("eventfold_plugin_lag_events", name), 0.0);
        assert_eq!(scrape.plugin("eventfold_plugin_lag_seconds", name), 0.0);
        assert_eq!(scrape.plugin("eventfold_plugin_parked", name), parked);
        assert_eq!(
            scrape.plugin("eventfold_plugin_events_handled_total", name),
            head - parked,
            "{name} handled every event but the parked one"
        );
        assert_eq!(
            scrape.plugin("eventfold_plugin_rebuild_checkpoint", name),
            0.0
        );
        let status = server.get_ok(&format!("/plugins/{name}")).await;
        assert_eq!(status["parked"], parked as u64);
    }
    assert_eq!(scrape.kind("eventfold_plugin_state"), "gauge");
    assert_eq!(scrape.kind("eventfold_plugin_events_handled"), "counter");
    assert_eq!(scrape.kind("eventfold_plugin_handle_seconds"), "histogram");
}

/// The head, the WAL since the (never run) checkpoint, the writer's idle
/// queue, and a live feed counted while it is open.
async fn server_wide_gauges(server: &Server) {
    let scrape = Scrape::of(server).await;
    let head = server.head().await as f64;
    assert_eq!(scrape.value("eventfold_head_position"), head);
    assert!(scrape.value("eventfold_wal_bytes") > 0.0);
    assert_eq!(scrape.value("eventfold_wal_checkpoints_total"), 0.0);
    assert_eq!(scrape.value("eventfold_log_queue_depth"), 0.0);
    assert!(scrape.value("eventfold_connections_open") >= 1.0);
    assert_eq!(scrape.value("eventfold_live_feeds_open"), 0.0);
    assert_eq!(scrape.value("eventfold_append_sockets_open"), 0.0);

    let feed = server
        .request(reqwest::Method::GET, "/events/live")
        .send()
        .await
        .expect("live feed");
    assert_eq!(feed.status(), StatusCode::OK);
    let scrape = Scrape::of(server).await;
    assert_eq!(scrape.value("eventfold_live_feeds_open"), 1.0);
    drop(feed);
    let closed = wait_until(Duration::from_secs(10), || async {
        Scrape::of(server).await.value("eventfold_live_feeds_open") == 0.0
    })
    .await;
    assert!(closed, "a closed live feed is still counted");
}
