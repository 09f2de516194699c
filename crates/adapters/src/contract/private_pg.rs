//! A private PostgreSQL server for tests that stop the database: its own data directory and
//! port, so stopping it disturbs nobody else. It needs the server binaries (`initdb`, `pg_ctl`)
//! and fails with a clear error without them; it never skips.
//!
//! PostgreSQL refuses to run as root, so when the tests run as root every server command goes
//! through `runuser -u postgres --` and the temporary directory is handed to that OS user.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use tempfile::TempDir;
use tokio::process::Command;

/// One private server: trust auth, 127.0.0.1 only, no Unix socket, fsync off.
/// Dropping it stops the server and removes its data.
#[derive(Debug)]
pub struct PrivatePostgres {
    bin: PathBuf,
    as_postgres_user: bool,
    port: u16,
    running: AtomicBool,
    // Last field: removed only after `drop` has stopped the server.
    dir: TempDir,
}

impl PrivatePostgres {
    /// Creates a cluster in a temporary directory on a free port and starts it.
    ///
    /// # Errors
    /// The binaries are missing, the `postgres` OS user is missing (when running as root), or
    /// `initdb`/`pg_ctl` fail; the message carries their output.
    pub async fn start() -> Result<Self> {
        let bin = server_bin_dir()?;
        let as_postgres_user = std::fs::metadata("/proc/self").context("read /proc/self")?.uid() == 0;
        let dir = tempfile::Builder::new().prefix("private-pg.").tempdir().context("create a temp dir")?;
        if as_postgres_user {
            let (uid, gid) = postgres_os_user()?;
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .context("chown the temp dir to postgres")?;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let pg = Self { bin, as_postgres_user, port, running: AtomicBool::new(false), dir };
        let mut initdb = pg.command("initdb");
        initdb.arg("-D").arg(pg.data_dir());
        initdb.args(["-U", "postgres", "--auth=trust", "--locale=C", "--encoding=UTF8", "--no-sync"]);
        run(initdb, "initdb").await?;
        let settings = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = ''\n\
             fsync = off\nfull_page_writes = off\nshared_buffers = 16MB\n"
        );
        let conf = pg.data_dir().join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).context("read postgresql.conf")?;
        text.push_str(&settings);
        std::fs::write(&conf, text).context("write postgresql.conf")?;
        pg.start_again().await?;
        Ok(pg)
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`; the same across stops and starts.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts the server on the same data directory and port; returns once it accepts
    /// connections.
    ///
    /// # Errors
    /// `pg_ctl start` fails (e.g. the port was taken meanwhile); the message carries the
    /// server log.
    pub async fn start_again(&self) -> Result<()> {
        let mut cmd = self.pg_ctl("start");
        cmd.args(["-w", "-t", "60", "-l"]).arg(self.log_path());
        if let Err(e) = run(cmd, "pg_ctl start").await {
            bail!("{e:#}\nserver log:\n{}", self.log());
        }
        self.running.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Fast shutdown (clients disconnected, checkpoint written); returns once it has stopped,
    /// after which connecting is refused.
    ///
    /// # Errors
    /// `pg_ctl stop` fails.
    pub async fn stop(&self) -> Result<()> {
        self.shutdown("fast").await
    }

    /// Immediate shutdown, like a crash: no checkpoint, so the next start runs recovery.
    ///
    /// # Errors
    /// `pg_ctl stop` fails.
    pub async fn kill(&self) -> Result<()> {
        self.shutdown("immediate").await
    }

    /// The server log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    async fn shutdown(&self, mode: &str) -> Result<()> {
        let mut cmd = self.pg_ctl("stop");
        cmd.args(["-w", "-t", "60", "-m", mode]);
        run(cmd, "pg_ctl stop").await?;
        self.running.store(false, Ordering::SeqCst);
        Ok(())
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn pg_ctl(&self, action: &str) -> Command {
        let mut cmd = self.std_command("pg_ctl");
        cmd.arg(action).arg("-D").arg(self.data_dir());
        Command::from(cmd)
    }

    fn command(&self, tool: &str) -> Command {
        Command::from(self.std_command(tool))
    }

    /// A server tool, run as the `postgres` OS user when we are root.
    fn std_command(&self, tool: &str) -> std::process::Command {
        let program = self.bin.join(tool);
        let mut cmd = if self.as_postgres_user {
            let mut cmd = std::process::Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(program);
            cmd
        } else {
            std::process::Command::new(program)
        };
        cmd.env("LC_ALL", "C").stdin(Stdio::null());
        cmd
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if !self.running.load(Ordering::SeqCst) {
            return;
        }
        // Blocking is acceptable here: drop runs once per test, and the data is discarded
        // anyway, so an immediate shutdown is enough.
        let mut cmd = self.std_command("pg_ctl");
        cmd.args(["stop", "-w", "-m", "immediate", "-D"])
            .arg(self.data_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Err(error) = cmd.status() {
            tracing::warn!(%error, port = self.port, "private PostgreSQL: stop on drop failed");
        }
    }
}

/// Runs `cmd` to completion; a failure's error says what ran and what it printed.
async fn run(mut cmd: Command, what: &str) -> Result<()> {
    let out = cmd.output().await.with_context(|| format!("could not run {what}: {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(())
}

/// The newest `/usr/lib/postgresql/<version>/bin` (Debian and Ubuntu keep the server tools
/// off PATH there), else the directory on PATH holding `initdb`.
fn server_bin_dir() -> Result<PathBuf> {
    let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    let versioned = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            Some((entry.file_name().to_str()?.parse::<u32>().ok()?, entry.path().join("bin")))
        })
        .filter(|(_, bin)| has_tools(bin))
        .max_by_key(|(version, _)| *version)
        .map(|(_, bin)| bin);
    let on_path = || std::env::split_paths(&std::env::var_os("PATH")?).find(|dir| has_tools(dir));
    versioned.or_else(on_path).context(
        "PostgreSQL server binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin or on PATH; \
         install the PostgreSQL server package",
    )
}

/// The uid and gid of the `postgres` OS user, from /etc/passwd.
fn postgres_os_user() -> Result<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").context("read /etc/passwd")?;
    let fields: Vec<&str> = passwd
        .lines()
        .find(|line| line.starts_with("postgres:"))
        .context("running as root, but there is no `postgres` OS user to run PostgreSQL as")?
        .split(':')
        .collect();
    let id = |i: usize| {
        fields.get(i).and_then(|f| f.parse().ok()).context("malformed postgres line in /etc/passwd")
    };
    Ok((id(2)?, id(3)?))
}
