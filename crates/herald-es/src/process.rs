//! Process managers: state built from correlated events, reactions as commands.
//!
//! A [`ProcessManager`] follows a workflow across aggregates. Its instance for one workflow is keyed by the
//! events' correlation id (an event without one starts its own workflow, keyed by its id). The instance's
//! state is the fold of the events it has handled, which the [`ProcessRunner`] keeps durably by **linking**
//! each handled event into the process stream `{NAME}-{correlation id}` (events are stored once; the stream is
//! the instance's history). On each new event the runner rebuilds the state from that stream, applies the
//! event, dispatches the commands [`ProcessManager::react`] returns through the [`CommandBus`] (metadata:
//! same correlation, causation = the event), then links the event.
//!
//! Run it as the handler of a [`crate::Subscription`]. Delivery is at least once: an event already in the
//! process stream is skipped (redelivery after the link), but a crash between dispatch and link dispatches
//! its commands again, so commands should be idempotent (for example, their handler expects a version).

use std::sync::Arc;

use async_trait::async_trait;
use herald_core::{
    EventStore, EventStoreExt, ExpectedVersion, ReadQuery, RecordedEvent, StreamName,
};

use crate::command::{Command, CommandBus};
use crate::metadata::CommandMetadata;
use crate::subscription::{BoxError, EventHandler};

/// A workflow reacting to events with commands.
pub trait ProcessManager: Send + Sync + 'static {
    /// Category of the process streams (`{NAME}-{correlation id}`); no `-` in it.
    const NAME: &'static str;
    /// The instance's state.
    type State: Default + Send;
    /// The commands it emits (an enum when it emits several kinds, with one handler routing them).
    type Command: Command;

    /// Whether this event belongs to the workflow (others are ignored and not linked).
    fn interested(&self, event: &RecordedEvent) -> bool;
    /// Folds a handled event into the state.
    fn apply(&self, state: &mut Self::State, event: &RecordedEvent);
    /// The commands to send now that `event` has been applied to `state`.
    fn react(&self, state: &Self::State, event: &RecordedEvent) -> Vec<Self::Command>;
}

/// Runs a [`ProcessManager`] as an [`EventHandler`].
pub struct ProcessRunner<P> {
    manager: P,
    store: Arc<dyn EventStore>,
    bus: CommandBus,
}

impl<P> std::fmt::Debug for ProcessRunner<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessRunner").finish_non_exhaustive()
    }
}

impl<P: ProcessManager> ProcessRunner<P> {
    /// A runner keeping process streams in `store` and dispatching on `bus`.
    pub fn new(manager: P, store: Arc<dyn EventStore>, bus: CommandBus) -> Self {
        ProcessRunner {
            manager,
            store,
            bus,
        }
    }

    /// The process stream of the workflow `event` belongs to.
    pub fn process_stream(event: &RecordedEvent) -> herald_core::Result<StreamName> {
        let key = event.correlation_id().unwrap_or(event.id);
        StreamName::new(format!("{}-{key}", P::NAME))
    }

    /// The current state of the workflow `event` belongs to (for inspection and tests).
    pub async fn state_for(&self, event: &RecordedEvent) -> herald_core::Result<P::State> {
        let stream = Self::process_stream(event)?;
        let mut state = P::State::default();
        for e in self.store.read_to_vec(ReadQuery::stream(stream)).await? {
            self.manager.apply(&mut state, &e);
        }
        Ok(state)
    }
}

#[async_trait]
impl<P: ProcessManager> EventHandler for ProcessRunner<P> {
    async fn handle(&self, event: &RecordedEvent) -> Result<(), BoxError> {
        if !self.manager.interested(event) {
            return Ok(());
        }
        let stream = Self::process_stream(event)?;
        let history = self
            .store
            .read_to_vec(ReadQuery::stream(stream.clone()))
            .await?;
        if history.iter().any(|e| e.id == event.id) {
            return Ok(());
        }
        let mut state = P::State::default();
        for e in &history {
            self.manager.apply(&mut state, e);
        }
        self.manager.apply(&mut state, event);
        for command in self.manager.react(&state, event) {
            self.bus
                .dispatch(command, CommandMetadata::caused_by(event))
                .await
                .map_err(|e| -> BoxError { e.to_string().into() })?;
        }
        let expected = history.last().map_or(ExpectedVersion::NoStream, |e| {
            ExpectedVersion::Exact(e.version)
        });
        self.store.link(&stream, &[event.id], expected).await?;
        Ok(())
    }
}
