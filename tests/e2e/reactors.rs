//! Reactors end to end: plugins that append events, exactly once, across a
//! `kill -9` mid-batch, a replay and a redeploy; conflicts, loops, and the
//! same reactor in Rust, Python and JavaScript.

use std::collections::{BTreeMap, HashSet};

use eventfold_plugin_builds::{
    COUNTER, JS_ORDER_FULFILMENT, ORDER_FULFILMENT, PYTHON_ORDER_FULFILMENT, SCRIPTED_REACTOR,
    SCRIPTED_REACTOR_V2, SHIPMENT_NOTIFIER,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Backend, Server, backend_tests, data_dir};
use crate::plugins::restored_checkpoint;

backend_tests!(a_reactor_appends_each_output_once_across_kill_9_mid_batch);

/// The events a reactor appended, in log order.
fn outputs_of<'a>(events: &'a [Value], reactor: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["metadata"]["reactor"] == reactor)
        .collect()
}

/// A source event whose script makes `scripted-reactor` append `copies`
/// events to `echo-{i % 50}`.
pub(crate) fn echoing(i: usize, copies: usize) -> Value {
    let append: Vec<Value> = (0..copies)
        .map(|k| json!({"stream": format!("echo-{}", i % 50), "type": "Echoed", "data": {"i": i, "k": k}}))
        .collect();
    json!({"type": "Asked", "data": {"i": i, "append": append}})
}

/// Appends `sources` events that each ask `scripted-reactor` for `copies`
/// outputs ([`echoing`]), 500 to a request (within what every log takes in
/// one), to streams `ask-{n}`.
pub(crate) async fn ask(server: &Server, sources: usize, copies: usize) {
    for chunk in 0..sources.div_ceil(500) {
        let events: Vec<Value> = (chunk * 500..((chunk + 1) * 500).min(sources))
            .map(|i| echoing(i, copies))
            .collect();
        server
            .append_created(&format!("ask-{chunk}"), json!("any"), Value::Array(events))
            .await;
    }
}

async fn a_reactor_appends_each_output_once_across_kill_9_mid_batch(backend: Backend) {
    const SOURCES: usize = 12_000;
    let dir = data_dir();
    let mut server = Server::start_on(backend, dir.path(), &[]).await;
    ask(&server, SOURCES, 3).await;
    server.deploy_all(&[("echo", SCRIPTED_REACTOR)]).await;
    // Killed once some outputs are in the log and the reactor is part-way.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let seen = loop {
        let head = server.head().await;
        if head > SOURCES as u64 {
            break head;
        }
        assert!(std::time::Instant::now() < deadline, "no output appeared");
    };
    server.kill9();
    assert!(
        seen < (SOURCES * 4) as u64,
        "the reactor had finished before the kill"
    );

    let server = Server::start_on(backend, dir.path(), &[]).await;
    let restored = restored_checkpoint(dir.path(), "echo").await;
    assert!(
        restored < SOURCES as u64,
        "restored from {restored}: the crash was not part-way"
    );
    let status = server.wait_caught_up("echo").await;
    assert!(status["last_error"].is_null(), "{status}");
    let events = server.read_all().await;
    let positions: Vec<u64> = events
        .iter()
        .map(|e| e["position"].as_u64().unwrap())
        .collect();
    let expected: Vec<u64> = (1..=(SOURCES * 4) as u64).collect();
    assert_eq!(positions, expected, "every output once, positions gapless");

    let sources: BTreeMap<u64, &Value> = events[..SOURCES]
        .iter()
        .map(|e| (e["data"]["i"].as_u64().unwrap(), e))
        .collect();
    let outputs = outputs_of(&events, "echo");
    assert_eq!(outputs.len(), SOURCES * 3);
    let mut seen_pairs = HashSet::new();
    let mut ids = HashSet::new();
    for output in &outputs {
        let i = output["data"]["i"].as_u64().unwrap();
        let k = output["data"]["k"].as_u64().unwrap();
        assert!(seen_pairs.insert((i, k)), "output {i}/{k} twice");
        assert!(ids.insert(output["id"].as_str().unwrap().to_owned()));
        let source = sources[&i];
        assert_eq!(output["metadata"]["causation_id"], source["id"], "{output}");
        assert_eq!(output["metadata"]["correlation_id"], source["id"]);
        assert_eq!(output["metadata"]["causation_depth"], 1);
        assert_eq!(output["stream"], format!("echo-{}", i % 50));
    }
}

