//! `herald routes …`: the delivery routes of the database ([`herald::core::delivery`]): "when an event
//! matching this is committed, POST it to this URL / run this program". Routes live in the database, so every
//! appender (this CLI, the library through `herald::open` or a bare store, other processes) writes their jobs
//! in the append's own transaction, and `herald worker` runs them.
//!
//! Output: one JSON object a line. `add` prints the route (secret shown only when generated here, once);
//! `list` one route a line, secrets as `***`; `remove` `{"route","removed":true}`, exit 4 when there is no
//! such route. Bad input (a pattern, URL, secret, timeout or attempt count out of range) exits 5.

use std::time::Duration;

use base64::Engine;
use clap::{Args, Subcommand};
use herald::Error;
use herald::core::delivery::{DeliveryRoute, DeliveryTarget, StreamPattern};
use herald::uuid::Uuid;
use serde_json::json;

use crate::cli::CliError;
use crate::output::json_line;

/// `herald routes` arguments.
#[derive(Debug, Args)]
pub(crate) struct RoutesArgs {
    #[command(subcommand)]
    command: RoutesCommand,
}

#[derive(Debug, Subcommand)]
enum RoutesCommand {
    /// Add a route: events matching --stream and --type are delivered to --webhook or --exec.
    Add(AddArgs),
    /// List the routes, one JSON object a line (secrets hidden).
    List,
    /// Remove a route (jobs already queued for it are discarded by the worker).
    Remove {
        /// The route's name.
        name: String,
    },
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["webhook", "exec"])))]
struct AddArgs {
    /// The route's name (letters, digits, `.`, `_`, `-`).
    name: String,
    /// Streams to take events from: `*` (all), `PREFIX*` (e.g. `order-*`, the category `order`) or one stream.
    #[arg(long, default_value = "*")]
    stream: String,
    /// Only events of this type (default: every type).
    #[arg(long = "type")]
    event_type: Option<String>,
    /// POST each event to this http:// or https:// URL (CloudEvents structured mode, Standard Webhooks
    /// signature).
    #[arg(long)]
    webhook: Option<String>,
    /// The webhook signing secret, `whsec_` + base64 (default: a new random one, printed once).
    #[arg(long, requires = "webhook")]
    secret: Option<String>,
    /// Run this program for each event (the event on stdin, its ids in HERALD_* variables).
    #[arg(long)]
    exec: Option<String>,
    /// An argument of the program, fixed here (repeatable); event data never reaches the command line.
    #[arg(long = "arg", requires = "exec", allow_hyphen_values = true)]
    args: Vec<String>,
    /// Seconds one delivery may take (request or program run) before it counts as failed.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Attempts before a delivery goes to the dead set.
    #[arg(long, default_value_t = herald::core::jobs::DEFAULT_MAX_ATTEMPTS)]
    max_attempts: u32,
}

/// A new Standard Webhooks secret: 32 random bytes (two v4 UUIDs' worth of the OS's randomness), base64.
fn new_secret() -> String {
    let mut key = Vec::with_capacity(32);
    key.extend_from_slice(Uuid::new_v4().as_bytes());
    key.extend_from_slice(Uuid::new_v4().as_bytes());
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

fn timeout_ms(seconds: f64) -> Result<u64, Error> {
    let limit = herald::core::delivery::MAX_ROUTE_TIMEOUT_MS as f64 / 1000.0;
    if !(seconds > 0.0 && seconds <= limit) {
        return Err(Error::invalid(format!(
            "--timeout {seconds} is out of range: more than 0 and at most {limit} seconds"
        )));
    }
    Ok(Duration::from_secs_f64(seconds).as_millis().max(1) as u64)
}

/// The route as printed: the target's secret hidden.
pub(crate) fn route_json(route: &DeliveryRoute) -> serde_json::Value {
    json!({
        "name": route.name,
        "stream": route.stream.to_string(),
        "type": route.event_type,
        "kind": route.target.kind(),
        "target": route.target.redacted(),
        "max_attempts": route.max_attempts,
    })
}

/// Runs a `herald routes` command; returns the lines to print.
pub(crate) async fn run(database: &str, args: RoutesArgs) -> Result<Vec<String>, CliError> {
    let herald = herald::open(database).await?;
    let routes = herald.routes;
    match args.command {
        RoutesCommand::Add(add) => {
            let timeout_ms = timeout_ms(add.timeout)?;
            let mut generated = None;
            let target = match (add.webhook, add.exec) {
                (Some(url), None) => {
                    let secret = match add.secret {
                        Some(secret) => secret,
                        None => generated.insert(new_secret()).clone(),
                    };
                    if let Some(key) = secret.strip_prefix("whsec_")
                        && base64::engine::general_purpose::STANDARD
                            .decode(key)
                            .is_err()
                    {
                        return Err(Error::invalid(
                            "webhook secret: the part after `whsec_` is not base64",
                        )
                        .into());
                    }
                    DeliveryTarget::Webhook {
                        url,
                        secret,
                        timeout_ms,
                    }
                }
                (None, Some(program)) => DeliveryTarget::Shell {
                    program,
                    args: add.args,
                    timeout_ms,
                },
                _ => unreachable!("clap requires exactly one of --webhook and --exec"),
            };
            let mut route = DeliveryRoute::new(
                add.name,
                StreamPattern::parse(&add.stream)?,
                add.event_type,
                target,
            );
            route.max_attempts = add.max_attempts;
            routes.add_route(route.clone()).await?;
            let mut line = route_json(&route);
            if let Some(secret) = generated {
                line["secret"] = json!(secret);
            }
            Ok(vec![json_line(&line)])
        }
        RoutesCommand::List => Ok(routes
            .routes()
            .await?
            .iter()
            .map(|r| json_line(&route_json(r)))
            .collect()),
        RoutesCommand::Remove { name } => {
            herald::core::delivery::validate_route_name(&name)?;
            if routes.remove_route(&name).await? {
                Ok(vec![json_line(&json!({"route": name, "removed": true}))])
            } else {
                Err(CliError::NotFound(format!("route `{name}` not found")))
            }
        }
    }
}
