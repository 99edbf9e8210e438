//! Appends and reads over HTTP: the classic example, optimistic concurrency,
//! idempotency, racing writers, gapless positions, paging, filters, batches.

use std::collections::{BTreeMap, HashSet};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Backend, Server, backend_tests, data_dir, events};

backend_tests!(
    classic_user_example_reads_back_in_order,
    data_and_metadata_are_kept_as_sent,
    every_expected_version_case,
    retried_appends_with_the_same_ids_are_not_appended_twice,
    ids_the_log_generates_are_recognised_when_sent_back,
    racing_writers_on_one_stream_get_one_winner_per_version,
    concurrent_appends_give_gapless_positions,
    streams_read_forward_and_backward_in_pages,
    the_global_log_filters_by_category_and_type,
    a_batch_appends_to_many_streams_all_or_nothing,
    a_refused_batch_names_the_append_that_failed_when_a_stream_appears_twice,
);

async fn classic_user_example_reads_back_in_order(backend: Backend) {
    let dir = data_dir();
    let server = Server::start_on(backend, dir.path(), &[]).await;
    let steps = [
        (
            "UserCreated",
            json!({"userId": 1, "name": "Alice"}),
            json!("no_stream"),
        ),
        (
            "UserNameUpdated",
            json!({"userId": 1, "name": "Alice Cooper"}),
            json!(0),
        ),
        ("UserDeleted", json!({"userId": 1}), json!(1)),
    ];
    for (i, (event_type, data, expected)) in steps.iter().enumerate() {
        let (status, body) = server
            .append(
                "user-1",
                expected.clone(),
                json!([{ "type": event_type, "data": data }]),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["first_position"], i as u64 + 1);
        assert_eq!(body["next_expected_version"], i as u64);
    }
    let (status, page) = server.get("/streams/user-1").await;
    assert_eq!(status, StatusCode::OK);
    let read = page["events"].as_array().unwrap();
    assert_eq!(read.len(), 3);
    for (i, ((event_type, data, _), event)) in steps.iter().zip(read).enumerate() {
        assert_eq!(event["position"], i as u64 + 1);
        assert_eq!(event["version"], i as u64);
        assert_eq!(event["stream"], "user-1");
        assert_eq!(event["type"], *event_type);
        assert_eq!(event["data"], *data);
        assert_eq!(event["metadata"], json!({}));
        assert!(uuid::Uuid::parse_str(event["id"].as_str().unwrap()).is_ok());
        assert!(event["recorded_at"].as_str().unwrap().ends_with('Z'));
    }
    assert_eq!(page["stream_version"], 2);
    assert_eq!(page["next"], Value::Null);
}

