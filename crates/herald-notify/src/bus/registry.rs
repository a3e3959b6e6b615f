//! The subscription registry: adding entries (sync handlers, listener objects, async listeners with
//! their queue task), removing them, and the per-thread cache that maps an event type to its matching
//! entries. The cache is keyed by the bus and a generation that every change bumps, so a publish finds its
//! entries without taking the registry's lock.

use std::any::TypeId;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};

use tokio::sync::mpsc;

use super::async_listener::AsyncListener;
use super::{
    AsyncFn, Bus, BusInner, DomainEvent, Entry, Envelope, ErasedEnvelope, HandlerResult, Kind,
    Matched, NewEntry, SyncFn,
};
use crate::scope::ScopeId;
use crate::subscriber::{SubscriberHandle, Unsubscribe};
use crate::tlcache::LocalCache;

thread_local! {
    static CACHE: RefCell<LocalCache<TypeId, Matched>> = const { RefCell::new(LocalCache::new()) };
}

impl Unsubscribe for BusInner {
    fn unsubscribe_id(&self, id: u64) -> bool {
        let mut reg = self.registry();
        let mut found = false;
        reg.retain(|e| {
            if e.id != id {
                return true;
            }
            found = true;
            e.live.store(false, Ordering::Release);
            if let Kind::Async { token, .. } = &e.kind {
                token.cancel();
            }
            false
        });
        if found {
            self.generation.fetch_add(1, Ordering::Release);
        }
        found
    }
}

fn typed_sync<E: DomainEvent, R: HandlerResult>(
    handler: impl Fn(&Envelope<E>) -> R + Send + Sync + 'static,
) -> SyncFn {
    Box::new(
        move |env: &dyn ErasedEnvelope| match env.downcast_ref::<E>() {
            Some(env) => handler(env).into_result(),
            // The type filter guarantees the type; an entry never sees another.
            None => Ok(()),
        },
    )
}

impl Bus {
    pub(super) fn typed_entry<E: DomainEvent, R: HandlerResult>(
        handler: impl Fn(&Envelope<E>) -> R + Send + Sync + 'static,
    ) -> NewEntry {
        NewEntry {
            type_filter: Some(TypeId::of::<E>()),
            label: E::EVENT_TYPE.into(),
            kind: Kind::Sync(typed_sync(handler)),
        }
    }

    fn handle(&self, id: u64) -> SubscriberHandle {
        let owner: Arc<dyn Unsubscribe> = self.inner.clone();
        SubscriberHandle::new(id, Arc::downgrade(&owner))
    }

    pub(super) fn add_one(
        &self,
        entry: NewEntry,
        publisher: Option<u64>,
        scope: Option<ScopeId>,
    ) -> SubscriberHandle {
        self.add(vec![entry], publisher, scope)
    }

    pub(super) fn add(
        &self,
        entries: Vec<NewEntry>,
        publisher: Option<u64>,
        scope: Option<ScopeId>,
    ) -> SubscriberHandle {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut reg = self.inner.registry();
        for e in entries {
            reg.push(Arc::new(Entry {
                id,
                type_filter: e.type_filter,
                publisher,
                scope,
                label: e.label,
                live: AtomicBool::new(true),
                kind: e.kind,
            }));
        }
        self.inner.generation.fetch_add(1, Ordering::Release);
        drop(reg);
        self.handle(id)
    }

    pub(super) fn add_async(
        &self,
        type_filter: Option<TypeId>,
        label: &'static str,
        capacity: usize,
        handler: AsyncFn,
    ) -> SubscriberHandle {
        assert!(capacity > 0, "async listener capacity must be at least 1");
        let (tx, rx) = mpsc::channel(capacity);
        let token = self.inner.root.child_token();
        let inner = Arc::downgrade(&self.inner);
        let label: Arc<str> = label.into();
        let entry = NewEntry {
            type_filter,
            label: label.clone(),
            kind: Kind::Async {
                queue: tx,
                token: token.clone(),
            },
        };
        let sub = self.add_one(entry, None, None);
        let listener = AsyncListener {
            id: sub.id(),
            label,
            handler,
            bus: inner,
            reporter: self.inner.reporter.clone(),
        };
        let task = tokio::spawn(listener.run(rx, token));
        let mut tasks = self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
        sub
    }

    #[inline]
    pub(super) fn lookup<E: 'static>(&self) -> Rc<Matched> {
        let generation = self.inner.generation.load(Ordering::Acquire);
        let key = TypeId::of::<E>();
        CACHE
            .try_with(|cache| {
                cache
                    .borrow_mut()
                    .get_copy(self.inner.id, generation, key, || self.compute(key))
            })
            .unwrap_or_else(|_| Rc::new(self.compute(key)))
    }

    fn compute(&self, key: TypeId) -> Matched {
        let reg = self.inner.registry();
        let entries: Arc<[Arc<Entry>]> = reg
            .iter()
            .filter(|e| e.type_filter.is_none_or(|t| t == key))
            .cloned()
            .collect();
        let any_async = entries.iter().any(|e| matches!(e.kind, Kind::Async { .. }));
        Matched { entries, any_async }
    }
}
