//! What the peer benchmark measured: the printed table, the JSON report, the
//! chart, and the targets (`docs/design.md#targets`) checked as ratios.

use std::path::Path;
use std::time::Duration;

use plotters::style::RGBColor;
use serde::Serialize;

use super::{Args, EVENTFOLD_HTTP, EVENTFOLD_SOCKET, Measures, POSTGRES, REDIS, Round, WORKLOADS};
use crate::chart::{self, Bar, Panel};

/// One system's figures for one workload: medians over the rounds.
#[derive(Serialize, Clone)]
pub struct Measure {
    /// Events per second, the median round.
    pub events_per_sec: f64,
    /// Request latency over every round, 50th percentile, in ms.
    pub p50_ms: f64,
    /// The same, 99th percentile.
    pub p99_ms: f64,
    /// Events per second of each round, in the order run.
    pub rounds: Vec<f64>,
    /// CPU time of the server's processes per request, in µs, over every
    /// round (`None`: a server not started here).
    pub server_cpu_us_per_request: Option<f64>,
    /// CPU time of the load generator per request, in µs, over every round.
    pub client_cpu_us_per_request: f64,
}

impl From<Vec<Round>> for Measure {
    fn from(rounds: Vec<Round>) -> Self {
        let per_round: Vec<f64> = rounds.iter().map(|r| r.events_per_sec).collect();
        let requests = rounds
            .iter()
            .map(|r| r.latencies.len())
            .sum::<usize>()
            .max(1) as f64;
        let per_request = |cpu: Duration| cpu.as_secs_f64() * 1e6 / requests;
        let server_cpu: Option<Duration> = rounds.iter().map(|r| r.server_cpu).sum();
        let client_cpu: Duration = rounds.iter().map(|r| r.client_cpu).sum();
        let mut latencies: Vec<Duration> = rounds.into_iter().flat_map(|r| r.latencies).collect();
        latencies.sort();
        let percentile = |p: f64| crate::append::percentile(&latencies, p).as_secs_f64() * 1000.0;
        Self {
            events_per_sec: crate::median(per_round.iter().copied()),
            p50_ms: percentile(0.50),
            p99_ms: percentile(0.99),
            rounds: per_round,
            server_cpu_us_per_request: server_cpu.map(per_request),
            client_cpu_us_per_request: per_request(client_cpu),
        }
    }
}

/// One workload (or the read) across the systems.
#[derive(Serialize)]
pub struct Comparison {
    /// The workload's name.
    pub workload: String,
    /// Each system's name and figures, eventfold first.
    pub systems: Vec<(String, Measure)>,
    /// eventfold's events/s (over each protocol measured) over each peer's.
    pub ratios: Vec<Ratio>,
}

/// eventfold over one protocol against one peer.
#[derive(Serialize)]
pub struct Ratio {
    /// eventfold and the protocol, as the table names it.
    pub eventfold: String,
    /// The peer.
    pub peer: String,
    /// eventfold's events/s over the peer's.
    pub ratio: f64,
}

impl Comparison {
    fn new(workload: &str, measures: Measures) -> Self {
        let rate = |name: &str| {
            measures
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, m)| m.events_per_sec)
        };
        let mut ratios = Vec::new();
        for eventfold in [EVENTFOLD_HTTP, EVENTFOLD_SOCKET] {
            for peer in [REDIS, POSTGRES] {
                if let (Some(ours), Some(theirs)) = (rate(eventfold), rate(peer)) {
                    ratios.push(Ratio {
                        eventfold: eventfold.to_owned(),
                        peer: peer.to_owned(),
                        ratio: ours / theirs,
                    });
                }
            }
        }
        let mut systems: Vec<(String, Measure)> = measures
            .into_iter()
            .map(|(name, m)| (name.to_owned(), m))
            .collect();
        // eventfold first, HTTP before the socket, then the peers.
        systems.sort_by_key(|(name, _)| {
            [EVENTFOLD_HTTP, EVENTFOLD_SOCKET, REDIS, POSTGRES]
                .iter()
                .position(|n| n == name)
        });
        Self {
            workload: workload.to_owned(),
            systems,
            ratios,
        }
    }

    /// `eventfold`'s events/s over `peer`'s, when both were measured.
    pub fn ratio(&self, eventfold: &str, peer: &str) -> Option<f64> {
        self.ratios
            .iter()
            .find(|r| r.eventfold == eventfold && r.peer == peer)
            .map(|r| r.ratio)
    }
}

/// One fold replayed from zero, natively and as a WASM plugin.
#[derive(Serialize)]
pub struct ReplayFold {
    /// What it computes.
    pub fold: String,
    /// The native Rust fold, events/s.
    pub native_per_sec: f64,
    /// The WASM plugin's replay, events/s.
    pub wasm_per_sec: f64,
    /// WASM over native.
    pub ratio: f64,
}