async fn data_and_metadata_are_kept_as_sent(backend: Backend) {
    let dir = data_dir();
    let server = Server::start_on(backend, dir.path(), &[]).await;
    let body = r#"{"events":[{"type":"T","data":{ "b" : [1,  2],"a":"é\u00e9" },"metadata":{"trace": "x"}}]}"#;
    let (status, _) = server
        .post_raw("/streams/raw-1", "application/json", body)
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let text = server.get_text("/streams/raw-1").await;
    assert!(
        text.contains(r#""data":{ "b" : [1,  2],"a":"é\u00e9" }"#),
        "{text}"
    );
    assert!(text.contains(r#""metadata":{"trace": "x"}"#), "{text}");
}

async fn every_expected_version_case(backend: Backend) {
    let dir = data_dir();
    let server = Server::start_on(backend, dir.path(), &[]).await;
    let one = || events("E", 1);
    // (stream, expected, should succeed, actual version reported on conflict)
    let cases = [
        ("a-1", json!("exists"), false, Value::Null),
        ("a-1", json!(0), false, Value::Null),
        ("a-1", json!("no_stream"), true, Value::Null),
        ("a-1", json!("no_stream"), false, json!(0)),
        ("a-1", json!("exists"), true, Value::Null),
        ("a-1", json!(1), true, Value::Null),
        ("a-1", json!(1), false, json!(2)),
        ("a-1", json!(5), false, json!(2)),
        ("a-1", json!("any"), true, Value::Null),
        ("a-2", json!("any"), true, Value::Null),
        ("a-3", Value::Null, true, Value::Null),
    ];
    for (stream, expected, succeeds, actual) in cases {
        let head = server.head().await;
        let (status, body) = server.append(stream, expected.clone(), one()).await;
        if succeeds {
            assert_eq!(status, StatusCode::CREATED, "{stream} {expected}: {body}");
            assert_eq!(server.head().await, head + 1);
        } else {
            assert_eq!(status, StatusCode::CONFLICT, "{stream} {expected}: {body}");
            assert_eq!(body["error"]["code"], "wrong_expected_version");
            assert_eq!(body["error"]["actual_version"], actual, "{body}");
            assert_eq!(server.head().await, head, "a conflict appended something");
        }
    }
    let page = server.get_ok("/streams/a-1").await;
    let versions: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, vec![0, 1, 2, 3]);
}

async fn retried_appends_with_the_same_ids_are_not_appended_twice(backend: Backend) {
    let dir = data_dir();
    let server = Server::start_on(backend, dir.path(), &[]).await;
    server
        .append_created("other-1", json!("any"), events("E", 2))
        .await;
    let ids: Vec<String> = (0..3).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    let batch = json!([
        {"type": "OrderPlaced", "id": ids[0], "data": {"n": 0}},
        {"type": "OrderPaid", "id": ids[1], "data": {"n": 1}},
    ]);
    let (status, first) = server
        .append("order-1", json!("no_stream"), batch.clone())
        .await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    // The retry would fail its expected_version, but it is recognised first.
    let (status, retry) = server
        .append("order-1", json!("no_stream"), batch.clone())
        .await;
    assert_eq!(status, StatusCode::OK, "{retry}");
    assert_eq!(retry["first_position"], first["first_position"]);
    assert_eq!(retry["last_position"], first["last_position"]);
    assert_eq!(retry["next_expected_version"], 1);
    assert_eq!(retry["duplicate"], true);
    assert_eq!(server.head().await, 4);

    // A request that reuses one id among new ones is not a retry: refused whole.
    let mixed = json!([
        {"type": "OrderShipped", "id": ids[2], "data": {}},
        {"type": "OrderPaid", "id": ids[1], "data": {}},
    ]);
    let (status, body) = server.append("order-1", json!("any"), mixed).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "idempotency_conflict");
    // The same ids sent to another stream are not a retry either.
    let (status, body) = server.append("order-2", json!("any"), batch).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(server.head().await, 4);
    // The same id twice in one request is bad input.
    let twice =
        json!([{"type": "A", "id": ids[2], "data": 1}, {"type": "B", "id": ids[2], "data": 2}]);
    let (status, body) = server.append("order-3", json!("any"), twice).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "duplicate_event_id");
    assert_eq!(server.head().await, 4);
}

