//! Delivery routes: "when an event matching this is committed, deliver it there" (a webhook URL, a program),
//! kept in the database so that every appender writes the delivery job in the append's own transaction —
//! the library, the CLI and any other process on the same database — and `herald worker` runs the jobs
//! without any Rust written by the user.
//!
//! The shape is the job queue's: [`DeliveryRoutes`] is the port (add, list, remove), one implementation per
//! backend over a `herald_routes` table in the job tables' migrations, one conformance suite in
//! `herald-store-testkit`. Every backend's append path reads the routes in the append's transaction (SQLite
//! and memory: once per write transaction, matched here by [`delivery_jobs`]; PostgreSQL: one
//! `INSERT … SELECT` joined with the routes table in the append's statement pipeline, matching the columns
//! [`StreamPattern`] stores), so a route added by another process applies to every append that starts
//! after `add` returned, with no cache to invalidate.
//!
//! A delivery job carries only ids ([`DeliveryJobArgs`]); the worker loads the event and the route's target
//! (URL, secret, program) when it runs, so a target's secret never sits in the job table and a route changed
//! or removed meanwhile takes effect for jobs already queued.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::event::AppendedEvent;
use crate::jobs::{DEFAULT_MAX_ATTEMPTS, NewJob};

/// The job type and queue of webhook deliveries.
pub const WEBHOOK_KIND: &str = "herald.webhook";
/// The job type and queue of shell-command deliveries.
pub const SHELL_KIND: &str = "herald.shell";

/// Longest route name, in bytes.
pub const MAX_ROUTE_NAME_LEN: usize = 128;
/// Most attempts a route may ask for.
pub const MAX_ROUTE_ATTEMPTS: u32 = 1_000;
/// Longest per-delivery timeout a route may ask for, in milliseconds (one hour).
pub const MAX_ROUTE_TIMEOUT_MS: u64 = 3_600_000;
/// Longest target text (URL, program, one argument), in bytes.
const MAX_TARGET_LEN: usize = 4096;
/// Most arguments of a program.
const MAX_ARGS: usize = 64;

/// Which streams a route takes events from: every stream (`*`), the streams whose name starts with a prefix
/// (`order-*`: the category `order`), or one stream (`order-42`). Only a trailing `*` is special, so a
/// pattern means the same in Rust and in SQL (stored as a prefix and an exact flag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPattern {
    /// The prefix, or the whole name when `exact`.
    pub prefix: String,
    /// True: the stream must equal `prefix`; false: start with it.
    pub exact: bool,
}

impl StreamPattern {
    /// Parses `*`, `PREFIX*` or an exact stream name.
    pub fn parse(text: &str) -> Result<Self> {
        if text.is_empty() || text.len() > crate::stream::MAX_STREAM_NAME_BYTES {
            return Err(Error::invalid(format!(
                "stream pattern is {} bytes; it must be 1 to {}",
                text.len(),
                crate::stream::MAX_STREAM_NAME_BYTES
            )));
        }
        let (prefix, exact) = match text.strip_suffix('*') {
            Some(prefix) => (prefix, false),
            None => (text, true),
        };
        if prefix.contains('*') {
            return Err(Error::invalid(format!(
                "stream pattern `{}`: `*` is allowed only at the end",
                text.escape_debug()
            )));
        }
        if prefix.chars().any(char::is_control) {
            return Err(Error::invalid(format!(
                "stream pattern `{}` contains a control character",
                text.escape_debug()
            )));
        }
        Ok(StreamPattern {
            prefix: prefix.to_owned(),
            exact,
        })
    }

    /// True when `stream` matches.
    pub fn matches(&self, stream: &str) -> bool {
        if self.exact {
            stream == self.prefix
        } else {
            stream.starts_with(&self.prefix)
        }
    }
}

impl std::fmt::Display for StreamPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.exact {
            f.write_str(&self.prefix)
        } else {
            write!(f, "{}*", self.prefix)
        }
    }
}

/// Where a route delivers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DeliveryTarget {
    /// POST the event (a CloudEvent) to `url`, signed the Standard Webhooks way.
    Webhook {
        /// An `http://` or `https://` URL.
        url: String,
        /// The signing secret: `whsec_` then base64 (Standard Webhooks).
        secret: String,
        /// Per-request timeout, in milliseconds.
        timeout_ms: u64,
    },
    /// Run `program` with the fixed `args`, the event JSON on stdin, its ids in environment variables.
    Shell {
        /// The program (a path, or a name looked up in `PATH`).
        program: String,
        /// Its arguments, fixed when the route was added (never built from event data).
        args: Vec<String>,
        /// Run timeout, in milliseconds; the process is killed when it passes.
        timeout_ms: u64,
    },
}

