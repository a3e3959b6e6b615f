// One file on purpose: load, save and execute are one retry loop over one stream's optimistic write.
//! Aggregates and their repository.
//!
//! An [`Aggregate`] is pure: [`Aggregate::decide`] turns a command and the current state into new events (or
//! a domain error), [`Aggregate::apply`] folds one event into the state. The [`Repository`] does the I/O: it
//! loads an aggregate by replaying its stream `{CATEGORY}-{id}` (from a snapshot when one is usable), saves
//! new events with `ExpectedVersion::Exact(loaded)` (`NoStream` for a new aggregate), and
//! [`Repository::execute`] retries the whole load → decide → save when another writer got there first, up to
//! [`RetryPolicy::max_attempts`].

use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use herald_core::{
    AppendResult, Backoff, Clock, EventStore, EventStoreExt, ExpectedVersion, NewJob, ReadQuery,
    RecordedEvent, StreamName, SystemClock,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::codec::{Codec, EventSet, Upcasters};
use crate::error::{EsError, Result};
use crate::metadata::CommandMetadata;
use crate::snapshot::{Snapshot, SnapshotPolicy, SnapshotStore};

/// A consistency boundary whose state is the fold of its events.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use herald_es::{Aggregate, EventSet};
///
/// #[derive(Debug, Default, Clone)]
/// struct Counter { value: u64 }
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// #[serde(tag = "type", content = "data")]
/// enum CounterEvent { Incremented { by: u64 } }
/// impl EventSet for CounterEvent {}
/// #[derive(Debug, thiserror::Error, PartialEq)]
/// #[error("increment must be positive")]
/// struct ZeroIncrement;
///
/// impl Aggregate for Counter {
///     const CATEGORY: &'static str = "counter";
///     type Command = u64;
///     type Event = CounterEvent;
///     type Error = ZeroIncrement;
///     fn decide(&self, by: &u64) -> Result<Vec<CounterEvent>, ZeroIncrement> {
///         if *by == 0 { return Err(ZeroIncrement) }
///         Ok(vec![CounterEvent::Incremented { by: *by }])
///     }
///     fn apply(&mut self, event: &CounterEvent) {
///         match event { CounterEvent::Incremented { by } => self.value += by }
///     }
/// }
/// ```
pub trait Aggregate: Default + Clone + Send + Sync + 'static {
    /// The stream category: the aggregate with id `x` lives in stream `{CATEGORY}-{x}`. No `-` in it.
    const CATEGORY: &'static str;
    /// Version of the snapshot state's shape; bump it when the state's serialized form changes, and older
    /// snapshots are ignored (full replay) instead of misread.
    const SNAPSHOT_VERSION: u32 = 1;
    /// What callers ask for.
    type Command: Send + Sync + 'static;
    /// What happened.
    type Event: EventSet + Clone;
    /// Why a command was refused.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Decides which events `command` causes in the current state. Pure: no I/O, no clock, no randomness
    /// that a replay would not reproduce (put those in the command).
    fn decide(&self, command: &Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// Folds one event into the state. Pure and total: an event already happened, it cannot be refused.
    fn apply(&mut self, event: &Self::Event);

    /// The stream of the aggregate with this id.
    fn stream_name(id: &str) -> Result<StreamName> {
        Ok(StreamName::new(format!("{}-{id}", Self::CATEGORY))?)
    }
}

/// An aggregate as loaded: its state and the version it was loaded at.
#[derive(Debug, Clone)]
pub struct Loaded<A> {
    /// The aggregate id.
    pub id: String,
    /// Its stream.
    pub stream: StreamName,
    /// The state after every event up to `version`.
    pub state: A,
    /// The stream version the state includes (`None`: no events yet).
    pub version: Option<u64>,
    /// The version of the snapshot the load started from, when one was used.
    pub snapshot_version: Option<u64>,
    /// Events replayed (after the snapshot, when one was used).
    pub replayed: u64,
    last_event_id: Option<Uuid>,
}

impl<A> Loaded<A> {
    /// The expected version a save of new events must use.
    pub fn expected_version(&self) -> ExpectedVersion {
        match self.version {
            Some(v) => ExpectedVersion::Exact(v),
            None => ExpectedVersion::NoStream,
        }
    }
}

/// What a successful save or execute produced.
#[derive(Debug, Clone)]
pub struct Saved<A> {
    /// The state after the new events.
    pub state: A,
    /// The stream version after the save (`None`: no events were written and the stream is empty).
    pub version: Option<u64>,
    /// The append's result; `None` when the decision produced no events (nothing written).
    pub append: Option<AppendResult>,
    /// Attempts used (1 = no conflict; 0 = found to be a duplicate before deciding).
    pub attempts: u32,
    /// True when the command had already been executed ([`Repository::idempotent`]): nothing was written
    /// this time, `state` and `version` are the aggregate's current ones.
    pub duplicate: bool,
}

/// How [`Repository::execute`] retries on a version conflict. Default: 10 attempts, 1 ms doubling to 100 ms,
/// with jitter. Under heavy contention on one stream (N writers need up to N rounds), raise `max_attempts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts (at least 1; 1 = never retry).
    pub max_attempts: u32,
    /// Delay before the first retry; doubles each retry (with jitter), capped by `max_delay`.
    pub base_delay: Duration,
    /// Largest delay between attempts.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(100),
        }
    }
}

