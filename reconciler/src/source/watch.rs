//! When to look at the source again: [`Triggers::wait`] returns when a local repository's
//! refs (or a plain folder's files) changed, when a webhook said so, or when the poll interval
//! ran out, whichever comes first.
//!
//! Signals that arrive close together are coalesced: after the first one, [`Triggers::wait`]
//! keeps absorbing signals until a quiet window passes with none (bounded, so a steady stream
//! cannot starve the sync). The sync that follows reads the latest state anyway, so one
//! wake-up per burst loses nothing. How long the window is depends on what is watched:
//!
//! - A plain folder changes file by file (an editor saving several files, a `cp -r`), and a
//!   sync in the middle would validate a half-written state, so it waits [`DEFAULT_QUIET`].
//! - A local repository's watched refs only ever move by one atomic rename (`main.lock` onto
//!   `main`), so any moment's ref is a whole commit that someone made. The window there
//!   ([`REF_QUIET`]) only has to absorb the two or three inotify events of that one rename,
//!   which arrive together; every millisecond more would be added to each commit's latency.
//!
//! notify calls back on its own thread; it only `try_send`s into a bounded tokio channel.
//! A full channel means a wake-up is already pending, so dropping the signal is harmless.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{EventKind, ModifyKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::config::Reference;
use super::folder::FolderSource;
use super::git::GitSource;
use crate::error::{Error, Result};

/// How long after the last signal of a burst [`Triggers::wait`] returns.
pub const DEFAULT_QUIET: Duration = Duration::from_millis(25);
/// The quiet window of a local repository's ref watch (see the module docs).
pub const REF_QUIET: Duration = Duration::from_millis(2);
/// The longest a burst can hold a wake-up back.
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_millis(500);

const CHANNEL_CAPACITY: usize = 256;

#[derive(Debug)]
enum Signal {
    /// Something relevant changed on disk.
    Fs,
    /// A forge said `reference` of `repo` moved.
    Webhook { repo: String, reference: String },
}

/// Why [`Triggers::wait`] returned; several reasons may be coalesced into one wake-up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Wake {
    /// The poll interval ran out with nothing else happening.
    pub poll: bool,
    /// Filesystem events absorbed into this wake-up.
    pub fs_events: usize,
    /// Webhook triggers (for this source) absorbed into this wake-up.
    pub webhooks: usize,
}

impl Wake {
    /// The main reason, for logs.
    pub fn reason(&self) -> &'static str {
        if self.webhooks > 0 {
            "webhook"
        } else if self.fs_events > 0 {
            "watch"
        } else {
            "poll"
        }
    }
}

/// The webhook entry point: cheap to clone and hand to the HTTP receivers.
#[derive(Clone, Debug)]
pub struct WebhookTrigger {
    tx: mpsc::Sender<Signal>,
}

impl WebhookTrigger {
    /// Says `reference` (`refs/heads/main`, `main`, or empty for "something") of `repo` (a
    /// clone URL in any form, or empty for "this source") moved. Never blocks. The wake-up is
    /// skipped when the repository or ref is not the one the source follows.
    pub fn trigger(&self, repo: &str, reference: &str) {
        let signal = Signal::Webhook {
            repo: repo.to_string(),
            reference: reference.to_string(),
        };
        if let Err(mpsc::error::TrySendError::Closed(_)) = self.tx.try_send(signal) {
            tracing::debug!(repo, reference, "webhook trigger for a source that is gone");
        }
    }
}

/// Which webhooks concern the source.
#[derive(Clone, Debug)]
struct Filter {
    repo: String,
    reference: Reference,
}

/// The wake-ups of one source. Holds the notify watcher: dropping this stops watching.
pub struct Triggers {
    rx: mpsc::Receiver<Signal>,
    tx: mpsc::Sender<Signal>,
    interval: Duration,
    quiet: Duration,
    max_delay: Duration,
    next_poll: Instant,
    filter: Option<Filter>,
    watcher: Option<RecommendedWatcher>,
    watched: Vec<PathBuf>,
    /// The wake-up being coalesced and when its first signal came. Kept here, not in
    /// `wait`'s locals, so `wait` is cancel-safe: the sync loop waits in a `select!` beside
    /// other branches (health refreshes), and a `wait` dropped mid-coalescing must not lose
    /// the signals it already took from the channel; the next call carries on.
    pending: Option<(Wake, Instant)>,
}

impl std::fmt::Debug for Triggers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Triggers")
            .field("interval", &self.interval)
            .field("quiet", &self.quiet)
            .field("max_delay", &self.max_delay)
            .field("filter", &self.filter)
            .field("watched", &self.watched)
            .finish_non_exhaustive()
    }
}

