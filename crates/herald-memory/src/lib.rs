//! An in-memory [`EventStore`] for tests, demos and the `memory://` URL.
//!
//! It implements the semantics documented in [`herald_core`] exactly and passes the whole conformance suite
//! (`herald-store-testkit`). All state sits behind one [`std::sync::Mutex`], held only for the few
//! microseconds an operation needs and never across an `.await`; appends are therefore serialised, which
//! makes expected-version checks, position assignment and `recorded_at` trivially consistent. Nothing is
//! durable: dropping the last handle drops the events.
//!
//! | capability | supported |
//! | --- | --- |
//! | atomic append, expected versions, idempotent retry | yes |
//! | links, categories, every read option | yes |
//! | delete, streams listing | yes |
//! | live feed ([`EventStore::watch_head`]) | yes, for commits through this handle and its clones |
//! | durability, other processes | no |
//! | job queue ([`InMemoryJobQueue`]) | yes, one process, not durable; wake-ups at once on enqueue |
//! | jobs in an append's transaction ([`EventStore::append_with_jobs`], a [`JobRouter`]) | yes, into [`InMemoryStore::job_queue`] |
//!
//! The job queue port is here too: [`InMemoryJobQueue`], standalone ([`InMemoryJobQueue::new`]) or sharing
//! the store's jobs ([`InMemoryStore::job_queue`]), so that an append and its jobs commit together. A store
//! built with [`InMemoryStore::with_job_router`] enqueues the router's jobs with every append that writes
//! events.
//!
//! ```
//! use herald_core::{EventStore, EventStoreExt, ExpectedVersion, NewEvent, ReadQuery, StreamName};
//! use herald_memory::InMemoryStore;
//! # tokio_test_block_on(async {
//! let store = InMemoryStore::new();
//! let stream = StreamName::new("order-1")?;
//! let written = store
//!     .append(&stream, vec![NewEvent::new("OrderPlaced")], ExpectedVersion::NoStream)
//!     .await?;
//! assert_eq!((written.first_version, written.first_position), (0, 1));
//! let events = store.read_to_vec(ReadQuery::stream(stream)).await?;
//! assert_eq!(events[0].event_type, "OrderPlaced");
//! # Ok::<(), herald_core::Error>(())
//! # }).unwrap();
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
//! # }
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use herald_core::jobs::{JobRouter, JobsConfig, NewJob};
use herald_core::rules::{self, AppendDecision, DeleteDecision, IdFact, LinkTarget, StoredEvent};
use herald_core::time::OffsetDateTime;
use herald_core::uuid::Uuid;
use herald_core::{
    AppendResult, Direction, Error, EventStore, ExpectedVersion, Head, Limits, LinkResult,
    NewEvent, Origin, ReadQuery, ReadScope, RecordedEvent, Result, StreamInfo, StreamName,
    stream::category_of, timefmt,
};
use tokio::sync::watch;

mod jobs;
mod routes;

pub use jobs::InMemoryJobQueue;

/// An event store kept in memory. Cheap to clone: clones share the same events and the same live feed.
#[derive(Clone)]
pub struct InMemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    limits: Limits,
    state: Mutex<State>,
    head: watch::Sender<Head>,
    /// The job queue in this store's "database": appends write jobs into it under the state lock.
    jobs: Arc<jobs::SharedJobs>,
    /// Computes jobs from every append's events.
    router: Option<Arc<dyn JobRouter>>,
}

/// An event as appended; `position` is its index in `State::log` plus one.
struct Stored {
    id: Uuid,
    event_type: String,
    stream: String,
    version: u64,
    data: String,
    metadata: String,
    recorded_at: OffsetDateTime,
}

/// One entry of a stream: the event's global position, and whether it is a link to an event appended
/// elsewhere. The entry's version is its index in the stream's entry list.
#[derive(Clone, Copy)]
struct Entry {
    position: u64,
    link: bool,
}

#[derive(Default)]
struct State {
    /// The global log, in position order (position = index + 1).
    log: Vec<Stored>,
    by_id: HashMap<Uuid, u64>,
    /// Existing streams only: a deleted stream is removed, so its version resets.
    streams: BTreeMap<String, Vec<Entry>>,
    /// Every event id a stream holds (own or linked), to reject duplicate links in O(1).
    members: HashMap<String, HashSet<Uuid>>,
    commits: u64,
    last_recorded_at: Option<OffsetDateTime>,
}

