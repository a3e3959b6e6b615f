//! The clock behind every timestamp in this crate.
//!
//! `std::time::Instant::now()` and `SystemTime::now()` go through `clock_gettime`, which costs tens of
//! nanoseconds on the virtual machines Herald runs on; at the rates instrumentation runs at, that is most
//! of the budget. `quanta` reads the CPU's invariant TSC instead (calibrated once against the OS clock,
//! falling back to the OS clock where no usable TSC exists). Wall-clock times are derived from a
//! per-thread anchor pair (wall, monotonic) that is refreshed every second, so they track NTP adjustments
//! with at most a second's delay and never cost a system call on the hot path.

use std::cell::Cell;
use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

static CLOCK: LazyLock<quanta::Clock> = LazyLock::new(quanta::Clock::new);

/// How long a per-thread wall-clock anchor is trusted before it is re-read from the OS.
const ANCHOR_TTL: Duration = Duration::from_secs(1);

/// A monotonic instant from the crate's calibrated clock.
pub(crate) type MonoInstant = quanta::Instant;

/// Reads the monotonic clock.
#[inline]
pub(crate) fn now() -> MonoInstant {
    CLOCK.now()
}

/// Reads the raw counter (TSC ticks where available); scale with [`scaled`] or [`delta`]. Skipping the
/// scaling on the hot path saves a multiplication per read; it is done only when a subscriber asks.
#[inline]
pub(crate) fn raw() -> u64 {
    CLOCK.raw()
}

/// A raw reading as a monotonic instant.
#[inline]
pub(crate) fn scaled(raw: u64) -> MonoInstant {
    CLOCK.scaled(raw)
}

/// The time between two raw readings.
#[inline]
pub(crate) fn delta(start: u64, end: u64) -> Duration {
    CLOCK.delta(start, end)
}

thread_local! {
    static ANCHOR: Cell<Option<(SystemTime, MonoInstant)>> = const { Cell::new(None) };
    /// (nanoseconds since the Unix epoch, raw counter) read together; see [`wall_nanos`].
    static RAW_ANCHOR: Cell<Option<(u64, u64)>> = const { Cell::new(None) };
}

fn anchor(at: MonoInstant) -> (SystemTime, MonoInstant) {
    ANCHOR.with(|cell| match cell.get() {
        Some(pair) if at.saturating_duration_since(pair.1) < ANCHOR_TTL && at >= pair.1 => pair,
        _ => {
            let pair = (SystemTime::now(), now());
            cell.set(Some(pair));
            pair
        }
    })
}

/// Converts a monotonic instant taken on this clock into wall-clock time.
pub(crate) fn to_wall(at: MonoInstant) -> SystemTime {
    let (wall, mono) = anchor(at);
    if at >= mono {
        wall + at.duration_since(mono)
    } else {
        wall - mono.duration_since(at)
    }
}

fn epoch_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The current wall-clock time as nanoseconds since the Unix epoch: one counter read and a
/// multiply-shift, with the OS clock read once a second per thread.
#[inline]
pub(crate) fn wall_nanos() -> u64 {
    let raw_now = raw();
    let anchor = RAW_ANCHOR.try_with(Cell::get).ok().flatten();
    if let Some((wall, at)) = anchor {
        let elapsed = CLOCK.delta_as_nanos(at, raw_now);
        if raw_now >= at && elapsed < ANCHOR_TTL_NANOS {
            return wall + elapsed;
        }
    }
    let wall = epoch_nanos(SystemTime::now());
    // Ignore failure: the thread-local is gone only during thread teardown.
    let _ = RAW_ANCHOR.try_with(|c| c.set(Some((wall, raw()))));
    wall
}

const ANCHOR_TTL_NANOS: u64 = 1_000_000_000;

/// Nanoseconds since the Unix epoch as a `SystemTime`.
#[inline]
pub(crate) fn from_epoch_nanos(nanos: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(nanos)
}

/// A `SystemTime` as nanoseconds since the Unix epoch (0 before it).
#[inline]
pub(crate) fn to_epoch_nanos(t: SystemTime) -> u64 {
    epoch_nanos(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_clock_tracks_system_time() {
        let ours = to_wall(now());
        let os = SystemTime::now();
        let diff = match os.duration_since(ours) {
            Ok(d) => d,
            Err(e) => e.duration(),
        };
        assert!(diff < Duration::from_millis(50), "drift {diff:?}");
    }

    #[test]
    fn wall_nanos_tracks_system_time() {
        let ours = wall_nanos();
        let os = epoch_nanos(SystemTime::now());
        assert!(ours.abs_diff(os) < 50_000_000, "{ours} vs {os}");
        let again = wall_nanos();
        assert!(again.abs_diff(os) < 50_000_000);
    }

    #[test]
    fn monotonic_clock_is_monotonic() {
        let a = now();
        let b = now();
        assert!(b >= a);
    }
}