impl DeliveryTarget {
    /// The job type (and queue) of this target's deliveries.
    pub fn kind(&self) -> &'static str {
        match self {
            DeliveryTarget::Webhook { .. } => WEBHOOK_KIND,
            DeliveryTarget::Shell { .. } => SHELL_KIND,
        }
    }

    /// Checks the target's rules (URL scheme, secret shape, lengths, timeout range).
    pub fn validate(&self) -> Result<()> {
        let timeout_ms = match self {
            DeliveryTarget::Webhook {
                url,
                secret,
                timeout_ms,
            } => {
                check_text("webhook URL", url)?;
                let parsed = url::Url::parse(url).map_err(|e| {
                    Error::invalid(format!("webhook URL `{}`: {e}", url.escape_debug()))
                })?;
                if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
                    return Err(Error::invalid(format!(
                        "webhook URL `{}` must be http:// or https:// with a host",
                        url.escape_debug()
                    )));
                }
                let key = secret.strip_prefix("whsec_").unwrap_or("");
                if key.is_empty()
                    || !key
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
                {
                    return Err(Error::invalid(
                        "webhook secret must be `whsec_` followed by base64",
                    ));
                }
                *timeout_ms
            }
            DeliveryTarget::Shell {
                program,
                args,
                timeout_ms,
            } => {
                check_text("program", program)?;
                if args.len() > MAX_ARGS {
                    return Err(Error::invalid(format!(
                        "{} program arguments; at most {MAX_ARGS}",
                        args.len()
                    )));
                }
                for arg in args {
                    if arg.len() > MAX_TARGET_LEN || arg.contains('\0') {
                        return Err(Error::invalid(format!(
                            "program argument `{}` is longer than {MAX_TARGET_LEN} bytes or holds a NUL",
                            arg.escape_debug()
                        )));
                    }
                }
                *timeout_ms
            }
        };
        if timeout_ms == 0 || timeout_ms > MAX_ROUTE_TIMEOUT_MS {
            return Err(Error::invalid(format!(
                "delivery timeout {timeout_ms} ms is out of range 1 to {MAX_ROUTE_TIMEOUT_MS}"
            )));
        }
        Ok(())
    }

    /// The target as shown to people: the webhook secret replaced by `***`.
    pub fn redacted(&self) -> DeliveryTarget {
        match self {
            DeliveryTarget::Webhook {
                url, timeout_ms, ..
            } => DeliveryTarget::Webhook {
                url: url.clone(),
                secret: "***".to_owned(),
                timeout_ms: *timeout_ms,
            },
            other => other.clone(),
        }
    }
}

fn check_text(what: &str, text: &str) -> Result<()> {
    if text.is_empty() || text.len() > MAX_TARGET_LEN || text.contains('\0') {
        return Err(Error::invalid(format!(
            "{what} must be 1 to {MAX_TARGET_LEN} bytes without NUL"
        )));
    }
    Ok(())
}

/// One delivery route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRoute {
    /// Its unique name (letters, digits, `.`, `_`, `-`).
    pub name: String,
    /// The streams it takes events from.
    pub stream: StreamPattern,
    /// The event type it takes (`None`: every type).
    pub event_type: Option<String>,
    /// Where it delivers.
    pub target: DeliveryTarget,
    /// Attempts before a delivery goes to the dead set.
    pub max_attempts: u32,
}

impl DeliveryRoute {
    /// A route with the default attempts ([`DEFAULT_MAX_ATTEMPTS`]).
    pub fn new(
        name: impl Into<String>,
        stream: StreamPattern,
        event_type: Option<String>,
        target: DeliveryTarget,
    ) -> Self {
        DeliveryRoute {
            name: name.into(),
            stream,
            event_type,
            target,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }

    /// Checks every rule of a route; backends call it before storing one.
    pub fn validate(&self) -> Result<()> {
        validate_route_name(&self.name)?;
        if let Some(t) = &self.event_type {
            crate::stream::validate_name("event type", t)?;
        }
        if self.max_attempts == 0 || self.max_attempts > MAX_ROUTE_ATTEMPTS {
            return Err(Error::invalid(format!(
                "route `{}`: max attempts {} is out of range 1 to {MAX_ROUTE_ATTEMPTS}",
                self.name, self.max_attempts
            )));
        }
        self.target.validate()
    }

    /// The slim form the append path matches with.
    pub fn matcher(&self) -> RouteMatcher {
        RouteMatcher {
            name: self.name.clone(),
            stream: self.stream.clone(),
            event_type: self.event_type.clone(),
            kind: self.target.kind().to_owned(),
            max_attempts: self.max_attempts,
        }
    }
}

/// Checks a route name: 1 to [`MAX_ROUTE_NAME_LEN`] bytes of letters, digits, `.`, `_` and `-`.
pub fn validate_route_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > MAX_ROUTE_NAME_LEN
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(Error::invalid(format!(
            "route name `{}` must be 1 to {MAX_ROUTE_NAME_LEN} letters, digits, `.`, `_` or `-`",
            name.escape_debug()
        )));
    }
    Ok(())
}

