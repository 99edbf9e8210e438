//! Runs: how the `stream_runs` table indexes a stream's events.
//!
//! One append writes its events with consecutive versions at consecutive
//! positions, so one entry, (stream id, first version) → (first position,
//! count), indexes all of them. (Recovery and migration may write one run
//! for several such appends that follow each other.)

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
pub fn insert(
    table: &mut Table<'_, (u64, u64), (u64, u64)>,
    stream: u64,
    run: Run,
) -> Result<(), LogError> {
    table.insert((stream, run.version), (run.position, run.count))?;
    Ok(())
}

/// Gathers events read in position order into runs, for recovery and
/// migration: an event extends the open run when it is the next version of
/// the same stream at the next position.
#[derive(Default)]
pub struct RunBuilder {
    open: Option<(u64, Run)>,
}

impl RunBuilder {
    /// Adds the event of `stream` at `version` and `position`, storing the
    /// open run when the event does not extend it.
    pub fn push(
        &mut self,
        table: &mut Table<'_, (u64, u64), (u64, u64)>,
        stream: u64,
        version: u64,
        position: u64,
    ) -> Result<(), LogError> {
        if let Some((open, run)) = &mut self.open
            && *open == stream
            && version == run.version + run.count
            && position == run.position + run.count
        {
            run.count += 1;
            return Ok(());
        }
        self.finish(table)?;
        self.open = Some((
            stream,
            Run {
                version,
                position,
                count: 1,
            },
        ));
        Ok(())
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
    if let Some(r) = holding {
        push(r, &mut out);
    }
    if from < u64::MAX {
        for entry in table.range((stream, from + 1)..=(stream, u64::MAX))? {
            if out.len() >= limit {
                break;
            }
            push(run(entry?)?, &mut out);
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
    for entry in table.range((stream, 0)..=(stream, from))?.rev() {
        let r = run(entry?)?;
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
    Ok(out)
}

#[cfg(test)]
mod tests {
    use redb::{Database, ReadableDatabase, TableDefinition};

    use super::*;

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
        let stored: Vec<_> = table
            .iter()
            .unwrap()
            .map(|e| {
                let (k, v) = e.unwrap();
                (k.value(), v.value())
            })
            .collect();
        assert_eq!(
            stored,
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
}
