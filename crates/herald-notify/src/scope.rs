//! Scopes for temporary subscriptions (`subscribed`, `Bus::scoped`).
//!
//! A temporary subscription is registered like any other, tagged with a scope id, and is only delivered
//! to while that id is active on the *current* thread (for synchronous blocks) or the current Tokio task
//! (for futures). This mirrors ActiveSupport's `subscribed` and Wisper's temporary listeners, which are
//! thread-local in Ruby: two tasks each running a scoped block never see each other's events, even when
//! they instrument the same names at the same time.

use std::cell::RefCell;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

/// Identifies one scoped block.
pub(crate) type ScopeId = u64;

static NEXT_SCOPE: AtomicU64 = AtomicU64::new(1);

/// A fresh scope id, unique in the process.
pub(crate) fn next_scope_id() -> ScopeId {
    NEXT_SCOPE.fetch_add(1, Ordering::Relaxed)
}

thread_local! {
    static THREAD_SCOPES: RefCell<Vec<ScopeId>> = const { RefCell::new(Vec::new()) };
}

tokio::task_local! {
    static TASK_SCOPES: Vec<ScopeId>;
}

/// Whether `id` is active on this thread or in this task.
pub(crate) fn is_active(id: ScopeId) -> bool {
    THREAD_SCOPES.with(|s| s.borrow().contains(&id))
        || TASK_SCOPES.try_with(|s| s.contains(&id)).unwrap_or(false)
}

/// Marks a scope active on the current thread until dropped (drop also runs when the block panics).
pub(crate) struct ThreadScope {
    id: ScopeId,
}

impl ThreadScope {
    pub(crate) fn enter(id: ScopeId) -> Self {
        THREAD_SCOPES.with(|s| s.borrow_mut().push(id));
        ThreadScope { id }
    }
}

impl Drop for ThreadScope {
    fn drop(&mut self) {
        THREAD_SCOPES.with(|s| {
            let mut s = s.borrow_mut();
            if let Some(pos) = s.iter().rposition(|&x| x == self.id) {
                s.remove(pos);
            }
        });
    }
}

/// Runs `fut` with `id` active for the whole task while `fut` runs (including across `.await` points and
/// worker-thread migrations), plus every scope that was already active in the enclosing task.
pub(crate) async fn in_task_scope<F: Future>(id: ScopeId, fut: F) -> F::Output {
    let mut scopes = TASK_SCOPES.try_with(Clone::clone).unwrap_or_default();
    scopes.push(id);
    TASK_SCOPES.scope(scopes, fut).await
}