impl Default for InMemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for InMemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryStore")
            .field("limits", &self.inner.limits)
            .field("head", &*self.inner.head.borrow())
            .finish()
    }
}

impl InMemoryStore {
    /// An empty store with the default [`Limits`].
    pub fn new() -> Self {
        Self::with_limits(Limits::default())
    }

    /// An empty store enforcing `limits`.
    pub fn with_limits(limits: Limits) -> Self {
        Self::open(limits, None)
    }

    /// An empty store (default [`Limits`]) that enqueues `router`'s jobs with every append that writes
    /// events, atomically with them, into the queue of [`InMemoryStore::job_queue`].
    pub fn with_job_router(router: Arc<dyn JobRouter>) -> Self {
        Self::open(Limits::default(), Some(router))
    }

    fn open(limits: Limits, router: Option<Arc<dyn JobRouter>>) -> Self {
        let (head, _) = watch::channel(Head::default());
        InMemoryStore {
            inner: Arc::new(Inner {
                limits,
                state: Mutex::new(State::default()),
                head,
                jobs: Arc::default(),
                router,
            }),
        }
    }

    /// A job queue handle on this store's jobs, opened with `config`: jobs enqueued by
    /// [`EventStore::append_with_jobs`] and by the store's router show in it. Every handle shares the same
    /// jobs (like processes on one database); each reads its own clock and lease.
    pub fn job_queue(&self, config: JobsConfig) -> InMemoryJobQueue {
        InMemoryJobQueue::on(Arc::clone(&self.inner.jobs), config)
    }

    /// The limits this store enforces.
    pub fn limits(&self) -> Limits {
        self.inner.limits
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-applied write (every write validates first,
        // then mutates without failing), so a poisoned lock is safe to keep using.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Publishes the head after a commit; called with the state lock held so heads are published in order.
    fn publish(&self, state: &mut State) {
        state.commits += 1;
        let head = Head {
            position: state.log.len() as u64,
            commits: state.commits,
        };
        self.inner.head.send_replace(head);
    }
}

impl State {
    fn version(&self, stream: &str) -> Option<u64> {
        self.streams
            .get(stream)
            .and_then(|entries| entries.len().checked_sub(1))
            .map(|v| v as u64)
    }

    fn stored(&self, position: u64) -> &Stored {
        &self.log[(position - 1) as usize]
    }

    /// The commit time: now, but never before the previous commit, so time order follows position order.
    fn commit_time(&mut self) -> OffsetDateTime {
        let now = timefmt::now_micros();
        let t = match self.last_recorded_at {
            Some(last) if last > now => last,
            _ => now,
        };
        self.last_recorded_at = Some(t);
        t
    }

    /// What the write rules need to know about `id`: where the event sits, and whether its stream still
    /// holds it there as its own entry.
    fn id_fact(&self, id: Uuid) -> IdFact<'_> {
        let Some(&position) = self.by_id.get(&id) else {
            return IdFact::Free;
        };
        let stored = self.stored(position);
        let in_stream = self
            .streams
            .get(&stored.stream)
            .and_then(|entries| entries.get(stored.version as usize))
            .is_some_and(|entry| !entry.link && entry.position == position);
        IdFact::Stored(StoredEvent {
            stream: &stored.stream,
            version: stored.version,
            position,
            in_stream,
        })
    }

    /// What the write rules need to know about linking `id` into `stream`.
    fn link_target(&self, stream: &str, id: Uuid) -> LinkTarget<u64> {
        match self.by_id.get(&id) {
            None => LinkTarget::Missing,
            Some(_) if self.members.get(stream).is_some_and(|m| m.contains(&id)) => {
                LinkTarget::InStream
            }
            Some(&position) => LinkTarget::Linkable(position),
        }
    }

    fn record(&self, entry_stream: &str, version: u64, entry: Entry) -> RecordedEvent {
        let stored = self.stored(entry.position);
        RecordedEvent {
            id: stored.id,
            event_type: stored.event_type.clone(),
            stream: entry_stream.to_owned(),
            version,
            position: entry.position,
            data: stored.data.clone(),
            metadata: stored.metadata.clone(),
            recorded_at: stored.recorded_at,
            origin: entry.link.then(|| Origin {
                stream: stored.stream.clone(),
                version: stored.version,
            }),
        }
    }

    fn as_appended(&self, position: u64) -> RecordedEvent {
        let stored = self.stored(position);
        self.record(
            &stored.stream,
            stored.version,
            Entry {
                position,
                link: false,
            },
        )
    }
}

/// Does the event pass the query's type and time filters?
fn matches(query: &ReadQuery, stored: &Stored) -> bool {
    (query.types.is_empty() || query.types.contains(&stored.event_type))
        && query.recorded_after.is_none_or(|t| stored.recorded_at > t)
        && query.recorded_before.is_none_or(|t| stored.recorded_at < t)
}

/// Indexes `0..len` in read order, starting at `from` (inclusive) as documented on [`ReadQuery`].
fn indexes(len: u64, from: Option<u64>, direction: Direction) -> Box<dyn Iterator<Item = u64>> {
    match direction {
        Direction::Forward => Box::new(from.unwrap_or(0).min(len)..len),
        Direction::Backward => {
            let end = match from {
                Some(from) => from.saturating_add(1).min(len),
                None => len,
            };
            Box::new((0..end).rev())
        }
    }
}

#[async_trait]
impl EventStore for InMemoryStore {
    #[tracing::instrument(name = "herald.store.append", level = "debug", skip_all, fields(stream = %stream, events = events.len()))]
    async fn append(
        &self,
        stream: &StreamName,
        events: Vec<NewEvent>,
        expected: ExpectedVersion,
    ) -> Result<AppendResult> {
        self.append_with_jobs(stream, events, expected, Vec::new(), 0)
            .await
    }

