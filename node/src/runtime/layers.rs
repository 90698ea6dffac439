//! Warm container layers: writable layers mounted over an image before any container asks
//! for one, so that starting a container does not wait for its overlay.
//!
//! A container's root is an overlay of its image (read-only, shared) and a writable layer of
//! its own (`upper` and `work`, on the state dir's disk, as containerd's snapshots are).
//! Mounting that overlay makes the kernel check the upper filesystem's features (a work
//! directory, an xattr, a tmpfile, a whiteout rename), a dozen journalled metadata writes: on
//! ext4 here 0.4 to 2 ms, and the directories themselves as much again, of a container start
//! of 3 to 8 ms. None of it depends on the container, only on its image. So a background
//! thread keeps a few layers mounted, in the host's mount namespace, for each of the images
//! containers were last started from; a container of one of those images takes one, which is
//! renamed into the container's directory and becomes its root as it is (the container's
//! mount namespace is a copy of the host's). The first container of an image, a burst larger
//! than the pool and a read-only root are made the cold way, as before.
//!
//! A taken layer stays mounted in the host's namespace while its container lives, as
//! containerd's rootfs mounts do; removing the container unmounts it
//! (`LinuxRuntime::remove_container`). Layers no container took are unmounted and removed
//! when the pool stops, and those an earlier agent left behind when a runtime opens the
//! state dir.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::background::Background;
use crate::error::Result;

/// How many images the pool keeps layers for: those of the containers started last.
pub const IMAGES: usize = 2;

/// Makes one layer over the image at the given path, returning its directory.
pub type Make = Box<dyn Fn(&Path) -> Result<PathBuf> + Send + Sync>;
/// Unmounts and removes one layer, as far as it can.
pub type Destroy = Box<dyn Fn(&Path) + Send + Sync>;

/// How the pool has done since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LayerStats {
    /// Containers that took a warm layer.
    pub taken: u64,
    /// Containers of an image that had none ready.
    pub missed: u64,
    /// Layers made.
    pub made: u64,
    /// Attempts to make one that failed.
    pub failed: u64,
}

/// The pool and its refill thread.
pub struct LayerPool {
    shared: Arc<Shared>,
    thread: Background,
}

impl std::fmt::Debug for LayerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerPool")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

struct Shared {
    per_image: usize,
    make: Make,
    destroy: Destroy,
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    /// Ready layers by image, oldest first.
    ready: HashMap<PathBuf, VecDeque<PathBuf>>,
    /// The images layers are kept for, the one used last at the back; at most [`IMAGES`].
    recent: VecDeque<PathBuf>,
    /// Ready layers of images that fell out of `recent`, for the thread to remove.
    retired: Vec<PathBuf>,
    stopping: bool,
    stats: LayerStats,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves maps and queues that are still valid.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    /// Puts `image` at the back of `recent`, retiring the layers of the image that falls out.
    fn touch(&mut self, image: &Path) {
        self.recent.retain(|i| i != image);
        self.recent.push_back(image.to_owned());
        while self.recent.len() > IMAGES {
            if let Some(old) = self.recent.pop_front()
                && let Some(layers) = self.ready.remove(&old)
            {
                self.retired.extend(layers);
            }
        }
    }

    /// An image of `recent` with fewer than `per_image` layers ready, the one used last first.
    fn wanting(&self, per_image: usize) -> Option<PathBuf> {
        self.recent
            .iter()
            .rev()
            .find(|i| self.ready.get(*i).map_or(0, VecDeque::len) < per_image)
            .cloned()
    }
}

