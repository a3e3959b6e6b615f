//! What `herald worker` does with one delivery job: load its route and event, render the event as a
//! CloudEvent, and hand it to the target ([`webhook`] or [`shell`]). The job carries only ids
//! ([`DeliveryJobArgs`]), so a route removed since the append discards its jobs, and a route changed since
//! (new URL, rotated secret) applies to them.

pub(crate) mod shell;
pub(crate) mod webhook;

use std::sync::Arc;

use herald::core::delivery::{DeliveryJobArgs, DeliveryRoutes, DeliveryTarget};
use herald::jobs::{JobContext, JobResult};
use herald::{EventStore, RecordedEvent, timefmt};
use serde::Serialize;
use serde_json::value::RawValue;

/// What every delivery needs: the routes, the events, and the webhook client (one connection pool).
pub(crate) struct Deliverer {
    pub(crate) routes: Arc<dyn DeliveryRoutes>,
    pub(crate) events: Arc<dyn EventStore>,
    pub(crate) http: reqwest::Client,
}

impl Deliverer {
    /// Runs one delivery job of either kind.
    pub(crate) async fn run(&self, args: &str, ctx: JobContext) -> JobResult {
        let args: DeliveryJobArgs = match serde_json::from_str(args) {
            Ok(args) => args,
            Err(e) => return JobResult::fail(format!("delivery job arguments do not decode: {e}")),
        };
        let route = match self.routes.route(&args.route).await {
            Ok(Some(route)) => route,
            Ok(None) => {
                return JobResult::discard(format!("route `{}` no longer exists", args.route));
            }
            Err(e) => return JobResult::fail(format!("loading route `{}`: {e}", args.route)),
        };
        let event = match self.events.event(args.event_id).await {
            Ok(Some(event)) => event,
            Ok(None) => {
                return JobResult::discard(format!("event {} no longer exists", args.event_id));
            }
            Err(e) => return JobResult::fail(format!("loading event {}: {e}", args.event_id)),
        };
        let body = match cloud_event(&event) {
            Ok(body) => body,
            Err(e) => return JobResult::fail(format!("event {} does not render: {e}", event.id)),
        };
        match &route.target {
            DeliveryTarget::Webhook {
                url,
                secret,
                timeout_ms,
            } => webhook::post(&self.http, url, secret, *timeout_ms, &event, body).await,
            DeliveryTarget::Shell {
                program,
                args: program_args,
                timeout_ms,
            } => {
                let run = shell::Run {
                    program,
                    args: program_args,
                    timeout_ms: *timeout_ms,
                    route: &route.name,
                    event: &event,
                    body: &body,
                };
                shell::run(run, &ctx).await
            }
        }
    }
}

/// CloudEvents 1.0, JSON structured mode: id = event id, subject = stream, type = event type, data = the
/// event's JSON as stored; Herald's position, stream version, correlation and causation as extensions
/// (strings: CloudEvents integers are 32-bit).
#[derive(Serialize)]
struct CloudEvent<'a> {
    specversion: &'static str,
    id: herald::uuid::Uuid,
    source: &'static str,
    #[serde(rename = "type")]
    event_type: &'a str,
    subject: &'a str,
    time: String,
    datacontenttype: &'static str,
    data: &'a RawValue,
    heraldposition: String,
    heraldversion: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    correlationid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    causationid: Option<String>,
}

/// The event as a CloudEvent (the webhook's body, the program's stdin).
pub(crate) fn cloud_event(event: &RecordedEvent) -> Result<String, serde_json::Error> {
    let data: &RawValue = serde_json::from_str(&event.data)?;
    serde_json::to_string(&CloudEvent {
        specversion: "1.0",
        id: event.id,
        source: "herald",
        event_type: &event.event_type,
        subject: &event.stream,
        time: timefmt::format_rfc3339_micros(event.recorded_at),
        datacontenttype: "application/json",
        data,
        heraldposition: event.position.to_string(),
        heraldversion: event.version.to_string(),
        correlationid: event.correlation_id().map(|id| id.to_string()),
        causationid: event.causation_id().map(|id| id.to_string()),
    })
}
