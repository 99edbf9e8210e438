//! NATS JetStream clusters for the tests (issue 18): nats-server nodes on
//! loopback and free ports, started by the test process itself, that die
//! with it.
//!
//! - [`Cluster::shared`]: one 3-node cluster per test binary, started on
//!   first use; the servers of `Backend::JetStream` share it, each with its
//!   own stream.
//! - [`Cluster::start`]: a cluster of a test's own, for failover tests that
//!   kill and restart nodes ([`Cluster::kill9`], [`Cluster::restart`]) and
//!   look for a stream's leader ([`Cluster::stream_leader`]).
//!
//! The binary is `$EVENTFOLD_NATS_SERVER` (scripts/test exports it), or else
//! what `scripts/install-nats` installs and prints. Every node is spawned
//! from one thread that lives as long as the process, with
//! `PR_SET_PDEATHSIG = SIGKILL`: the kernel sends that signal when the
//! thread that forked the node exits, so the nodes go when the test process
//! goes, even on a panic or a `kill -9` of the tests.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// The environment variable naming the nats-server binary.
pub const NATS_SERVER_ENV: &str = "EVENTFOLD_NATS_SERVER";

/// How long a cluster (or a restarted node) may take to become healthy.
const HEALTHY_WITHIN: Duration = Duration::from_secs(30);

/// A running JetStream cluster on loopback. Dropping it kills its nodes.
pub struct Cluster {
    nodes: Vec<Node>,
    /// The nodes' configurations, logs (`n<i>.log`) and JetStream data.
    dir: TempDir,
}

/// One nats-server of a cluster.
struct Node {
    /// Its server name, `n<index>`, as JetStream reports leaders.
    name: String,
    client_port: u16,
    monitor_port: u16,
    config: PathBuf,
    /// `None` once killed.
    child: Mutex<Option<Child>>,
}

