//! Brings a log written by an older eventfold to the current table format
//! (`tables`), once, when it is opened.
//!
//! Format 1 (eventfold before chunks) kept one `events` entry per event and
//! one `stream_index` entry, (stream id, version) → position, per event.
//! Format 2 packs events into chunks and indexes streams by runs. The event
//! encoding (`codec`), the stream ids, the id index and the meta table are the
//! same in both, so migrating copies bytes without decoding them. It runs in
//! the writer's opening transaction: it happens whole or not at all.

use redb::{ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle, WriteTransaction};

use super::LogError;
use super::chunk::ChunkBuilder;
use super::runs::RunBuilder;
use super::tables::{CURRENT_FORMAT, EVENT_CHUNKS, FORMAT, META, STREAM_RUNS};

/// Format 1's events by position.
const EVENTS_V1: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// Format 1's (stream id, version) → position.
const STREAM_INDEX_V1: TableDefinition<(u64, u64), u64> = TableDefinition::new("stream_index");

/// How often a long migration reports progress.
const REPORT_EVERY: u64 = 1_000_000;

/// Migrates the tables to [`CURRENT_FORMAT`] if they are older; marks a new log.
pub fn to_current(txn: &WriteTransaction) -> Result<(), LogError> {
    let format = txn.open_table(META)?.get(FORMAT)?.map(|g| g.value());
    let has_v1 = txn.list_tables()?.any(|t| t.name() == EVENTS_V1.name());
    match format {
        Some(CURRENT_FORMAT) if has_v1 && !txn.open_table(EVENTS_V1)?.is_empty()? => {
            return Err(LogError::Corrupt(
                "an eventfold older than format 2 appended to this format 2 log: its events \
                 are in the format 1 table, which this eventfold does not read"
                    .into(),
            ));
        }
        Some(CURRENT_FORMAT) => return Ok(()),
        Some(other) => return Err(LogError::UnsupportedFormat(other)),
        None => {}
    }
    if has_v1 {
        from_v1(txn)?;
    }
    txn.open_table(META)?.insert(FORMAT, CURRENT_FORMAT)?;
    Ok(())
}