#[tokio::test]
async fn replaying_or_redeploying_a_reactor_appends_nothing_for_old_events() {
    let dir = data_dir();
    let server = Server::start_in(dir.path(), &[]).await;
    server.deploy_all(&[("echo", SCRIPTED_REACTOR)]).await;
    let sources: Vec<Value> = (0..10).map(|i| echoing(i, 1)).collect();
    server
        .append_created("ask-1", json!("any"), Value::Array(sources))
        .await;
    server.wait_caught_up("echo").await;
    assert_eq!(server.head().await, 20);

    server
        .post_expecting("/plugins/echo/replay", &json!({}), StatusCode::ACCEPTED)
        .await;
    let status = server
        .wait_plugin("echo", "the replay swapped in", |s| {
            s["generation"] == 2 && s["rebuild"].is_null()
        })
        .await;
    assert_eq!(status["outputs_suppressed"], 10, "{status}");
    assert_eq!(server.head().await, 20, "the replay appended nothing");

    server
        .deploy_expecting("echo", SCRIPTED_REACTOR_V2, StatusCode::ACCEPTED)
        .await;
    let status = server
        .wait_plugin("echo", "version 2 swapped in", |s| {
            s["generation"] == 3 && s["rebuild"].is_null()
        })
        .await;
    assert_eq!(status["outputs_suppressed"], 10, "{status}");
    assert_eq!(server.head().await, 20, "the redeploy appended nothing");
    let handled = server.get_ok("/plugins/echo/state/handled").await;
    assert_eq!(handled, 10, "version 2 folded the history into its state");

    // A new event: output from the new code, once.
    server
        .append_created("ask-2", json!("any"), json!([echoing(10, 1)]))
        .await;
    server.wait_caught_up("echo").await;
    let events = server.read_all().await;
    assert_eq!(events.len(), 22);
    let outputs = outputs_of(&events, "echo");
    assert_eq!(outputs.len(), 11);
    assert_eq!(outputs[10]["data"], json!({"i": 10, "k": 0, "v": 2}));
    assert!(outputs[..10].iter().all(|o| o["data"].get("v").is_none()));
}

#[tokio::test]
async fn a_conflicting_expected_version_fails_at_its_source_and_skip_parks_it() {
    let dir = data_dir();
    let server = Server::start_in(dir.path(), &[]).await;
    server
        .append_created(
            "account-1",
            json!("no_stream"),
            json!([{"type": "Opened", "data": {}}]),
        )
        .await;
    server.deploy_all(&[("echo", SCRIPTED_REACTOR)]).await;
    let to_account = |expected: Value| {
        json!({"type": "Asked", "data": {"append": [
            {"stream": "account-1", "type": "Credited", "data": {"expected": expected}, "expected": expected}
        ]}})
    };
    // Positions 2, 3, 4: the first holds (account-1 is at 0), the second
    // expects 5 while the stream is at 1.
    server
        .append_created(
            "ask-1",
            json!("any"),
            json!([to_account(json!(0)), to_account(json!(5)), echoing(1, 1)]),
        )
        .await;
    let status = server
        .wait_plugin("echo", "failed", |s| s["state"] == "failed")
        .await;
    assert_eq!(status["last_error"]["position"], 3, "{status}");
    let message = status["last_error"]["message"].as_str().unwrap();
    assert_eq!(
        message,
        "append to account-1 refused: stream account-1 is at version 1, expected 5"
    );
    assert_eq!(status["checkpoint"], 2, "the event before it is done");

    let skipped = server
        .post_expecting("/plugins/echo/skip", &json!({}), StatusCode::OK)
        .await;
    assert_eq!(skipped["skipped"], 3);
    let status = server.wait_caught_up("echo").await;
    assert_eq!(status["parked"], 1);
    let events = server.read_all().await;
    let outputs: Vec<(&Value, &Value)> = outputs_of(&events, "echo")
        .iter()
        .map(|o| (&o["stream"], &o["metadata"]["causation_id"]))
        .collect();
    assert_eq!(
        outputs,
        [
            (&json!("account-1"), &events[1]["id"]),
            (&json!("echo-1"), &events[3]["id"])
        ],
        "the conflicting output was never appended"
    );
}

#[tokio::test]
async fn reactors_that_trigger_each_other_stop_at_the_depth_limit() {
    let dir = data_dir();
    let server = Server::start_in(dir.path(), &[]).await;
    server
        .deploy_all(&[("ping", SCRIPTED_REACTOR), ("counter", COUNTER)])
        .await;
    let bounce = json!([{"type": "Bounced", "data": {"bounce": "loop-1"}}]);
    server.append_created("loop-1", json!("any"), bounce).await;
    // Alone, it bounces the event once and never sees its own output.
    let ping = server.wait_caught_up("ping").await;
    assert!(ping["last_error"].is_null(), "{ping}");
    assert_eq!(server.head().await, 2);
    assert_eq!(server.get_ok("/plugins/ping/state/handled").await, 1);

    // A second one bounces back what the first appends, and so on.
    server.deploy_all(&[("pong", SCRIPTED_REACTOR)]).await;
    for name in ["ping", "pong"] {
        let status = server
            .wait_plugin(name, "failed", |s| s["state"] == "failed")
            .await;
        let message = status["last_error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("causation depth limit: the event at"),
            "{message}"
        );
        assert!(message.contains("reactors trigger each other in a loop"));
    }
    let events = server.read_all().await;
    let depths: Vec<u64> = events[1..]
        .iter()
        .map(|e| e["metadata"]["causation_depth"].as_u64().unwrap())
        .collect();
    assert_eq!(depths.iter().max(), Some(&16), "{depths:?}");
    assert_eq!(
        events.len(),
        1 + 2 * 16,
        "each reactor appended once per depth"
    );
    let root = &events[0]["id"];
    assert!(
        events[1..]
            .iter()
            .all(|e| e["metadata"]["correlation_id"] == *root)
    );

    // Everything else goes on.
    server
        .append_created(
            "other-1",
            json!("any"),
            json!([{"type": "Fine", "data": {}}]),
        )
        .await;
    let counter = server.wait_caught_up("counter").await;
    assert_eq!(counter["checkpoint"], events.len() as u64 + 1);
}

