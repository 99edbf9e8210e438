//! PostgreSQL as a peer: Debian's server on a fresh `initdb` cluster, with
//! synchronous commit, and a Message-DB-like table. An append is one call of
//! `write_messages`, which takes the stream's advisory lock, checks the
//! expected version against the stream's position and inserts the rows,
//! as Message DB's `write_message` does for one message.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio_postgres::{NoTls, Statement};

use super::service::{self, Service};
use super::{EVENT_DATA, EVENT_TYPE, PAGE};

const SCHEMA: &str = r#"
CREATE TABLE messages (
    global_position bigserial PRIMARY KEY,
    stream_name text NOT NULL,
    type text NOT NULL,
    position bigint NOT NULL,
    data jsonb,
    UNIQUE (stream_name, position)
);
CREATE FUNCTION write_messages(_stream text, _types text[], _data jsonb[], _expected bigint)
RETURNS bigint AS $$
DECLARE
    _version bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext(_stream));
    SELECT max(position) INTO _version FROM messages WHERE stream_name = _stream;
    _version := coalesce(_version, -1);
    IF _expected IS NOT NULL AND _expected <> _version THEN
        RAISE EXCEPTION 'Wrong expected version: % (stream: %, stream version: %)',
            _expected, _stream, _version;
    END IF;
    INSERT INTO messages (stream_name, type, position, data)
        SELECT _stream, m.type, _version + m.n, m.data
        FROM unnest(_types, _data) WITH ORDINALITY AS m(type, data, n);
    RETURN _version + array_length(_types, 1);
END;
$$ LANGUAGE plpgsql;
"#;

/// The running server.
pub struct Postgres {
    service: Service,
    config: tokio_postgres::Config,
}

/// One client: its own connection and its own stream.
pub struct Client {
    client: tokio_postgres::Client,
    write: Statement,
    stream: String,
    types: Vec<&'static str>,
    data: Vec<&'static str>,
    /// The stream's last version, checked by `write_messages`.
    version: i64,
}

impl Postgres {
    /// Runs `initdb` in a directory under `scratch` and starts the server
    /// (both installed if missing; as the `postgres` user when run as root,
    /// which PostgreSQL requires).
    pub async fn start(scratch: &Path) -> anyhow::Result<Self> {
        let initdb = service::find_or_install("initdb", &debian_bin_dirs(), "postgresql")?;
        let bin = initdb.parent().context("initdb has no directory")?;
        let dir = service::service_dir(scratch, "postgres")?;
        let owner = owner_for(&dir)?;
        let data = dir.join("data");
        let mut command = tokio::process::Command::new(&initdb);
        command.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        as_owner(&mut command, owner);
        let output = command.output().await.context("running initdb")?;
        if !output.status.success() {
            bail!(
                "initdb failed ({}):\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }

        let port = service::free_port()?;
        let mut command = tokio::process::Command::new(bin.join("postgres"));
        command
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", dir.display()))
            .args(["-c", "fsync=on", "-c", "synchronous_commit=on"]);
        as_owner(&mut command, owner);
        let log = dir.join("server.log");
        let mut service = Service::spawn("postgres", command, &log, "INT")?;
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(port)
            .user("postgres")
            .dbname("postgres");
        let client = service::wait_ready(&mut service, &log, Duration::from_secs(60), || {
            connect(&config)
        })
        .await?;
        client.batch_execute(SCHEMA).await?;
        Ok(Self { service, config })
    }

    /// The server's version, as it reports it.
    pub async fn version(&self) -> anyhow::Result<String> {
        let client = connect(&self.config).await?;
        let row = client.query_one("SHOW server_version", &[]).await?;
        Ok(row.get(0))
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.service.pid()
    }

    /// A client appending `batch` events per call to `stream`.
    pub async fn client(&self, stream: &str, batch: usize) -> anyhow::Result<Client> {
        let client = connect(&self.config).await?;
        let write = client
            .prepare("SELECT write_messages($1, $2, $3::text[]::jsonb[], $4)")
            .await?;
        Ok(Client {
            client,
            write,
            stream: stream.to_owned(),
            types: vec![EVENT_TYPE; batch],
            data: vec![EVENT_DATA; batch],
            version: -1,
        })
    }

    /// The number of events in the table.
    pub async fn count(&self) -> anyhow::Result<u64> {
        let client = connect(&self.config).await?;
        let row = client
            .query_one("SELECT count(*) FROM messages", &[])
            .await?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    /// Reads the first `n` messages by global position in pages; each page's latency.
    pub async fn read(&self, n: u64) -> anyhow::Result<Vec<Duration>> {
        let client = connect(&self.config).await?;
        let page_query = client
            .prepare(
                "SELECT global_position, stream_name, type, position, data::text FROM messages \
                 WHERE global_position > $1 ORDER BY global_position LIMIT $2",
            )
            .await?;
        let mut latencies = Vec::new();
        let mut read = 0;
        let mut after = 0i64;
        while read < n {
            let sent = Instant::now();
            let limit = PAGE.min(n - read) as i64;
            let rows = client.query(&page_query, &[&after, &limit]).await?;
            let Some(last) = rows.last() else {
                bail!("the table ended after {read} messages");
            };
            // Decoded as a consumer would.
            for row in &rows {
                let _: (i64, &str, &str, i64, &str) =
                    (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
            }
            after = last.get(0);
            read += rows.len() as u64;
            latencies.push(sent.elapsed());
        }
        Ok(latencies)
    }

    /// Stops the server (SIGINT: a fast shutdown).
    pub async fn stop(self) -> anyhow::Result<()> {
        self.service.stop().await
    }
}

impl Client {
    /// Appends one call's events, checking the stream's version.
    pub async fn append(&mut self) -> anyhow::Result<()> {
        let row = self
            .client
            .query_one(
                &self.write,
                &[&self.stream, &self.types, &self.data, &self.version],
            )
            .await?;
        self.version = row.get(0);
        Ok(())
    }
}

async fn connect(config: &tokio_postgres::Config) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            eprintln!("postgres connection: {error}");
        }
    });
    Ok(client)
}

/// Debian's PostgreSQL binaries, newest version first.
fn debian_bin_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin"))
        .collect();
    dirs.sort_by(|a, b| b.cmp(a));
    dirs
}

/// The (uid, gid) to run PostgreSQL as: the `postgres` user when this
/// process is root (it refuses to run as root), with `dir` handed to it.
fn owner_for(dir: &Path) -> anyhow::Result<Option<(u32, u32)>> {
    if std::fs::metadata("/proc/self")?.uid() != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    let (uid, gid) = passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            match fields.as_slice() {
                ["postgres", _, uid, gid, ..] => Some((uid.parse().ok()?, gid.parse().ok()?)),
                _ => None,
            }
        })
        .context("running as root, and there is no postgres user to run PostgreSQL as")?;
    std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
    Ok(Some((uid, gid)))
}

fn as_owner(command: &mut tokio::process::Command, owner: Option<(u32, u32)>) {
    if let Some((uid, gid)) = owner {
        command.uid(uid).gid(gid);
    }
}
