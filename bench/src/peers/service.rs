//! The servers the peer benchmark runs: each a child process of its own, on a
//! free loopback port, in a temporary directory on the measured disk, and
//! stopped by its own PID. What is missing is installed with apt-get.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

/// A running server process.
pub struct Service {
    name: &'static str,
    child: Child,
    /// The signal that asks it to stop cleanly (`TERM`, or `INT` for
    /// PostgreSQL's fast shutdown).
    stop_signal: &'static str,
}

impl Service {
    /// Starts `command` as `name`, its output going to `log` (kept for when
    /// it fails to start).
    pub fn spawn(
        name: &'static str,
        mut command: Command,
        log: &Path,
        stop_signal: &'static str,
    ) -> anyhow::Result<Self> {
        let output = std::fs::File::create(log)?;
        command
            .stdin(Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output)
            .kill_on_drop(true);
        let child = command
            .spawn()
            .with_context(|| format!("starting {name} ({command:?})"))?;
        Ok(Self {
            name,
            child,
            stop_signal,
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Fails with the server's log if it has exited already.
    pub fn check_running(&mut self, log: &Path) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let output = std::fs::read_to_string(log).unwrap_or_default();
            bail!("{} exited ({status}):\n{output}", self.name);
        }
        Ok(())
    }

    /// Asks it to stop by its PID and waits; kills it after 30 s.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let Some(pid) = self.child.id() else {
            return Ok(());
        };
        let status = Command::new("kill")
            .arg(format!("-{}", self.stop_signal))
            .arg(pid.to_string())
            .status()
            .await?;
        if !status.success() {
            bail!("kill -{} {pid} ({}) failed", self.stop_signal, self.name);
        }
        if tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .is_err()
        {
            eprintln!("{} (pid {pid}) did not stop in 30 s; killing it", self.name);
            self.child.kill().await?;
        }
        Ok(())
    }
}

/// A free port on loopback (the OS picks it; the listener is closed again).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Calls `ready` until it succeeds, for at most `limit`, checking that the
/// service is still running in between.
pub async fn wait_ready<T, F>(
    service: &mut Service,
    log: &Path,
    limit: Duration,
    mut ready: impl FnMut() -> F,
) -> anyhow::Result<T>
where
    F: Future<Output = anyhow::Result<T>>,
{
    let started = Instant::now();
    loop {
        match ready().await {
            Ok(value) => return Ok(value),
            Err(error) if started.elapsed() > limit => {
                return Err(error.context(format!("{} not ready after {limit:?}", service.name)));
            }
            Err(_) => {
                service.check_running(log)?;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The path of `binary`: on `PATH`, in one of `dirs` (globs are not
/// needed: the caller lists candidates), or installed now from the Debian
/// `package` with apt-get.
pub fn find_or_install(binary: &str, dirs: &[PathBuf], package: &str) -> anyhow::Result<PathBuf> {
    let find = || {
        std::env::var_os("PATH")
            .into_iter()
            .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
            .chain(dirs.iter().cloned())
            .map(|dir| dir.join(binary))
            .find(|candidate| candidate.is_file())
    };
    if let Some(found) = find() {
        return Ok(found);
    }
    eprintln!("{binary} not found: installing the Debian package {package} with apt-get");
    let install = || {
        std::process::Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", package])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
    };
    if !install().is_ok_and(|s| s.success()) {
        // A fresh machine may have no package lists yet.
        std::process::Command::new("apt-get")
            .arg("update")
            .status()
            .context("running apt-get update")?;
        let status = install().context("running apt-get install")?;
        if !status.success() {
            bail!("apt-get install {package} failed ({status}); install it by hand");
        }
    }
    find().with_context(|| format!("{binary} still not found after installing {package}"))
}

/// The data directory for one service under the run's scratch directory.
pub fn service_dir(scratch: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let dir = scratch.join(name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