impl LayerPool {
    /// Starts a thread that keeps `per_image` layers ready for each of the last [`IMAGES`]
    /// images containers were started from.
    pub fn start(per_image: usize, make: Make, destroy: Destroy) -> Result<LayerPool> {
        let shared = Arc::new(Shared {
            per_image,
            make,
            destroy,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let worker = Arc::clone(&shared);
        let thread = Background::spawn("coxswain-layers", "warm layer", move || refill(&worker))?;
        Ok(LayerPool { shared, thread })
    }

    /// Takes the oldest ready layer over `image`, if there is one, and has the thread make
    /// more for it.
    pub fn take(&self, image: &Path) -> Option<PathBuf> {
        let mut state = self.shared.lock();
        if state.stopping {
            return None;
        }
        state.touch(image);
        let layer = state.ready.get_mut(image).and_then(VecDeque::pop_front);
        if layer.is_some() {
            state.stats.taken += 1;
        } else {
            state.stats.missed += 1;
        }
        drop(state);
        self.shared.changed.notify_all();
        layer
    }

    pub fn stats(&self) -> LayerStats {
        self.shared.lock().stats
    }

    /// How many layers are ready over `image`.
    pub fn ready(&self, image: &Path) -> usize {
        self.shared.lock().ready.get(image).map_or(0, VecDeque::len)
    }

    /// Stops the thread and removes every layer no container took.
    pub fn stop(&self) {
        self.shared.lock().stopping = true;
        self.shared.changed.notify_all();
        // The thread removes what is left on its way out.
        self.thread.join();
    }
}

impl Drop for LayerPool {
    fn drop(&mut self) {
        self.stop();
    }
}

enum Job {
    Make(PathBuf),
    Remove(PathBuf),
}

/// The refill thread: removes retired layers, makes layers while an image of `recent` has
/// fewer than `per_image`, and on stop removes all that are ready. An image whose layer
/// cannot be made (it was removed from the image store, say) is dropped from `recent` rather
/// than retried: the next container of it puts it back.
fn refill(shared: &Shared) {
    loop {
        let job = {
            let mut state = shared.lock();
            loop {
                if state.stopping {
                    let mut left: Vec<PathBuf> = state.retired.drain(..).collect();
                    for (_, layers) in state.ready.drain() {
                        left.extend(layers);
                    }
                    drop(state);
                    for layer in &left {
                        (shared.destroy)(layer);
                    }
                    return;
                }
                if let Some(layer) = state.retired.pop() {
                    break Job::Remove(layer);
                }
                if let Some(image) = state.wanting(shared.per_image) {
                    break Job::Make(image);
                }
                state = shared
                    .changed
                    .wait(state)
                    .unwrap_or_else(|p| p.into_inner());
            }
        };
        match job {
            Job::Remove(layer) => (shared.destroy)(&layer),
            Job::Make(image) => {
                let made = (shared.make)(&image);
                let mut state = shared.lock();
                match made {
                    Ok(layer) => {
                        state.stats.made += 1;
                        if state.recent.contains(&image) && !state.stopping {
                            state.ready.entry(image).or_default().push_back(layer);
                        } else {
                            state.retired.push(layer);
                        }
                    }
                    Err(e) => {
                        state.stats.failed += 1;
                        state.recent.retain(|i| *i != image);
                        tracing::warn!(error = %e, image = %image.display(), "could not make a warm container layer");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::{Duration, Instant};

    /// A pool whose layers are names, with a log of what was removed. Images whose name
    /// starts with `bad` cannot be made.
    fn pool(per_image: usize) -> (LayerPool, Arc<Mutex<Vec<PathBuf>>>) {
        let n = Arc::new(AtomicU32::new(0));
        let removed = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&removed);
        let pool = LayerPool::start(
            per_image,
            Box::new(move |image| {
                if image.to_string_lossy().starts_with("bad") {
                    return Err(Error::Launch {
                        reason: "no such image".into(),
                    });
                }
                let i = n.fetch_add(1, Ordering::SeqCst);
                Ok(PathBuf::from(format!("{}-{i}", image.display())))
            }),
            Box::new(move |layer| log.lock().unwrap().push(layer.to_owned())),
        )
        .unwrap();
        (pool, removed)
    }

    fn eventually(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn the_first_container_of_an_image_misses_and_the_next_take_a_ready_layer() {
        let (pool, _) = pool(2);
        let a = Path::new("a");
        assert_eq!(pool.take(a), None);
        eventually("two layers over a", || pool.ready(a) == 2);
        let first = pool.take(a).unwrap();
        assert!(first.to_string_lossy().starts_with("a-"), "{first:?}");
        eventually("a refill", || pool.ready(a) == 2);
        let s = pool.stats();
        assert_eq!((s.taken, s.missed, s.made), (1, 1, 3));
    }

    #[test]
    fn only_the_images_used_last_keep_layers_and_the_others_are_removed() {
        let (pool, removed) = pool(1);
        for image in ["a", "b"] {
            pool.take(Path::new(image));
            eventually("a layer", || pool.ready(Path::new(image)) == 1);
        }
        // A third image pushes out the one used longest ago, "a".
        pool.take(Path::new("c"));
        eventually("a layer over c", || pool.ready(Path::new("c")) == 1);
        eventually("a's layer removed", || removed.lock().unwrap().len() == 1);
        assert_eq!(pool.ready(Path::new("a")), 0);
        assert_eq!(pool.ready(Path::new("b")), 1);
        assert!(
            removed.lock().unwrap()[0]
                .to_string_lossy()
                .starts_with("a-")
        );
    }

    #[test]
    fn stopping_removes_what_is_ready_and_nothing_taken() {
        let (pool, removed) = pool(2);
        let a = Path::new("a");
        pool.take(a);
        eventually("two layers", || pool.ready(a) == 2);
        let taken = pool.take(a).unwrap();
        eventually("a refill", || pool.ready(a) == 2);
        pool.stop();
        let removed = removed.lock().unwrap().clone();
        assert_eq!(removed.len(), 2, "{removed:?}");
        assert!(!removed.contains(&taken));
        assert_eq!(pool.take(a), None, "a stopped pool hands out nothing");
    }

    #[test]
    fn an_image_that_cannot_be_made_is_counted_and_not_retried() {
        let (pool, _) = pool(1);
        pool.take(Path::new("bad-image"));
        eventually("a failure", || pool.stats().failed == 1);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(pool.stats().failed, 1, "no retry loop");
        // Other images still get layers.
        pool.take(Path::new("a"));
        eventually("a layer over a", || pool.ready(Path::new("a")) == 1);
    }
}
