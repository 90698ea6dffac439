//! A process's resident memory from `/proc/PID/status`, split as the kernel counts it:
//! anonymous memory (the heap and stacks: what the process itself allocated) and file-backed
//! pages (its binary's code and data and shared libraries, mapped from the page cache, which
//! every process running the same binary shares).

use anyhow::Context;
use serde::Serialize;

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Rss {
    /// `VmRSS`: what `ps` and `top` show.
    pub rss_mib: f64,
    /// `RssAnon`.
    pub anon_mib: f64,
    /// `RssFile`: mostly the binary's text, mapped 64 KiB around every page it executes
    /// (the kernel's fault-around), so it grows with how spread out the code run is.
    pub file_mib: f64,
    /// `VmHWM`: the peak of `VmRSS`.
    pub peak_mib: f64,
}

impl Rss {
    pub fn of(pid: u32) -> anyhow::Result<Rss> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status"))?;
        let mib = |field: &str| -> anyhow::Result<f64> {
            let kib: f64 = status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
            Ok(kib / 1024.0)
        };
        Ok(Rss {
            rss_mib: mib("VmRSS:")?,
            anon_mib: mib("RssAnon:")?,
            file_mib: mib("RssFile:")?,
            peak_mib: mib("VmHWM:")?,
        })
    }

    /// `58.7 MiB (anonymous 24.8, file-backed 33.9)`.
    pub fn describe(&self) -> String {
        format!(
            "{:.1} MiB (anonymous {:.1}, file-backed {:.1})",
            self.rss_mib, self.anon_mib, self.file_mib
        )
    }
}

/// How many seconds in a row a process must stay under [`QUIET_TICKS`] of CPU time to count
/// as idle.
const QUIET_SECONDS: u32 = 2;
/// CPU clock ticks (user + system) a second that still count as idle: 1 tick is 10 ms at
/// Linux's usual 100 Hz, so this is 1% of one core. An idle `coxswain up` still wakes for its
/// summary and its probes, so "no tick at all" may never come.
const QUIET_TICKS: u64 = 1;

/// The process's CPU time so far, in clock ticks (`utime` + `stime` of `/proc/PID/stat`).
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    parse_cpu_ticks(&stat).with_context(|| format!("no CPU times in /proc/{pid}/stat"))
}

fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces and parentheses of its
    // own: count from after the last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12 here.
    let tick = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
    Some(tick(11)? + tick(12)?)
}

/// Waits until `pid` has used at most [`QUIET_TICKS`] of CPU in each of [`QUIET_SECONDS`]
/// seconds in a row, or until `limit` has passed. Returns how long it waited and whether the
/// process did go quiet.
pub fn wait_quiet(
    pid: u32,
    limit: std::time::Duration,
) -> anyhow::Result<(std::time::Duration, bool)> {
    let start = std::time::Instant::now();
    let mut quiet_seconds = 0;
    let mut before = cpu_ticks(pid)?;
    while start.elapsed() < limit {
        std::thread::sleep(std::time::Duration::from_secs(1));
        let now = cpu_ticks(pid)?;
        if now.saturating_sub(before) <= QUIET_TICKS {
            quiet_seconds += 1;
            if quiet_seconds >= QUIET_SECONDS {
                return Ok((start.elapsed(), true));
            }
        } else {
            quiet_seconds = 0;
        }
        before = now;
    }
    Ok((start.elapsed(), false))
}

#[cfg(test)]
mod tests {
    use super::parse_cpu_ticks;

    #[test]
    fn cpu_ticks_are_utime_plus_stime_even_with_a_name_holding_spaces_and_parens() {
        let stat = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 17 5 0 0 20 0 3 0 99 0 0";
        assert_eq!(parse_cpu_ticks(stat), Some(22));
    }

    #[test]
    fn a_stat_line_cut_short_gives_no_ticks() {
        assert_eq!(parse_cpu_ticks("4242 (x) S 1 4242"), None);
        assert_eq!(parse_cpu_ticks("no name at all"), None);
    }
}