    /// The append is decided under the state lock; the jobs (`jobs` and the router's) are checked before
    /// anything is written and inserted before the lock is released, so no reader sees the events without
    /// the jobs or the jobs without the events. A refused append or an idempotent retry enqueues nothing.
    #[tracing::instrument(name = "herald.store.append", level = "debug", skip_all, fields(stream = %stream, events = events.len(), jobs = jobs.len()))]
    async fn append_with_jobs(
        &self,
        stream: &StreamName,
        events: Vec<NewEvent>,
        expected: ExpectedVersion,
        jobs: Vec<NewJob>,
        now_micros: i64,
    ) -> Result<AppendResult> {
        self.inner
            .limits
            .validate_append(stream, &events, expected)?;
        let name = stream.as_str();
        let mut state = self.lock();
        let current = state.version(name);
        let first_version =
            match rules::decide_append(name, expected, current, &events, |id| state.id_fact(id))? {
                AppendDecision::Write(versions) => versions.first,
                AppendDecision::Retry(original) => return Ok(original),
                // Every id was looked up: the rules cannot ask for more.
                AppendDecision::LookUpIds => {
                    return Err(Error::backend(
                        "internal: the write rules asked for ids already looked up",
                    ));
                }
            };
        let first_position = state.log.len() as u64 + 1;
        let jobs = self.inner.jobs.prepare_append(
            self.inner.router.as_deref(),
            (name, &events, first_version, first_position),
            jobs,
            now_micros,
        )?;
        let recorded_at = state.commit_time();
        let state = &mut *state;
        let entries = state.streams.entry(name.to_owned()).or_default();
        let members = state.members.entry(name.to_owned()).or_default();
        let mut ids = Vec::with_capacity(events.len());
        for (i, event) in events.into_iter().enumerate() {
            let position = first_position + i as u64;
            entries.push(Entry {
                position,
                link: false,
            });
            members.insert(event.id);
            state.by_id.insert(event.id, position);
            ids.push(event.id);
            state.log.push(Stored {
                id: event.id,
                event_type: event.event_type,
                stream: name.to_owned(),
                version: first_version + i as u64,
                data: event.data,
                metadata: event.metadata,
                recorded_at,
            });
        }
        let count = ids.len() as u64;
        if let Some(jobs) = jobs {
            jobs.commit();
        }
        self.publish(state);
        Ok(AppendResult {
            stream: name.to_owned(),
            first_version,
            last_version: first_version + count - 1,
            first_position,
            last_position: first_position + count - 1,
            ids,
        })
    }