async fn ids_the_log_generates_are_recognised_when_sent_back(backend: Backend) {
    let dir = data_dir();
    // Embedded: no checkpoint on its own, so that the kill -9 below leaves
    // the events in the write-ahead log alone.
    let args: &[&str] = match backend {
        Backend::Embedded => &["--checkpoint-interval", "1h"],
        Backend::JetStream => &[],
    };
    let mut server = Server::start_on(backend, dir.path(), args).await;
    server
        .append_created("other-1", json!("any"), events("E", 2))
        .await;
    let (status, _) = server
        .append("order-1", json!("no_stream"), events("E", 3))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let page = server.get_ok("/streams/order-1").await;
    let read: Vec<Value> = page["events"].as_array().unwrap().clone();
    let ids: Vec<String> = read
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    // Embedded: UUIDv8 carrying the position; JetStream: UUIDv7.
    let generated = match backend {
        Backend::Embedded => 8,
        Backend::JetStream => 7,
    };
    for id in &ids {
        assert_eq!(
            uuid::Uuid::parse_str(id).unwrap().get_version_num(),
            generated,
            "{id}"
        );
    }
    // The events as read, sent back with their ids: a retry, and again after
    // a kill -9 and a restart (the ids need no index entry to be found).
    let resend = Value::Array(
        read.iter()
            .map(|e| json!({"type": e["type"], "id": e["id"], "data": e["data"]}))
            .collect(),
    );
    for round in 0..2 {
        let (status, retry) = server
            .append("order-1", json!("no_stream"), resend.clone())
            .await;
        assert_eq!(status, StatusCode::OK, "round {round}: {retry}");
        assert_eq!(retry["first_position"], 3);
        assert_eq!(retry["last_position"], 5);
        assert_eq!(retry["duplicate"], true);
        assert_eq!(server.head().await, 5);
        if round == 0 {
            // Embedded: the events are still only in the write-ahead log,
            // and the restart replays them into redb.
            server.kill9();
        } else {
            assert!(server.terminate().success());
        }
        server = Server::start_on(backend, dir.path(), args).await;
    }
    if backend == Backend::Embedded {
        let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
        assert!(log.contains("recovered events 1 to 5"), "{log}");
    }
    // Sent to another stream, or one of them among new events: not a retry.
    let (status, body) = server.append("order-2", json!("any"), resend).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let mixed = json!([
        {"type": "E", "id": uuid::Uuid::now_v7().to_string(), "data": {}},
        {"type": "E", "id": ids[1], "data": {}},
    ]);
    let (status, body) = server.append("order-1", json!("any"), mixed).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "idempotency_conflict");
    if backend == Backend::JetStream {
        return; // its generated ids are UUIDv7, with no form of its own
    }
    // An id of the log's own form that names no event yet (the next
    // position's, made by editing a real one) is refused: it would collide.
    let last = uuid::Uuid::parse_str(&ids[2]).unwrap().as_u128();
    let next = uuid::Uuid::from_u128(last + 1).to_string();
    let (status, body) = server
        .append(
            "order-1",
            json!("any"),
            json!([{"type": "E", "id": next, "data": {}}]),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "reserved_event_id");
    assert_eq!(server.head().await, 5);
    // The next event the log makes itself gets that very id.
    server
        .append_created("order-1", json!("any"), events("E", 1))
        .await;
    let page = server.get_ok("/events?from=6").await;
    assert_eq!(page["events"][0]["id"], next);
}

async fn racing_writers_on_one_stream_get_one_winner_per_version(backend: Backend) {
    let dir = data_dir();
    let server = std::sync::Arc::new(Server::start_on(backend, dir.path(), &[]).await);
    const WRITERS: usize = 12;
    const EACH: usize = 15;
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            let mut won = Vec::new();
            let mut expected = json!("no_stream");
            let mut conflicts = 0;
            while won.len() < EACH {
                let event = json!([{ "type": "Claimed", "data": { "writer": writer } }]);
                let (status, body) = server.append("race-1", expected.clone(), event).await;
                match status {
                    StatusCode::CREATED => {
                        won.push(body["next_expected_version"].as_u64().unwrap());
                        expected = body["next_expected_version"].clone();
                    }
                    StatusCode::CONFLICT => {
                        conflicts += 1;
                        expected = match &body["error"]["actual_version"] {
                            Value::Null => json!("no_stream"),
                            v => v.clone(),
                        };
                    }
                    other => panic!("unexpected {other}: {body}"),
                }
            }
            (writer, won, conflicts)
        }));
    }
    let mut claimed = BTreeMap::new();
    let mut conflicts = 0;
    for task in tasks {
        let (writer, won, c) = task.await.unwrap();
        conflicts += c;
        for version in won {
            assert!(
                claimed.insert(version, writer).is_none(),
                "version {version} won twice"
            );
        }
    }
    assert!(conflicts > 0, "the writers never raced");
    let total = (WRITERS * EACH) as u64;
    assert_eq!(
        claimed.keys().copied().collect::<Vec<_>>(),
        (0..total).collect::<Vec<_>>()
    );
    // The stream agrees with what each writer was told.
    let page = server
        .get_ok(&format!("/streams/race-1?limit={total}"))
        .await;
    for event in page["events"].as_array().unwrap() {
        let version = event["version"].as_u64().unwrap();
        assert_eq!(event["data"]["writer"], claimed[&version]);
    }
}

