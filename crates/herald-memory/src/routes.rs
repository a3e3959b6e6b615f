//! Delivery routes in memory (the [`DeliveryRoutes`] port): a list beside the job queue, read by every
//! append under the store's lock. One process only, so "another process" never adds one.

use async_trait::async_trait;
use herald_core::delivery::{DeliveryRoute, DeliveryRoutes, RouteMatcher};
use herald_core::{Error, Result};

use crate::jobs::{InMemoryJobQueue, SharedJobs};

fn lock(shared: &SharedJobs) -> std::sync::MutexGuard<'_, Vec<DeliveryRoute>> {
    // Writers push or remove whole routes after checking them, so a poisoned lock holds a consistent list.
    shared.routes.lock().unwrap_or_else(|p| p.into_inner())
}

/// The routes as an append matches them.
pub(crate) fn matchers(shared: &SharedJobs) -> Vec<RouteMatcher> {
    lock(shared).iter().map(DeliveryRoute::matcher).collect()
}

#[async_trait]
impl DeliveryRoutes for InMemoryJobQueue {
    async fn add_route(&self, route: DeliveryRoute) -> Result<()> {
        route.validate()?;
        let mut routes = lock(self.shared());
        if routes.iter().any(|r| r.name == route.name) {
            return Err(Error::invalid(format!(
                "route `{}` already exists; remove it first",
                route.name
            )));
        }
        let at = routes.partition_point(|r| r.name < route.name);
        routes.insert(at, route);
        Ok(())
    }

    async fn routes(&self) -> Result<Vec<DeliveryRoute>> {
        Ok(lock(self.shared()).clone())
    }

    async fn route(&self, name: &str) -> Result<Option<DeliveryRoute>> {
        Ok(lock(self.shared()).iter().find(|r| r.name == name).cloned())
    }

    async fn remove_route(&self, name: &str) -> Result<bool> {
        let mut routes = lock(self.shared());
        let before = routes.len();
        routes.retain(|r| r.name != name);
        Ok(routes.len() < before)
    }
}