/// What the append path needs of a route (no target: that is the worker's business).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatcher {
    /// The route's name.
    pub name: String,
    /// Its streams.
    pub stream: StreamPattern,
    /// Its event type (`None`: all).
    pub event_type: Option<String>,
    /// Its jobs' type and queue ([`WEBHOOK_KIND`] or [`SHELL_KIND`]).
    pub kind: String,
    /// Its jobs' attempts.
    pub max_attempts: u32,
}

/// The arguments of a delivery job: which route, which event. Every backend writes this shape (PostgreSQL
/// builds it in SQL with these keys).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryJobArgs {
    /// The route's name.
    pub route: String,
    /// The event's id.
    pub event_id: Uuid,
    /// The stream it was appended to.
    pub stream: String,
    /// Its type.
    pub event_type: String,
    /// Its global position.
    pub position: u64,
}

/// The delivery jobs for `events` just appended to `stream`: one per (event, matching route), in event then
/// route order.
pub fn delivery_jobs(
    routes: &[RouteMatcher],
    stream: &str,
    events: &[AppendedEvent<'_>],
) -> Vec<NewJob> {
    let mut jobs = Vec::new();
    let routes: Vec<&RouteMatcher> = routes.iter().filter(|r| r.stream.matches(stream)).collect();
    if routes.is_empty() {
        return jobs;
    }
    for event in events {
        for route in routes.iter().filter(|r| {
            r.event_type
                .as_deref()
                .is_none_or(|t| t == event.event_type)
        }) {
            let args = DeliveryJobArgs {
                route: route.name.clone(),
                event_id: event.id,
                stream: stream.to_owned(),
                event_type: event.event_type.to_owned(),
                position: event.position,
            };
            let args = serde_json::to_string(&args).unwrap_or_default();
            jobs.push(
                NewJob::raw(route.kind.clone(), args)
                    .queue(route.kind.clone())
                    .max_attempts(route.max_attempts),
            );
        }
    }
    jobs
}

/// The delivery-route port: every backend that hosts jobs implements it over its own database.
///
/// Semantics (the conformance suite checks them): names are unique; `add` validates
/// ([`DeliveryRoute::validate`]) and refuses a taken name with [`Error::InvalidInput`]; an added route
/// applies to every append that starts after `add` returns, in any process on the database; `remove` stops
/// new jobs for it (jobs already queued stay, and the worker finds no route for them).
#[async_trait]
pub trait DeliveryRoutes: Send + Sync + 'static {
    /// Stores a new route.
    async fn add_route(&self, route: DeliveryRoute) -> Result<()>;
    /// Every route, by name.
    async fn routes(&self) -> Result<Vec<DeliveryRoute>>;
    /// One route by name.
    async fn route(&self, name: &str) -> Result<Option<DeliveryRoute>>;
    /// Removes a route; false when there is none by that name.
    async fn remove_route(&self, name: &str) -> Result<bool>;
}

/// A stored route's columns back into a route (the backends' row decoding, one place).
pub fn route_from_columns(
    name: String,
    stream_prefix: String,
    stream_exact: bool,
    event_type: Option<String>,
    target_json: &str,
    max_attempts: i64,
) -> Result<DeliveryRoute> {
    let target: DeliveryTarget = serde_json::from_str(target_json).map_err(|e| {
        Error::backend(format!(
            "route `{}`: stored target does not decode: {e}",
            name.escape_debug()
        ))
    })?;
    Ok(DeliveryRoute {
        name,
        stream: StreamPattern {
            prefix: stream_prefix,
            exact: stream_exact,
        },
        event_type,
        target,
        max_attempts: u32::try_from(max_attempts).unwrap_or(DEFAULT_MAX_ATTEMPTS),
    })
}

