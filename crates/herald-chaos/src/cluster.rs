//! A private PostgreSQL cluster for one chaos run: its own data directory and port, so the run may restart
//! it at will without disturbing anything else on the machine (the shared server keeps serving the tests).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::Result;

/// Where Debian puts the server binaries.
const BIN_DIRS: &[&str] = &[
    "/usr/lib/postgresql/17/bin",
    "/usr/lib/postgresql/16/bin",
    "/usr/lib/postgresql/15/bin",
];

/// How PostgreSQL is told to stop before starting again.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Restart {
    /// Clients are disconnected, transactions rolled back, then a clean shutdown.
    Fast,
    /// The postmaster kills everything at once: a crash, recovered from the WAL on start.
    Immediate,
}

/// A running private cluster; stopped when dropped.
pub(crate) struct Cluster {
    bin: PathBuf,
    data: PathBuf,
    log: PathBuf,
    port: u16,
    /// The user the server runs as (PostgreSQL refuses to run as root).
    user: Option<String>,
}

impl Cluster {
    /// Creates and starts a cluster under `dir`.
    pub(crate) fn start(dir: &Path) -> Result<Self> {
        let bin = BIN_DIRS
            .iter()
            .map(PathBuf::from)
            .find(|d| d.join("initdb").exists())
            .ok_or("no PostgreSQL server binaries (initdb) under /usr/lib/postgresql")?;
        let port = free_port()?;
        let data = dir.join("pgdata");
        let user = running_as_root().then(|| "postgres".to_owned());
        if let Some(user) = &user {
            // The server's user must own the data directory and be able to reach it.
            std::fs::create_dir_all(&data)
                .map_err(|e| format!("creating {}: {e}", data.display()))?;
            run(Command::new("chown").arg("-R").arg(user).arg(dir))?;
            run(Command::new("chmod").arg("755").arg(dir))?;
        }
        let cluster = Cluster {
            log: dir.join("postgres.log"),
            bin,
            data,
            port,
            user,
        };
        cluster.pg(&[
            "initdb",
            "-D",
            &cluster.data.display().to_string(),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        ])?;
        cluster.ctl(&["start"])?;
        Ok(cluster)
    }

    /// The URL of the cluster's `postgres` database.
    pub(crate) fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Restarts the server, waiting until it accepts connections again.
    pub(crate) fn restart(&self, mode: Restart) -> Result<()> {
        let mode = match mode {
            Restart::Fast => "fast",
            Restart::Immediate => "immediate",
        };
        self.ctl(&["restart", "-m", mode])
    }

    fn ctl(&self, action: &[&str]) -> Result<()> {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories= -c max_connections=200",
            self.port
        );
        let data = self.data.display().to_string();
        let log = self.log.display().to_string();
        let mut args = vec![
            "pg_ctl", "-D", &data, "-l", &log, "-o", &options, "-w", "-t", "60",
        ];
        args.extend_from_slice(action);
        self.pg(&args)
    }

    /// Runs one of the server's programs as the server's user.
    fn pg(&self, args: &[&str]) -> Result<()> {
        let program = self.bin.join(args[0]);
        let mut command = match &self.user {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.arg("-u").arg(user).arg("--").arg(&program);
                c
            }
            None => Command::new(&program),
        };
        command.args(&args[1..]);
        run(&mut command)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.ctl(&["stop", "-m", "immediate"]);
    }
}

fn run(command: &mut Command) -> Result<()> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {command:?}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
                .trim()
                .escape_debug()
        ))
    }
}

fn free_port() -> Result<u16> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("finding a free port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("finding a free port: {e}"))
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}
