//! Property tests of the log's invariants, against the library directly and
//! an in-memory model: gapless positions, per-stream versions starting at 0,
//! expected-version checks, idempotent ids, and the same log after a reopen.

use std::collections::HashMap;

use eventfold::log::{
    AppendOutcome, EventLog, EventType, ExpectedVersion, LogError, NewEvent, Position,
    StreamAppend, StreamName,
};
use eventfold::metrics::Metrics;
use proptest::prelude::*;
use uuid::Uuid;

#[derive(Debug, Clone)]
enum Expect {
    Any,
    NoStream,
    Exists,
    Exact(u64),
    /// The stream's actual current version (a well-informed writer).
    Current,
}

#[derive(Debug, Clone)]
enum Op {
    Append {
        stream: usize,
        expect: Expect,
        events: usize,
        client_ids: bool,
    },
    /// Send the previous successful append again, byte for byte.
    Retry,
}

fn op() -> impl Strategy<Value = Op> {
    let expect = prop_oneof![
        Just(Expect::Any),
        Just(Expect::NoStream),
        Just(Expect::Exists),
        (0u64..6).prop_map(Expect::Exact),
        Just(Expect::Current),
    ];
    prop_oneof![
        4 => (0usize..4, expect, 1usize..4, any::<bool>())
            .prop_map(|(stream, expect, events, client_ids)| Op::Append { stream, expect, events, client_ids }),
        1 => Just(Op::Retry),
    ]
}

/// The reference: the log as a vector of (stream, version, type).
#[derive(Default)]
struct Model {
    log: Vec<(String, u64, String)>,
    versions: HashMap<String, u64>,
}

impl Model {
    fn append(&mut self, append: &StreamAppend) -> Result<AppendOutcome, ()> {
        let stream = append.stream.as_str().to_owned();
        let current = self.versions.get(&stream).copied();
        if !append.expected_version.admits(current) {
            return Err(());
        }
        let first_version = current.map_or(0, |v| v + 1);
        let first_position = self.log.len() as u64 + 1;
        for (i, event) in append.events.iter().enumerate() {
            self.log.push((
                stream.clone(),
                first_version + i as u64,
                event.event_type.as_str().to_owned(),
            ));
        }
        let last_version = first_version + append.events.len() as u64 - 1;
        self.versions.insert(stream, last_version);
        Ok(AppendOutcome {
            first_position: Position(first_position),
            last_position: Position(self.log.len() as u64),
            next_expected_version: last_version,
            duplicate: false,
        })
    }
}

async fn check_log(log: &EventLog, model: &Model) {
    let page = log
        .read_log(Position(1), usize::MAX, Default::default(), usize::MAX)
        .await
        .unwrap();
    assert_eq!(page.head, Position(model.log.len() as u64));
    let got: Vec<(String, u64, String)> = page
        .events
        .iter()
        .map(|e| (e.stream.clone(), e.version, e.event_type.clone()))
        .collect();
    assert_eq!(got, model.log);
    for (i, event) in page.events.iter().enumerate() {
        assert_eq!(event.position, Position(i as u64 + 1), "gapless from 1");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn the_log_matches_a_simple_model(ops in prop::collection::vec(op(), 1..25)) {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let log = EventLog::open(dir.path(), Metrics::new()).unwrap();
            let mut model = Model::default();
            let mut last_ok: Option<(StreamAppend, AppendOutcome)> = None;
            for (n, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Append { stream, expect, events, client_ids } => {
                        let stream = StreamName::new(format!("s-{stream}")).unwrap();
                        let current = model.versions.get(stream.as_str()).copied();
                        let expected_version = match expect {
                            Expect::Any => ExpectedVersion::Any,
                            Expect::NoStream => ExpectedVersion::NoStream,
                            Expect::Exists => ExpectedVersion::Exists,
                            Expect::Exact(v) => ExpectedVersion::Exact(v),
                            Expect::Current => current.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact),
                        };
                        let append = StreamAppend {
                            stream,
                            expected_version,
                            events: (0..events)
                                .map(|i| NewEvent {
                                    id: client_ids.then(Uuid::now_v7),
                                    event_type: EventType::new(format!("T{n}-{i}")).unwrap(),
                                    data: format!("{{\"n\":{n}}}").into_bytes(),
                                    metadata: b"{}".to_vec(),
                                })
                                .collect(),
                        };
                        let expected = model.append(&append);
                        let got = log.append(append.clone()).await;
                        match (expected, got) {
                            (Ok(want), Ok(got)) => {
                                assert_eq!(got, want);
                                if client_ids {
                                    last_ok = Some((append, got));
                                }
                            }
                            (Err(()), Err(LogError::WrongExpectedVersion { actual, .. })) => {
                                assert_eq!(actual, current);
                            }
                            (want, got) => panic!("model {want:?}, log {got:?}"),
                        }
                    }
                    Op::Retry => {
                        if let Some((append, original)) = &last_ok {
                            let again = log.append(append.clone()).await.unwrap();
                            assert!(again.duplicate);
                            assert_eq!(again.first_position, original.first_position);
                            assert_eq!(again.last_position, original.last_position);
                        }
                    }
                }
                assert_eq!(log.head(), Position(model.log.len() as u64));
            }
            check_log(&log, &model).await;
            // Reopen: the heads the writer kept in memory come back from the index.
            log.shutdown().await;
            drop(log);
            let log = EventLog::open(dir.path(), Metrics::new()).unwrap();
            check_log(&log, &model).await;
            for (stream, version) in &model.versions {
                let next = log
                    .append(StreamAppend {
                        stream: StreamName::new(stream.clone()).unwrap(),
                        expected_version: ExpectedVersion::Exact(*version),
                        events: vec![NewEvent {
                            id: None,
                            event_type: EventType::new("After").unwrap(),
                            data: b"null".to_vec(),
                            metadata: b"{}".to_vec(),
                        }],
                    })
                    .await
                    .unwrap();
                assert_eq!(next.next_expected_version, version + 1);
            }
            log.shutdown().await;
        });
    }
}