fn from_v1(txn: &WriteTransaction) -> Result<(), LogError> {
    let started = std::time::Instant::now();
    let total = {
        let old = txn.open_table(EVENTS_V1)?;
        let mut chunks = txn.open_table(EVENT_CHUNKS)?;
        let total = old.len()?;
        tracing::info!("migrating the log's {total} events to format {CURRENT_FORMAT} (chunks)");
        let mut chunk = ChunkBuilder::default();
        chunk.start(1);
        for (done, entry) in old.iter()?.enumerate() {
            let (key, value) = entry?;
            let bytes = value.value();
            if key.value() != chunk.next_position() {
                return Err(LogError::Corrupt(format!(
                    "format 1 log jumps from event {} to {}",
                    chunk.next_position() - 1,
                    key.value()
                )));
            }
            chunk.append(&mut chunks, bytes.len(), |buf| buf.extend_from_slice(bytes))?;
            if (done as u64 + 1).is_multiple_of(REPORT_EVERY) {
                tracing::info!("migrated {} of {total} events", done as u64 + 1);
            }
        }
        chunk.flush(&mut chunks)?;

        let index = txn.open_table(STREAM_INDEX_V1)?;
        let mut runs = txn.open_table(STREAM_RUNS)?;
        let mut builder = RunBuilder::default();
        for entry in index.iter()? {
            let (key, value) = entry?;
            let (stream, version) = key.value();
            builder.push(&mut runs, stream, version, value.value())?;
        }
        builder.finish(&mut runs)?;
        total
    };
    txn.delete_table(EVENTS_V1)?;
    txn.delete_table(STREAM_INDEX_V1)?;
    tracing::info!(
        "migrated {total} events to format {CURRENT_FORMAT} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use redb::Database;
    use uuid::Uuid;

    use super::*;
    use crate::log::codec;
    use crate::log::embedded::tables::STREAMS;
    use crate::log::{
        Direction, EventFilter, EventLog, EventType, ExpectedVersion, LOG_FILE, NewEvent, Position,
        RecordedEvent, StreamAppend, StreamName,
    };
    use crate::metrics::Metrics;

    /// A format 1 log as the eventfold before chunks wrote it: events of
    /// three streams, appended in runs of 1 to 7, some bigger than a chunk.
    fn write_v1(db: &Database) -> Vec<RecordedEvent> {
        let txn = db.begin_write().unwrap();
        let mut written = Vec::new();
        {
            let mut events = txn.open_table(EVENTS_V1).unwrap();
            let mut index = txn.open_table(STREAM_INDEX_V1).unwrap();
            let mut streams = txn.open_table(STREAMS).unwrap();
            let mut versions = [0u64; 3];
            let mut position = 1;
            for append in 0..300u64 {
                let stream = (append * 7 % 3) as usize;
                let name = format!("s-{stream}");
                if versions[stream] == 0 {
                    streams.insert(name.as_str(), stream as u64).unwrap();
                }
                for _ in 0..(append % 7 + 1) {
                    let size = if position % 97 == 0 { 40_000 } else { 150 };
                    let event = RecordedEvent {
                        position: Position(position),
                        stream: name.clone(),
                        version: versions[stream],
                        event_type: "Happened".into(),
                        id: Uuid::now_v7(),
                        data: vec![b'7'; size],
                        metadata: b"{}".to_vec(),
                        recorded_at: position,
                    };
                    let buf = codec::tests::encode(&event);
                    events.insert(position, buf.as_slice()).unwrap();
                    index
                        .insert((stream as u64, versions[stream]), position)
                        .unwrap();
                    versions[stream] += 1;
                    position += 1;
                    written.push(event);
                }
            }
        }
        txn.commit().unwrap();
        written
    }

    #[tokio::test]
    async fn a_format_1_log_reads_the_same_after_migration_and_takes_appends() {
        let dir = tempfile::tempdir().unwrap();
        let written = {
            let db = Database::create(dir.path().join(LOG_FILE)).unwrap();
            write_v1(&db)
        };
        let log = EventLog::open(dir.path(), Metrics::new()).unwrap();

        let all = EventFilter::default();
        let page = log
            .read_log_blocking(Position(0), usize::MAX, &all)
            .unwrap();
        assert_eq!(page.head, Position(written.len() as u64));
        assert_eq!(page.events, written);
        let page = log.read_log_blocking(Position(500), 10, &all).unwrap();
        assert_eq!(page.events, written[499..509]);
        for stream in ["s-0", "s-1", "s-2"] {
            let expected: Vec<&RecordedEvent> =
                written.iter().filter(|e| e.stream == stream).collect();
            let name = StreamName::new(stream).unwrap();
            let page = log
                .read_stream(name.clone(), None, usize::MAX, Direction::Forward)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(page.events.iter().collect::<Vec<_>>(), expected);
            assert_eq!(page.stream_version, expected.len() as u64 - 1);
            let page = log
                .read_stream(name, Some(100), 5, Direction::Backward)
                .await
                .unwrap()
                .unwrap();
            let versions: Vec<u64> = page.events.iter().map(|e| e.version).collect();
            assert_eq!(versions, vec![100, 99, 98, 97, 96]);
            assert_eq!(page.next, Some(95));
        }

        // The migrated log takes appends where the old one left off.
        let s0 = written.iter().filter(|e| e.stream == "s-0").count() as u64;
        let outcome = log
            .append(StreamAppend {
                stream: StreamName::new("s-0").unwrap(),
                expected_version: ExpectedVersion::Exact(s0 - 1),
                events: vec![NewEvent {
                    id: None,
                    event_type: EventType::new("After").unwrap(),
                    data: b"{}".to_vec(),
                    metadata: b"{}".to_vec(),
                }],
            })
            .await
            .unwrap();
        assert_eq!(outcome.first_position, Position(written.len() as u64 + 1));
        assert_eq!(outcome.next_expected_version, s0);
        log.shutdown().await;
        drop(log);

        // Opening it again finds it current and changes nothing.
        let log = EventLog::open(dir.path(), Metrics::new()).unwrap();
        let page = log
            .read_log_blocking(Position(0), usize::MAX, &all)
            .unwrap();
        assert_eq!(page.events[..written.len()], written);
        assert_eq!(page.events.len(), written.len() + 1);
        log.shutdown().await;
    }

    #[test]
    fn a_newer_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("log.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META).unwrap().insert(FORMAT, 3).unwrap();
        assert!(matches!(
            to_current(&txn),
            Err(LogError::UnsupportedFormat(3))
        ));
    }
}
