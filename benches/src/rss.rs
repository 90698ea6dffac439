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