/// With one HTTP thread, each group is led by the append that found the
/// writer idle; with several, appends that arrive while a leader commits go
/// to the writer thread. Both give gapless positions and versions.
async fn concurrent_appends_give_gapless_positions(backend: Backend) {
    for threads in ["1", "4"] {
        concurrent_appends_are_gapless_with(backend, threads).await;
    }
}

async fn concurrent_appends_are_gapless_with(backend: Backend, http_threads: &str) {
    let dir = data_dir();
    let args = ["--http-threads", http_threads];
    let server = std::sync::Arc::new(Server::start_on(backend, dir.path(), &args).await);
    let mut tasks = Vec::new();
    for writer in 0..16 {
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            let mut acks = Vec::new();
            for i in 0..25 {
                let n = 1 + (i % 3);
                let (status, body) = server
                    .append(&format!("gap-{writer}"), json!("any"), events("E", n))
                    .await;
                assert_eq!(status, StatusCode::CREATED, "{body}");
                acks.push((
                    body["first_position"].as_u64().unwrap(),
                    body["last_position"].as_u64().unwrap(),
                ));
            }
            acks
        }));
    }
    let mut acked = HashSet::new();
    for task in tasks {
        for (first, last) in task.await.unwrap() {
            assert!(first <= last);
            for p in first..=last {
                assert!(
                    acked.insert(p),
                    "position {p} given twice ({http_threads} HTTP threads)"
                );
            }
        }
    }
    let all = server.read_all().await;
    let positions: Vec<u64> = all
        .iter()
        .map(|e| e["position"].as_u64().unwrap())
        .collect();
    assert_eq!(positions, (1..=acked.len() as u64).collect::<Vec<_>>());
    let mut versions: BTreeMap<String, u64> = BTreeMap::new();
    for event in &all {
        let next = versions
            .entry(event["stream"].as_str().unwrap().to_owned())
            .or_default();
        assert_eq!(
            event["version"].as_u64().unwrap(),
            *next,
            "versions of a stream are 0,1,2… ({http_threads} HTTP threads)"
        );
        *next += 1;
    }
}

async fn streams_read_forward_and_backward_in_pages(backend: Backend) {
    let dir = data_dir();
    let server = Server::start_on(backend, dir.path(), &[]).await;
    server
        .append_created("page-1", json!("any"), events("E", 10))
        .await;
    let versions = |page: &Value| -> Vec<u64> {
        page["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["version"].as_u64().unwrap())
            .collect()
    };
    let page = server.get_ok("/streams/page-1?direction=backward").await;
    assert_eq!(versions(&page), (0..10).rev().collect::<Vec<_>>());
    let page = server
        .get_ok("/streams/page-1?direction=backward&limit=3")
        .await;
    assert_eq!(versions(&page), vec![9, 8, 7]);
    assert_eq!(page["next"], 6);
    let page = server
        .get_ok("/streams/page-1?direction=backward&from=2&limit=5")
        .await;
    assert_eq!(versions(&page), vec![2, 1, 0]);
    assert_eq!(page["next"], Value::Null);
    let page = server.get_ok("/streams/page-1?from=4&limit=3").await;
    assert_eq!(versions(&page), vec![4, 5, 6]);
    assert_eq!(page["next"], 7);
    let page = server.get_ok("/streams/page-1?from=10").await;
    assert_eq!(versions(&page), Vec::<u64>::new());
    assert_eq!(page["stream_version"], 9);
    let (status, body) = server.get("/streams/never-1").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "stream_not_found");
}

