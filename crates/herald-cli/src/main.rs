//! The `herald` command line: append, read, link, inspect and follow an event store.
//!
//! Its output and exit codes are a contract scripts rely on (see the README): JSON on stdout, one line per
//! result or event; one line on stderr per error (control characters escaped), and nothing else there unless
//! logs are asked for (`-v`, `HERALD_LOG`, `RUST_LOG`); exit 0 ok (also when stdout's reader goes away), 2
//! usage, 3 wrong expected version, 4 not found, 5 invalid input, 6 duplicate, 1 anything else.

mod cli;
mod deliver;
#[cfg(feature = "sqlite")]
mod jobs_cli;
mod log;
mod output;
mod routes_cli;
mod worker_cli;

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let args = match cli::Cli::try_parse() {
        Ok(args) => args,
        Err(e) => return cli::usage_error(e),
    };
    log::init(args.verbose);
    match cli::run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            cli::print_error(&e.to_string());
            ExitCode::from(e.exit_code())
        }
    }
}
