//! What subscribers receive.

use std::any::Any;
use std::cell::OnceCell;
use std::fmt;
use std::time::{Duration, SystemTime};

use crate::clock;

/// A value that can travel as an instrumentation payload: anything `'static` with a `Debug` form.
///
/// Subscribers get it as `&dyn Payload` and either print it (`{:?}`) or downcast it to the concrete
/// type with [`Event::payload_as`].
pub trait Payload: Any + fmt::Debug {}

impl<T: Any + fmt::Debug> Payload for T {}

/// An error returned by instrumented work, as subscribers see it (see [`Outcome::Error`]).
pub trait ErrorInfo: Any + fmt::Debug + fmt::Display {}

impl<T: Any + fmt::Debug + fmt::Display> ErrorInfo for T {}

impl dyn ErrorInfo {
    /// The error as its concrete type, if it is a `T`.
    pub fn downcast_ref<T: Any>(&self) -> Option<&T> {
        (self as &dyn Any).downcast_ref()
    }
}

/// How the instrumented work ended.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Outcome<'a> {
    /// The work returned normally (for [`try_instrument`](crate::Notifier::try_instrument): `Ok`).
    Ok,
    /// The work returned `Err`; the error is still returned to the caller untouched.
    Error(&'a dyn ErrorInfo),
    /// The work panicked; the panic continues to unwind after the subscribers have seen this.
    Panicked,
}

impl Outcome<'_> {
    /// Whether the work returned normally.
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok)
    }
}

/// Lazily captured (wall, monotonic) pair, so wall-clock times cost nothing unless asked for.
pub(crate) struct WallRef(OnceCell<SystemTime>);

impl WallRef {
    pub(crate) fn new() -> Self {
        WallRef(OnceCell::new())
    }

    fn wall(&self, raw: u64) -> SystemTime {
        *self.0.get_or_init(|| clock::to_wall(clock::scaled(raw)))
    }
}

/// The start of an instrumented block, delivered to [`SpanSubscriber::start`](crate::SpanSubscriber::start).
pub struct Started<'a> {
    pub(crate) name: &'a str,
    pub(crate) payload: &'a dyn Payload,
    pub(crate) start: u64,
    pub(crate) wall: WallRef,
}

impl<'a> Started<'a> {
    /// The event name.
    pub fn name(&self) -> &'a str {
        self.name
    }

    /// The payload.
    pub fn payload(&self) -> &'a dyn Payload {
        self.payload
    }

    /// The payload as its concrete type, if it is a `T`.
    pub fn payload_as<T: Any>(&self) -> Option<&'a T> {
        (self.payload as &dyn Any).downcast_ref()
    }

    /// Wall-clock time at which the work started.
    pub fn started_at(&self) -> SystemTime {
        self.wall.wall(self.start)
    }
}

impl fmt::Debug for Started<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Started")
            .field("name", &self.name)
            .field("payload", &self.payload)
            .finish()
    }
}

/// One finished instrumentation event: name, payload, timing and outcome.
///
/// Timing uses a calibrated monotonic clock (`quanta`); [`duration`](Event::duration) is exact, and the wall
/// clock times are derived from it when first asked for, so they cost nothing for subscribers that do not
/// use them. For [`notify`](crate::Notifier::notify) the start and the finish are the same instant.
pub struct Event<'a> {
    pub(crate) name: &'a str,
    pub(crate) payload: &'a dyn Payload,
    pub(crate) start: u64,
    pub(crate) finish: u64,
    pub(crate) outcome: Outcome<'a>,
    pub(crate) wall: WallRef,
}

impl<'a> Event<'a> {
    /// The event name.
    pub fn name(&self) -> &'a str {
        self.name
    }

    /// The payload.
    pub fn payload(&self) -> &'a dyn Payload {
        self.payload
    }

    /// The payload as its concrete type, if it is a `T`.
    pub fn payload_as<T: Any>(&self) -> Option<&'a T> {
        (self.payload as &dyn Any).downcast_ref()
    }

    /// How long the work took (monotonic).
    pub fn duration(&self) -> Duration {
        clock::delta(self.start, self.finish)
    }

    /// Wall-clock time at which the work started.
    pub fn started_at(&self) -> SystemTime {
        self.wall.wall(self.start)
    }

    /// Wall-clock time at which the work finished.
    pub fn finished_at(&self) -> SystemTime {
        self.started_at() + self.duration()
    }

    /// How the work ended.
    pub fn outcome(&self) -> Outcome<'a> {
        self.outcome
    }

    /// The error the work returned, if it returned one.
    pub fn error(&self) -> Option<&'a dyn ErrorInfo> {
        match self.outcome {
            Outcome::Error(e) => Some(e),
            _ => None,
        }
    }
}

impl fmt::Debug for Event<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("name", &self.name)
            .field("payload", &self.payload)
            .field("duration", &self.duration())
            .field("outcome", &self.outcome)
            .finish()
    }
}