impl Triggers {
    /// Only the poll interval and webhooks. The first poll is one interval from now: the
    /// sync loop syncs once when it starts.
    pub fn new(interval: Duration) -> Triggers {
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        Triggers {
            rx,
            tx,
            interval,
            quiet: DEFAULT_QUIET,
            max_delay: DEFAULT_MAX_DELAY,
            next_poll: Instant::now() + interval,
            filter: None,
            watcher: None,
            watched: Vec::new(),
            pending: None,
        }
    }

    /// The triggers of a Git source: its poll interval, webhooks for its repository and ref,
    /// and, for a local repository, a watch on its refs.
    pub fn for_git(source: &GitSource) -> Result<Triggers> {
        let config = source.config();
        let mut triggers = Triggers::new(config.interval);
        triggers.filter = Some(Filter {
            repo: normalize_repo(&config.repo),
            reference: config.reference.clone(),
        });
        if let Some((git_dir, common_dir)) = source.watch_dirs() {
            triggers.watch_git_dirs(&git_dir, &common_dir)?;
            triggers.quiet = REF_QUIET;
        }
        Ok(triggers)
    }

    /// The triggers of a plain folder: its poll interval and a recursive watch.
    pub fn for_folder(folder: &FolderSource) -> Result<Triggers> {
        let mut triggers = Triggers::new(folder.interval());
        triggers.watch_folder(folder.root())?;
        Ok(triggers)
    }

    /// Changes the coalescing window: return `quiet` after the last signal of a burst, and at
    /// most `max_delay` after its first.
    pub fn with_coalescing(mut self, quiet: Duration, max_delay: Duration) -> Triggers {
        self.quiet = quiet;
        self.max_delay = max_delay.max(quiet);
        self
    }

    /// The quiet window that ends a burst.
    pub fn quiet(&self) -> Duration {
        self.quiet
    }

    /// A handle for webhook receivers.
    pub fn webhook(&self) -> WebhookTrigger {
        WebhookTrigger {
            tx: self.tx.clone(),
        }
    }