    #[tracing::instrument(name = "herald.store.link", level = "debug", skip_all, fields(stream = %stream, events = ids.len()))]
    async fn link(
        &self,
        stream: &StreamName,
        ids: &[Uuid],
        expected: ExpectedVersion,
    ) -> Result<LinkResult> {
        self.inner.limits.validate_link(stream, ids, expected)?;
        let name = stream.as_str();
        let mut state = self.lock();
        let (versions, positions) =
            rules::decide_link(name, expected, state.version(name), ids, |id| {
                state.link_target(name, id)
            })?;
        let state = &mut *state;
        let entries = state.streams.entry(name.to_owned()).or_default();
        let members = state.members.entry(name.to_owned()).or_default();
        for (id, position) in ids.iter().zip(positions) {
            entries.push(Entry {
                position,
                link: true,
            });
            members.insert(*id);
        }
        self.publish(state);
        Ok(LinkResult {
            stream: name.to_owned(),
            first_version: versions.first,
            last_version: versions.last,
        })
    }

    #[tracing::instrument(name = "herald.store.read", level = "debug", skip_all, fields(scope = ?query.scope))]
    async fn read_page(&self, query: &ReadQuery) -> Result<Vec<RecordedEvent>> {
        query.validate()?;
        let page_size = query.page_size();
        let state = self.lock();
        let mut page = Vec::with_capacity(page_size.min(1024));
        match &query.scope {
            ReadScope::Stream(stream) => {
                let Some(entries) = state.streams.get(stream.as_str()) else {
                    return Ok(page);
                };
                for version in indexes(entries.len() as u64, query.from, query.direction) {
                    let entry = entries[version as usize];
                    if matches(query, state.stored(entry.position)) {
                        page.push(state.record(stream.as_str(), version, entry));
                        if page.len() == page_size {
                            break;
                        }
                    }
                }
            }
            ReadScope::All | ReadScope::Category(_) => {
                let category = match &query.scope {
                    ReadScope::Category(c) => Some(c.as_str()),
                    _ => None,
                };
                // Positions start at 1; `from` 0 reads from the start (forward) or nothing (backward).
                let from = match (query.direction, query.from) {
                    (_, None) => None,
                    (Direction::Forward, Some(p)) => Some(p.saturating_sub(1)),
                    (Direction::Backward, Some(0)) => return Ok(page),
                    (Direction::Backward, Some(p)) => Some(p - 1),
                };
                for index in indexes(state.log.len() as u64, from, query.direction) {
                    let stored = &state.log[index as usize];
                    if category.is_none_or(|c| category_of(&stored.stream) == c)
                        && matches(query, stored)
                    {
                        page.push(state.as_appended(index + 1));
                        if page.len() == page_size {
                            break;
                        }
                    }
                }
            }
        }
        Ok(page)
    }

    async fn event(&self, id: Uuid) -> Result<Option<RecordedEvent>> {
        let state = self.lock();
        Ok(state.by_id.get(&id).map(|&p| state.as_appended(p)))
    }

    async fn stream_version(&self, stream: &StreamName) -> Result<Option<u64>> {
        Ok(self.lock().version(stream.as_str()))
    }

    async fn streams(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StreamInfo>> {
        self.inner.limits.validate_streams(limit)?;
        let state = self.lock();
        let start = match after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        Ok(state
            .streams
            .range::<str, _>((start, Bound::Unbounded))
            .take_while(|(name, _)| name.starts_with(prefix))
            .take(limit)
            .map(|(name, entries)| StreamInfo {
                stream: name.clone(),
                version: entries.len() as u64 - 1,
            })
            .collect())
    }

    #[tracing::instrument(name = "herald.store.delete", level = "debug", skip_all, fields(stream = %stream))]
    async fn delete_stream(&self, stream: &StreamName, expected: ExpectedVersion) -> Result<()> {
        self.inner.limits.validate_delete(expected)?;
        let name = stream.as_str();
        let mut state = self.lock();
        match rules::decide_delete(name, expected, state.version(name))? {
            DeleteDecision::Remove => {
                state.streams.remove(name);
                state.members.remove(name);
                self.publish(&mut state);
            }
            DeleteDecision::Nothing => {}
        }
        Ok(())
    }

    fn watch_head(&self) -> watch::Receiver<Head> {
        self.inner.head.subscribe()
    }
}
