//! The command bus: one handler per command type, a middleware chain, typed results and errors.
//!
//! Named `command`, not `bus`: in this workspace "the bus" is herald-notify's domain-event [`Bus`](herald_notify::Bus).
//!
//! A command is a type implementing [`Command`] (its name, output, error, optional validation). Exactly one
//! [`CommandHandler`] is registered per command type. [`CommandBus::dispatch`] runs the middleware in the
//! order they were added (the first added is the outermost), then the handler, and returns the handler's
//! typed output or a [`BusError`] whose `Rejected` variant holds the handler's typed error.
//!
//! Middleware provided here: [`Logging`] (a `tracing` span per command and its outcome), [`Correlation`]
//! (commands dispatched while another is handled inherit its correlation, with causation = the parent
//! command), [`Validation`] (runs [`Command::validate`] before the handler), and [`Timing`] (reports each
//! command's duration through herald-notify's instrumentation API as `command.dispatch`).
//!
//! ```
//! use herald_es::command::{Command, CommandBus, CommandHandler, Validation, Correlation, command_fn};
//! use herald_es::CommandMetadata;
//!
//! struct Greet { name: String }
//! impl Command for Greet {
//!     const NAME: &'static str = "Greet";
//!     type Output = String;
//!     type Error = std::convert::Infallible;
//!     fn validate(&self) -> Result<(), String> {
//!         if self.name.is_empty() { Err("name is empty".into()) } else { Ok(()) }
//!     }
//! }
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let bus = CommandBus::builder()
//!     .middleware(Correlation)
//!     .middleware(Validation)
//!     .handler(command_fn(|cmd: Greet, _meta: CommandMetadata| async move {
//!         Ok::<_, std::convert::Infallible>(format!("hello {}", cmd.name))
//!     }))
//!     .build();
//! let out = bus.dispatch(Greet { name: "Ada".into() }, CommandMetadata::new()).await.unwrap();
//! assert_eq!(out, "hello Ada");
//! assert!(bus.dispatch(Greet { name: "".into() }, CommandMetadata::new()).await.is_err());
//! # });
//! ```

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tracing::Instrument;
use uuid::Uuid;

use crate::metadata::CommandMetadata;
use crate::subscription::BoxError;

/// A command type.
pub trait Command: Send + Sync + 'static {
    /// A stable name, for logs, metrics and errors.
    const NAME: &'static str;
    /// What the handler returns on success.
    type Output: Send + 'static;
    /// Why the handler refuses it.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Checks the command's own fields (run by the [`Validation`] middleware). Default: valid.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Handles one command type.
#[async_trait]
pub trait CommandHandler<C: Command>: Send + Sync + 'static {
    /// Handles `command`; the events it causes should carry `metadata` (see [`crate::Repository::save`]).
    async fn handle(&self, command: C, metadata: &CommandMetadata) -> Result<C::Output, C::Error>;
}

/// A [`CommandHandler`] from an async closure (see [`command_fn`]).
pub struct FnCommandHandler<F, C> {
    f: F,
    _command: PhantomData<fn(C)>,
}

impl<F, C> std::fmt::Debug for FnCommandHandler<F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FnCommandHandler")
    }
}

/// Wraps `async |command, metadata| -> Result<Output, Error>` as a handler.
pub fn command_fn<C, F, Fut>(f: F) -> FnCommandHandler<F, C>
where
    C: Command,
    F: Fn(C, CommandMetadata) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<C::Output, C::Error>> + Send,
{
    FnCommandHandler {
        f,
        _command: PhantomData,
    }
}

#[async_trait]
impl<C, F, Fut> CommandHandler<C> for FnCommandHandler<F, C>
where
    C: Command,
    F: Fn(C, CommandMetadata) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<C::Output, C::Error>> + Send,
{
    async fn handle(&self, command: C, metadata: &CommandMetadata) -> Result<C::Output, C::Error> {
        (self.f)(command, metadata.clone()).await
    }
}

