//! One chaos run: start the roles, inject faults for a while, let everything catch up, check.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use herald::EventStore;
use tokio::process::{Child, Command};

use crate::check::{Expect, Report, check};
use crate::cluster::{Cluster, Restart};
use crate::roles::open_options;
use crate::{Result, context};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    /// The database: a SQLite file, or a private PostgreSQL cluster the run restarts.
    #[arg(long, value_enum)]
    backend: Backend,
    /// How long faults are injected.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Seed of the fault schedule and the roles' choices (random when absent; printed either way).
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long, default_value_t = 2)]
    appenders: usize,
    #[arg(long, default_value_t = 2)]
    followers: usize,
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Mean time between faults.
    #[arg(long, default_value_t = 400)]
    fault_every_ms: u64,
    /// How long the parts get to catch up once faults stop.
    #[arg(long, default_value_t = 120)]
    settle_seconds: u64,
    /// Keep the run's directory (database, logs) here instead of a temporary one.
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// The kinds of role processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Append,
    Follow,
    Project,
    Work,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Append => "append",
            Role::Follow => "follow",
            Role::Project => "project",
            Role::Work => "work",
        }
    }
}

/// One role process slot: restarted in place whenever it dies.
struct Slot {
    role: Role,
    index: usize,
    child: Option<Child>,
    starts: u32,
}

/// What the run did, for the report.
#[derive(Debug, Default)]
struct Faults {
    kills: [u32; 4],
    restarts_fast: u32,
    restarts_immediate: u32,
    /// Role processes that stopped by themselves with an error (one that could not open the store during a
    /// restart, say).
    error_exits: [u32; 4],
    /// Followers whose follow ended with an error instead of reconnecting: each one fails the run.
    follows_broken: u32,
}

pub(crate) async fn run(args: RunArgs) -> Result<()> {
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    let temp = tempfile::tempdir().map_err(context("creating the run directory"))?;
    let dir = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(context("creating the run directory"))?;
            dir.clone()
        }
        None => temp.path().to_path_buf(),
    };
    println!(
        "chaos: {:?}, {} s of faults, seed {seed}, directory {}",
        args.backend,
        args.seconds,
        dir.display()
    );
    let cluster = match args.backend {
        Backend::Postgres => Some(Cluster::start(&dir)?),
        Backend::Sqlite => None,
    };
    let url = match &cluster {
        Some(cluster) => cluster.url(),
        None => format!("sqlite://{}", dir.join("chaos.db").display()),
    };
    // Create the schema once, before the roles race to do it.
    drop(
        herald::open_with(&url, open_options())
            .await
            .map_err(context("creating the store"))?,
    );

    let mut rng = fastrand::Rng::with_seed(seed);
    let mut slots = Vec::new();
    for (role, count) in [
        (Role::Append, args.appenders),
        (Role::Follow, args.followers),
        (Role::Project, 1),
        (Role::Work, args.workers),
    ] {
        for index in 0..count {
            slots.push(Slot {
                role,
                index,
                child: None,
                starts: 0,
            });
        }
    }
    let mut faults = Faults::default();
    for slot in &mut slots {
        spawn(slot, &url, &dir, seed)?;
    }

    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    while Instant::now() < deadline {
        // The fault schedule itself is random time: this sleep is the experiment, not synchronisation.
        tokio::time::sleep(Duration::from_millis(
            rng.u64(args.fault_every_ms / 4..=args.fault_every_ms * 7 / 4),
        ))
        .await;
        respawn_exited(&mut slots, &url, &dir, seed, &mut faults)?;
        let restart = cluster.is_some() && rng.u8(0..5) == 0;
        if let (true, Some(cluster)) = (restart, &cluster) {
            if rng.bool() {
                cluster.restart(Restart::Fast)?;
                faults.restarts_fast += 1;
            } else {
                cluster.restart(Restart::Immediate)?;
                faults.restarts_immediate += 1;
            }
        } else {
            let victim = rng.usize(0..slots.len());
            let slot = &mut slots[victim];
            if let Some(mut child) = slot.child.take() {
                child.kill().await.map_err(context("killing a role"))?;
                faults.kills[slot.role as usize] += 1;
            }
            spawn(slot, &url, &dir, seed)?;
        }
    }

    // Faults stop; appenders stop (killed: what they acknowledged is in their logs).
    for slot in slots.iter_mut().filter(|s| s.role == Role::Append) {
        if let Some(mut child) = slot.child.take() {
            child
                .kill()
                .await
                .map_err(context("stopping an appender"))?;
        }
    }
    let herald = herald::open_with(&url, open_options())
        .await
        .map_err(context("opening the store to check it"))?;
    let head = herald.store.watch_head().borrow().position;
    let settle = settle(
        &mut slots,
        &url,
        &dir,
        seed,
        &mut faults,
        &herald,
        Duration::from_secs(args.settle_seconds),
    )
    .await;
    for slot in &mut slots {
        if let Some(mut child) = slot.child.take() {
            let _ = child.kill().await;
        }
    }
    settle?;
    if faults.follows_broken > 0 {
        return Err(format!(
            "{} times a follower's follow ended with an error instead of reconnecting (see follow-*.stderr in {})",
            faults.follows_broken,
            dir.display()
        ));
    }
    let report = check(
        &herald,
        &url,
        &dir,
        &Expect {
            appenders: args.appenders,
            followers: args.followers,
            workers: args.workers,
        },
    )
    .await?;
    print_report(&args, seed, &faults, &report, head);
    Ok(())
}

