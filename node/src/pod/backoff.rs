//! The crash-loop back-off of one container, with the kubelet's exact rules, and Go's way of
//! printing a duration (the kubelet's `back-off 1m20s ...` messages are read by people and
//! scripts that expect that form).
//!
//! What the kubelet does (`kuberuntime_manager.go`, `doBackOff`, on top of client-go's
//! `flowcontrol.Backoff` made with 10 s initial and 300 s maximum), checked against its
//! source before writing this:
//!
//! - the first exit of a container finds no back-off entry, so its restart is **immediate**;
//!   that restart creates the entry with the initial delay (10 s);
//! - each later exit is held until `finishedAt + delay` (the pod shows `CrashLoopBackOff`,
//!   `back-off 10s restarting failed container=...`), and each restart doubles the delay, up
//!   to the maximum: so the waits between exit and restart are 0, 10, 20, 40, 80, 160, 300,
//!   300 s... and the delay the messages quote runs 10s, 20s, 40s, 1m20s, 2m40s, 5m0s, 5m0s;
//! - an exit more than twice the maximum (10 min) after the last restart finds the entry
//!   expired: the container counts as stable again, so it restarts at once and the delay
//!   starts over at 10 s.
//!
//! The kubelet measures from the container's `finishedAt`; the worker measures from the
//! moment it saw the exit, on its own monotonic clock (the agent is woken by the runtime when
//! a container ends, so the two are the same moment, and a wall clock that steps cannot skew
//! the wait). The kubelet adds no jitter to container back-off, and neither does this.

use std::time::{Duration, Instant};

/// The back-off state of one container of one pod.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    reset_after: Duration,
    entry: Option<Entry>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// The wait the next exit gets.
    delay: Duration,
    /// When the container was last restarted (the kubelet's `lastUpdate`).
    restarted: Instant,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration, reset_after: Duration) -> Self {
        Self {
            base,
            max: max.max(base),
            reset_after,
            entry: None,
        }
    }

    /// Whether the entry is stale for an exit at `exited`: the container ran long enough
    /// since its last restart to count as healthy (the kubelet's `hasExpired`).
    fn expired(&self, entry: &Entry, exited: Instant) -> bool {
        exited.saturating_duration_since(entry.restarted) > self.reset_after
    }

    /// When a container that exited at `exited` may be restarted, if that is later than
    /// `now` (the kubelet's `IsInBackOffSince`); `None` means "restart now".
    pub fn blocked_until(&self, exited: Instant, now: Instant) -> Option<Instant> {
        let entry = self.entry.as_ref()?;
        if self.expired(entry, exited) {
            return None;
        }
        let until = exited.checked_add(entry.delay)?;
        (now < until).then_some(until)
    }

    /// Records a restart at `now` of a container that exited at `exited` (the kubelet's
    /// `Next`): starts the entry at the base delay, or doubles it up to the maximum.
    pub fn restarted(&mut self, exited: Instant, now: Instant) {
        let delay = match &self.entry {
            Some(entry) if !self.expired(entry, exited) => {
                entry.delay.saturating_mul(2).min(self.max)
            }
            _ => self.base,
        };
        self.entry = Some(Entry {
            delay,
            restarted: now,
        });
    }

    /// The delay the next exit waits (what the kubelet quotes in `back-off 20s ...`); `None`
    /// before the first restart.
    pub fn delay(&self) -> Option<Duration> {
        self.entry.map(|e| e.delay)
    }

    /// Forgets the history, as a changed container spec does (the kubelet keys back-off by
    /// the container's spec hash).
    pub fn reset(&mut self) {
        self.entry = None;
    }
}

