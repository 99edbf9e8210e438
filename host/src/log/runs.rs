//! Runs: how the `stream_runs` table indexes a stream's events.
//!
//! One append writes its events with consecutive versions at consecutive
//! positions, so one entry, (stream id, first version) → (first position,
//! count), indexes all of them.

use redb::ReadableTable;

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

fn run((key, value): Entry<'_>) -> Run {
    let (_, version) = key.value();
    let (position, count) = value.value();
    Run {
        version,
        position,
        count,
    }
}

/// The stream's last run, `None` for a stream with no events.
pub fn last_run(
    table: &impl ReadableTable<(u64, u64), (u64, u64)>,
    stream: u64,
) -> Result<Option<Run>, LogError> {
    Ok(table
        .range((stream, 0)..=(stream, u64::MAX))?
        .next_back()
        .transpose()?
        .map(run))
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
        .transpose()?
        .map(run)
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
            push(run(entry?), &mut out);
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
        let r = run(entry?);
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