    /// Waits for the next reason to look at the source. Signals that arrive while no one is
    /// waiting are kept (up to the channel's capacity) and wake the next call at once.
    pub async fn wait(&mut self) -> Wake {
        // Cancel-safe: every await below is on a cancel-safe future (`recv`, a sleep), and
        // what was taken from the channel is in `self.pending` before the next await.
        while self.pending.is_none() {
            tokio::select! {
                biased;
                signal = self.rx.recv() => {
                    // `self` holds a sender, so the channel never closes.
                    if let Some(signal) = signal {
                        let mut wake = Wake::default();
                        if self.absorb(signal, &mut wake) {
                            self.pending = Some((wake, Instant::now()));
                        }
                    }
                }
                () = tokio::time::sleep_until(self.next_poll) => {
                    let wake = Wake { poll: true, ..Wake::default() };
                    self.pending = Some((wake, Instant::now()));
                }
            }
        }
        while let Some((_, first)) = &self.pending {
            let deadline = (Instant::now() + self.quiet).min(*first + self.max_delay);
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(signal)) => {
                    if let Some((mut wake, first)) = self.pending.take() {
                        self.absorb(signal, &mut wake);
                        self.pending = Some((wake, first));
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        let wake = self.pending.take().map(|(w, _)| w).unwrap_or_default();
        self.next_poll = Instant::now() + self.interval;
        tracing::debug!(
            reason = wake.reason(),
            fs_events = wake.fs_events,
            webhooks = wake.webhooks,
            "wake"
        );
        wake
    }

    /// Counts `signal` into `wake`; false when it does not concern this source.
    fn absorb(&self, signal: Signal, wake: &mut Wake) -> bool {
        match signal {
            Signal::Fs => {
                wake.fs_events += 1;
                true
            }
            Signal::Webhook { repo, reference } => {
                let relevant = self
                    .filter
                    .as_ref()
                    .is_none_or(|f| f.accepts(&repo, &reference));
                if relevant {
                    wake.webhooks += 1;
                } else {
                    tracing::debug!(repo, reference, "webhook for another repository or ref");
                }
                relevant
            }
        }
    }

    /// Watches the refs of a repository: `HEAD` of `git_dir` (a linked worktree has its own),
    /// `packed-refs` and everything under `refs/heads` and `refs/tags` of `common_dir`.
    /// `refs/notes` is left out on purpose: writing a status note must not wake the loop.
    pub fn watch_git_dirs(&mut self, git_dir: &Path, common_dir: &Path) -> Result<()> {
        let git_dir = canonical(git_dir)?;
        let common_dir = canonical(common_dir)?;
        let heads = common_dir.join("refs").join("heads");
        let tags = common_dir.join("refs").join("tags");
        let relevant = {
            let (git_dir, common_dir) = (git_dir.clone(), common_dir.clone());
            move |path: &Path| {
                let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                    return false;
                };
                if name.ends_with(".lock") {
                    // The write of a ref ends in a rename onto its real name; that is the
                    // event that counts.
                    return false;
                }
                let parent = path.parent();
                (matches!(name, "HEAD" | "packed-refs")
                    && (parent == Some(git_dir.as_path()) || parent == Some(common_dir.as_path())))
                    || path.starts_with(&heads)
                    || path.starts_with(&tags)
            }
        };
        let mut watcher = self.make_watcher(relevant)?;
        let mut paths = vec![(git_dir.clone(), RecursiveMode::NonRecursive)];
        if common_dir != git_dir {
            paths.push((common_dir.clone(), RecursiveMode::NonRecursive));
        }
        let refs = common_dir.join("refs");
        if refs.is_dir() {
            paths.push((refs, RecursiveMode::Recursive));
        }
        for (path, mode) in paths {
            watcher.watch(&path, mode).map_err(|source| Error::Watch {
                path: path.display().to_string(),
                source,
            })?;
            self.watched.push(path);
        }
        tracing::debug!(git_dir = %git_dir.display(), "watching refs");
        self.watcher = Some(watcher);
        Ok(())
    }

    /// Watches every file below `root`.
    pub fn watch_folder(&mut self, root: &Path) -> Result<()> {
        let root = canonical(root)?;
        let mut watcher =
            self.make_watcher(|path: &Path| !path.components().any(|c| c.as_os_str() == ".git"))?;
        watcher
            .watch(&root, RecursiveMode::Recursive)
            .map_err(|source| Error::Watch {
                path: root.display().to_string(),
                source,
            })?;
        self.watched.push(root);
        self.watcher = Some(watcher);
        Ok(())
    }

    fn make_watcher(
        &self,
        relevant: impl Fn(&Path) -> bool + Send + 'static,
    ) -> Result<RecommendedWatcher> {
        let tx = self.tx.clone();
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let wake = match event {
                Ok(event) => {
                    if event.need_rescan() {
                        // The kernel queue overflowed: something changed, we do not know what.
                        true
                    } else {
                        // Opening and reading (our own fetch reads these files) and metadata
                        // changes such as atime never move a ref or change a manifest.
                        let mutating = !matches!(
                            event.kind,
                            EventKind::Access(_) | EventKind::Modify(ModifyKind::Metadata(_))
                        );
                        mutating && event.paths.iter().any(|p| relevant(p))
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "watch error; checking the source to be safe");
                    true
                }
            };
            if wake {
                // Full: a wake-up is already pending. Closed: the source is gone.
                let _ = tx.try_send(Signal::Fs);
            }
        })
        .map_err(|source| Error::Watch {
            path: String::new(),
            source,
        })
    }
}

impl Filter {
    fn accepts(&self, repo: &str, reference: &str) -> bool {
        let repo_ok = repo.is_empty() || normalize_repo(repo) == self.repo;
        let reference = reference.trim();
        let ref_ok = reference.is_empty()
            || match &self.reference {
                Reference::Branch(b) => {
                    reference == b || reference.strip_prefix("refs/heads/") == Some(b)
                }
                Reference::Tag(t) => {
                    reference == t || reference.strip_prefix("refs/tags/") == Some(t)
                }
                // A commit may arrive with any push; HEAD may be any branch.
                Reference::Commit(_) | Reference::Head => true,
            };
        repo_ok && ref_ok
    }
}

/// One spelling for the many ways to write a repository's address, so a webhook's
/// `https://host/org/repo` matches a source's `git@host:org/repo.git`.
fn normalize_repo(repo: &str) -> String {
    let repo = repo.trim().to_ascii_lowercase();
    let (rest, scp) = match repo.split_once("://") {
        Some((_, rest)) => (rest.to_string(), false),
        None => (repo.clone(), true),
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest.as_str(), ""));
    let mut authority = authority
        .rsplit_once('@')
        .map_or(authority, |(_, h)| h)
        .to_string();
    let mut path = path.to_string();
    if scp && let Some((host, p)) = authority.clone().split_once(':') {
        // `git@host:org/repo`: the colon separates the path, not a port.
        path = if path.is_empty() {
            p.to_string()
        } else {
            format!("{p}/{path}")
        };
        authority = host.to_string();
    } else if let Some((host, port)) = authority.clone().rsplit_once(':')
        && port.chars().all(|c| c.is_ascii_digit())
    {
        authority = host.to_string();
    }
    let path = path.trim_end_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path);
    format!("{authority}/{path}")
}