/// A command on its way through the middleware, type-erased.
pub struct Dispatch {
    /// [`Command::NAME`].
    pub name: &'static str,
    /// The metadata; middleware may change it (the handler receives the final value).
    pub metadata: CommandMetadata,
    command: Box<dyn Any + Send + Sync>,
    validate: fn(&(dyn Any + Send + Sync)) -> Result<(), String>,
}

impl std::fmt::Debug for Dispatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatch")
            .field("name", &self.name)
            .field("metadata", &self.metadata)
            .finish_non_exhaustive()
    }
}

impl Dispatch {
    /// The command, if it is a `C`.
    pub fn command<C: Command>(&self) -> Option<&C> {
        self.command.downcast_ref()
    }

    /// Runs [`Command::validate`].
    pub fn validate(&self) -> Result<(), String> {
        (self.validate)(&*self.command)
    }
}

fn validate_erased<C: Command>(command: &(dyn Any + Send + Sync)) -> Result<(), String> {
    command.downcast_ref::<C>().map_or(Ok(()), C::validate)
}

/// A handler's output, type-erased (middleware passes it through).
pub type Reply = Box<dyn Any + Send>;

/// A failure inside the chain, type-erased.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DispatchFailure {
    /// The handler returned its error (downcast to the typed error by [`CommandBus::dispatch`]).
    #[error("{0}")]
    Handler(BoxError),
    /// Validation refused the command.
    #[error("invalid command `{command}`: {message}")]
    Invalid {
        /// The command name.
        command: &'static str,
        /// Why.
        message: String,
    },
    /// A middleware failed.
    #[error("middleware failed: {0}")]
    Middleware(BoxError),
}

#[async_trait]
trait ErasedHandler: Send + Sync {
    async fn call(&self, dispatch: Dispatch) -> Result<Reply, DispatchFailure>;
}

struct Typed<C, H> {
    handler: H,
    _command: PhantomData<fn(C)>,
}

#[async_trait]
impl<C: Command, H: CommandHandler<C>> ErasedHandler for Typed<C, H> {
    async fn call(&self, dispatch: Dispatch) -> Result<Reply, DispatchFailure> {
        let Dispatch {
            command, metadata, ..
        } = dispatch;
        let command = command.downcast::<C>().map_err(|_| {
            DispatchFailure::Middleware(
                "a middleware replaced the command with another type".into(),
            )
        })?;
        match self.handler.handle(*command, &metadata).await {
            Ok(output) => Ok(Box::new(output)),
            Err(e) => Err(DispatchFailure::Handler(Box::new(e))),
        }
    }
}

/// The rest of the chain, given to a middleware.
pub struct Next<'a> {
    middleware: &'a [Arc<dyn Middleware>],
    handler: &'a dyn ErasedHandler,
}

impl std::fmt::Debug for Next<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Next")
            .field("middleware_left", &self.middleware.len())
            .finish()
    }
}

impl Next<'_> {
    /// Runs the remaining middleware and the handler.
    pub async fn run(self, dispatch: Dispatch) -> Result<Reply, DispatchFailure> {
        match self.middleware.split_first() {
            Some((first, rest)) => {
                first
                    .handle(
                        dispatch,
                        Next {
                            middleware: rest,
                            handler: self.handler,
                        },
                    )
                    .await
            }
            None => self.handler.call(dispatch).await,
        }
    }
}

/// Code around every dispatch.
#[async_trait]
pub trait Middleware: Send + Sync + 'static {
    /// Handles `dispatch`, usually by calling `next.run(dispatch)` once.
    async fn handle(&self, dispatch: Dispatch, next: Next<'_>) -> Result<Reply, DispatchFailure>;
}

/// Why [`CommandBus::dispatch`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError<E: std::error::Error + 'static> {
    /// The handler refused the command with its typed error.
    #[error("command rejected: {0}")]
    Rejected(#[source] E),
    /// The command is invalid ([`Command::validate`]).
    #[error("invalid command `{command}`: {message}")]
    Invalid {
        /// The command name.
        command: &'static str,
        /// Why.
        message: String,
    },
    /// No handler is registered for this command type.
    #[error("no handler registered for command `{command}`")]
    NoHandler {
        /// The command name.
        command: &'static str,
    },
    /// A middleware failed.
    #[error("command failed: {0}")]
    Failed(BoxError),
}

