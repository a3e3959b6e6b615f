//! `herald-chaos`: faults as part of the suite.
//!
//! `herald-chaos run` starts Herald's moving parts as real processes — appenders, followers, a transactional
//! projection and job workers, all of them this binary in a role — on a throwaway database (a private
//! PostgreSQL cluster it may restart, or a SQLite file), then injects faults at random points for a while:
//! SIGKILL of any role process (restarted at once, as a supervisor would) and, on PostgreSQL, server restarts
//! in `fast` and `immediate` mode. Then the faults stop, every part is given time to catch up, and the checker
//! ([`check`]) verifies the invariants Herald promises:
//!
//! - every acknowledged append is stored, exactly once; the global order is gap-free (1..=N);
//! - every batch's job was committed with it (a job exists exactly for the batches that exist) and ran to
//!   success at least once; no job is left queued, running or dead;
//! - every follower's log holds each committed event once, in order, ending at the head;
//! - the projection's read model equals a fresh fold of the log, and its checkpoint is the head.
//!
//! `herald-chaos full-disk` runs appenders against a SQLite file on a tiny tmpfs until the disk is full,
//! then checks that every acknowledged event survived, the file still opens, and appends work again once
//! space is freed.
//!
//! `scripts/chaos.sh` runs both: a short mode in CI, a long one on demand. The seed is printed so that a
//! failing schedule can be replayed.

mod check;
mod cluster;
mod disk;
mod logs;
mod roles;
mod scenario;

use clap::{Parser, Subcommand};

/// Exit status of a role that stopped on an error it reported (the supervisor restarts it).
const EXIT_ROLE_ERROR: i32 = 3;
/// Exit status of a follower whose follow ended with an error: followers must reconnect by themselves, so the
/// supervisor counts this as a violation (a failure to *open* is an ordinary role error).
const EXIT_FOLLOW_BROKE: i32 = 4;

#[derive(Debug, Parser)]
#[command(
    name = "herald-chaos",
    about = "Herald under faults: kills, restarts, full disks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs a chaos scenario on one backend and checks every invariant.
    Run(scenario::RunArgs),
    /// SQLite on a full disk: acknowledged appends survive, the file opens, appends resume when space frees.
    FullDisk(disk::FullDiskArgs),
    /// Role: appends batches of events with one job each, logging what was acknowledged.
    #[command(hide = true)]
    Append(roles::AppendArgs),
    /// Role: follows the global log, writing every event it sees; resumes from its own log.
    #[command(hide = true)]
    Follow(roles::FollowArgs),
    /// Role: runs the transactional projection (events per stream).
    #[command(hide = true)]
    Project(roles::ProjectArgs),
    /// Role: a worker pool running the appenders' jobs, logging every run.
    #[command(hide = true)]
    Work(roles::WorkArgs),
}

fn main() {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("herald-chaos: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => scenario::run(args).await,
            Command::FullDisk(args) => disk::run(args).await,
            Command::Append(args) => roles::append(args).await,
            Command::Follow(args) => roles::follow(args).await,
            Command::Project(args) => roles::project(args).await,
            Command::Work(args) => roles::work(args).await,
        }
    });
    if let Err(e) = outcome {
        eprintln!("herald-chaos: {}", one_line(&e));
        std::process::exit(EXIT_ROLE_ERROR);
    }
}

/// `message` with its control characters escaped (Herald's one escaping rule), so an error is one line
/// whatever it quotes.
fn one_line(message: &str) -> String {
    herald::core::error::escape_controls(message).into_owned()
}

/// Errors of this tool: a message naming what failed is all a chaos run needs.
type Result<T> = std::result::Result<T, String>;

/// Turns any displayable error into this tool's error, prefixed with what was being done.
fn context<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> String {
    move |e| format!("{what}: {e}")
}