fn canonical(path: &Path) -> Result<PathBuf> {
    std::fs::canonicalize(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn repository_spellings_match() {
        let n = normalize_repo;
        assert_eq!(n("git@github.com:Org/Repo.git"), "github.com/org/repo");
        assert_eq!(n("https://github.com/org/repo"), "github.com/org/repo");
        assert_eq!(
            n("ssh://git@github.com:22/org/repo.git/"),
            "github.com/org/repo"
        );
        assert_ne!(n("https://github.com/org/other"), "github.com/org/repo");
    }

    #[test]
    fn webhook_filter() {
        let f = Filter {
            repo: normalize_repo("git@example.com:team/deploy.git"),
            reference: Reference::Branch("main".into()),
        };
        assert!(f.accepts("https://example.com/team/deploy", "refs/heads/main"));
        assert!(f.accepts("", "main"));
        assert!(f.accepts("https://example.com/team/deploy", ""));
        assert!(!f.accepts("https://example.com/team/deploy", "refs/heads/dev"));
        assert!(!f.accepts("https://example.com/team/other", "refs/heads/main"));
        assert!(!f.accepts("", "refs/tags/main"));
    }

    // Real time: the workspace's tokio has no test-util feature to pause the clock, so the
    // intervals are short and the bounds loose.
    #[tokio::test]
    async fn poll_interval_wakes_and_restarts() {
        let interval = Duration::from_millis(300);
        let mut t = Triggers::new(interval);
        let start = Instant::now();
        let wake = t.wait().await;
        assert!(wake.poll);
        assert_eq!(wake.reason(), "poll");
        assert!(start.elapsed() >= interval);
        // A webhook wakes early and pushes the next poll back by a whole interval.
        let hook = t.webhook();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            hook.trigger("", "");
        });
        let before = Instant::now();
        let wake = t.wait().await;
        assert_eq!(wake.webhooks, 1);
        assert!(!wake.poll);
        assert!(before.elapsed() < interval, "{:?}", before.elapsed());
        let before = Instant::now();
        assert!(t.wait().await.poll);
        assert!(before.elapsed() >= interval);
    }

    #[tokio::test]
    async fn a_wait_cancelled_while_coalescing_keeps_its_signal() {
        // The quiet period is long, so a select! beside the wait fires first, after the wait
        // took the webhook from the channel and while it coalesces.
        let mut t = Triggers::new(Duration::from_secs(3600))
            .with_coalescing(Duration::from_millis(200), Duration::from_secs(1));
        t.webhook().trigger("", "refs/heads/main");
        tokio::select! {
            _ = t.wait() => panic!("the wait should still be coalescing"),
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        // The next wait returns that webhook, not the poll an hour away.
        let wake = tokio::time::timeout(Duration::from_secs(2), t.wait())
            .await
            .expect("the webhook taken by the cancelled wait was lost");
        assert_eq!(wake.webhooks, 1);
        assert!(!wake.poll);
    }

    #[tokio::test]
    async fn a_burst_of_webhooks_is_one_wake() {
        let mut t = Triggers::new(Duration::from_millis(300));
        let hook = t.webhook();
        for _ in 0..100 {
            hook.trigger("", "refs/heads/main");
        }
        let wake = t.wait().await;
        assert!(!wake.poll);
        // The channel holds what arrived before the wait; all of it is one wake-up.
        assert_eq!(wake.webhooks, 100);
        // Nothing is left over: the next wake is the poll.
        assert!(t.wait().await.poll);
    }

    #[tokio::test]
    async fn webhooks_for_other_refs_do_not_wake() {
        let mut t = Triggers::new(Duration::from_millis(200));
        t.filter = Some(Filter {
            repo: normalize_repo("https://example.com/team/deploy.git"),
            reference: Reference::Branch("main".into()),
        });
        let hook = t.webhook();
        hook.trigger("https://example.com/team/deploy", "refs/heads/feature");
        hook.trigger("https://example.com/team/other", "refs/heads/main");
        assert!(t.wait().await.poll, "only the poll may wake");
        hook.trigger("https://example.com/team/deploy", "refs/heads/main");
        assert_eq!(t.wait().await.webhooks, 1);
    }

    #[tokio::test]
    async fn a_steady_stream_cannot_hold_a_wake_back_forever() {
        let mut t = Triggers::new(Duration::from_secs(60))
            .with_coalescing(Duration::from_millis(50), Duration::from_millis(300));
        let hook = t.webhook();
        let feeder = tokio::spawn(async move {
            loop {
                hook.trigger("", "");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        let start = Instant::now();
        let wake = t.wait().await;
        let waited = start.elapsed();
        feeder.abort();
        assert!(wake.webhooks > 1);
        // 300 ms of coalescing plus scheduling slack; without the bound it would never end.
        assert!(waited < Duration::from_secs(2), "{waited:?}");
    }
}
