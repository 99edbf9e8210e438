//! Runs: how the `stream_runs` table indexes a stream's events.
//!
//! One append writes its events with consecutive versions at consecutive
//! positions, so one entry, (stream id, first version) → (first position,
//! count), indexes all of them. Appends to one stream that follow each
//! other in a group (a reactor's outputs), and events gathered by recovery
//! and migration, share one run ([`RunBuilder`]).

use redb::{ReadableTable, Table};

use super::LogError;

/// A run of one stream's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// Version of its first event.
    pub version: u64,
    /// Position of its first event.
    pub position: u64,
    /// How many events.
    pub count: u64,
}

impl Run {
    /// Version of its last event.
    pub fn last_version(&self) -> u64 {
        self.version + self.count - 1
    }

    /// Whether it holds `version`.
    pub fn holds(&self, version: u64) -> bool {
        version >= self.version && version - self.version < self.count
    }

    /// The position of `version`, which it must hold.
    pub fn position_of(&self, version: u64) -> u64 {
        self.position + (version - self.version)
    }
}

type Entry<'a> = (
    redb::AccessGuard<'a, (u64, u64)>,
    redb::AccessGuard<'a, (u64, u64)>,
);

fn run((key, value): Entry<'_>) -> Result<Run, LogError> {
    let (stream, version) = key.value();
    let (position, count) = value.value();
    let fits = |start: u64| start.checked_add(count).is_some();
    if count == 0 || !fits(version) || !fits(position) {
        return Err(LogError::Corrupt(format!(
            "stream {stream} has a malformed run at version {version}"
        )));
    }
    Ok(Run {
        version,
        position,
        count,
    })
}

/// Stores `run` of `stream`.
fn insert(
    table: &mut Table<'_, (u64, u64), (u64, u64)>,
    stream: u64,
    run: Run,
) -> Result<(), LogError> {
    table.insert((stream, run.version), (run.position, run.count))?;
    Ok(())
}

/// Gathers runs written in position order into as few as they make: a run
/// extends the open one when it continues the same stream, version after
/// version and position after position. The writer merges a group's
/// appends with it; recovery and migration, the events they read.
#[derive(Default)]
pub struct RunBuilder {
    open: Option<(u64, Run)>,
}

impl RunBuilder {
    /// Adds the event of `stream` at `version` and `position`.
    pub fn push(
        &mut self,
        table: &mut Table<'_, (u64, u64), (u64, u64)>,
        stream: u64,
        version: u64,
        position: u64,
    ) -> Result<(), LogError> {
        let run = Run {
            version,
            position,
            count: 1,
        };
        self.push_run(table, stream, run)
    }

    /// Adds `next` of `stream`, storing the open run when `next` does not
    /// extend it.
    pub fn push_run(
        &mut self,
        table: &mut Table<'_, (u64, u64), (u64, u64)>,
        stream: u64,
        next: Run,
    ) -> Result<(), LogError> {
        if let Some((open, run)) = &mut self.open
            && *open == stream
            && next.version == run.version + run.count
            && next.position == run.position + run.count
        {
            run.count += next.count;
            return Ok(());
        }
        self.finish(table)?;
        self.open = Some((stream, next));
        Ok(())
    }

    /// Forgets the open run without storing it (its transaction is dropped).
    pub fn discard(&mut self) {
        self.open = None;
    }

    /// Stores the open run.
    pub fn finish(
        &mut self,
        table: &mut Table<'_, (u64, u64), (u64, u64)>,
    ) -> Result<(), LogError> {
        match self.open.take() {
            Some((stream, run)) => insert(table, stream, run),
            None => Ok(()),
        }
    }
}

/// The version of the stream's last event. `name` is for the error when a
/// stream that has an id has no run, which only a damaged log can show.
pub fn head(
    table: &impl ReadableTable<(u64, u64), (u64, u64)>,
    stream: u64,
    name: &str,
) -> Result<u64, LogError> {
    let last = table
        .range((stream, 0)..=(stream, u64::MAX))?
        .next_back()
        .ok_or_else(|| LogError::Corrupt(format!("stream {name} has an id but no events")))?;
    Ok(run(last?)?.last_version())
}

