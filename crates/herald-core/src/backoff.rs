//! The one retry schedule of Herald: how long to wait after a failure before trying again. Version-conflict
//! retries, listener reconnects and job retries all ask a [`Backoff`] instead of each carrying its own
//! formula, so "exponential, capped, with jitter" means the same everywhere and is tested once.
//!
//! Attempts count from 1: `delay(1)` is the wait after the first failure.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Jitter of [`Backoff::exponential`] unless changed: each delay is drawn from `[d/2, d]`, so callers that
/// failed together (writers racing for one stream, listeners losing one server) do not retry in lock step,
/// while the wait never exceeds the schedule.
pub const DEFAULT_JITTER: f64 = 0.5;

/// How long to wait after failed attempt `n` (from 1). Cheap to clone (a custom schedule is shared).
///
/// ```
/// use std::time::Duration;
/// use herald_core::Backoff;
///
/// // 100 ms, 200 ms, 400 ms … never above 5 s, each drawn from [d/2, d].
/// let reconnect = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(5));
/// let d = reconnect.delay(3);
/// assert!(d >= Duration::from_millis(200) && d <= Duration::from_millis(400));
/// // Without jitter the schedule is exact.
/// let exact = reconnect.clone().jitter(0.0);
/// assert_eq!(exact.delay(3), Duration::from_millis(400));
/// assert_eq!(exact.delay(60), Duration::from_secs(5));
///
/// // Any other schedule: here 1 s per failed attempt.
/// let linear = Backoff::custom(|attempt| Duration::from_secs(u64::from(attempt)));
/// assert_eq!(linear.delay(3), Duration::from_secs(3));
///
/// // Sidekiq's job retries (the default of durable jobs): count⁴ + 15 s plus up to 10·(count + 1) s.
/// let d = Backoff::sidekiq().delay(3);
/// assert!(d >= Duration::from_secs(31) && d < Duration::from_secs(61));
/// ```
#[derive(Clone)]
pub struct Backoff {
    schedule: Schedule,
    /// Fraction of each delay that is random, in `[0, 1]`: the delay is drawn from `[(1 - jitter)·d, d]`.
    jitter: f64,
}

#[derive(Clone)]
enum Schedule {
    Exponential { first: Duration, max: Duration },
    Constant(Duration),
    Custom(Arc<dyn Fn(u32) -> Duration + Send + Sync>),
}

impl Backoff {
    /// `first` after the first failure, doubling after each further one, never above `max`; with
    /// [`DEFAULT_JITTER`]. A zero `first` never waits.
    pub fn exponential(first: Duration, max: Duration) -> Self {
        Backoff {
            schedule: Schedule::Exponential { first, max },
            jitter: DEFAULT_JITTER,
        }
    }

    /// The house schedule for reconnecting to a server that went away (listeners, pollers): 100 ms doubling
    /// to 5 s, with jitter. Short enough to be back quickly after a restart, capped so a long outage costs a
    /// connection attempt every few seconds, not a busy loop.
    pub fn reconnect() -> Self {
        Self::exponential(Duration::from_millis(100), Duration::from_secs(5))
    }

    /// Sidekiq's job retry schedule, the default of durable jobs: `count⁴ + 15 + rand(10·(count + 1))`
    /// seconds, `count` = retries so far (`attempt - 1`): about 15 s, 16 s, 31 s, 96 s, 271 s … 4 days
    /// after the 24th failure. The random part is added (Sidekiq's own), not the proportional jitter.
    pub fn sidekiq() -> Self {
        Self::custom(|attempt| {
            let count = u64::from(attempt.saturating_sub(1));
            let base = count.saturating_pow(4).saturating_add(15);
            let spread = 10u64.saturating_mul(count + 1);
            Duration::from_secs(base.saturating_add(fastrand::u64(0..spread)))
        })
    }

    /// The same delay after every failure, without jitter.
    pub fn constant(delay: Duration) -> Self {
        Backoff {
            schedule: Schedule::Constant(delay),
            jitter: 0.0,
        }
    }

    /// Any schedule: `f(attempt)` is the delay after failed attempt `attempt` (from 1), without jitter
    /// unless [`jitter`](Self::jitter) adds some.
    pub fn custom(f: impl Fn(u32) -> Duration + Send + Sync + 'static) -> Self {
        Backoff {
            schedule: Schedule::Custom(Arc::new(f)),
            jitter: 0.0,
        }
    }

