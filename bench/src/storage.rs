//! Storage overhead against its target (`docs/design.md#targets`: at most
//! 1.3× the raw payload bytes for 1 KB events): a fresh log filled with 1 KB
//! events, shut down (so redb holds everything and the write-ahead log is
//! empty), then its files measured, with redb's own account of each table.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use eventfold::log::{
    EventLog, EventType, ExpectedVersion, LOG_FILE, NewEvent, StreamAppend, StreamName, WAL_FILE,
};
use eventfold::metrics::Metrics;
use redb::{ReadableDatabase, ReadableTableMetadata, TableHandle};

/// Options of the storage benchmark.
#[derive(clap::Args)]
pub struct Args {
    /// Where the scratch log goes.
    #[arg(long, default_value = "target/bench-data")]
    pub data_dir: PathBuf,
    /// Events appended.
    #[arg(long, default_value_t = 100_000)]
    pub events: u64,
    /// Bytes of each event's `data` (a JSON object).
    #[arg(long, default_value_t = 1024)]
    pub event_bytes: usize,
    /// Streams the events are spread over (100 events per append).
    #[arg(long, default_value_t = 1_000)]
    pub streams: u64,
}

impl Default for Args {
    fn default() -> Self {
        crate::defaults()
    }
}

/// The target (`docs/design.md#targets`): file bytes ÷ payload bytes, for
/// 1 KB events.
const TARGET: f64 = 1.3;

/// Runs the benchmark and prints the table.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let scratch = crate::scratch_dir(&args.data_dir, "storage-")?;
    let dir = scratch.path().join("log");
    let log = EventLog::open(&dir, Metrics::new())?;
    let payload = fill(&log, &args).await?;
    log.shutdown().await;
    drop(log); // closes the database, so that it can be opened for its stats

    // (length, bytes of disk the file's blocks take): redb grows its file by
    // doubling with `set_len`, which leaves the tail sparse until written.
    let file = |name: &str| -> anyhow::Result<(u64, u64)> {
        let path = dir.join(name);
        let metadata = std::fs::metadata(&path).with_context(|| path.display().to_string())?;
        Ok((metadata.len(), metadata.blocks() * 512))
    };
    let ((redb_len, redb_disk), (wal_len, _)) = (file(LOG_FILE)?, file(WAL_FILE)?);
    let tables = table_stats(&dir.join(LOG_FILE))?;

    println!();
    println!(
        "{} events of {} bytes of data in {} streams: {:.1} MB of payload",
        args.events,
        args.event_bytes,
        args.streams,
        payload as f64 / 1e6
    );
    println!(
        "{:<14} {:>12} {:>12} {:>12} {:>12}",
        "table", "stored MB", "metadata MB", "fragment MB", "per event B"
    );
    for (name, stored, metadata, fragmented) in &tables {
        println!(
            "{:<14} {:>12.2} {:>12.2} {:>12.2} {:>12.1}",
            name,
            *stored as f64 / 1e6,
            *metadata as f64 / 1e6,
            *fragmented as f64 / 1e6,
            (stored + metadata + fragmented) as f64 / args.events as f64
        );
    }
    let used: u64 = tables.iter().map(|(_, s, m, f)| s + m + f).sum();
    for (what, bytes) in [("in the tables", used), ("log.redb, disk", redb_disk)] {
        let ratio = bytes as f64 / payload as f64;
        println!(
            "{what:<14} {:>8.1} MB = {ratio:.2}× the payload (target: ≤ {TARGET}×: {})",
            bytes as f64 / 1e6,
            if ratio <= TARGET { "met" } else { "NOT MET" }
        );
    }
    println!(
        "{:<14} {:>8.1} MB long = {:.2}× (redb doubles its file; the tail is sparse until written)",
        "log.redb, size",
        redb_len as f64 / 1e6,
        redb_len as f64 / payload as f64
    );
    println!(
        "{:<14} {:>8.1} MB (preallocated once and reused; empty after a checkpoint)",
        "log.wal file",
        wal_len as f64 / 1e6
    );
    Ok(())
}

/// Appends the events; answers the payload bytes (the events' `data`).
async fn fill(log: &EventLog, args: &Args) -> anyhow::Result<u64> {
    let event_type = EventType::new("DocumentSaved")?;
    // A JSON object of exactly `event_bytes`: a counter and a padding string.
    let data = |k: u64| {
        let head = format!(r#"{{"n":{k},"text":""#);
        let pad = args.event_bytes.saturating_sub(head.len() + 2);
        let text: String = (0..pad)
            .map(|i| char::from(b'a' + ((k as usize + i) % 26) as u8))
            .collect();
        format!("{head}{text}\"}}").into_bytes()
    };
    let (mut written, mut payload) = (0, 0);
    while written < args.events {
        let count = (args.events - written).min(100);
        let events: Vec<NewEvent> = (0..count)
            .map(|i| NewEvent {
                id: None,
                event_type: event_type.clone(),
                data: data(written + i),
                metadata: b"{}".to_vec(),
            })
            .collect();
        payload += events.iter().map(|e| e.data.len() as u64).sum::<u64>();
        log.append(StreamAppend {
            stream: StreamName::new(format!("doc-{}", (written / 100) % args.streams))?,
            expected_version: ExpectedVersion::Any,
            events,
        })
        .await?;
        written += count;
    }
    Ok(payload)
}

/// (table, stored bytes, metadata bytes, fragmented bytes) for each table.
fn table_stats(path: &Path) -> anyhow::Result<Vec<(String, u64, u64, u64)>> {
    let db = redb::Database::open(path)?;
    let txn = db.begin_read()?;
    let mut out = Vec::new();
    for handle in txn.list_tables()? {
        let name = handle.name().to_owned();
        let stats = txn.open_untyped_table(handle)?.stats()?;
        out.push((
            name,
            stats.stored_bytes(),
            stats.metadata_bytes(),
            stats.fragmented_bytes(),
        ));
    }
    Ok(out)
}