impl Cluster {
    /// The cluster of this test binary: 3 nodes, started on first use and
    /// ended with the process. Blocks while it starts (about a second).
    pub fn shared() -> &'static Cluster {
        static SHARED: OnceLock<Cluster> = OnceLock::new();
        SHARED.get_or_init(|| Cluster::start_blocking(3))
    }

    /// Starts a cluster of `nodes` nodes of its own, on free ports, and
    /// waits until every node is healthy and JetStream has a meta leader.
    pub async fn start(nodes: usize) -> Cluster {
        tokio::task::spawn_blocking(move || Cluster::start_blocking(nodes))
            .await
            .expect("starting a NATS cluster panicked")
    }

    /// [`Cluster::start`], blocking. A port taken between choosing it and
    /// binding it makes a node exit: then the whole cluster is tried again
    /// on other ports.
    pub fn start_blocking(nodes: usize) -> Cluster {
        let mut last_error = String::new();
        for _ in 0..3 {
            let cluster = Cluster::configure(nodes);
            for node in 0..nodes {
                cluster.spawn_node(node);
            }
            match cluster.wait_healthy_blocking() {
                Ok(()) => return cluster,
                Err(e) => last_error = e,
            }
        }
        panic!("the NATS cluster did not start: {last_error}");
    }

    /// The client URLs of every node, comma-separated, for `--nats-url`.
    pub fn urls(&self) -> String {
        (0..self.nodes.len())
            .map(|node| self.url(node))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The client URL of one node, `nats://127.0.0.1:<port>`.
    pub fn url(&self, node: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[node].client_port)
    }

    /// The HTTP monitoring URL of one node (`/healthz`, `/jsz`, …).
    pub fn monitor_url(&self, node: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[node].monitor_port)
    }

    /// The number of nodes.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Where the nodes keep their logs (`n<i>.log`) and data.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The `serve` flags that put an eventfold log on this cluster, in
    /// stream `stream` with `replicas` replicas.
    pub fn serve_args(&self, stream: &str, replicas: usize) -> Vec<String> {
        [
            "--log",
            "jetstream",
            "--nats-url",
            &self.urls(),
            "--nats-stream",
            stream,
            "--nats-replicas",
            &replicas.to_string(),
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// The PID of a node, if it runs.
    pub fn pid(&self, node: usize) -> Option<u32> {
        let mut child = self.nodes[node].child.lock().expect("node lock");
        match child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => child.as_ref().map(Child::id),
            _ => None,
        }
    }

    /// `kill -9` of one node: no goodbye to its peers, nothing flushed.
    pub fn kill9(&self, node: usize) {
        let child = self.nodes[node].child.lock().expect("node lock").take();
        if let Some(mut child) = child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a killed node again on its ports and data. Wait for it with
    /// [`Cluster::wait_healthy`].
    pub fn restart(&self, node: usize) {
        assert!(
            self.pid(node).is_none(),
            "node {node} is running: kill it first"
        );
        self.spawn_node(node);
    }

    /// Waits until every running node is healthy (`/healthz`: JetStream
    /// current, its streams caught up) and knows a meta leader; panics
    /// after 30 s.
    pub async fn wait_healthy(&self) {
        let deadline = Instant::now() + HEALTHY_WITHIN;
        loop {
            match self.unhealthy() {
                None => return,
                Some(why) if Instant::now() > deadline => {
                    panic!("the NATS cluster is not healthy: {why}")
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// The node that leads the stream `stream` now, as that node itself
    /// reports it (`/jsz?streams=true`); `None` while there is none, such
    /// as during an election.
    pub fn stream_leader(&self, stream: &str) -> Option<usize> {
        (0..self.nodes.len()).find(|&node| {
            self.pid(node).is_some()
                && monitor_get(self.nodes[node].monitor_port, "/jsz?streams=true")
                    .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok())
                    .is_some_and(|jsz| {
                        stream_detail(&jsz, stream)
                            .is_some_and(|s| s["cluster"]["leader"] == *self.nodes[node].name)
                    })
        })
    }

    /// Waits up to `timeout` for the stream to have a leader other than
    /// `not` (the node just killed, say); the leader.
    pub async fn wait_stream_leader(
        &self,
        stream: &str,
        not: Option<usize>,
        timeout: Duration,
    ) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(leader) = self.stream_leader(stream)
                && Some(leader) != not
            {
                return leader;
            }
            assert!(
                Instant::now() < deadline,
                "stream {stream} has no leader (other than {not:?}) after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Chooses free ports and writes each node's configuration.
    fn configure(nodes: usize) -> Cluster {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        remove_stale_dirs(&root);
        let dir = tempfile::Builder::new()
            .prefix(&format!("nats-{}-", std::process::id()))
            .tempdir_in(&root)
            .expect("a directory for the NATS cluster");
        // Held together until all are chosen, so that they differ.
        let listeners: Vec<TcpListener> = (0..nodes * 3)
            .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("a free port"))
            .collect();
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().expect("local address").port())
            .collect();
        drop(listeners);
        let routes: Vec<String> = (0..nodes)
            .map(|node| format!("nats://127.0.0.1:{}", ports[nodes + node]))
            .collect();
        let nodes = (0..nodes)
            .map(|node| {
                let name = format!("n{node}");
                let config = dir.path().join(format!("{name}.conf"));
                let store = dir.path().join(&name);
                let log = dir.path().join(format!("{name}.log"));
                let text = format!(
                    "server_name: {name}\n\
                     listen: 127.0.0.1:{client}\n\
                     http: 127.0.0.1:{monitor}\n\
                     log_file: {log:?}\n\
                     jetstream {{\n  store_dir: {store:?}\n}}\n\
                     cluster {{\n  name: eventfold-test\n  listen: 127.0.0.1:{route}\n  routes: [{routes}]\n}}\n",
                    client = ports[node],
                    route = ports[nodes + node],
                    monitor = ports[2 * nodes + node],
                    routes = routes.join(", "),
                );
                std::fs::write(&config, text).expect("write a node's configuration");
                Node {
                    name,
                    client_port: ports[node],
                    monitor_port: ports[2 * nodes + node],
                    config,
                    child: Mutex::new(None),
                }
            })
            .collect();
        Cluster { nodes, dir }
    }

    fn spawn_node(&self, node: usize) {
        let mut command = Command::new(nats_server());
        command
            .arg("-c")
            .arg(&self.nodes[node].config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = spawn_tied_to_process(command)
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", nats_server().display()));
        *self.nodes[node].child.lock().expect("node lock") = Some(child);
    }

    fn wait_healthy_blocking(&self) -> Result<(), String> {
        let deadline = Instant::now() + HEALTHY_WITHIN;
        loop {
            let why = match self.unhealthy() {
                None => return Ok(()),
                Some(why) => why,
            };
            // A node that exited (a port taken, say) will not come back.
            if let Some(exited) = (0..self.nodes.len()).find(|&n| self.pid(n).is_none()) {
                let log = self.dir.path().join(format!("n{exited}.log"));
                let log = std::fs::read_to_string(log).unwrap_or_default();
                return Err(format!("node {exited} exited; its log:\n{log}"));
            }
            if Instant::now() > deadline {
                return Err(why);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Why the cluster is not healthy yet, if it is not: the first running
    /// node whose `/healthz` fails or whose `/jsz` names no meta leader.
    fn unhealthy(&self) -> Option<String> {
        (0..self.nodes.len()).find_map(|node| {
            self.pid(node)?;
            let port = self.nodes[node].monitor_port;
            match monitor_get(port, "/healthz") {
                Some((200, _)) => {}
                other => return Some(format!("node {node}: /healthz answered {other:?}")),
            }
            let jsz = monitor_get(port, "/jsz")
                .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok());
            let leader = jsz.as_ref().map(|j| &j["meta_cluster"]["leader"]);
            match leader.and_then(Value::as_str) {
                Some(name) if !name.is_empty() => None,
                _ => Some(format!("node {node}: no JetStream meta leader yet")),
            }
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in 0..self.nodes.len() {
            self.kill9(node);
        }
    }
}

/// The stream `name` in a `/jsz?streams=true` answer.
fn stream_detail<'a>(jsz: &'a Value, name: &str) -> Option<&'a Value> {
    jsz["account_details"]
        .as_array()?
        .iter()
        .filter_map(|account| account["stream_detail"].as_array())
        .flatten()
        .find(|stream| stream["name"] == name)
}

/// The nats-server binary: `$EVENTFOLD_NATS_SERVER`, or else the one
/// `scripts/install-nats` installs (and prints) when it is unset.
pub fn nats_server() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        if let Some(path) = std::env::var_os(NATS_SERVER_ENV) {
            return PathBuf::from(path);
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("host/ is inside the workspace");
        let output = Command::new(root.join("scripts/install-nats"))
            .current_dir(root)
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/install-nats");
        assert!(
            output.status.success(),
            "scripts/install-nats failed ({}); or set {NATS_SERVER_ENV}",
            output.status
        );
        PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
    })
}

/// A GET on a node's monitoring port: the status and body, `None` when it
/// does not answer. Plain HTTP/1.0 over loopback, so that it needs no
/// runtime and can run anywhere.
fn monitor_get(port: u16, path: &str) -> Option<(u16, String)> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// Spawns `command` from the spawner thread, with `PR_SET_PDEATHSIG =
/// SIGKILL`: the child is killed when that thread exits, which is when the
/// process does.
fn spawn_tied_to_process(command: Command) -> std::io::Result<Child> {
    type Request = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<mpsc::Sender<Request>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (sender, requests) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("nats-spawner".into())
            .spawn(move || {
                // The senders live in a static: this loop ends only with
                // the process.
                for (mut command, reply) in requests {
                    let _ = reply.send(spawn_with_death_signal(&mut command));
                }
            })
            .expect("start the spawner thread");
        sender
    });
    let (reply, answer) = mpsc::channel();
    spawner
        .send((command, reply))
        .expect("the spawner thread is gone");
    answer.recv().expect("the spawner thread answers")
}

fn spawn_with_death_signal(command: &mut Command) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;

    const PR_SET_PDEATHSIG: std::ffi::c_int = 1;
    const SIGKILL: std::ffi::c_ulong = 9;
    unsafe extern "C" {
        fn prctl(option: std::ffi::c_int, ...) -> std::ffi::c_int;
    }
    let parent = std::process::id();
    // SAFETY: between fork and exec the closure makes two async-signal-safe
    // system calls (prctl, getppid) and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The process may have died before prctl: then nobody would kill us.
            if std::os::unix::process::parent_id() != parent {
                return Err(std::io::Error::other("the test process is gone"));
            }
            Ok(())
        });
    }
    command.spawn()
}

/// Removes the cluster directories of test processes that are gone (the
/// shared cluster's is never dropped).
fn remove_stale_dirs(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("nats-"))
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