/// Up to `limit` (version, position) pairs of the stream, from version `from`
/// upwards.
pub fn forward(
    table: &impl ReadableTable<(u64, u64), (u64, u64)>,
    stream: u64,
    from: u64,
    limit: usize,
) -> Result<Vec<(u64, u64)>, LogError> {
    let mut out = Vec::new();
    let holding = table
        .range((stream, 0)..=(stream, from))?
        .next_back()
        .map(|entry| run(entry?))
        .transpose()?
        .filter(|r| r.holds(from));
    let push = |r: Run, out: &mut Vec<(u64, u64)>| {
        let start = from.max(r.version);
        for version in start..=r.last_version() {
            if out.len() >= limit {
                break;
            }
            out.push((version, r.position_of(version)));
        }
    };
    // The version the next run must start at: runs tile the versions, so
    // a gap or an overlap is a damaged index, not events to return.
    let mut next = Some(from);
    if let Some(r) = holding {
        push(r, &mut out);
        next = r.last_version().checked_add(1);
    }
    if from < u64::MAX {
        for entry in table.range((stream, from + 1)..=(stream, u64::MAX))? {
            if out.len() >= limit {
                break;
            }
            let r = run(entry?)?;
            if next != Some(r.version) {
                return Err(not_tiled(stream, r.version));
            }
            push(r, &mut out);
            next = r.last_version().checked_add(1);
        }
    }
    Ok(out)
}

/// Up to `limit` (version, position) pairs of the stream, from version `from`
/// downwards.
pub fn backward(
    table: &impl ReadableTable<(u64, u64), (u64, u64)>,
    stream: u64,
    from: u64,
    limit: usize,
) -> Result<Vec<(u64, u64)>, LogError> {
    let mut out = Vec::new();
    // The first version of the run walked last: the next one must end just
    // below it, and the stream's first run must start at 0.
    let mut above: Option<u64> = None;
    for entry in table.range((stream, 0)..=(stream, from))?.rev() {
        let r = run(entry?)?;
        if above.is_some_and(|above| r.last_version().checked_add(1) != Some(above)) {
            return Err(not_tiled(stream, r.version));
        }
        above = Some(r.version);
        let mut version = from.min(r.last_version());
        loop {
            if out.len() >= limit {
                return Ok(out);
            }
            out.push((version, r.position_of(version)));
            if version == r.version {
                break;
            }
            version -= 1;
        }
    }
    if let Some(first) = above.filter(|&first| first != 0) {
        return Err(not_tiled(stream, first));
    }
    Ok(out)
}

fn not_tiled(stream: u64, version: u64) -> LogError {
    LogError::Corrupt(format!(
        "stream {stream} has a run at version {version} that does not follow on from the one before"
    ))
}

