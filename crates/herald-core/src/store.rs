//! The event store port.
//!
//! [`EventStore`] is dyn-compatible (`Arc<dyn EventStore>`) because the CLI and server pick the backend from a
//! URL at run time. It holds the operations a backend must implement; conveniences built on them (streaming
//! reads in batches, following the log live) live on [`EventStoreExt`], implemented once for every store.

use std::collections::VecDeque;
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use serde::Serialize;
use tokio::sync::watch;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::event::{NewEvent, RecordedEvent};
use crate::jobs::NewJob;
use crate::query::{Direction, ReadQuery, ReadScope};
use crate::stream::StreamName;
use crate::version::ExpectedVersion;

/// How often an idle [`EventStoreExt::follow`] re-reads when no commit notification arrives.
pub const FOLLOW_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// How [`EventStoreExt::follow_with`] rides out a backend that is [unavailable](Error::Unavailable) (a server
/// restarting, a lost connection): it waits as `reconnect` says, logs each attempt (`warn`), and reads again
/// from the position after the last event it yielded, so nothing is skipped or repeated across the outage.
///
/// ```
/// use herald_core::{Backoff, FollowOptions};
/// // The default: the house reconnect schedule, never give up.
/// assert_eq!(FollowOptions::default().give_up_after, None);
/// // Give up (the stream yields the error and ends) after 10 failed attempts in a row.
/// let options = FollowOptions::default().give_up_after(10).reconnect(Backoff::reconnect());
/// # let _ = options;
/// ```
#[derive(Debug, Clone)]
pub struct FollowOptions {
    /// The wait after each failed attempt: [`Backoff::reconnect`](crate::Backoff::reconnect) unless changed.
    pub reconnect: crate::Backoff,
    /// After this many failed attempts in a row the follower yields the error and ends; `None` (the default)
    /// keeps trying for as long as the stream is polled. Errors that are not transient (invalid input, a
    /// closed store, a backend error) end the follow at once whatever this says.
    pub give_up_after: Option<u32>,
}

impl Default for FollowOptions {
    fn default() -> Self {
        FollowOptions {
            reconnect: crate::Backoff::reconnect(),
            give_up_after: None,
        }
    }
}

impl FollowOptions {
    /// Waits as `backoff` says between attempts.
    pub fn reconnect(mut self, backoff: crate::Backoff) -> Self {
        self.reconnect = backoff;
        self
    }

    /// Gives up after `attempts` failed attempts in a row (0: at the first failure).
    pub fn give_up_after(mut self, attempts: u32) -> Self {
        self.give_up_after = Some(attempts);
        self
    }
}

/// What an append wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppendResult {
    /// The stream appended to.
    pub stream: String,
    /// Version of the first event written.
    pub first_version: u64,
    /// Version of the last event written (the stream's version after the append).
    pub last_version: u64,
    /// Global position of the first event written.
    pub first_position: u64,
    /// Global position of the last event written.
    pub last_position: u64,
    /// The ids, in order.
    pub ids: Vec<Uuid>,
}

/// What a link wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LinkResult {
    /// The stream linked into.
    pub stream: String,
    /// Version of the first link entry.
    pub first_version: u64,
    /// Version of the last link entry.
    pub last_version: u64,
}

/// A stream and its current version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StreamInfo {
    /// The stream name.
    pub stream: String,
    /// Version of its last entry.
    pub version: u64,
}

/// The store's commit head, published after every commit. Followers wait for it to change, then read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Head {
    /// Global position of the last committed event (0: empty store).
    pub position: u64,
    /// Number of write commits (appends, links, deletes) seen by this store handle; grows on every change.
    pub commits: u64,
}

