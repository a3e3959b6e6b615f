//! What a job is: [`NewJob`] (to enqueue, builder style) and [`JobType`] (typed arguments).

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::error::{Error, Result};

/// The queue a job goes to when none is named.
pub const DEFAULT_QUEUE: &str = "default";
/// Longest job type or queue name, in bytes.
pub const MAX_NAME_LEN: usize = 255;
/// Attempts before a failing job goes to the dead set, unless the job says otherwise (Sidekiq: 25).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 25;

/// Typed job arguments: the type names the job, serde carries the arguments.
///
/// ```
/// use herald_core::jobs::JobType;
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
pub enum When {
    /// As soon as a worker is free.
    Now,
    /// No earlier than this time (µs since the epoch, by the job clock).
    At(i64),
    /// This long after it is enqueued.
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
    /// When it may run.
    pub when: When,
}

impl NewJob {
    /// A job of type `T` with these arguments, taking `T`'s queue, priority and attempts.
    pub fn typed<T: JobType>(args: &T) -> Result<Self> {
        let json = serde_json::to_string(args).map_err(|e| {
            Error::invalid(format!(
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

    /// When it may run, for a job enqueued at `now` (µs since the epoch).
    pub fn run_at(&self, now: i64) -> i64 {
        match self.when {
            When::Now => now,
            When::At(t) => t,
            When::After(d) => now.saturating_add(crate::clock::micros(d)),
        }
    }

    /// Checks the job before anything is written: type and queue names of 1 to 255 bytes, at least one
    /// attempt, a non-nil id, JSON arguments and a JSON object as metadata. [`Error::InvalidInput`] names
    /// the job type and the rule broken.
    pub fn validate(&self) -> Result<()> {
        if self.kind.is_empty() || self.kind.len() > MAX_NAME_LEN {
            return Err(Error::invalid(format!(
                "job type name is {} bytes; it must be 1 to {MAX_NAME_LEN}",
                self.kind.len()
            )));
        }
        if self.queue.is_empty() || self.queue.len() > MAX_NAME_LEN {
            return Err(Error::invalid(format!(
                "queue name of job `{}` is {} bytes; it must be 1 to {MAX_NAME_LEN}",
                self.kind,
                self.queue.len()
            )));
        }
        // The delivery queues hold only their own kind, so `herald worker`, which claims by queue, never
        // leases a job it has no handler for (which would spend the job's attempts).
        for reserved in [crate::delivery::WEBHOOK_KIND, crate::delivery::SHELL_KIND] {
            if (self.queue == reserved) != (self.kind == reserved) {
                return Err(Error::invalid(format!(
                    "job `{}` in queue `{}`: queue `{reserved}` holds only jobs of type `{reserved}`, \
                     and those go nowhere else",
                    self.kind.escape_debug(),
                    self.queue.escape_debug()
                )));
            }
        }
        if self.max_attempts == 0 {
            return Err(Error::invalid(format!(
                "max_attempts of job `{}` must be at least 1",
                self.kind
            )));
        }
        if self.id.is_nil() {
            return Err(Error::invalid(format!(
                "job `{}` has the nil UUID as id",
                self.kind
            )));
        }
        if serde_json::from_str::<serde::de::IgnoredAny>(&self.args).is_err() {
            return Err(Error::invalid(format!(
                "arguments of job `{}` are not JSON",
                self.kind
            )));
        }
        match serde_json::from_str::<serde_json::Value>(&self.metadata) {
            Ok(serde_json::Value::Object(_)) => Ok(()),
            _ => Err(Error::invalid(format!(
                "metadata of job `{}` must be a JSON object",
                self.kind
            ))),
        }
    }
}
