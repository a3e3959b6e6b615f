//! The clock behind every timestamp in this crate.
//!
//! `std::time::Instant::now()` and `SystemTime::now()` go through `clock_gettime`, which costs tens of
//! nanoseconds on the virtual machines Herald runs on; at the rates instrumentation runs at, that is most
//! of the budget. `quanta` reads the CPU's invariant TSC instead (calibrated once against the OS clock,
//! falling back to the OS clock where no usable TSC exists). Wall-clock times are derived from a
//! per-thread anchor pair (wall, monotonic) that is refreshed every second, so they track NTP adjustments
//! with at most a second's delay and never cost a system call on the hot path.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex, MutexGuard, PoisonError};
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

/// How often the coarse clock's ticker thread refreshes the coarse time.
pub(crate) const COARSE_TICK: Duration = Duration::from_millis(1);

/// The coarse wall-clock time (nanoseconds since the Unix epoch), 0 while no ticker runs. One relaxed
/// load replaces a counter read (~10 ns on the virtual machines measured) for the buses that opt in.
static COARSE_NOW: AtomicU64 = AtomicU64::new(0);

/// How many buses use the coarse clock, and whether the ticker runs: the ticker ends when the count drops
/// to 0, so an application that never opts in never gets the thread.
static COARSE_USERS: Mutex<(usize, bool)> = Mutex::new((0, false));

fn coarse_users() -> MutexGuard<'static, (usize, bool)> {
    COARSE_USERS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Registers a user of the coarse clock, starting the ticker thread if needed. `false` if the thread
/// could not be started (the caller then keeps precise timestamps).
pub(crate) fn coarse_acquire() -> bool {
    let mut users = coarse_users();
    if !users.1 {
        // Seed the time before any reader can see the ticker as running (no ticker writes meanwhile).
        COARSE_NOW.store(wall_nanos(), Ordering::Relaxed);
        let spawned = std::thread::Builder::new()
            .name("herald-coarse-clock".into())
            .spawn(coarse_ticker);
        if spawned.is_err() {
            return false;
        }
        users.1 = true;
    }
    users.0 += 1;
    true
}

/// Releases one [`coarse_acquire`].
pub(crate) fn coarse_release() {
    let mut users = coarse_users();
    users.0 = users.0.saturating_sub(1);
}

fn coarse_ticker() {
    loop {
        std::thread::sleep(COARSE_TICK);
        {
            let mut users = coarse_users();
            if users.0 == 0 {
                users.1 = false;
                COARSE_NOW.store(0, Ordering::Relaxed);
                return;
            }
        }
        let now = wall_nanos();
        // The ticker is the only writer while it runs. Small steps back (the per-thread anchor catching up
        // with an NTP slew) are held, so readers never see the time go back; a step back of more than
        // `COARSE_STEP_BACK` (the OS clock was set back) is followed, or the time would freeze that long.
        if now >= COARSE_NOW.load(Ordering::Relaxed)
            || COARSE_NOW.load(Ordering::Relaxed) - now > COARSE_STEP_BACK_NANOS
        {
            COARSE_NOW.store(now, Ordering::Relaxed);
        }
    }
}

/// How far back the OS clock must be set for the coarse clock to follow it (see [`coarse_ticker`]).
const COARSE_STEP_BACK_NANOS: u64 = 1_000_000_000;

/// The coarse wall-clock time in nanoseconds since the Unix epoch: at most one tick (plus the ticker's
/// scheduling delay) behind, never decreasing unless the OS clock is set back by more than a second.
/// Falls back to [`wall_nanos`] when no ticker runs.
#[inline]
pub(crate) fn coarse_wall_nanos() -> u64 {
    match COARSE_NOW.load(Ordering::Relaxed) {
        0 => wall_nanos(),
        nanos => nanos,
    }
}

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
    fn coarse_clock_tracks_system_time_and_never_goes_back() {
        assert!(coarse_acquire());
        let mut last = 0;
        for _ in 0..5 {
            let coarse = coarse_wall_nanos();
            let os = epoch_nanos(SystemTime::now());
            // One tick plus generous room for a loaded machine.
            assert!(os.abs_diff(coarse) < 100_000_000, "{coarse} vs {os}");
            assert!(coarse >= last);
            last = coarse;
            std::thread::sleep(COARSE_TICK * 2);
        }
        coarse_release();
    }

    #[test]
    fn monotonic_clock_is_monotonic() {
        let a = now();
        let b = now();
        assert!(b >= a);
    }
}
