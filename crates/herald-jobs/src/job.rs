//! What a job is: [`NewJob`] (to enqueue), [`JobType`] (typed arguments), [`JobContext`] and [`JobResult`]
//! (what a handler gets and returns), and the retry [`Backoff`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::error::{JobError, Result};

/// The queue a job goes to when none is named.
pub const DEFAULT_QUEUE: &str = "default";
/// Attempts before a failing job goes to the dead set, unless the job says otherwise (Sidekiq: 25).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 25;

/// Typed job arguments: the type names the job, serde carries the arguments.
///
/// ```
/// use herald_jobs::JobType;
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct SendWelcome { email: String }
/// impl JobType for SendWelcome {
///     const NAME: &'static str = "send_welcome";
///     const QUEUE: &'static str = "mailers";
/// }
/// ```
pub trait JobType: Serialize + DeserializeOwned + Send + 'static {
    /// The job type name stored with each job; handlers are found by it. Keep it stable.
    const NAME: &'static str;
    /// The default queue.
    const QUEUE: &'static str = DEFAULT_QUEUE;
    /// The default priority (higher runs first within a queue).
    const PRIORITY: i32 = 0;
    /// The default number of attempts before the dead set.
    const MAX_ATTEMPTS: u32 = DEFAULT_MAX_ATTEMPTS;
}

/// When a job may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum When {
    Now,
    At(i64),
    After(Duration),
}

/// A job to enqueue: type, JSON arguments and options (builder style).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    /// The job's id (a fresh UUIDv7 unless set).
    pub id: Uuid,
    /// The job type name.
    pub kind: String,
    /// Arguments, JSON text.
    pub args: String,
    /// Metadata, JSON object text (correlation and causation ids of the causing event, user keys).
    pub metadata: String,
    /// The queue.
    pub queue: String,
    /// Higher runs first within a queue.
    pub priority: i32,
    /// Attempts before the dead set (at least 1).
    pub max_attempts: u32,
    /// While a job with this key is pending or running, enqueueing another with the same key does nothing.
    pub unique_key: Option<String>,
    /// Jobs with the same ordering key run one at a time, in enqueue order (retries keep their place).
    pub order_key: Option<String>,
    pub(crate) when: When,
}

impl NewJob {
    /// A job of type `T` with these arguments, taking `T`'s queue, priority and attempts.
    pub fn typed<T: JobType>(args: &T) -> Result<Self> {
        let json = serde_json::to_string(args).map_err(|e| {
            JobError::invalid(format!(
                "arguments of job `{}` do not serialize: {e}",
                T::NAME
            ))
        })?;
        Ok(NewJob::raw(T::NAME, json)
            .queue(T::QUEUE)
            .priority(T::PRIORITY)
            .max_attempts(T::MAX_ATTEMPTS))
    }

    /// A job of type `kind` with JSON text arguments (checked on enqueue).
    pub fn raw(kind: impl Into<String>, args: impl Into<String>) -> Self {
        NewJob {
            id: Uuid::now_v7(),
            kind: kind.into(),
            args: args.into(),
            metadata: "{}".to_owned(),
            queue: DEFAULT_QUEUE.to_owned(),
            priority: 0,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            unique_key: None,
            order_key: None,
            when: When::Now,
        }
    }

    /// Sets the queue.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = queue.into();
        self
    }
    /// Sets the priority (higher first).
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }
    /// Sets the attempts before the dead set.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }
    /// Makes the job unique by `key` while pending or running.
    pub fn unique_key(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
        self
    }
    /// Orders the job after every earlier job with the same `key`.
    pub fn order_key(mut self, key: impl Into<String>) -> Self {
        self.order_key = Some(key.into());
        self
    }
    /// Sets the metadata (a JSON object).
    pub fn metadata(mut self, json: impl Into<String>) -> Self {
        self.metadata = json.into();
        self
    }
    /// Sets the id.
    pub fn id(mut self, id: Uuid) -> Self {
        self.id = id;
        self
    }
    /// Runs the job no earlier than `at`.
    pub fn at(mut self, at: time::OffsetDateTime) -> Self {
        self.when = When::At((at.unix_timestamp_nanos() / 1000) as i64);
        self
    }
    /// Runs the job no earlier than `micros` since the epoch (by the store's clock).
    pub fn at_micros(mut self, micros: i64) -> Self {
        self.when = When::At(micros);
        self
    }
    /// Runs the job after `delay` (from enqueue, by the store's clock).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.when = When::After(delay);
        self
    }

    pub(crate) fn run_at(&self, now: i64) -> i64 {
        match self.when {
            When::Now => now,
            When::At(t) => t,
            When::After(d) => now.saturating_add(crate::clock::micros(d)),
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.kind.is_empty() || self.kind.len() > 255 {
            return Err(JobError::invalid("a job type name is 1 to 255 bytes"));
        }
        if self.queue.is_empty() || self.queue.len() > 255 {
            return Err(JobError::invalid("a queue name is 1 to 255 bytes"));
        }
        if self.max_attempts == 0 {
            return Err(JobError::invalid("max_attempts must be at least 1"));
        }
        if self.id.is_nil() {
            return Err(JobError::invalid("the nil UUID is not a job id"));
        }
        if serde_json::from_str::<serde::de::IgnoredAny>(&self.args).is_err() {
            return Err(JobError::invalid(format!(
                "arguments of job `{}` are not JSON",
                self.kind
            )));
        }
        match serde_json::from_str::<serde_json::Value>(&self.metadata) {
            Ok(serde_json::Value::Object(_)) => Ok(()),
            _ => Err(JobError::invalid("job metadata must be a JSON object")),
        }
    }
}

