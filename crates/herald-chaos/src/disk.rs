//! SQLite on a full disk: appenders run into ENOSPC on a small tmpfs; every acknowledged append must
//! survive, the file must still open and read, and appends must work again once space is freed.

use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Stdio};
use std::time::{Duration, Instant};

use herald::{EventStoreExt, ExpectedVersion, NewEvent, ReadQuery, StreamName};
use tokio::process::{Child, Command};

use crate::check::{Report, check_events};
use crate::roles::open_options;
use crate::scenario::log_path;
use crate::{Result, context};

#[derive(Debug, clap::Args)]
pub(crate) struct FullDiskArgs {
    /// Size of the filesystem the store lives on.
    #[arg(long, default_value_t = 8)]
    megabytes: u64,
    #[arg(long, default_value_t = 2)]
    appenders: usize,
    /// How long the appenders keep hitting the full disk before they are killed.
    #[arg(long, default_value_t = 3)]
    full_seconds: u64,
    #[arg(long)]
    seed: Option<u64>,
}

/// A tmpfs mount of a fixed size, unmounted when dropped.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = StdCommand::new("umount").arg("-l").arg(&self.0).status();
    }
}

pub(crate) async fn run(args: FullDiskArgs) -> Result<()> {
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    let temp = tempfile::tempdir().map_err(context("creating the run directory"))?;
    let dir = temp.path();
    let disk = dir.join("disk");
    std::fs::create_dir(&disk).map_err(context("creating the mount point"))?;
    let mounted = StdCommand::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={}m", args.megabytes),
            "tmpfs",
        ])
        .arg(&disk)
        .stderr(Stdio::piped())
        .output();
    let _mount = match mounted {
        Ok(o) if o.status.success() => Mount(disk.clone()),
        outcome => {
            let why = match outcome {
                Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_owned(),
                Err(e) => e.to_string(),
            };
            let message =
                format!("cannot mount a small tmpfs for the full-disk run (needs root): {why}");
            if std::env::var_os("CI").is_some() {
                return Err(message);
            }
            println!("chaos full-disk skipped: {message}");
            return Ok(());
        }
    };
    println!("chaos full-disk: {} MB tmpfs, seed {seed}", args.megabytes);
    let url = format!("sqlite://{}", disk.join("chaos.db").display());
    drop(
        herald::open_with(&url, open_options())
            .await
            .map_err(context("creating the store"))?,
    );
    // Space to give back later: 1 MB that the run frees to show appends resume.
    let filler = disk.join("filler");
    std::fs::write(&filler, vec![0u8; 1 << 20]).map_err(context("writing the filler file"))?;

    let exe = std::env::current_exe().map_err(context("finding this binary"))?;
    let mut appenders: Vec<Child> = Vec::new();
    for index in 0..args.appenders {
        let stderr = std::fs::File::create(dir.join(format!("append-{index}.stderr")))
            .map_err(context("creating a stderr file"))?;
        appenders.push(
            Command::new(&exe)
                .arg("append")
                .arg("--url")
                .arg(&url)
                .arg("--log")
                .arg(log_path(dir, "append", index))
                .arg("--seed")
                .arg((seed + index as u64).to_string())
                .arg("--pause-ms")
                .arg("0")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .kill_on_drop(true)
                .spawn()
                .map_err(context("starting an appender"))?,
        );
    }
    // Wait for the disk to fill: an appender reports its first failed append. (Polling a file another process
    // writes: there is no signal to wait on.)
    let give_up = Instant::now() + Duration::from_secs(120);
    while !any_failed(dir, args.appenders)? {
        if Instant::now() > give_up {
            return Err("the disk did not fill within 120 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(args.full_seconds)).await;
    for child in &mut appenders {
        child.kill().await.map_err(context("killing an appender"))?;
    }

    // On the full disk: the store opens and reads, and every acknowledged append is there, once, whole.
    let herald = herald::open_with(&url, open_options())
        .await
        .map_err(context("opening the store on a full disk"))?;
    let events = herald
        .store
        .read_to_vec(ReadQuery::all())
        .await
        .map_err(context("reading the log on a full disk"))?;
    let mut report = Report::default();
    check_events(&events, dir, args.appenders, &mut report)?;
    let failures = count_failures(dir, args.appenders)?;

    // Space back: appends work again.
    std::fs::remove_file(&filler).map_err(context("freeing space"))?;
    let stream = StreamName::new("after-full-disk").map_err(context("stream name"))?;
    herald
        .store
        .append(
            &stream,
            vec![NewEvent::new("Resumed").with_data(r#"{"batch":null}"#)],
            ExpectedVersion::NoStream,
        )
        .await
        .map_err(context("appending after freeing space"))?;
    let after = herald
        .store
        .read_to_vec(ReadQuery::all().from(events.len() as u64 + 1))
        .await
        .map_err(context("reading after freeing space"))?;
    if after.len() != 1 || after[0].stream != "after-full-disk" {
        return Err(format!(
            "after freeing space the log should hold one more event, it holds {} more",
            after.len()
        ));
    }
    println!(
        "chaos full-disk ok: {} events stored ({} acknowledged), each once, batches whole, gap-free; \
         {failures} appends refused on the full disk; the store opened and read on the full disk and \
         appended again once 1 MB was freed",
        events.len(),
        report.acknowledged
    );
    Ok(())
}

fn any_failed(dir: &Path, appenders: usize) -> Result<bool> {
    Ok(count_failures(dir, appenders)? > 0)
}

fn count_failures(dir: &Path, appenders: usize) -> Result<usize> {
    let mut failures = 0;
    for index in 0..appenders {
        let path = dir.join(format!("append-{index}.stderr"));
        let text =
            std::fs::read_to_string(&path).map_err(context("reading an appender's stderr"))?;
        failures += text
            .lines()
            .filter(|l| l.starts_with("append failed"))
            .count();
    }
    Ok(failures)
}