/// The storage port. Every method validates its input and returns [`Error::InvalidInput`] without touching
/// stored data when it is bad.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends `events` to `stream` atomically: all are written or none. `expected` is checked in the same
    /// transaction. Repeating an already committed append exactly (same ids, same order, same stream) returns
    /// the original result and writes nothing; any other reuse of an existing id is
    /// [`Error::DuplicateEvent`].
    async fn append(
        &self,
        stream: &StreamName,
        events: Vec<NewEvent>,
        expected: ExpectedVersion,
    ) -> Result<AppendResult>;

    /// Links already stored events into `stream` (stored once, read from both). Linking an event into a
    /// stream that already holds it is [`Error::DuplicateEvent`]; an unknown id is [`Error::EventNotFound`].
    async fn link(
        &self,
        stream: &StreamName,
        ids: &[Uuid],
        expected: ExpectedVersion,
    ) -> Result<LinkResult>;

    /// One page of a read: at most [`ReadQuery::page_size`] events matching the query, starting at
    /// `query.from`. Use [`EventStoreExt::read`] for a whole result as a stream.
    async fn read_page(&self, query: &ReadQuery) -> Result<Vec<RecordedEvent>>;

    /// The event with this id, as appended (its own stream and version), or `None`.
    async fn event(&self, id: Uuid) -> Result<Option<RecordedEvent>>;

    /// The stream's version (its last entry's), or `None` when it does not exist.
    async fn stream_version(&self, stream: &StreamName) -> Result<Option<u64>>;

    /// Streams whose name starts with `prefix`, in name order, after `after` (exclusive) when given.
    async fn streams(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StreamInfo>>;

    /// Deletes a stream: its entries (own events and links) leave stream reads and its version is reset, so it
    /// can be written again from version 0. Events appended to it stay in the global log, by id and through
    /// links from other streams: the global log is never rewritten. Deleting a stream that does not exist is
    /// a no-op (subject to `expected`).
    async fn delete_stream(&self, stream: &StreamName, expected: ExpectedVersion) -> Result<()>;

    /// A receiver of the commit head: it changes after every commit made through this store handle (and, for
    /// backends that can see them, commits by other processes).
    fn watch_head(&self) -> watch::Receiver<Head>;

    /// [`EventStore::append`], enqueueing `jobs` in the same transaction: both commit or neither does. A
    /// refused append (version conflict, duplicate id) enqueues nothing and returns the append's own error;
    /// an idempotent retry of a committed append enqueues nothing again. `now_micros` is the job clock's
    /// reading for the jobs' enqueue and run times. The jobs go to the job queue in the store's database (see
    /// [`crate::jobs`]); callers validate them ([`NewJob::validate`]). A backend without job tables answers
    /// [`Error::Unsupported`] and writes nothing.
    async fn append_with_jobs(
        &self,
        stream: &StreamName,
        events: Vec<NewEvent>,
        expected: ExpectedVersion,
        jobs: Vec<NewJob>,
        now_micros: i64,
    ) -> Result<AppendResult> {
        let _ = (stream, events, expected, jobs, now_micros);
        Err(Error::Unsupported {
            operation: "enqueueing jobs in an append's transaction",
            backend: "event store",
        })
    }
}