async fn the_global_log_filters_by_category_and_type(backend: Backend) {
    let dir = data_dir();
    let server = Server::start_on(backend, dir.path(), &[]).await;
    server
        .append_created(
            "user-1",
            json!("any"),
            json!([{"type": "UserCreated", "data": {}}]),
        )
        .await;
    server
        .append_created(
            "order-1",
            json!("any"),
            json!([{"type": "OrderPlaced", "data": {}}]),
        )
        .await;
    server
        .append_created(
            "user-2",
            json!("any"),
            json!([{"type": "UserCreated", "data": {}}, {"type": "UserDeleted", "data": {}}]),
        )
        .await;
    server
        .append_created(
            "order-2",
            json!("any"),
            json!([{"type": "OrderPlaced", "data": {}}]),
        )
        .await;
    let positions = |page: &Value| -> Vec<u64> {
        page["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["position"].as_u64().unwrap())
            .collect()
    };
    let page = server.get_ok("/events?category=user").await;
    assert_eq!(positions(&page), vec![1, 3, 4]);
    let page = server.get_ok("/events?type=OrderPlaced").await;
    assert_eq!(positions(&page), vec![2, 5]);
    let page = server
        .get_ok("/events?category=user&type=UserDeleted")
        .await;
    assert_eq!(positions(&page), vec![4]);
    let page = server
        .get_ok("/events?type=UserDeleted,OrderPlaced&from=3")
        .await;
    assert_eq!(positions(&page), vec![4, 5]);
    let page = server.get_ok("/events?from=2&limit=2").await;
    assert_eq!(positions(&page), vec![2, 3]);
    assert_eq!(page["next"], 4);
    assert_eq!(page["head"], 5);
    let page = server.get_ok("/events?category=user&limit=2").await;
    assert_eq!(positions(&page), vec![1, 3]);
    assert_eq!(page["next"], 4, "next is one past the last event examined");
}

async fn a_batch_appends_to_many_streams_all_or_nothing(backend: Backend) {
    let dir = data_dir();
    let server = Server::start_on(backend, dir.path(), &[]).await;
    let (status, body) = server
        .post(
            "/batch",
            &json!({"appends": [
                {"stream": "cart-1", "expected_version": "no_stream", "events": events("ItemAdded", 2)},
                {"stream": "cart-2", "events": events("ItemAdded", 1)},
                {"stream": "cart-1", "expected_version": 1, "events": events("CheckedOut", 1)},
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results[0]["stream"], "cart-1");
    assert_eq!(
        (
            results[0]["first_position"].as_u64(),
            results[0]["last_position"].as_u64()
        ),
        (Some(1), Some(2))
    );
    assert_eq!(results[1]["first_position"], 3);
    assert_eq!(results[2]["first_position"], 4);
    assert_eq!(results[2]["next_expected_version"], 2);

    let (status, body) = server
        .post(
            "/batch",
            &json!({"appends": [
                {"stream": "cart-3", "events": events("ItemAdded", 1)},
                {"stream": "cart-2", "expected_version": 7, "events": events("ItemAdded", 1)},
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["append_index"], 1);
    assert_eq!(server.head().await, 4, "a refused batch appended something");
    let (status, _) = server.get("/streams/cart-3").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn a_refused_batch_names_the_append_that_failed_when_a_stream_appears_twice(
    backend: Backend,
) {
    let dir = data_dir();
    let server = Server::start_on(backend, dir.path(), &[]).await;
    // The first append to `cart-1` passes its check (it creates the stream);
    // the second expects version 5 while the first leaves it at 1.
    let (status, body) = server
        .post(
            "/batch",
            &json!({"appends": [
                {"stream": "cart-1", "expected_version": "no_stream", "events": events("ItemAdded", 2)},
                {"stream": "cart-2", "events": events("ItemAdded", 1)},
                {"stream": "cart-1", "expected_version": 5, "events": events("CheckedOut", 1)},
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["stream"], "cart-1", "{body}");
    assert_eq!(body["error"]["expected_version"], "5", "{body}");
    assert_eq!(body["error"]["actual_version"], 1, "{body}");
    assert_eq!(body["error"]["append_index"], 2, "{body}");
    // Two appends expecting the same thing: the first creates the stream, the
    // second fails, and the log says it was the second.
    let (status, body) = server
        .post(
            "/batch",
            &json!({"appends": [
                {"stream": "cart-3", "expected_version": "no_stream", "events": events("ItemAdded", 1)},
                {"stream": "cart-3", "expected_version": "no_stream", "events": events("ItemAdded", 1)},
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["actual_version"], 0, "{body}");
    assert_eq!(body["error"]["append_index"], 1, "{body}");
    assert_eq!(server.head().await, 0, "a refused batch appended something");
}