/// The replay part of the run.
#[derive(Serialize)]
pub struct Replay {
    /// Events replayed.
    pub events: u64,
    /// Order totals (JSON decode, one key per event), then the trivial counter.
    pub folds: Vec<ReplayFold>,
    /// Deploy to first event handled, compiling, in ms.
    pub deploy_compiling_ms: f64,
    /// The same from the compiled cache, in ms.
    pub deploy_cached_ms: f64,
}

impl From<&crate::replay::Report> for Replay {
    fn from(report: &crate::replay::Report) -> Self {
        let events = report.events;
        Self {
            events,
            folds: report
                .folds
                .iter()
                .map(|f| ReplayFold {
                    fold: f.label.to_owned(),
                    native_per_sec: f.native_rate(events),
                    wasm_per_sec: f.replay_rate(events),
                    ratio: f.replay_rate(events) / f.native_rate(events),
                })
                .collect(),
            deploy_compiling_ms: report.compiled_ms,
            deploy_cached_ms: report.cached_ms,
        }
    }
}

/// A target (`docs/design.md#targets`) and what this run measured against it.
#[derive(Serialize)]
pub struct Target {
    /// What is compared.
    pub name: String,
    /// Which panel of the chart shows it: eventfold over one protocol, or replay.
    pub group: String,
    /// The same in a few characters, for the chart.
    pub short: String,
    /// The measured figure (a ratio, or events/s).
    pub measured: f64,
    /// The least it must be.
    pub at_least: f64,
    /// Whether it is.
    pub met: bool,
}

/// Everything one run measured.
#[derive(Serialize)]
pub struct Report {
    /// When it ran.
    pub date: String,
    /// The machine: CPU model, cores, kernel.
    pub machine: String,
    /// The systems compared, with the versions they report.
    pub versions: Vec<String>,
    /// Seconds per workload, rounds, events read and replayed.
    pub settings: Settings,
    /// The data disk's raw fdatasync rate (4 KiB writes), appending to a file.
    pub fsync_per_sec_appending: f64,
    /// The same, overwriting a file already written.
    pub fsync_per_sec_overwriting: f64,
    /// The append workloads.
    pub appends: Vec<Comparison>,
    /// Reading the whole log from the start.
    pub read: Comparison,
    /// Replays from zero.
    pub replay: Replay,
    /// The targets, checked.
    pub targets: Vec<Target>,
    /// How long the whole run took, in seconds.
    pub elapsed_secs: f64,
}

/// The run's settings.
#[derive(Serialize)]
pub struct Settings {
    /// Seconds each append workload ran per system and round.
    pub seconds: f64,
    /// Rounds.
    pub rounds: usize,
    /// Events read from each log and replayed.
    pub events: u64,
    /// Events per page when reading.
    pub page: u64,
}

const BLUE: RGBColor = RGBColor(31, 119, 180);
const LIGHT_BLUE: RGBColor = RGBColor(107, 174, 214);
const RED: RGBColor = RGBColor(214, 39, 40);
const GREEN: RGBColor = RGBColor(44, 160, 44);
const GREY: RGBColor = RGBColor(127, 127, 127);

/// A system's colour in the chart.
fn color(system: &str) -> RGBColor {
    match system {
        EVENTFOLD_HTTP => BLUE,
        EVENTFOLD_SOCKET => LIGHT_BLUE,
        REDIS => RED,
        POSTGRES => GREEN,
        _ => GREY,
    }
}

