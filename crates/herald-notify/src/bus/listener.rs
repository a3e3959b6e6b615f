//! Listener objects: one value handling several event types.

use std::any::{TypeId, type_name};
use std::sync::Arc;

use super::{DomainEvent, Envelope, ErasedEnvelope, HandlerResult, Kind, NewEntry};

/// A listener object handling several event types, like a Wisper listener with one method per event.
///
/// ```
/// use herald_notify::{Bus, Envelope, Handlers, Listener};
/// use serde::{Deserialize, Serialize};
/// use std::sync::{Arc, atomic::{AtomicUsize, Ordering}};
///
/// #[derive(Debug, Clone, Serialize, Deserialize)]
/// struct UserRegistered { user_id: u64 }
/// herald_notify::domain_event!(UserRegistered, "user.registered");
/// #[derive(Debug, Clone, Serialize, Deserialize)]
/// struct UserDeleted { user_id: u64 }
/// herald_notify::domain_event!(UserDeleted, "user.deleted");
///
/// #[derive(Default)]
/// struct UserCount(AtomicUsize);
///
/// impl UserCount {
///     fn registered(&self, _: &Envelope<UserRegistered>) { self.0.fetch_add(1, Ordering::SeqCst); }
///     fn deleted(&self, _: &Envelope<UserDeleted>) { self.0.fetch_sub(1, Ordering::SeqCst); }
/// }
///
/// impl Listener for UserCount {
///     fn register(handlers: &mut Handlers<Self>) {
///         handlers.on(Self::registered).on(Self::deleted);
///     }
/// }
///
/// let bus = Bus::new();
/// let count = Arc::new(UserCount::default());
/// let sub = bus.subscribe_listener(count.clone());
/// bus.try_publish(UserRegistered { user_id: 1 }).unwrap();
/// bus.try_publish(UserRegistered { user_id: 2 }).unwrap();
/// bus.try_publish(UserDeleted { user_id: 1 }).unwrap();
/// assert_eq!(count.0.load(Ordering::SeqCst), 1);
/// sub.unsubscribe(); // removes both handlers
/// ```
pub trait Listener: Send + Sync + Sized + 'static {
    /// Declares which event types this listener handles, and how.
    fn register(handlers: &mut Handlers<Self>);
}

/// Builds the bus handler for one event type once the listener is known, so that a delivery is one
/// dynamic call (the typed closure captures the listener itself).
type MakeHandler<L> = Box<dyn FnOnce(Arc<L>) -> super::SyncFn>;

/// The handlers a [`Listener`] declares, one per event type, in declaration order.
pub struct Handlers<L> {
    entries: Vec<(TypeId, &'static str, MakeHandler<L>)>,
}

impl<L> std::fmt::Debug for Handlers<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|(_, name, _)| name))
            .finish()
    }
}

impl<L: Listener> Handlers<L> {
    /// Handles events of type `E` with `handler` (typically a method: `Self::on_user_registered`).
    pub fn on<E: DomainEvent, R: HandlerResult>(
        &mut self,
        handler: impl Fn(&L, &Envelope<E>) -> R + Send + Sync + 'static,
    ) -> &mut Self {
        self.entries.push((
            TypeId::of::<E>(),
            E::EVENT_TYPE,
            Box::new(move |listener: Arc<L>| -> super::SyncFn {
                Box::new(
                    move |env: &dyn ErasedEnvelope| match env.downcast_ref::<E>() {
                        Some(env) => handler(&listener, env).into_result(),
                        None => Ok(()),
                    },
                )
            }),
        ));
        self
    }
}

/// The bus entries for a listener object, all labelled with the listener's type name.
pub(crate) fn entries<L: Listener>(listener: Arc<L>) -> Vec<NewEntry> {
    let mut handlers = Handlers {
        entries: Vec::new(),
    };
    L::register(&mut handlers);
    let label: Arc<str> = type_name::<L>().into();
    handlers
        .entries
        .into_iter()
        .map(|(type_id, _, make)| NewEntry {
            type_filter: Some(type_id),
            label: label.clone(),
            kind: Kind::Sync(make(listener.clone())),
        })
        .collect()
}