#[async_trait]
impl<S: EventStore + ?Sized> EventStore for Arc<S> {
    async fn append(
        &self,
        stream: &StreamName,
        events: Vec<NewEvent>,
        expected: ExpectedVersion,
    ) -> Result<AppendResult> {
        (**self).append(stream, events, expected).await
    }
    async fn link(
        &self,
        stream: &StreamName,
        ids: &[Uuid],
        expected: ExpectedVersion,
    ) -> Result<LinkResult> {
        (**self).link(stream, ids, expected).await
    }
    async fn read_page(&self, query: &ReadQuery) -> Result<Vec<RecordedEvent>> {
        (**self).read_page(query).await
    }
    async fn event(&self, id: Uuid) -> Result<Option<RecordedEvent>> {
        (**self).event(id).await
    }
    async fn stream_version(&self, stream: &StreamName) -> Result<Option<u64>> {
        (**self).stream_version(stream).await
    }
    async fn streams(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StreamInfo>> {
        (**self).streams(prefix, after, limit).await
    }
    async fn delete_stream(&self, stream: &StreamName, expected: ExpectedVersion) -> Result<()> {
        (**self).delete_stream(stream, expected).await
    }
    fn watch_head(&self) -> watch::Receiver<Head> {
        (**self).watch_head()
    }
    async fn append_with_jobs(
        &self,
        stream: &StreamName,
        events: Vec<NewEvent>,
        expected: ExpectedVersion,
        jobs: Vec<NewJob>,
        now_micros: i64,
    ) -> Result<AppendResult> {
        (**self)
            .append_with_jobs(stream, events, expected, jobs, now_micros)
            .await
    }
}

/// Conveniences on every [`EventStore`].
pub trait EventStoreExt: EventStore {
    /// The whole result of `query` as a stream, fetched `query.batch_size` events at a time, so memory stays
    /// bounded whatever the result's size. The next page is requested while the current one is consumed (one
    /// page ahead at most).
    fn read(&self, query: ReadQuery) -> BoxStream<'_, Result<RecordedEvent>> {
        if let Err(e) = query.validate() {
            return stream::once(async { Err(e) }).boxed();
        }
        let state = Reader {
            pager: Pager { query, done: false },
            next: None,
        };
        stream::try_unfold(state, move |mut state| async move {
            if state.pager.done {
                return Ok(None);
            }
            let page = match state.next.take() {
                Some(NextPage::Fetching(fetch)) => fetch.await?,
                Some(NextPage::Fetched(page)) => page?,
                None => self.read_page(&state.pager.query).await?,
            };
            state.pager.advance(&page);
            if !state.pager.done {
                // Start reading the next page before the caller consumes this one, so the backend's read
                // (a blocking-pool thread, a server round trip) overlaps the caller's work. One page ahead at
                // most: memory stays bounded by two pages.
                let query = state.pager.query.clone();
                let mut fetch =
                    futures::FutureExt::boxed(async move { self.read_page(&query).await });
                state.next = Some(match futures::poll!(&mut fetch) {
                    std::task::Poll::Ready(page) => NextPage::Fetched(page),
                    std::task::Poll::Pending => NextPage::Fetching(fetch),
                });
            }
            Ok(Some((stream::iter(page.into_iter().map(Ok)), state)))
        })
        .try_flatten()
        .boxed()
    }

