//! Plugins built against WIT 0.1 and WIT 0.2 side by side on one log: the
//! host runs both versions of the package, and a 0.2 plugin gets its events
//! in the encoding it asked for (typed records here; JSON is what the Python
//! and JavaScript user directories of `languages.rs` ask for).

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Server, data_dir};

const RECORDS_NOTIFIER_V0_2: &str = env!("RECORDS_NOTIFIER_V0_2_WASM");
const PYTHON_USER_DIRECTORY: &str = env!("PYTHON_USER_DIRECTORY_WASM");
const COUNTER: &str = env!("COUNTER_WASM");

#[tokio::test]
async fn plugins_of_both_wit_versions_run_side_by_side() {
    let dir = data_dir();
    let server = Server::start_in(dir.path(), &[]).await;
    server
        .deploy_all(&[
            ("v02-records", RECORDS_NOTIFIER_V0_2),
            ("v01-counter", COUNTER),
            ("v02-json", PYTHON_USER_DIRECTORY),
        ])
        .await;

    let appends = [
        (
            "order-1",
            json!([
                {"type": "OrderPlaced", "data": {"total": 5}},
                {"type": "OrderPaid", "data": {"total": 5}},
            ]),
        ),
        (
            "user-7",
            json!([{"type": "UserCreated", "data": {"userId": 7, "name": "Zoë \"Z\""}}]),
        ),
        (
            "order-2",
            json!([{"type": "OrderPlaced", "data": {"note": "a \\ b", "total": 7}}]),
        ),
    ];
    for (stream, events) in appends {
        let (status, body) = server.append(stream, json!("no_stream"), events).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }

    let mut statuses = Vec::new();
    for name in ["v02-records", "v01-counter", "v02-json"] {
        let status = server.wait_caught_up(name).await;
        statuses.push((status["wit"].clone(), status["encoding"].clone()));
    }
    assert_eq!(
        statuses,
        [
            (json!("0.2.0"), json!("records")),
            (json!("0.1.0"), json!("records")),
            (json!("0.2.0"), json!("json")),
        ]
    );

    // The 0.2 notifier saw each order event as a record, in log order.
    let (status, page) = server
        .get("/plugins/v02-records/notifications?after=0")
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let got: Vec<(Value, Value)> = page["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["key"].clone(), n["data"].clone()))
        .collect();
    let expected = [
        (
            "order-1/0",
            json!({"position": 1, "type": "OrderPlaced", "data": {"total": 5}}),
        ),
        (
            "order-1/1",
            json!({"position": 2, "type": "OrderPaid", "data": {"total": 5}}),
        ),
        (
            "order-2/0",
            json!({"position": 4, "type": "OrderPlaced", "data": {"note": "a \\ b", "total": 7}}),
        ),
    ]
    .map(|(key, data)| (json!(key), data));
    assert_eq!(got, expected);
    assert_eq!(
        server.plugin_state("v02-records").await,
        [("seen".to_owned(), json!(3))],
        "the 0.2 state import"
    );

    // The 0.1 plugin and the 0.2 JSON plugin on the same events.
    assert_eq!(
        server.plugin_state("v01-counter").await,
        [
            ("count".to_owned(), json!(4)),
            ("last".to_owned(), json!(4))
        ]
    );
    assert_eq!(
        server.plugin_state("v02-json").await,
        [("user/7".to_owned(), json!({"name": "Zoë \"Z\""}))]
    );
}
