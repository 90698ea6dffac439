//! The refill thread of a pool ([`super::warm`], [`super::layers`]): started with the pool,
//! joined when the pool stops.

use std::sync::Mutex;
use std::thread::JoinHandle;

use crate::error::{Error, Result};

/// A named thread, joined at most once.
pub struct Background {
    what: &'static str,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Background {
    /// Starts `work` on a thread called `name`; `what` names it in errors and logs.
    pub fn spawn(
        name: &str,
        what: &'static str,
        work: impl FnOnce() + Send + 'static,
    ) -> Result<Background> {
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                // A refill must not hold up the start it refills after (see `priority`);
                // the threads it starts inherit this.
                if let Err(e) = super::priority::set_thread_nice(super::priority::BACKGROUND_NICE) {
                    tracing::debug!(error = %e, "could not lower the refill thread's priority");
                }
                work()
            })
            .map_err(|e| Error::Launch {
                reason: format!("cannot start the {what} thread: {e}"),
            })?;
        Ok(Background {
            what,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Waits for the thread to end (the caller has told it to); at once if it already has
    /// been joined.
    pub fn join(&self) {
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            tracing::warn!("the {} thread panicked", self.what);
        }
    }
}
