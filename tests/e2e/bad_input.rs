//! Every kind of bad input gets a JSON error with the right status and leaves
//! the log exactly as it was.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::{Backend, Server, backend_tests, data_dir, into_json};

backend_tests!(bad_input_is_refused_with_a_json_error_and_changes_nothing);

async fn bad_input_is_refused_with_a_json_error_and_changes_nothing(backend: Backend) {
    let dir = data_dir();
    let server = Server::start_on(
        backend,
        dir.path(),
        &["--max-request-bytes", "4096", "--max-event-bytes", "1024"],
    )
    .await;
    let (status, _) = server
        .append(
            "user-1",
            json!("no_stream"),
            crate::harness::events("UserCreated", 2),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let before = server.read_all().await;

    let ok_event = json!([{"type": "T", "data": {}}]);
    let long_name = "s".repeat(257);
    let big = "x".repeat(2000);
    let cases: Vec<(&str, Method, String, &str, String, StatusCode, &str)> = vec![
        (
            "invalid JSON",
            Method::POST,
            "/streams/user-1".into(),
            "application/json",
            "{\"events\": [".into(),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            "raw control character in a JSON string",
            Method::POST,
            "/streams/user-1".into(),
            "application/json",
            "{\"events\":[{\"type\":\"T\",\"data\":\"a\u{1}b\"}]}".into(),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            "missing events",
            Method::POST,
            "/streams/user-1".into(),
            "application/json",
            "{}".into(),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            "missing type",
            Method::POST,
            "/streams/user-1".into(),
            "application/json",
            json!({"events": [{"data": 1}]}).to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            "missing data",
            Method::POST,
            "/streams/user-1".into(),
            "application/json",
            json!({"events": [{"type": "T"}]}).to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            "unknown field",
            Method::POST,
            "/streams/user-1".into(),
            "application/json",
            json!({"events": [{"type": "T", "data": 1, "eventType": "x"}]}).to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            "events not a list",
            Method::POST,
            "/streams/user-1".into(),
            "application/json",
            json!({"events": {"type": "T"}}).to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            "no events",
            Method::POST,
            "/streams/user-1".into(),
            "application/json",
            json!({"events": []}).to_string(),
            StatusCode::BAD_REQUEST,
            "no_events",
        ),
        (
            "empty type",
            Method::POST,
            "/streams/user-1".into(),
            "application/json",
            json!({"events": [{"type": "", "data": 1}]}).to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_name",
        ),
        (
            "metadata not an object",
            Method::POST,
            "/streams/user-1".into(),
            "application/json",
            json!({"events": [{"type": "T", "data": 1, "metadata": [1]}]}).to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_metadata",
        ),
        (
            "id not a UUID",
            Method::POST,
            "/streams/user-1".into(),
            "application/json",
            json!({"events": [{"type": "T", "data": 1, "id": "nope"}]}).to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            "bad expected_version",
            Method::POST,
            "/streams/user-1".into(),
            "application/json",
            json!({"expected_version": -1, "events": ok_event}).to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_expected_version",
        ),
        (
            "over-long stream name",
            Method::POST,
            format!("/streams/{long_name}"),
            "application/json",
            json!({"events": ok_event}).to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_name",
        ),
        (
            "control character in stream name",
            Method::POST,
            "/streams/user%0A1".into(),
            "application/json",
            json!({"events": ok_event}).to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_name",
        ),
        (
            "empty stream name",
            Method::POST,
            "/streams/".into(),
            "application/json",
            json!({"events": ok_event}).to_string(),
            StatusCode::NOT_FOUND,
            "no_route",
        ),
        (
            "wrong content type",
            Method::POST,
            "/streams/user-1".into(),
            "text/plain",
            json!({"events": ok_event}).to_string(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "body over the request limit",
            Method::POST,
            "/streams/user-1".into(),
            "application/json",
            json!({"events": [{"type": "T", "data": "y".repeat(5000)}]}).to_string(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
        (
            "event over the event limit",
            Method::POST,
            "/streams/user-1".into(),
            "application/json",
            json!({"events": [{"type": "T", "data": big}]}).to_string(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "event_too_large",
        ),
        (
            "bad batch",
            Method::POST,
            "/batch".into(),
            "application/json",
            json!({"appends": [{"stream": "", "events": ok_event}]}).to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_name",
        ),
        (
            "empty batch",
            Method::POST,
            "/batch".into(),
            "application/json",
            json!({"appends": []}).to_string(),
            StatusCode::BAD_REQUEST,
            "no_appends",
        ),
        (
            "unknown route",
            Method::GET,
            "/nowhere".into(),
            "application/json",
            String::new(),
            StatusCode::NOT_FOUND,
            "no_route",
        ),
        (
            "wrong method",
            Method::DELETE,
            "/streams/user-1".into(),
            "application/json",
            String::new(),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            "bad limit",
            Method::GET,
            "/events?limit=many".into(),
            "application/json",
            String::new(),
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            "zero limit",
            Method::GET,
            "/streams/user-1?limit=0".into(),
            "application/json",
            String::new(),
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            "bad direction",
            Method::GET,
            "/streams/user-1?direction=sideways".into(),
            "application/json",
            String::new(),
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            "unknown query parameter",
            Method::GET,
            "/events?form=1".into(),
            "application/json",
            String::new(),
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            "data nested deeper than the limit",
            Method::POST,
            "/streams/user-1".into(),
            "application/json",
            format!(
                r#"{{"events":[{{"type":"T","data":{}{}}}]}}"#,
                "[".repeat(129),
                "]".repeat(129)
            ),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            "metadata nested deeper than the limit",
            Method::POST,
            "/streams/user-1".into(),
            "application/json",
            format!(
                r#"{{"events":[{{"type":"T","data":1,"metadata":{{"a":{}{}}}}}]}}"#,
                "[".repeat(128),
                "]".repeat(128)
            ),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            "data holding a number no double holds",
            Method::POST,
            "/streams/user-1".into(),
            "application/json",
            r#"{"events":[{"type":"T","data":{"total":1e400}}]}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            "metadata holding a lone surrogate",
            Method::POST,
            "/streams/user-1".into(),
            "application/json",
            r#"{"events":[{"type":"T","data":1,"metadata":{"who":"\ud800"}}]}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            "an event type of 300 characters",
            Method::POST,
            "/streams/user-1".into(),
            "application/json",
            format!(
                r#"{{"events":[{{"type":"{}","data":1}}]}}"#,
                "T".repeat(300)
            ),
            StatusCode::BAD_REQUEST,
            "invalid_name",
        ),
        (
            "an expected version beyond u64",
            Method::POST,
            "/streams/user-1".into(),
            "application/json",
            r#"{"expected_version":18446744073709551616,"events":[{"type":"T","data":1}]}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_expected_version",
        ),
        (
            "a position beyond u64",
            Method::GET,
            "/events?from=18446744073709551616".into(),
            "application/json",
            String::new(),
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            "a limit beyond usize",
            Method::GET,
            "/streams/user-1?limit=99999999999999999999999".into(),
            "application/json",
            String::new(),
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            "an event id of 3,000 characters",
            Method::POST,
            "/streams/user-1".into(),
            "application/json",
            format!(
                r#"{{"events":[{{"type":"T","data":1,"id":"{}"}}]}}"#,
                "a".repeat(3000)
            ),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            "bad Last-Event-ID on the notifications feed",
            Method::GET,
            "/notifications/live".into(),
            "application/json",
            String::new(),
            StatusCode::BAD_REQUEST,
            "invalid_last_event_id",
        ),
        (
            "bad Last-Event-ID",
            Method::GET,
            "/events/live".into(),
            "application/json",
            String::new(),
            StatusCode::BAD_REQUEST,
            "invalid_last_event_id",
        ),
    ];
    for (what, method, path, content_type, body, status, code) in cases {
        let mut request = server
            .request(method, &path)
            .header("content-type", content_type)
            .body(body);
        if what.starts_with("bad Last-Event-ID") {
            request = request.header("last-event-id", "abc");
        }
        let (got, error) = into_json(request.send().await).await;
        assert_eq!(got, status, "{what}: {error}");
        assert_eq!(error["error"]["code"], code, "{what}: {error}");
        assert!(
            error["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}: {error}"
        );
    }
    assert_eq!(server.read_all().await, before, "bad input changed the log");
    // And the server still serves.
    let (status, _) = server
        .append(
            "user-1",
            json!(1),
            crate::harness::events("UserNameUpdated", 1),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
}