/// Waits until the followers, the projection and the workers have caught up with the log's head, restarting
/// role processes that die meanwhile. Polls: the state lives in other processes and files.
async fn settle(
    slots: &mut [Slot],
    url: &str,
    dir: &Path,
    seed: u64,
    faults: &mut Faults,
    herald: &herald::Herald,
    patience: Duration,
) -> Result<()> {
    let give_up = Instant::now() + patience;
    loop {
        respawn_exited(slots, url, dir, seed, faults)?;
        let progress =
            crate::check::progress(herald, url, dir, slots_of(slots, Role::Follow)).await;
        match progress {
            Ok(p) if p.caught_up() => return Ok(()),
            Ok(p) if Instant::now() > give_up => {
                return Err(format!("the parts did not catch up in time: {p:?}"));
            }
            Err(e) if Instant::now() > give_up => return Err(e),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

fn slots_of(slots: &[Slot], role: Role) -> usize {
    slots.iter().filter(|s| s.role == role).count()
}

fn respawn_exited(
    slots: &mut [Slot],
    url: &str,
    dir: &Path,
    seed: u64,
    faults: &mut Faults,
) -> Result<()> {
    for slot in slots.iter_mut() {
        let Some(child) = slot.child.as_mut() else {
            continue;
        };
        if let Some(status) = child.try_wait().map_err(context("checking a role"))? {
            faults.error_exits[slot.role as usize] += 1;
            if slot.role == Role::Follow && status.code() == Some(crate::EXIT_FOLLOW_BROKE) {
                faults.follows_broken += 1;
            }
            eprintln!(
                "chaos: {} {} exited ({status}); restarting it",
                slot.role.name(),
                slot.index
            );
            slot.child = None;
            spawn(slot, url, dir, seed)?;
        }
    }
    Ok(())
}

/// The log file of a role process (one per slot, shared by its successive processes).
pub(crate) fn log_path(dir: &Path, role: &str, index: usize) -> PathBuf {
    dir.join(format!("{role}-{index}.log"))
}

fn spawn(slot: &mut Slot, url: &str, dir: &Path, seed: u64) -> Result<()> {
    let exe = std::env::current_exe().map_err(context("finding this binary"))?;
    let mut command = Command::new(exe);
    command.arg(slot.role.name()).arg("--url").arg(url);
    let role_seed = seed
        .wrapping_add((slot.index as u64) << 32)
        .wrapping_add(u64::from(slot.starts));
    match slot.role {
        Role::Append | Role::Work => {
            command
                .arg("--log")
                .arg(log_path(dir, slot.role.name(), slot.index))
                .arg("--seed")
                .arg(role_seed.to_string());
        }
        Role::Follow => {
            command
                .arg("--log")
                .arg(log_path(dir, slot.role.name(), slot.index));
        }
        Role::Project => {}
    }
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{}-{}.stderr", slot.role.name(), slot.index)))
        .map_err(context("opening a role's stderr file"))?;
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .kill_on_drop(true);
    slot.child = Some(command.spawn().map_err(context("starting a role"))?);
    slot.starts += 1;
    Ok(())
}

fn print_report(args: &RunArgs, seed: u64, faults: &Faults, report: &Report, head: u64) {
    let [kills_append, kills_follow, kills_project, kills_work] = faults.kills;
    println!(
        "chaos ok: {:?} seed {seed}, {} s; SIGKILLs: {kills_append} appenders, {kills_follow} followers, \
         {kills_project} projectors, {kills_work} workers; PostgreSQL restarts: {} fast, {} immediate; \
         role processes that stopped on an error and were restarted: {:?} (append, follow, project, work)",
        args.backend,
        args.seconds,
        faults.restarts_fast,
        faults.restarts_immediate,
        faults.error_exits,
    );
    println!(
        "chaos ok: {} events ({} acknowledged, {} committed without acknowledgement; head {head} when \
         appends stopped), gap-free, each once; {} batches = {} jobs, each ran to success ({} runs, {} planned \
         failures, {} runs cut by kills, highest attempt {}), none dead; {} followers saw {} events each, in \
         order, once; projection = fold of the log over {} streams",
        report.events,
        report.acknowledged,
        report.events - report.acknowledged,
        report.batches,
        report.batches,
        report.runs,
        report.planned_failures,
        report.cut_runs,
        report.highest_attempt,
        report.followers,
        report.events,
        report.streams,
    );
}