/// The target as stored (JSON text).
pub fn target_json(target: &DeliveryTarget) -> String {
    serde_json::to_string(target).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(event_type: &str, position: u64) -> AppendedEvent<'static> {
        AppendedEvent {
            id: Uuid::now_v7(),
            event_type: Box::leak(event_type.to_owned().into_boxed_str()),
            data: "{}",
            metadata: "{}",
            version: position - 1,
            position,
        }
    }

    fn matcher(name: &str, pattern: &str, event_type: Option<&str>) -> RouteMatcher {
        RouteMatcher {
            name: name.into(),
            stream: StreamPattern::parse(pattern).unwrap(),
            event_type: event_type.map(str::to_owned),
            kind: WEBHOOK_KIND.into(),
            max_attempts: 3,
        }
    }

    #[test]
    fn patterns_match_all_prefix_or_exact() {
        let all = StreamPattern::parse("*").unwrap();
        assert!(all.matches("order-1") && all.matches("x"));
        let category = StreamPattern::parse("order-*").unwrap();
        assert!(
            category.matches("order-1")
                && !category.matches("orders")
                && !category.matches("order")
        );
        let one = StreamPattern::parse("order-1").unwrap();
        assert!(one.matches("order-1") && !one.matches("order-10"));
        assert_eq!(category.to_string(), "order-*");
        for bad in ["", "a*b", "**", "a\nb"] {
            assert!(
                matches!(StreamPattern::parse(bad), Err(Error::InvalidInput(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn one_job_per_matching_event_and_route() {
        let routes = [
            matcher("paid", "order-*", Some("OrderPaid")),
            matcher("all", "*", None),
            matcher("other", "user-*", None),
        ];
        let events = [event("OrderPlaced", 1), event("OrderPaid", 2)];
        let jobs = delivery_jobs(&routes, "order-7", &events);
        let args: Vec<DeliveryJobArgs> = jobs
            .iter()
            .map(|j| serde_json::from_str(&j.args).unwrap())
            .collect();
        let pairs: Vec<(&str, u64)> = args
            .iter()
            .map(|a| (a.route.as_str(), a.position))
            .collect();
        assert_eq!(pairs, [("all", 1), ("paid", 2), ("all", 2)]);
        assert!(
            jobs.iter()
                .all(|j| j.queue == WEBHOOK_KIND && j.kind == WEBHOOK_KIND)
        );
        assert!(jobs.iter().all(|j| j.max_attempts == 3));
        assert_eq!(args[1].event_id, events[1].id);
    }

    #[test]
    fn delivery_queues_hold_only_their_kind() {
        for (kind, queue, ok) in [
            (WEBHOOK_KIND, WEBHOOK_KIND, true),
            (SHELL_KIND, SHELL_KIND, true),
            ("mail", "default", true),
            ("mail", SHELL_KIND, false),
            (WEBHOOK_KIND, "default", false),
            (WEBHOOK_KIND, SHELL_KIND, false),
        ] {
            let job = NewJob::raw(kind, "{}").queue(queue);
            assert_eq!(job.validate().is_ok(), ok, "{kind} in {queue}");
        }
    }

    #[test]
    fn routes_validate_their_targets() {
        let webhook = |url: &str, secret: &str| DeliveryTarget::Webhook {
            url: url.into(),
            secret: secret.into(),
            timeout_ms: 1000,
        };
        let route =
            |target| DeliveryRoute::new("r", StreamPattern::parse("*").unwrap(), None, target);
        assert!(
            route(webhook("https://example.com/hook", "whsec_c2VjcmV0"))
                .validate()
                .is_ok()
        );
        for (url, secret) in [
            ("ftp://example.com", "whsec_c2VjcmV0"),
            ("not a url", "whsec_c2VjcmV0"),
            ("http://example.com", "c2VjcmV0"),
            ("http://example.com", "whsec_"),
            ("http://example.com", "whsec_a b"),
        ] {
            assert!(
                matches!(
                    route(webhook(url, secret)).validate(),
                    Err(Error::InvalidInput(_))
                ),
                "{url} {secret}"
            );
        }
        let shell = DeliveryTarget::Shell {
            program: "/bin/cat".into(),
            args: vec![],
            timeout_ms: 0,
        };
        assert!(matches!(
            route(shell).validate(),
            Err(Error::InvalidInput(_))
        ));
        let mut bad_name = route(webhook("http://h", "whsec_c2VjcmV0"));
        bad_name.name = "a b".into();
        assert!(matches!(bad_name.validate(), Err(Error::InvalidInput(_))));
        let redacted = webhook("http://h", "whsec_c2VjcmV0").redacted();
        assert!(matches!(redacted, DeliveryTarget::Webhook { secret, .. } if secret == "***"));
    }
}