struct Inner {
    handlers: HashMap<TypeId, Arc<dyn ErasedHandler>>,
    middleware: Vec<Arc<dyn Middleware>>,
}

/// The command bus. Cheap to clone.
#[derive(Clone)]
pub struct CommandBus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CommandBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandBus")
            .field("handlers", &self.inner.handlers.len())
            .field("middleware", &self.inner.middleware.len())
            .finish()
    }
}

/// Builds a [`CommandBus`].
#[derive(Default)]
pub struct CommandBusBuilder {
    handlers: HashMap<TypeId, (&'static str, Arc<dyn ErasedHandler>)>,
    middleware: Vec<Arc<dyn Middleware>>,
}

impl std::fmt::Debug for CommandBusBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandBusBuilder").finish_non_exhaustive()
    }
}

impl CommandBusBuilder {
    /// Adds a middleware; the first added runs outermost.
    pub fn middleware(mut self, middleware: impl Middleware) -> Self {
        self.middleware.push(Arc::new(middleware));
        self
    }

    /// Registers the handler of command type `C`.
    ///
    /// # Panics
    ///
    /// When `C` already has a handler: one command, one handler (a wiring mistake, found at start-up).
    pub fn handler<C: Command>(mut self, handler: impl CommandHandler<C>) -> Self {
        let previous = self.handlers.insert(
            TypeId::of::<C>(),
            (
                C::NAME,
                Arc::new(Typed {
                    handler,
                    _command: PhantomData,
                }),
            ),
        );
        assert!(
            previous.is_none(),
            "command `{}` already has a handler; a command type has exactly one",
            C::NAME
        );
        self
    }

    /// Builds the bus.
    pub fn build(self) -> CommandBus {
        CommandBus {
            inner: Arc::new(Inner {
                handlers: self
                    .handlers
                    .into_iter()
                    .map(|(k, (_, h))| (k, h))
                    .collect(),
                middleware: self.middleware,
            }),
        }
    }
}

impl CommandBus {
    /// A builder.
    pub fn builder() -> CommandBusBuilder {
        CommandBusBuilder::default()
    }

    /// Whether `C` has a handler.
    pub fn handles<C: Command>(&self) -> bool {
        self.inner.handlers.contains_key(&TypeId::of::<C>())
    }

    /// Runs `command` through the middleware and its handler.
    pub async fn dispatch<C: Command>(
        &self,
        command: C,
        metadata: CommandMetadata,
    ) -> Result<C::Output, BusError<C::Error>> {
        let Some(handler) = self.inner.handlers.get(&TypeId::of::<C>()) else {
            return Err(BusError::NoHandler { command: C::NAME });
        };
        let dispatch = Dispatch {
            name: C::NAME,
            metadata,
            command: Box::new(command),
            validate: validate_erased::<C>,
        };
        let next = Next {
            middleware: &self.inner.middleware,
            handler: &**handler,
        };
        match next.run(dispatch).await {
            Ok(reply) => reply.downcast::<C::Output>().map(|b| *b).map_err(|_| {
                BusError::Failed("a middleware replaced the reply with another type".into())
            }),
            Err(DispatchFailure::Handler(e)) => match e.downcast::<C::Error>() {
                Ok(e) => Err(BusError::Rejected(*e)),
                Err(e) => Err(BusError::Failed(e)),
            },
            Err(DispatchFailure::Invalid { command, message }) => {
                Err(BusError::Invalid { command, message })
            }
            Err(DispatchFailure::Middleware(e)) => Err(BusError::Failed(e)),
        }
    }
}

tokio::task_local! {
    static CURRENT: CommandMetadata;
}

/// The metadata of the command being handled by this task, when inside a [`Correlation`] middleware.
pub fn current_command() -> Option<CommandMetadata> {
    CURRENT.try_with(Clone::clone).ok()
}

/// Fills in correlation and causation: a command dispatched while another is handled (same task) joins its
/// correlation, with causation = the parent command; a top-level command starts its own correlation (its id).
#[derive(Debug, Clone, Copy, Default)]
pub struct Correlation;