    /// Collects a read into memory: for tests and small results.
    fn read_to_vec(
        &self,
        query: ReadQuery,
    ) -> futures::future::BoxFuture<'_, Result<Vec<RecordedEvent>>> {
        futures::FutureExt::boxed(self.read(query).try_collect::<Vec<_>>())
    }

    /// Reads forward from `query.from`, then keeps following new commits: the stream never ends on its own
    /// (unless `query.limit` is reached). Nothing is skipped or repeated at the seam between history and live
    /// events, because the follower always re-reads from the position after the last event it yielded.
    ///
    /// The follower wakes on [`EventStore::watch_head`] (commits through this handle: microseconds) and, so
    /// that commits by other processes are seen on backends without cross-process notification, re-reads at
    /// least every [`FOLLOW_POLL_INTERVAL`] when idle. Drop the stream to stop.
    ///
    /// When the backend is [unavailable](Error::Unavailable) (a database server restarting) the follower
    /// reconnects with [`FollowOptions::default`]: the house backoff, for ever, each attempt logged at `warn`;
    /// [`follow_with`](Self::follow_with) changes that.
    fn follow(&self, query: ReadQuery) -> BoxStream<'_, Result<RecordedEvent>> {
        self.follow_with(query, FollowOptions::default())
    }

    /// [`follow`](Self::follow) with the reconnect behaviour `options` says.
    fn follow_with(
        &self,
        query: ReadQuery,
        options: FollowOptions,
    ) -> BoxStream<'_, Result<RecordedEvent>> {
        if let Err(e) = query.validate() {
            return stream::once(async { Err(e) }).boxed();
        }
        if query.direction == Direction::Backward {
            return stream::once(async {
                Err(Error::invalid("a follow reads forward; drop --backward"))
            })
            .boxed();
        }
        let state = Follower {
            pager: Pager { query, done: false },
            head: self.watch_head(),
            buffer: VecDeque::new(),
            failures: 0,
            options,
        };
        stream::try_unfold(state, move |mut state| {
            async move {
                loop {
                    if let Some(event) = state.buffer.pop_front() {
                        return Ok(Some((event, state)));
                    }
                    if state.pager.limit_reached() {
                        return Ok(None);
                    }
                    // Mark the head seen *before* reading, so a commit landing during the read still wakes us.
                    state.head.borrow_and_update();
                    let page = match self.read_page(&state.pager.query).await {
                        Ok(page) => page,
                        Err(e)
                            if e.is_transient()
                                && state
                                    .options
                                    .give_up_after
                                    .is_none_or(|most| state.failures < most) =>
                        {
                            state.failures += 1;
                            let delay = state.options.reconnect.delay(state.failures);
                            tracing::warn!(
                                error = %e,
                                attempt = state.failures,
                                retry_in_ms = delay.as_millis() as u64,
                                resume_from = ?state.pager.query.from,
                                "follow: the store is unavailable; reconnecting"
                            );
                            // A retry delay, not synchronisation: the backend gives no signal when it is back.
                            tokio::time::sleep(delay).await;
                            continue;
                        }
                        Err(e) => return Err(e),
                    };
                    if state.failures > 0 {
                        tracing::info!(
                            attempts = state.failures,
                            "follow: the store is available again"
                        );
                        state.failures = 0;
                    }
                    state.pager.advance(&page);
                    if page.is_empty() {
                        tokio::select! {
                            changed = state.head.changed() => {
                                if changed.is_err() {
                                    return Err(Error::Closed);
                                }
                            }
                            () = tokio::time::sleep(FOLLOW_POLL_INTERVAL) => {}
                        }
                    } else {
                        state.buffer.extend(page);
                    }
                }
            }
        })
        .boxed()
    }
}

impl<S: EventStore + ?Sized> EventStoreExt for S {}

/// Walks a query page by page: after each page, `from` moves past the last event and the limit shrinks.
struct Pager {
    query: ReadQuery,
    done: bool,
}

impl Pager {
    fn advance(&mut self, page: &[RecordedEvent]) {
        let requested = self.query.page_size();
        if let Some(limit) = self.query.limit.as_mut() {
            *limit -= page.len() as u64;
        }
        let Some(last) = page.last() else {
            self.done = true;
            return;
        };
        let cursor = match self.query.scope {
            ReadScope::Stream(_) => last.version,
            ReadScope::All | ReadScope::Category(_) => last.position,
        };
        match self.query.direction {
            Direction::Forward => self.query.from = Some(cursor + 1),
            Direction::Backward => match cursor.checked_sub(1) {
                Some(previous) => self.query.from = Some(previous),
                None => self.done = true,
            },
        }
        if page.len() < requested || self.limit_reached() {
            self.done = true;
        }
    }

    fn limit_reached(&self) -> bool {
        self.query.limit == Some(0)
    }
}

/// State of [`EventStoreExt::read`]: where the next page starts, and that page when already requested.
struct Reader<'a> {
    pager: Pager,
    next: Option<NextPage<'a>>,
}

/// The page after the one being yielded: still being read, or already read.
enum NextPage<'a> {
    Fetching(futures::future::BoxFuture<'a, Result<Vec<RecordedEvent>>>),
    Fetched(Result<Vec<RecordedEvent>>),
}

struct Follower {
    pager: Pager,
    head: watch::Receiver<Head>,
    buffer: VecDeque<RecordedEvent>,
    /// Failed attempts in a row while the backend is unavailable.
    failures: u32,
    /// How to ride out an unavailable backend (moved along with the state: no copy per event).
    options: FollowOptions,
}