/// Every entry of a stream index, in key order: (stream, first version)
/// → (first position, count).
#[cfg(test)]
pub fn stored(table: &impl ReadableTable<(u64, u64), (u64, u64)>) -> Vec<((u64, u64), (u64, u64))> {
    table
        .iter()
        .unwrap()
        .map(|entry| {
            let (key, value) = entry.unwrap();
            (key.value(), value.value())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::collection::vec;
    use proptest::prelude::*;
    use redb::{Database, ReadableDatabase, TableDefinition};

    use super::*;

    /// Cases per property test: all of them run in about a second (debug build).
    const CASES: u32 = 256;

    const RUNS: TableDefinition<(u64, u64), (u64, u64)> = TableDefinition::new("runs");

    /// Stream 7: versions 0–2 at positions 1–3, 3–4 at 10–11, 5 at 20; and
    /// stream 8 around it, which no read of 7 may return.
    fn database() -> (tempfile::TempDir, Database) {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("runs.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(RUNS).unwrap();
            for (stream, version, position, count) in [
                (6, 0, 30, 4),
                (7, 0, 1, 3),
                (7, 3, 10, 2),
                (7, 5, 20, 1),
                (8, 0, 4, 6),
            ] {
                let run = Run {
                    version,
                    position,
                    count,
                };
                insert(&mut table, stream, run).unwrap();
            }
        }
        txn.commit().unwrap();
        (dir, db)
    }

    #[test]
    fn reads_walk_runs_in_both_directions() {
        let (_dir, db) = database();
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(RUNS).unwrap();
        let all = [(0, 1), (1, 2), (2, 3), (3, 10), (4, 11), (5, 20)];
        assert_eq!(head(&table, 7, "s").unwrap(), 5);
        for from in 0..=7 {
            let expected: Vec<_> = all.iter().copied().filter(|(v, _)| *v >= from).collect();
            assert_eq!(
                forward(&table, 7, from, 100).unwrap(),
                expected,
                "from {from}"
            );
            let mut expected: Vec<_> = all.iter().copied().filter(|(v, _)| *v <= from).collect();
            expected.reverse();
            assert_eq!(
                backward(&table, 7, from, 100).unwrap(),
                expected,
                "from {from}"
            );
        }
        assert_eq!(forward(&table, 7, 1, 3).unwrap(), all[1..4]);
        assert_eq!(backward(&table, 7, 4, 2).unwrap(), vec![(4, 11), (3, 10)]);
        assert!(forward(&table, 7, 0, 0).unwrap().is_empty());
        assert!(backward(&table, 7, u64::MAX, 0).unwrap().is_empty());
        assert_eq!(forward(&table, 7, u64::MAX, 10).unwrap(), vec![]);
        assert_eq!(backward(&table, 7, u64::MAX, 1).unwrap(), vec![(5, 20)]);
        assert!(forward(&table, 9, 0, 10).unwrap().is_empty());
        assert!(matches!(head(&table, 9, "s"), Err(LogError::Corrupt(_))));
    }

    #[test]
    fn the_builder_merges_only_what_follows_on() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("runs.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(RUNS).unwrap();
            let mut builder = RunBuilder::default();
            // (stream, version, position) in position order.
            for (stream, version, position) in [
                (1, 0, 1),
                (1, 1, 2),
                (2, 0, 3),
                (1, 2, 4),
                (1, 3, 5),
                (1, 5, 6),
            ] {
                builder.push(&mut table, stream, version, position).unwrap();
            }
            builder.finish(&mut table).unwrap();
        }
        txn.commit().unwrap();
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(RUNS).unwrap();
        assert_eq!(
            stored(&table),
            vec![
                ((1, 0), (1, 2)),
                ((1, 2), (4, 2)),
                ((1, 5), (6, 1)),
                ((2, 0), (3, 1))
            ]
        );
    }

    #[test]
    fn a_malformed_run_is_corruption_not_a_panic() {
        let (_dir, db) = database();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(RUNS).unwrap();
            table.insert((7, 6), (21, 0)).unwrap();
            table.insert((9, u64::MAX), (1, 2)).unwrap();
        }
        txn.commit().unwrap();
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(RUNS).unwrap();
        assert!(matches!(head(&table, 7, "s"), Err(LogError::Corrupt(_))));
        assert!(matches!(
            backward(&table, 7, 9, 5),
            Err(LogError::Corrupt(_))
        ));
        assert!(matches!(head(&table, 9, "s"), Err(LogError::Corrupt(_))));
    }

    /// A stored entry: (stream id, first version) → (first position, count).
    type Stored = ((u64, u64), (u64, u64));

    /// A runs table in memory holding `entries`.
    fn table_of(entries: &[Stored]) -> Database {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(RUNS).unwrap();
            for &(key, value) in entries {
                table.insert(key, value).unwrap();
            }
        }
        txn.commit().unwrap();
        db
    }

    /// Small numbers, numbers at the top of the range, and any.
    fn edgy() -> impl Strategy<Value = u64> {
        prop_oneof![0..8u64, (0..4u64).prop_map(|d| u64::MAX - d), any::<u64>()]
    }

    /// Whether `stored` has a run of `stream` that puts `version` at `position`.
    fn stored_at(stored: &[Stored], stream: u64, version: u64, position: u64) -> bool {
        stored.iter().any(|&((s, v), (p, count))| {
            s == stream
                && version >= v
                && version - v < count
                && p.checked_add(version - v) == Some(position)
        })
    }

    /// The runs of streams 0–3 after `appends` ((stream, count) each, in
    /// order from position 1), one run per append as the writer stores
    /// them, and each stream's positions by version.
    fn written(appends: &[(u64, u64)]) -> (Vec<Stored>, Vec<Vec<u64>>) {
        let mut positions = vec![Vec::new(); 4];
        let mut entries = Vec::new();
        let mut next = 1;
        for &(stream, count) in appends {
            let stream_positions = &mut positions[stream as usize];
            entries.push(((stream, stream_positions.len() as u64), (next, count)));
            stream_positions.extend(next..next + count);
            next += count;
        }
        (entries, positions)
    }

    fn any_appends() -> impl Strategy<Value = Vec<(u64, u64)>> {
        vec((0..4u64, 1..4u64), 1..16)
    }

    /// What `forward` and `backward` must answer for a stream whose
    /// version `v` is at `positions[v]`.
    fn model(positions: &[u64], from: u64, limit: usize, forward: bool) -> Vec<(u64, u64)> {
        let all = positions.iter().enumerate().map(|(v, &p)| (v as u64, p));
        if forward {
            all.filter(|&(v, _)| v >= from).take(limit).collect()
        } else {
            all.rev().filter(|&(v, _)| v <= from).take(limit).collect()
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: CASES, ..ProptestConfig::default() })]

        /// Any entries: reads never panic, and what they return follows on
        /// version by version from where they start, each pair as a stored
        /// run says.
        #[test]
        fn arbitrary_runs_read_consistently_or_fail_cleanly(
            entries in vec(((0..3u64, edgy()), (edgy(), edgy())), 0..8),
            from in edgy(),
            limit in 0..6usize,
        ) {
            let db = table_of(&entries);
            let txn = db.begin_read().unwrap();
            let table = txn.open_table(RUNS).unwrap();
            for stream in 0..3 {
                let _ = head(&table, stream, "s");
                let reads = [
                    (forward(&table, stream, from, limit), true),
                    (backward(&table, stream, from, limit), false),
                ];
                for (read, forward) in reads {
                    let Ok(read) = read else { continue };
                    prop_assert!(read.len() <= limit);
                    if let Some(&(start, _)) = read.first() {
                        let starts_right = if forward { start == from } else { start <= from };
                        prop_assert!(starts_right, "{:?} from {}", read, from);
                    }
                    for pair in read.windows(2) {
                        let step = if forward {
                            pair[0].0.checked_add(1)
                        } else {
                            pair[0].0.checked_sub(1)
                        };
                        prop_assert_eq!(step, Some(pair[1].0), "{:?}", read);
                    }
                    for &(version, position) in &read {
                        prop_assert!(stored_at(&entries, stream, version, position));
                    }
                }
            }
        }

        /// Runs as the writer stores them (one per append) and as recovery
        /// gathers them (`RunBuilder`) read back every version at its
        /// position, from every starting version, both ways.
        #[test]
        fn written_runs_read_back_exactly(appends in any_appends(), limit in 1..5usize) {
            let (entries, positions) = written(&appends);
            let gathered = {
                let db = table_of(&[]);
                let txn = db.begin_write().unwrap();
                {
                    let mut table = txn.open_table(RUNS).unwrap();
                    let mut builder = RunBuilder::default();
                    let mut version = [0u64; 4];
                    for (position, stream) in appends
                        .iter()
                        .flat_map(|&(stream, count)| (0..count).map(move |_| stream))
                        .enumerate()
                    {
                        let v = &mut version[stream as usize];
                        builder.push(&mut table, stream, *v, position as u64 + 1).unwrap();
                        *v += 1;
                    }
                    builder.finish(&mut table).unwrap();
                }
                txn.commit().unwrap();
                db
            };
            for db in [table_of(&entries), gathered] {
                let txn = db.begin_read().unwrap();
                let table = txn.open_table(RUNS).unwrap();
                for (stream, positions) in positions.iter().enumerate() {
                    let stream = stream as u64;
                    let len = positions.len() as u64;
                    if len == 0 {
                        prop_assert!(head(&table, stream, "s").is_err());
                    } else {
                        prop_assert_eq!(head(&table, stream, "s").unwrap(), len - 1);
                    }
                    for from in (0..=len + 1).chain([u64::MAX]) {
                        for limit in [limit, usize::MAX] {
                            prop_assert_eq!(
                                forward(&table, stream, from, limit).unwrap(),
                                model(positions, from, limit, true)
                            );
                            prop_assert_eq!(
                                backward(&table, stream, from, limit).unwrap(),
                                model(positions, from, limit, false)
                            );
                        }
                    }
                }
            }
        }

        /// Runs carry no checksum. A run moved to another version, a run
        /// lost or a wrong count anywhere but in the stream's last run
        /// leaves a gap or an overlap, which a whole read reports; a wrong
        /// position, or a wrong count or a loss at the end, reads as what
        /// is stored (nothing in the index can tell), without a panic.
        #[test]
        fn a_damaged_run_is_an_error_when_runs_no_longer_tile(
            appends in any_appends(),
            pick in any::<prop::sample::Index>(),
            damage in 0..4u8,
            delta in 1..4u64,
            up in any::<bool>(),
        ) {
            let (mut entries, _) = written(&appends);
            let at = pick.index(entries.len());
            let ((stream, version), (position, count)) = entries[at];
            let last = !entries.iter().any(|&((s, v), _)| s == stream && v > version);
            let shift = |n: u64| if up { n.checked_add(delta) } else { n.checked_sub(delta) };
            let detectable = match damage {
                0 => {
                    let moved = shift(version);
                    let free = |m: u64| !entries.iter().any(|&(key, _)| key == (stream, m));
                    prop_assume!(moved.is_some_and(free));
                    entries[at].0.1 = moved.unwrap_or_default();
                    true
                }
                1 => {
                    entries.remove(at);
                    !last
                }
                2 => {
                    entries[at].1.1 = shift(count).unwrap_or_default();
                    !last
                }
                _ => {
                    entries[at].1.0 = shift(position).unwrap_or_default();
                    false
                }
            };
            let db = table_of(&entries);
            let txn = db.begin_read().unwrap();
            let table = txn.open_table(RUNS).unwrap();
            // More than any stream written here holds: a whole read.
            let limit = 64;
            let forward = forward(&table, stream, 0, limit);
            let backward = backward(&table, stream, u64::MAX, limit);
            let _ = head(&table, stream, "s");
            if detectable {
                prop_assert!(forward.is_err(), "forward read {:?} from {:?}", forward, entries);
                prop_assert!(backward.is_err(), "backward read {:?} from {:?}", backward, entries);
            }
        }
    }
}
