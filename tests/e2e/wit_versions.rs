//! Plugins built against WIT 0.1, 0.2, 0.3 and 0.4 side by side on one log: the
//! host runs every version of the package, and a plugin gets its events in
//! the encoding it asked for (typed records, JSON for the Python and
//! JavaScript user directories, one packed buffer for the Rust SDK's).

use eventfold_plugin_builds::{
    COUNTER, COUNTER_V0_1, COUNTER_V0_3, PYTHON_USER_DIRECTORY, RECORDS_NOTIFIER_V0_2,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Server, data_dir};

#[tokio::test]
async fn plugins_of_every_wit_version_run_side_by_side() {
    let dir = data_dir();
    let server = Server::start_in(dir.path(), &[]).await;
    server
        .deploy_all(&[
            ("v02-records", RECORDS_NOTIFIER_V0_2),
            ("v01-counter", COUNTER_V0_1),
            ("v02-json", PYTHON_USER_DIRECTORY),
            ("v03-packed", COUNTER_V0_3),
            ("v04-packed", COUNTER),
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
    for name in [
        "v02-records",
        "v01-counter",
        "v02-json",
        "v03-packed",
        "v04-packed",
    ] {
        let status = server.wait_caught_up(name).await;
        statuses.push((status["wit"].clone(), status["encoding"].clone()));
    }
    assert_eq!(
        statuses,
        [
            (json!("0.2.0"), json!("records")),
            (json!("0.1.0"), json!("records")),
            (json!("0.2.0"), json!("json")),
            (json!("0.3.0"), json!("packed")),
            (json!("0.4.0"), json!("packed")),
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

    // The 0.1 plugin, the 0.3 and 0.4 packed ones and the 0.2 JSON plugin on the same events.
    for counter in ["v01-counter", "v03-packed", "v04-packed"] {
        assert_eq!(
            server.plugin_state(counter).await,
            [
                ("count".to_owned(), json!(4)),
                ("last".to_owned(), json!(4))
            ],
            "{counter}"
        );
    }
    assert_eq!(
        server.plugin_state("v02-json").await,
        [("user/7".to_owned(), json!({"name": "Zoë \"Z\""}))]
    );
}