/// A duration as Go's `time.Duration.String` prints it: `10s`, `1m20s`, `5m0s`, `1h0m0s`,
/// `1.5s`, `500ms`, `0s`.
pub fn go_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    if nanos < 1_000_000_000 {
        // Below a second Go picks the largest unit that keeps a non-zero integer part.
        let (unit, scale) = if nanos < 1_000 {
            ("ns", 1)
        } else if nanos < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        return format!("{}{unit}", decimal(nanos, scale));
    }
    let secs_total = d.as_secs();
    let hours = secs_total / 3600;
    let minutes = (secs_total % 3600) / 60;
    let secs_nanos = u128::from(secs_total % 60) * 1_000_000_000 + u128::from(d.subsec_nanos());
    let secs = decimal(secs_nanos, 1_000_000_000);
    if hours > 0 {
        format!("{hours}h{minutes}m{secs}s")
    } else if minutes > 0 {
        format!("{minutes}m{secs}s")
    } else {
        format!("{secs}s")
    }
}

/// `value / scale` with the fraction's trailing zeros dropped (`1500, 1000` is `1.5`).
fn decimal(value: u128, scale: u128) -> String {
    let whole = value / scale;
    let frac = value % scale;
    if frac == 0 {
        return whole.to_string();
    }
    let width = scale.ilog10() as usize;
    let digits = format!("{frac:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn kubelet() -> Backoff {
        Backoff::new(S(10), S(300), S(600))
    }

    #[test]
    fn first_restart_is_immediate_then_the_delay_doubles_to_the_cap() {
        let t0 = Instant::now();
        let mut b = kubelet();
        // A container that crashes the moment it starts, restarted as soon as allowed.
        let mut now = t0;
        let mut waits = Vec::new();
        let mut quoted = Vec::new();
        for _ in 0..9 {
            let exited = now;
            let until = b.blocked_until(exited, now).unwrap_or(now);
            waits.push(until.duration_since(exited).as_secs());
            // Nothing is allowed a moment before the wait is over.
            if until > exited {
                assert_eq!(
                    b.blocked_until(exited, until - Duration::from_millis(1)),
                    Some(until)
                );
            }
            assert_eq!(b.blocked_until(exited, until), None);
            now = until;
            b.restarted(exited, now);
            quoted.push(b.delay().unwrap().as_secs());
        }
        assert_eq!(waits, [0, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(quoted, [10, 20, 40, 80, 160, 300, 300, 300, 300]);
    }

    #[test]
    fn running_longer_than_the_reset_window_starts_over() {
        let t0 = Instant::now();
        let mut b = kubelet();
        b.restarted(t0, t0);
        b.restarted(t0, t0 + S(10));
        b.restarted(t0 + S(10), t0 + S(30));
        assert_eq!(b.delay(), Some(S(40)));
        // Exactly ten minutes after the last restart is not yet "more than" the window.
        let exited = t0 + S(30) + S(600);
        assert_eq!(b.blocked_until(exited, exited), Some(exited + S(40)));
        // A moment later it is: restart at once, and the delay is back to the base.
        let exited = exited + S(1);
        assert_eq!(b.blocked_until(exited, exited), None);
        b.restarted(exited, exited);
        assert_eq!(b.delay(), Some(S(10)));
    }

    #[test]
    fn reset_forgets_the_history() {
        let t0 = Instant::now();
        let mut b = kubelet();
        b.restarted(t0, t0);
        assert!(b.blocked_until(t0 + S(1), t0 + S(1)).is_some());
        b.reset();
        assert_eq!(b.delay(), None);
        assert_eq!(b.blocked_until(t0 + S(1), t0 + S(1)), None);
    }

    #[test]
    fn durations_print_as_go_prints_them() {
        let cases = [
            (Duration::ZERO, "0s"),
            (S(10), "10s"),
            (S(80), "1m20s"),
            (S(160), "2m40s"),
            (S(300), "5m0s"),
            (S(3600), "1h0m0s"),
            (S(3725), "1h2m5s"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_millis(500), "500ms"),
            (Duration::from_micros(1500), "1.5ms"),
            (Duration::from_nanos(42), "42ns"),
        ];
        for (d, want) in cases {
            assert_eq!(go_duration(d), want, "{d:?}");
        }
    }
}