/// What a handler gets besides its arguments.
#[derive(Debug, Clone)]
pub struct JobContext {
    /// The job's id: stable across attempts, for idempotency.
    pub id: Uuid,
    /// The job type.
    pub kind: String,
    /// The queue.
    pub queue: String,
    /// This attempt's number, from 1. A job whose worker died mid-run runs again with the next number.
    pub attempt: u32,
    /// Attempts allowed before the dead set.
    pub max_attempts: u32,
    /// Metadata JSON (carries `correlation_id`/`causation_id` of the causing event, for async handlers).
    pub metadata: String,
    /// Cancelled when the pool shuts down: long handlers should stop and return a retry.
    pub shutdown: CancellationToken,
}

impl JobContext {
    /// The `correlation_id` metadata value.
    pub fn correlation_id(&self) -> Option<Uuid> {
        herald_core::event::metadata_uuid(&self.metadata, herald_core::event::CORRELATION_ID)
    }
    /// The `causation_id` metadata value (the causing event's id, for async handlers).
    pub fn causation_id(&self) -> Option<Uuid> {
        herald_core::event::metadata_uuid(&self.metadata, herald_core::event::CAUSATION_ID)
    }
}

/// How a run ended, as the handler says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobResult {
    /// Done: the job is removed.
    Success,
    /// Run again later: after `after`, or after the job type's backoff when `None`. Counts as an attempt;
    /// when attempts are exhausted the job goes to the dead set.
    Retry {
        /// Explicit delay.
        after: Option<Duration>,
        /// Why (kept in the attempt history).
        reason: String,
    },
    /// Give up without error: the job is removed and not retried.
    Discard {
        /// Why.
        reason: String,
    },
    /// Failed: retried with backoff while attempts remain, then moved to the dead set.
    Fail {
        /// The error, kept in the attempt history.
        error: String,
    },
}

impl JobResult {
    /// A failure with this error.
    pub fn fail(error: impl fmt::Display) -> Self {
        JobResult::Fail {
            error: error.to_string(),
        }
    }
    /// A retry after the backoff.
    pub fn retry(reason: impl fmt::Display) -> Self {
        JobResult::Retry {
            after: None,
            reason: reason.to_string(),
        }
    }
    /// A retry after `delay`.
    pub fn retry_after(delay: Duration, reason: impl fmt::Display) -> Self {
        JobResult::Retry {
            after: Some(delay),
            reason: reason.to_string(),
        }
    }
    /// A discard.
    pub fn discard(reason: impl fmt::Display) -> Self {
        JobResult::Discard {
            reason: reason.to_string(),
        }
    }
    pub(crate) fn label(&self) -> &'static str {
        match self {
            JobResult::Success => "success",
            JobResult::Retry { .. } => "retry",
            JobResult::Discard { .. } => "discard",
            JobResult::Fail { .. } => "failure",
        }
    }
}

impl<E: fmt::Display> From<std::result::Result<(), E>> for JobResult {
    fn from(r: std::result::Result<(), E>) -> Self {
        match r {
            Ok(()) => JobResult::Success,
            Err(e) => JobResult::fail(e),
        }
    }
}

/// The delay before retry number `attempt` (the attempt that just failed, from 1).
#[derive(Clone)]
pub struct Backoff(Arc<dyn Fn(u32) -> Duration + Send + Sync>);

impl Backoff {
    /// Sidekiq's schedule: `count⁴ + 15 + rand(10·(count+1))` seconds, `count` = retries so far
    /// (`attempt - 1`): about 15 s, 16 s, 31 s, 96 s, 271 s … 4 days for the 25th attempt.
    pub fn sidekiq() -> Self {
        Backoff(Arc::new(|attempt| {
            let count = u64::from(attempt.saturating_sub(1));
            let base = count.pow(4) + 15;
            let jitter = fastrand::u64(0..10 * (count + 1));
            Duration::from_secs(base + jitter)
        }))
    }

    /// The same delay every time.
    pub fn constant(delay: Duration) -> Self {
        Backoff(Arc::new(move |_| delay))
    }

    /// Any schedule.
    pub fn custom(f: impl Fn(u32) -> Duration + Send + Sync + 'static) -> Self {
        Backoff(Arc::new(f))
    }

    /// The delay after failed attempt `attempt`.
    pub fn delay(&self, attempt: u32) -> Duration {
        (self.0)(attempt)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::sidekiq()
    }
}

impl fmt::Debug for Backoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Backoff(..)")
    }
}