#[async_trait]
impl Middleware for Correlation {
    async fn handle(
        &self,
        mut dispatch: Dispatch,
        next: Next<'_>,
    ) -> Result<Reply, DispatchFailure> {
        if dispatch.metadata.correlation_id.is_none() {
            match current_command() {
                Some(parent) => {
                    dispatch.metadata.correlation_id = Some(parent.correlation());
                    if dispatch.metadata.causation_id.is_none() {
                        dispatch.metadata.causation_id = Some(parent.command_id);
                    }
                }
                None => dispatch.metadata.correlation_id = Some(dispatch.metadata.command_id),
            }
        }
        let metadata = dispatch.metadata.clone();
        CURRENT.scope(metadata, next.run(dispatch)).await
    }
}

/// Runs [`Command::validate`]; an invalid command never reaches its handler.
#[derive(Debug, Clone, Copy, Default)]
pub struct Validation;

#[async_trait]
impl Middleware for Validation {
    async fn handle(&self, dispatch: Dispatch, next: Next<'_>) -> Result<Reply, DispatchFailure> {
        if let Err(message) = dispatch.validate() {
            return Err(DispatchFailure::Invalid {
                command: dispatch.name,
                message,
            });
        }
        next.run(dispatch).await
    }
}

/// A `tracing` span per command (`command`, `command_id`, `correlation_id`) and one `info` event with its
/// outcome (a refused command is an outcome, not a warning). Add it after [`Correlation`], so the span
/// shows the inherited correlation id of nested commands.
#[derive(Debug, Clone, Copy, Default)]
pub struct Logging;

#[async_trait]
impl Middleware for Logging {
    async fn handle(&self, dispatch: Dispatch, next: Next<'_>) -> Result<Reply, DispatchFailure> {
        let span = tracing::info_span!(
            "command",
            command = dispatch.name,
            command_id = %dispatch.metadata.command_id,
            correlation_id = %dispatch.metadata.correlation(),
        );
        let name = dispatch.name;
        let started = Instant::now();
        async move {
            let result = next.run(dispatch).await;
            let elapsed_us = started.elapsed().as_micros() as u64;
            match &result {
                Ok(_) => tracing::info!(command = name, elapsed_us, "command handled"),
                Err(e) => tracing::info!(command = name, elapsed_us, error = %e, "command failed"),
            }
            result
        }
        .instrument(span)
        .await
    }
}

/// The payload of the `command.dispatch` instrumentation event sent by [`Timing`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandTiming {
    /// [`Command::NAME`].
    pub command: &'static str,
    /// The command id.
    pub command_id: Uuid,
    /// Time spent in the rest of the chain (inner middleware and handler).
    pub duration: Duration,
    /// Whether it succeeded.
    pub ok: bool,
}

/// Reports every command's duration as the instrumentation event [`Timing::EVENT`] (payload
/// [`CommandTiming`]) through a herald-notify [`herald_notify::Notifier`]; costs nothing measurable when
/// nobody subscribes.
#[derive(Clone)]
pub struct Timing {
    notifier: herald_notify::Notifier,
}

impl std::fmt::Debug for Timing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Timing")
    }
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            notifier: herald_notify::Notifier::global().clone(),
        }
    }
}

impl Timing {
    /// The instrumentation event name.
    pub const EVENT: &'static str = "command.dispatch";

    /// Reports to `notifier` (the default reports to the global notifier).
    pub fn new(notifier: herald_notify::Notifier) -> Self {
        Timing { notifier }
    }
}

#[async_trait]
impl Middleware for Timing {
    async fn handle(&self, dispatch: Dispatch, next: Next<'_>) -> Result<Reply, DispatchFailure> {
        let (command, command_id) = (dispatch.name, dispatch.metadata.command_id);
        let started = Instant::now();
        let result = next.run(dispatch).await;
        let duration = started.elapsed();
        let ok = result.is_ok();
        self.notifier.notify(Self::EVENT, || CommandTiming {
            command,
            command_id,
            duration,
            ok,
        });
        result
    }
}