/// The order events of the polyglot test, appended in one batch (so that
/// the sources' positions, and so the output ids, are the same on every
/// server): two orders, placed and paid in both orders, the first carrying
/// its own correlation id. Each has an id of its own, so that the outputs'
/// `causation_id` are the same on every server too.
fn orders() -> Value {
    let flow = json!({"correlation_id": "checkout-42"});
    let event = |n: u32, event_type: &str, data: Value, metadata: &Value| {
        let id = format!("0190a000-0000-7000-8000-{n:012}");
        json!({"id": id, "type": event_type, "data": data, "metadata": metadata})
    };
    let none = json!({});
    json!({"appends": [
        {"stream": "order-42", "events": [event(1, "OrderPlaced", json!({"customerId": "c-7", "total": 5}), &flow)]},
        {"stream": "order-43", "events": [event(2, "PaymentReceived", json!({"amount": 3}), &none)]},
        {"stream": "order-42", "events": [event(3, "PaymentReceived", json!({"amount": 5}), &flow)]},
        {"stream": "order-43", "events": [event(4, "OrderPlaced", json!({"customerId": "Zoë \"Z\""}), &none)]},
        {"stream": "order-42", "events": [event(5, "PaymentReceived", json!({"amount": 5}), &none)]},
    ]})
}

#[tokio::test]
async fn the_order_fulfilment_reactor_is_the_same_in_rust_python_and_javascript() {
    let mut outputs = Vec::new();
    for (language, wasm) in [
        ("rust", ORDER_FULFILMENT),
        ("python", PYTHON_ORDER_FULFILMENT),
        ("javascript", JS_ORDER_FULFILMENT),
    ] {
        let dir = data_dir();
        let server = Server::start_in(dir.path(), &[]).await;
        server
            .deploy_all(&[("order-fulfilment", wasm), ("shipments", SHIPMENT_NOTIFIER)])
            .await;
        server
            .post_expecting("/batch", &orders(), StatusCode::CREATED)
            .await;
        server.wait_caught_up("order-fulfilment").await;
        let events = server.read_all().await;
        let appended: Vec<Value> = outputs_of(&events, "order-fulfilment")
            .into_iter()
            .map(|e| {
                json!([
                    e["position"],
                    e["stream"],
                    e["type"],
                    e["id"],
                    e["data"],
                    e["metadata"]
                ])
            })
            .collect();
        assert_eq!(appended.len(), 2, "{language}: {appended:?}");
        let (status, answer) = server
            .post_raw("/plugins/order-fulfilment/query", "text/plain", "42")
            .await;
        assert_eq!(status, StatusCode::OK, "{language}");
        assert_eq!(
            answer,
            json!({"placed": true, "paid": true, "customerId": "c-7", "requested": true}),
            "{language}"
        );
        // One business process, followed across streams by its correlation id.
        let flow = server.get_ok("/events?correlation_id=checkout-42").await;
        let types: Vec<&Value> = flow["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| &e["type"])
            .collect();
        assert_eq!(
            types,
            ["OrderPlaced", "PaymentReceived", "ShipmentRequested"],
            "{language}"
        );
        // The shipment notifier fires from the reactor's event.
        server.wait_caught_up("shipments").await;
        let sent = server
            .get_ok("/plugins/shipments/notifications?after=0")
            .await;
        let keys: Vec<&Value> = sent["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| &n["key"])
            .collect();
        assert_eq!(
            keys,
            ["order-42-shipment-requested", "order-43-shipment-requested"],
            "{language}"
        );
        outputs.push((language, appended));
    }
    let (_, rust) = &outputs[0];
    assert_eq!(
        rust[0],
        json!([6, "shipment-42", "ShipmentRequested", rust[0][3], {"orderId": "42", "customerId": "c-7"},
               {"causation_depth": 1, "causation_id": "0190a000-0000-7000-8000-000000000003",
                "correlation_id": "checkout-42", "reactor": "order-fulfilment"}])
    );
    assert_eq!(
        rust[1][4],
        json!({"orderId": "43", "customerId": "Zoë \"Z\""})
    );
    for (language, appended) in &outputs[1..] {
        assert_eq!(appended, rust, "{language} and Rust differ");
    }
}