impl Report {
    /// Puts the run's figures together and checks the targets.
    /// `fsync` is the disk's fdatasync rate appending and overwriting.
    pub fn new(
        args: &Args,
        versions: Vec<String>,
        (fsync_append, fsync_overwrite): (f64, f64),
        appends: Vec<Measures>,
        read: Measures,
        replay: Replay,
        elapsed: Duration,
    ) -> Self {
        let appends: Vec<Comparison> = WORKLOADS
            .iter()
            .zip(appends)
            .map(|(w, m)| Comparison::new(w.name, m))
            .collect();
        let read = Comparison::new(&format!("read {} events", args.events), read);
        let mut targets = Vec::new();
        let mut target = |group: &str, name: &str, short: &str, measured: f64, at_least: f64| {
            targets.push(Target {
                name: name.to_owned(),
                group: group.to_owned(),
                short: short.to_owned(),
                measured,
                at_least,
                met: measured >= at_least,
            })
        };
        // (workload, peer, what the table and the chart call it, at least)
        let append_targets = [
            (0, REDIS, "1 client", "1c/Redis", 0.7),
            (0, POSTGRES, "1 client", "1c/PG", 1.0),
            (1, REDIS, "32 clients", "32c/Redis", 1.0),
            (2, REDIS, "4 x 100 events", "batch/Redis", 1.5),
        ];
        for eventfold in [EVENTFOLD_HTTP, EVENTFOLD_SOCKET] {
            for (workload, peer, name, short, at_least) in append_targets {
                if let Some(ratio) = appends.get(workload).and_then(|c| c.ratio(eventfold, peer)) {
                    target(
                        eventfold,
                        &format!("{name}: {eventfold} / {peer}"),
                        short,
                        ratio,
                        at_least,
                    );
                }
            }
        }
        // The trivial fold is the one the replay targets are set for.
        if let Some(trivial) = replay.folds.last() {
            target(
                "replay",
                "replay (trivial fold): WASM events/s",
                "replay/s",
                trivial.wasm_per_sec,
                1e6,
            );
            target(
                "replay",
                "replay (trivial fold): WASM / native",
                "/native",
                trivial.ratio,
                0.5,
            );
        }
        Self {
            date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            machine: machine(),
            versions,
            settings: Settings {
                seconds: args.seconds,
                rounds: args.rounds,
                events: args.events,
                page: super::PAGE,
            },
            fsync_per_sec_appending: fsync_append,
            fsync_per_sec_overwriting: fsync_overwrite,
            appends,
            read,
            replay,
            targets,
            elapsed_secs: elapsed.as_secs_f64(),
        }
    }

    /// Prints the table.
    pub fn print(&self) {
        println!();
        println!("{} — {}", self.date, self.machine);
        println!("{}", self.versions.join(", "));
        println!(
            "disk: {:.0} fdatasync/s appending 4 KiB, {:.0}/s overwriting",
            self.fsync_per_sec_appending, self.fsync_per_sec_overwriting
        );
        println!(
            "{:<24} {:<16} {:>11} {:>8} {:>8} {:>9} {:>9}   {:>9} {:>9} {:>9}",
            "workload",
            "system",
            "events/s",
            "p50 ms",
            "p99 ms",
            "server µs",
            "client µs",
            "÷ Redis",
            "÷ PG",
            "÷ fsync"
        );
        for comparison in self.appends.iter().chain([&self.read]) {
            for (i, (system, m)) in comparison.systems.iter().enumerate() {
                let workload = if i == 0 {
                    comparison.workload.as_str()
                } else {
                    ""
                };
                let server = m
                    .server_cpu_us_per_request
                    .map_or_else(|| "-".to_owned(), |us| format!("{us:.0}"));
                print!(
                    "{workload:<24} {system:<16} {:>11.0} {:>8.2} {:>8.2} {server:>9} {:>9.0}",
                    m.events_per_sec, m.p50_ms, m.p99_ms, m.client_cpu_us_per_request
                );
                if let (Some(redis), Some(postgres)) = (
                    comparison.ratio(system, REDIS),
                    comparison.ratio(system, POSTGRES),
                ) {
                    print!(
                        "   {redis:>8.2}x {postgres:>8.2}x {:>8.2}x",
                        m.events_per_sec / self.fsync_per_sec_overwriting
                    );
                }
                println!();
            }
        }
        println!(
            "(median of {} rounds of {:.1} s; ≈200-byte JSON events, every append fsynced before it is acknowledged;",
            self.settings.rounds, self.settings.seconds
        );
        println!(
            " reads in pages of {}; ÷ fsync = events per raw fdatasync of the disk, overwriting;",
            self.settings.page
        );
        println!(
            " server µs, client µs = CPU time per request (per page for the read) of the server's processes and of the load generator)"
        );
        println!();
        println!(
            "replay from zero of {} events: {:<44} {:>12} {:>12} {:>7}",
            self.replay.events, "fold", "native/s", "wasm/s", "ratio"
        );
        for fold in &self.replay.folds {
            println!(
                "{:<32}{:<44} {:>12.0} {:>12.0} {:>6.2}x",
                "", fold.fold, fold.native_per_sec, fold.wasm_per_sec, fold.ratio
            );
        }
        println!();
        println!("{:<42} {:>12} {:>12}", "target", "measured", "at least");
        for target in &self.targets {
            println!(
                "{:<42} {:>12} {:>12}   {}",
                target.name,
                chart::human(target.measured),
                chart::human(target.at_least),
                if target.met { "met" } else { "NOT MET" }
            );
        }
        println!("(the whole run took {:.0} s)", self.elapsed_secs);
    }