impl RetryPolicy {
    /// No retry: a conflict is returned at once.
    pub fn never() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// `attempts` attempts with no delay between them (for tests).
    pub fn immediate(attempts: u32) -> Self {
        RetryPolicy {
            max_attempts: attempts.max(1),
            base_delay: Duration::ZERO,
            max_delay: Duration::ZERO,
        }
    }

    /// The schedule these settings describe: herald-core's exponential [`Backoff`] with its default jitter
    /// (delays drawn from [50%, 100%], so racing writers do not retry in lock step).
    pub fn backoff(&self) -> Backoff {
        Backoff::exponential(self.base_delay, self.max_delay)
    }
}

/// Why [`Repository::execute`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecuteError<E: std::error::Error + 'static> {
    /// The aggregate refused the command; nothing was written.
    #[error("command rejected: {0}")]
    Rejected(#[source] E),
    /// Every attempt met a version conflict; nothing was written by the last attempt.
    #[error("gave up after {attempts} attempts on version conflicts: {source}")]
    Conflict {
        /// Attempts made.
        attempts: u32,
        /// The last conflict.
        #[source]
        source: EsError,
    },
    /// Loading or saving failed.
    #[error(transparent)]
    Es(#[from] EsError),
}

/// Computes the jobs a save enqueues with its events (see [`Repository::with_jobs`]).
type JobsFor<E> = Arc<dyn Fn(&str, &[E]) -> Vec<NewJob> + Send + Sync>;

/// The jobs of [`Repository::with_jobs`] and the clock their times are read from.
struct SaveJobs<E> {
    jobs_for: JobsFor<E>,
    clock: Arc<dyn Clock>,
}

impl<E> Clone for SaveJobs<E> {
    fn clone(&self) -> Self {
        SaveJobs {
            jobs_for: Arc::clone(&self.jobs_for),
            clock: Arc::clone(&self.clock),
        }
    }
}

type StateToJson<A> = fn(&A) -> serde_json::Result<String>;
type StateFromJson<A> = fn(&str) -> serde_json::Result<A>;

struct Snapshots<A> {
    store: Arc<dyn SnapshotStore>,
    policy: SnapshotPolicy,
    to_json: StateToJson<A>,
    from_json: StateFromJson<A>,
}

impl<A> Clone for Snapshots<A> {
    fn clone(&self) -> Self {
        Snapshots {
            store: self.store.clone(),
            policy: self.policy,
            to_json: self.to_json,
            from_json: self.from_json,
        }
    }
}

/// Loads and saves aggregates of type `A` on any [`EventStore`].
pub struct Repository<A: Aggregate> {
    store: Arc<dyn EventStore>,
    codec: Codec<A::Event>,
    snapshots: Option<Snapshots<A>>,
    retry: RetryPolicy,
    batch_size: usize,
    idempotent: bool,
    jobs: Option<SaveJobs<A::Event>>,
}

impl<A: Aggregate> Clone for Repository<A> {
    fn clone(&self) -> Self {
        Repository {
            store: self.store.clone(),
            codec: self.codec.clone(),
            snapshots: self.snapshots.clone(),
            retry: self.retry,
            batch_size: self.batch_size,
            idempotent: self.idempotent,
            jobs: self.jobs.clone(),
        }
    }
}

impl<A: Aggregate> std::fmt::Debug for Repository<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("category", &A::CATEGORY)
            .field("snapshots", &self.snapshots.as_ref().map(|s| s.policy))
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl<A: Aggregate> Repository<A> {
    /// A repository without snapshots, with the default [`RetryPolicy`].
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        Repository {
            store,
            codec: Codec::default(),
            snapshots: None,
            retry: RetryPolicy::default(),
            batch_size: 1024,
            idempotent: false,
            jobs: None,
        }
    }

    /// Enqueues the jobs `jobs_for(id, new_events)` computes with every save that writes events, in the
    /// append's transaction (see [`EventStore::append_with_jobs`]): a receipt job commits with `OrderPaid` or
    /// not at all, and a save refused for a version conflict (retried by [`Repository::execute`]) leaves no
    /// job behind. The jobs' enqueue and run times are read from the system clock; see
    /// [`Repository::with_jobs_clock`]. The store must host a job queue (memory, SQLite and PostgreSQL do);
    /// otherwise saves fail with [`herald_core::Error::Unsupported`] and write nothing.
    pub fn with_jobs(
        mut self,
        jobs_for: impl Fn(&str, &[A::Event]) -> Vec<NewJob> + Send + Sync + 'static,
    ) -> Self {
        let clock = self
            .jobs
            .take()
            .map_or_else(|| Arc::new(SystemClock) as Arc<dyn Clock>, |j| j.clock);
        self.jobs = Some(SaveJobs {
            jobs_for: Arc::new(jobs_for),
            clock,
        });
        self
    }

    /// The clock [`Repository::with_jobs`] reads (the job queue's, e.g. a test's
    /// [`ManualClock`](herald_core::ManualClock)). Call after `with_jobs`.
    pub fn with_jobs_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        if let Some(jobs) = self.jobs.as_mut() {
            jobs.clock = clock;
        }
        self
    }

    /// Makes commands idempotent by command id: the events a command causes get ids derived from
    /// [`CommandMetadata::command_id`] ([`CommandMetadata::event_id`]), and [`Repository::execute`] first
    /// looks the first of them up. A command delivered again (a client retrying after a timeout, an
    /// at-least-once queue) then returns the aggregate's state with [`Saved::duplicate`] set instead of
    /// deciding again; two concurrent deliveries are settled by the store (same ids, same place: the second
    /// append is the store's idempotent retry). Costs one lookup by id per command. Callers must use a fresh
    /// command id per distinct command.
    pub fn idempotent(mut self, on: bool) -> Self {
        self.idempotent = on;
        self
    }

    /// Uses these upcasters when reading events.
    pub fn with_upcasters(mut self, upcasters: Upcasters) -> Self {
        self.codec = Codec::new(upcasters);
        self
    }

    /// Sets the retry policy of [`Repository::execute`].
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Takes snapshots by `policy` into `store`, and loads from them.
    pub fn with_snapshots(mut self, store: Arc<dyn SnapshotStore>, policy: SnapshotPolicy) -> Self
    where
        A: Serialize + DeserializeOwned,
    {
        self.snapshots = Some(Snapshots {
            store,
            policy,
            to_json: serde_json::to_string::<A>,
            from_json: |s| serde_json::from_str::<A>(s),
        });
        self
    }

    /// The codec (for decoding this aggregate's events elsewhere).
    pub fn codec(&self) -> &Codec<A::Event> {
        &self.codec
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    /// Loads the aggregate `id` (a default state at no version when its stream does not exist).
    pub async fn load(&self, id: &str) -> Result<Loaded<A>> {
        let stream = A::stream_name(id)?;
        if let Some(loaded) = self.load_from_snapshot(id, &stream).await? {
            return Ok(loaded);
        }
        let mut loaded = Loaded {
            id: id.to_owned(),
            stream: stream.clone(),
            state: A::default(),
            version: None,
            snapshot_version: None,
            replayed: 0,
            last_event_id: None,
        };
        let query = ReadQuery::stream(stream).batch_size(self.batch_size);
        let mut events = self.store.read(query);
        while let Some(event) = events.try_next().await? {
            self.apply_recorded(&mut loaded, &event)?;
        }
        Ok(loaded)
    }

    fn apply_recorded(&self, loaded: &mut Loaded<A>, event: &RecordedEvent) -> Result<()> {
        let typed = self.codec.decode_event(event)?;
        loaded.state.apply(&typed);
        loaded.version = Some(event.version);
        loaded.last_event_id = Some(event.id);
        loaded.replayed += 1;
        Ok(())
    }

    /// The snapshot path; `None` means "do a full replay".
    async fn load_from_snapshot(&self, id: &str, stream: &StreamName) -> Result<Option<Loaded<A>>> {
        let Some(snapshots) = &self.snapshots else {
            return Ok(None);
        };
        let snapshot = match snapshots.store.load(stream.as_str()).await {
            Ok(Some(s)) => s,
            Ok(None) => return Ok(None),
            Err(e) => {
                tracing::warn!(stream = %stream, error = %e, "snapshot load failed; replaying the whole stream");
                return Ok(None);
            }
        };
        if snapshot.schema_version != A::SNAPSHOT_VERSION {
            tracing::info!(stream = %stream, stored = snapshot.schema_version, current = A::SNAPSHOT_VERSION,
                "snapshot has another schema version; replaying the whole stream");
            return Ok(None);
        }
        let state = match (snapshots.from_json)(&snapshot.state) {
            Ok(state) => state,
            Err(e) => {
                tracing::warn!(stream = %stream, error = %e, "snapshot does not deserialize; replaying the whole stream");
                return Ok(None);
            }
        };
        let mut loaded = Loaded {
            id: id.to_owned(),
            stream: stream.clone(),
            state,
            version: Some(snapshot.version),
            snapshot_version: Some(snapshot.version),
            replayed: 0,
            last_event_id: Some(snapshot.event_id),
        };
        // Read from the snapshot's own version: the event there must still be the one the snapshot covers.
        let query = ReadQuery::stream(stream.clone())
            .from(snapshot.version)
            .batch_size(self.batch_size);
        let mut events = self.store.read(query);
        match events.try_next().await? {
            Some(first) if first.version == snapshot.version && first.id == snapshot.event_id => {}
            _ => {
                tracing::warn!(stream = %stream, version = snapshot.version,
                    "snapshot does not match the stream (deleted or rewritten); replaying the whole stream");
                return Ok(None);
            }
        }
        while let Some(event) = events.try_next().await? {
            self.apply_recorded(&mut loaded, &event)?;
        }
        Ok(Some(loaded))
    }

    /// Appends `events` decided on `loaded` with `Exact(loaded.version)` (or `NoStream`), and snapshots when
    /// the policy says so. A conflict is `EsError::Store(WrongExpectedVersion)` (see [`EsError::is_conflict`]).
    pub async fn save(
        &self,
        loaded: &Loaded<A>,
        events: Vec<A::Event>,
        metadata: &CommandMetadata,
    ) -> Result<Saved<A>> {
        if events.is_empty() {
            return Ok(Saved {
                state: loaded.state.clone(),
                version: loaded.version,
                append: None,
                attempts: 1,
                duplicate: false,
            });
        }
        let new_events = events
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let event = self.codec.encode(e, metadata)?;
                Ok(if self.idempotent {
                    event.with_id(metadata.event_id(i))
                } else {
                    event
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let jobs = match &self.jobs {
            Some(jobs) => {
                let new_jobs = (jobs.jobs_for)(&loaded.id, &events);
                for job in &new_jobs {
                    job.validate()?;
                }
                Some((new_jobs, jobs.clock.now_micros()))
            }
            None => None,
        };
        let result = match jobs {
            Some((jobs, now)) if !jobs.is_empty() => {
                self.store
                    .append_with_jobs(
                        &loaded.stream,
                        new_events,
                        loaded.expected_version(),
                        jobs,
                        now,
                    )
                    .await?
            }
            _ => {
                self.store
                    .append(&loaded.stream, new_events, loaded.expected_version())
                    .await?
            }
        };
        let expected_first = loaded.version.map_or(0, |v| v + 1);
        if result.first_version != expected_first {
            // The store recognised a repeat of an append already committed (same ids): another delivery of
            // this command won. Report the aggregate as it is.
            let current = self.load(&loaded.id).await?;
            return Ok(Saved {
                state: current.state,
                version: current.version,
                append: Some(result),
                attempts: 1,
                duplicate: true,
            });
        }
        let mut state = loaded.state.clone();
        for event in &events {
            state.apply(event);
        }
        if let Some(snapshots) = &self.snapshots
            && snapshots
                .policy
                .should_snapshot(loaded.version, result.last_version)
        {
            self.write_snapshot(snapshots, &loaded.stream, &state, &result)
                .await;
        }
        Ok(Saved {
            state,
            version: Some(result.last_version),
            append: Some(result),
            attempts: 1,
            duplicate: false,
        })
    }

    /// Writes a snapshot of `loaded` now (whatever the policy), e.g. after importing a long stream. Returns
    /// `false` when snapshots are not configured or the aggregate has no events; store errors are returned.
    pub async fn snapshot(&self, loaded: &Loaded<A>) -> Result<bool> {
        let (Some(snapshots), Some(version), Some(event_id)) =
            (&self.snapshots, loaded.version, loaded.last_event_id)
        else {
            return Ok(false);
        };
        let state = (snapshots.to_json)(&loaded.state).map_err(|e| EsError::Encode {
            what: "snapshot state",
            message: e.to_string(),
        })?;
        snapshots
            .store
            .save(&Snapshot {
                stream: loaded.stream.to_string(),
                version,
                event_id,
                schema_version: A::SNAPSHOT_VERSION,
                state,
            })
            .await?;
        Ok(true)
    }

    /// Snapshot failures never fail a save: the events are committed, the next load replays a little more.
    async fn write_snapshot(
        &self,
        snapshots: &Snapshots<A>,
        stream: &StreamName,
        state: &A,
        result: &AppendResult,
    ) {
        let Some(&event_id) = result.ids.last() else {
            return;
        };
        let json = match (snapshots.to_json)(state) {
            Ok(json) => json,
            Err(e) => {
                tracing::warn!(stream = %stream, error = %e, "snapshot state does not serialize; skipped");
                return;
            }
        };
        let snapshot = Snapshot {
            stream: stream.to_string(),
            version: result.last_version,
            event_id,
            schema_version: A::SNAPSHOT_VERSION,
            state: json,
        };
        if let Err(e) = snapshots.store.save(&snapshot).await {
            tracing::warn!(stream = %stream, error = %e, "snapshot save failed; skipped");
        }
    }

    /// Load → decide → save, retried from a fresh load on a version conflict per the [`RetryPolicy`].
    pub async fn execute(
        &self,
        id: &str,
        command: &A::Command,
        metadata: &CommandMetadata,
    ) -> std::result::Result<Saved<A>, ExecuteError<A::Error>> {
        let max = self.retry.max_attempts.max(1);
        if self.idempotent
            && let Some(done) = self
                .store
                .event(metadata.event_id(0))
                .await
                .map_err(EsError::from)?
        {
            let loaded = self.load(id).await?;
            if done.stream != loaded.stream.as_str() {
                return Err(ExecuteError::Es(EsError::InvalidInput(format!(
                    "command {} was already executed on stream `{}`, not `{}`: use a fresh command id",
                    metadata.command_id, done.stream, loaded.stream
                ))));
            }
            return Ok(Saved {
                state: loaded.state,
                version: loaded.version,
                append: None,
                attempts: 0,
                duplicate: true,
            });
        }
        let mut attempt = 1;
        loop {
            let loaded = self.load(id).await?;
            let events = loaded
                .state
                .decide(command)
                .map_err(ExecuteError::Rejected)?;
            match self.save(&loaded, events, metadata).await {
                Ok(mut saved) => {
                    saved.attempts = attempt;
                    return Ok(saved);
                }
                Err(e) if e.is_conflict() => {
                    if attempt >= max {
                        return Err(ExecuteError::Conflict {
                            attempts: attempt,
                            source: e,
                        });
                    }
                    tracing::debug!(
                        aggregate = A::CATEGORY,
                        id,
                        attempt,
                        "version conflict; retrying"
                    );
                    let delay = self.retry.backoff().delay(attempt);
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    attempt += 1;
                }
                Err(e) => return Err(ExecuteError::Es(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_policy_is_core_backoff() {
        const MS: Duration = Duration::from_millis(1);
        let exact = RetryPolicy::default().backoff().jitter(0.0);
        let delays: Vec<_> = (1..=9).map(|n| exact.delay(n)).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 100, 100].map(|ms| ms * MS));
        let jittered = RetryPolicy::default().backoff();
        assert_eq!(jittered.delay_at(2, 1.0), MS, "jitter down to half");
        assert_eq!(RetryPolicy::immediate(3).backoff().delay(2), Duration::ZERO);
    }
}
