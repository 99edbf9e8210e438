//! CPU time used by the systems under test and by the load generator, read
//! from `/proc`: what each request costs the server and the client, which
//! on a machine where both share the cores is as much the limit as the disk.

use std::time::Duration;

/// Clock ticks per second of `/proc/*/stat` (`USER_HZ`: 100 on Linux, on
/// every architecture the kernel exports it to user space).
const TICKS_PER_SEC: u64 = 100;

/// The fields of `/proc/PID/stat` used here.
struct Stat {
    ppid: u32,
    /// User and system time of the process itself (every thread).
    own_ticks: u64,
    /// User and system time of its children that it has waited for.
    reaped_children_ticks: u64,
}

fn stat(pid: &str) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid …`: comm may hold spaces and parentheses.
    let fields: Vec<&str> = text.get(text.rfind(')')? + 2..)?.split(' ').collect();
    let field = |i: usize| fields.get(i)?.parse::<u64>().ok();
    // Counted from `state` (field 3 of proc(5)): ppid is field 4, utime 14,
    // stime 15, cutime 16, cstime 17.
    Some(Stat {
        ppid: u32::try_from(field(1)?).ok()?,
        own_ticks: field(11)? + field(12)?,
        reaped_children_ticks: field(13)? + field(14)?,
    })
}

fn ticks(n: u64) -> Duration {
    Duration::from_millis(n * 1000 / TICKS_PER_SEC)
}

/// The CPU time this process has used so far (the load generator).
fn own() -> Duration {
    stat("self").map_or(Duration::ZERO, |s| ticks(s.own_ticks))
}

/// The CPU time the process `root` and everything it started have used so
/// far: itself, its live descendants, and the children it has reaped (a
/// PostgreSQL backend that exited is in its postmaster's count). `None` when
/// `root` is not running.
fn tree(root: u32) -> Option<Duration> {
    let mut processes = Vec::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if let Some(stat) = stat(&pid.to_string()) {
            processes.push((pid, stat));
        }
    }
    let root_stat = processes.iter().find(|(pid, _)| *pid == root)?;
    let mut total = root_stat.1.own_ticks + root_stat.1.reaped_children_ticks;
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for (pid, stat) in processes.iter().filter(|(_, s)| s.ppid == parent) {
            total += stat.own_ticks + stat.reaped_children_ticks;
            frontier.push(*pid);
        }
    }
    Some(ticks(total))
}

/// The CPU time the processes `roots` and everything they started have used
/// so far (the servers of a cluster); `None` when there are none or one is
/// not running.
pub fn trees(roots: &[u32]) -> Option<Duration> {
    match roots {
        [] => None,
        _ => roots.iter().map(|&root| tree(root)).sum(),
    }
}

/// CPU time of the server (`pid`'s process tree) and of this process,
/// from the moment it is taken to [`Clock::stop`].
pub struct Clock {
    pid: Option<u32>,
    server: Option<Duration>,
    client: Duration,
}

impl Clock {
    pub fn start(pid: Option<u32>) -> Self {
        Self {
            pid,
            server: pid.and_then(tree),
            client: own(),
        }
    }

    /// (server, client) CPU time since the start.
    pub fn stop(self) -> (Option<Duration>, Duration) {
        let server = self
            .server
            .zip(self.pid.and_then(tree))
            .map(|(before, after)| after.saturating_sub(before));
        (server, own().saturating_sub(self.client))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_child_is_counted_in_its_parents_tree() {
        let me = std::process::id();
        let before = tree(me).unwrap();
        let mut child = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done"])
            .spawn()
            .unwrap();
        child.wait().unwrap();
        let after = tree(me).unwrap();
        assert!(
            after >= before + Duration::from_millis(50),
            "{before:?} → {after:?}"
        );
        assert_eq!(tree(u32::MAX), None);
    }
}