    /// Draws the chart: one panel per workload, the read, the replay, and
    /// each target as measured / required.
    pub fn chart(&self, path: &Path) -> anyhow::Result<()> {
        let mut panels: Vec<Panel> = self
            .appends
            .iter()
            .chain([&self.read])
            .map(|c| Panel {
                title: if c.workload.starts_with("read") {
                    c.workload.clone()
                } else {
                    format!("append, {}", c.workload)
                },
                unit: "events/s".into(),
                bars: c
                    .systems
                    .iter()
                    .map(|(system, m)| Bar {
                        label: system.replace("eventfold ", "ef "),
                        value: m.events_per_sec,
                        color: color(system),
                    })
                    .collect(),
                line: None,
            })
            .collect();
        panels.push(Panel {
            title: format!("replay {} events from zero", self.replay.events),
            unit: "events/s".into(),
            bars: self
                .replay
                .folds
                .iter()
                .flat_map(|f| {
                    let short = f.fold.split(' ').next().unwrap_or_default();
                    [
                        Bar {
                            label: format!("{short}: native"),
                            value: f.native_per_sec,
                            color: GREY,
                        },
                        Bar {
                            label: format!("{short}: WASM"),
                            value: f.wasm_per_sec,
                            color: BLUE,
                        },
                    ]
                })
                .collect(),
            line: Some(1e6),
        });
        let mut groups: Vec<&str> = Vec::new();
        for target in &self.targets {
            if !groups.contains(&target.group.as_str()) {
                groups.push(&target.group);
            }
        }
        for group in groups {
            panels.push(Panel {
                title: format!("targets, {group}: measured / required"),
                unit: "share of target (1 = met)".into(),
                bars: self
                    .targets
                    .iter()
                    .filter(|t| t.group == group)
                    .map(|t| Bar {
                        label: t.short.clone(),
                        value: t.measured / t.at_least,
                        color: if t.met { GREEN } else { RED },
                    })
                    .collect(),
                line: Some(1.0),
            });
        }
        chart::draw(
            path,
            &format!(
                "eventfold vs Redis Streams (appendfsync always) vs PostgreSQL (synchronous commit), {}",
                self.date
            ),
            &panels,
            3,
        )
    }
}

/// CPU model, cores and kernel, as far as /proc tells.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{model}, {cores} cores, Linux {}", kernel.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(events_per_sec: f64, latencies_ms: &[u64]) -> Round {
        Round {
            events_per_sec,
            latencies: latencies_ms
                .iter()
                .map(|ms| Duration::from_millis(*ms))
                .collect(),
            server_cpu: Some(Duration::from_millis(latencies_ms.len() as u64)),
            client_cpu: Duration::from_millis(2 * latencies_ms.len() as u64),
        }
    }

    #[test]
    fn a_measure_is_the_median_round_with_percentiles_over_every_request() {
        let measure = Measure::from(vec![
            round(300.0, &[1, 2]),
            round(100.0, &[3]),
            round(200.0, &[4, 100]),
        ]);
        assert_eq!(measure.events_per_sec, 200.0);
        assert_eq!(measure.rounds, vec![300.0, 100.0, 200.0]);
        assert_eq!(measure.p50_ms, 3.0);
        assert_eq!(measure.p99_ms, 100.0);
        // 5 requests, 5 ms of server and 10 ms of client CPU in all.
        assert_eq!(measure.server_cpu_us_per_request, Some(1000.0));
        assert_eq!(measure.client_cpu_us_per_request, 2000.0);
        let mut unknown = round(1.0, &[1]);
        unknown.server_cpu = None;
        let measure = Measure::from(vec![round(1.0, &[1]), unknown]);
        assert_eq!(
            measure.server_cpu_us_per_request, None,
            "one round unknown: unknown"
        );
    }

    #[test]
    fn ratios_are_eventfold_over_each_peer() {
        let m = |rate: f64| Measure::from(vec![round(rate, &[1])]);
        let c = Comparison::new(
            "w",
            vec![
                (EVENTFOLD_SOCKET, m(200.0)),
                (EVENTFOLD_HTTP, m(150.0)),
                (REDIS, m(100.0)),
                (POSTGRES, m(300.0)),
            ],
        );
        assert_eq!(c.ratio(EVENTFOLD_HTTP, REDIS), Some(1.5));
        assert_eq!(c.ratio(EVENTFOLD_HTTP, POSTGRES), Some(0.5));
        assert_eq!(c.ratio(EVENTFOLD_SOCKET, REDIS), Some(2.0));
        let order: Vec<&str> = c.systems.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            order,
            [EVENTFOLD_HTTP, EVENTFOLD_SOCKET, REDIS, POSTGRES],
            "eventfold first, HTTP before the socket"
        );
        let read = Comparison::new("read", vec![(EVENTFOLD_HTTP, m(10.0)), (REDIS, m(5.0))]);
        assert_eq!(read.ratio(EVENTFOLD_SOCKET, REDIS), None, "not measured");
        assert_eq!(read.ratio(EVENTFOLD_HTTP, POSTGRES), None, "not measured");
    }
}