    /// Makes `fraction` of each delay random (clamped to `[0, 1]`; 0: exact delays). The delay is then drawn
    /// from `[(1 - fraction)·d, d]`: jitter only shortens a wait, never lengthens it past the schedule.
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.jitter = if fraction.is_nan() {
            0.0
        } else {
            fraction.clamp(0.0, 1.0)
        };
        self
    }

    /// The wait after failed attempt `attempt` (from 1; 0 is taken as 1), with jitter drawn at random.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_at(attempt, fastrand::f64())
    }

    /// [`delay`](Self::delay) with the random draw given: `unit` in `[0, 1]` (0: the full delay, 1: the
    /// shortest the jitter allows). For tests and for callers that bring their own randomness.
    pub fn delay_at(&self, attempt: u32, unit: f64) -> Duration {
        let attempt = attempt.max(1);
        let full = match &self.schedule {
            Schedule::Exponential { first, max } => {
                // 2^(attempt-1), saturating: past 2^31 the cap has long been reached anyway.
                let factor = 1u32.checked_shl(attempt - 1).unwrap_or(u32::MAX);
                first.saturating_mul(factor).min(*max)
            }
            Schedule::Constant(delay) => *delay,
            Schedule::Custom(f) => f(attempt),
        };
        let unit = if unit.is_nan() {
            0.0
        } else {
            unit.clamp(0.0, 1.0)
        };
        let factor = 1.0 - self.jitter * unit;
        if factor >= 1.0 {
            return full;
        }
        // Not `mul_f64`: it panics when the product rounds above `Duration::MAX`; the product is never
        // more than `full`, so falling back to it is exact enough.
        Duration::try_from_secs_f64(full.as_secs_f64() * factor).unwrap_or(full)
    }
}

impl fmt::Debug for Backoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Backoff");
        match &self.schedule {
            Schedule::Exponential { first, max } => d.field("first", first).field("max", max),
            Schedule::Constant(delay) => d.field("constant", delay),
            Schedule::Custom(_) => d.field("custom", &".."),
        };
        d.field("jitter", &self.jitter).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn exponential_doubles_from_the_first_delay_up_to_the_cap() {
        let b = Backoff::exponential(MS, 100 * MS).jitter(0.0);
        let delays: Vec<_> = (1..=9).map(|n| b.delay(n)).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 100, 100].map(|ms| ms * MS));
        assert_eq!(b.delay(0), MS, "attempt 0 is taken as the first");
        assert_eq!(b.delay(u32::MAX), 100 * MS, "no overflow far past the cap");
        assert_eq!(
            Backoff::exponential(Duration::ZERO, MS).delay(5),
            Duration::ZERO
        );
        assert_eq!(
            Backoff::exponential(Duration::from_secs(u64::MAX), Duration::MAX)
                .jitter(0.0)
                .delay(40),
            Duration::MAX,
            "saturates instead of overflowing"
        );
        // Jitter on the largest delay must not panic (`Duration::mul_f64` would).
        let huge = Backoff::exponential(Duration::MAX, Duration::MAX);
        assert!(huge.delay_at(1, 0.5) < Duration::MAX);
    }

    #[test]
    fn jitter_only_shortens_within_its_fraction() {
        let b = Backoff::exponential(100 * MS, Duration::from_secs(1));
        assert_eq!(b.delay_at(1, 0.0), 100 * MS);
        assert_eq!(b.delay_at(1, 1.0), 50 * MS, "default jitter: down to half");
        assert_eq!(b.delay_at(2, 0.5), 150 * MS);
        for _ in 0..1000 {
            let d = b.delay(3);
            assert!((200 * MS..=400 * MS).contains(&d), "{d:?}");
        }
        let full = b.clone().jitter(7.0);
        assert_eq!(full.delay_at(1, 1.0), Duration::ZERO, "clamped to 1");
        assert_eq!(b.clone().jitter(f64::NAN).delay_at(1, 1.0), 100 * MS);
        assert_eq!(b.delay_at(1, f64::NAN), 100 * MS);
    }

    #[test]
    fn constant_and_custom_schedules() {
        let c = Backoff::constant(30 * MS);
        assert_eq!((c.delay(1), c.delay(1000)), (30 * MS, 30 * MS));
        // Linear, as the PostgreSQL listeners reconnected before: 100 ms per failure up to 5 s.
        let linear = Backoff::custom(|n| 100 * MS * n.min(50));
        assert_eq!(linear.delay(3), 300 * MS);
        assert_eq!(linear.delay(80), Duration::from_secs(5));
        let jittered = Backoff::custom(|_| 100 * MS).jitter(0.2);
        assert_eq!(jittered.delay_at(1, 1.0), 80 * MS);
    }

    #[test]
    fn reconnect_is_the_house_schedule() {
        let r = Backoff::reconnect();
        assert_eq!(r.delay_at(1, 0.0), 100 * MS);
        assert_eq!(r.delay_at(7, 0.0), Duration::from_secs(5));
        assert!(format!("{r:?}").contains("jitter"));
    }
}
