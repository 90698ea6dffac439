//! Watches: catch up from the history, then follow what `apply` announces, without gaps or
//! duplicates. The announcement channel is subscribed to *before* the history is read, so a
//! revision applied in between is seen twice at worst, and the second copy is dropped by
//! revision. A watcher that falls behind the channel, or a snapshot install, sends it back to
//! the history; if the history was compacted past it meanwhile, it gets `Compacted`.

use std::sync::Arc;

use tokio::sync::{broadcast, mpsc};

use crate::error::{Error, Result};
use crate::state_machine::{Applied, Notice, Shared};
use crate::types::{Event, Revision, WatchBatch};

/// Batches are delivered in revision order; an `Err` is the last item.
pub type WatchStream = mpsc::Receiver<Result<WatchBatch>>;

/// How many revisions, and roughly how many events, one history read returns before the
/// next, to bound memory. Events bound it too because a revision holds a whole batch of
/// txns: with revisions alone bounding it, a member whose controllers' watch fell behind
/// the broadcast and caught up from the history ended a million-write run at 338-367 MiB
/// RSS, and at 74 MiB with the events bound (docs/benchmarks.md).
const HISTORY_CHUNK: usize = 1024;
const HISTORY_CHUNK_EVENTS: usize = 4096;

/// An applied batch's events that match, as the watcher gets them (see [`Applied`]).
fn filter_applied(batch: &Applied, prefix: &str, prev: bool) -> Result<Option<WatchBatch>> {
    let events = batch.matching(prefix, prev)?;
    Ok((!events.is_empty()).then(|| WatchBatch {
        revision: batch.revision,
        events,
    }))
}

fn filter(batch: &WatchBatch, prefix: &str, prev: bool) -> Option<WatchBatch> {
    let events: Vec<_> = batch
        .events
        .iter()
        .filter(|e| e.kv.key.starts_with(prefix))
        // The previous value is cloned only for a watcher that asked for it: every put
        // carries one, and cloning it for each watcher and throwing it away was a few per
        // cent of a busy member's CPU.
        .map(|e| Event {
            kind: e.kind,
            kv: e.kv.clone(),
            prev: if prev { e.prev.clone() } else { None },
        })
        .collect();
    (!events.is_empty()).then(|| WatchBatch {
        revision: batch.revision,
        events,
    })
}

/// Starts a watch of `prefix` from revision `from` (0: from the next change). Fails at once
/// if `from` is already compacted.
pub fn start(
    shared: Arc<Shared>,
    prefix: String,
    from: Revision,
    prev: bool,
) -> Result<WatchStream> {
    let notices = shared.subscribe();
    let next = if from == 0 {
        shared.applied() + 1
    } else {
        from
    };
    if next <= shared.compacted() {
        return Err(Error::Compacted {
            requested: next,
            compacted: shared.compacted(),
        });
    }
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(run(shared, notices, tx, prefix, next, prev));
    Ok(rx)
}

async fn run(
    shared: Arc<Shared>,
    mut notices: broadcast::Receiver<Notice>,
    tx: mpsc::Sender<Result<WatchBatch>>,
    prefix: String,
    mut next: Revision,
    prev: bool,
) {
    let mut catch_up = true;
    loop {
        if catch_up {
            match read_history(&shared, &tx, &prefix, next, prev).await {
                Ok(Some(n)) => next = n,
                Ok(None) => return,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
            catch_up = false;
        }
        let notice = tokio::select! {
            n = notices.recv() => n,
            () = tx.closed() => return,
        };
        match notice {
            Ok(Notice::Applied(batch)) => {
                if batch.revision < next {
                    continue;
                }
                match filter_applied(&batch, &prefix, prev) {
                    Ok(Some(b)) => {
                        if tx.send(Ok(b)).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => {}
                    // A stored previous value that does not parse: the watch ends with the
                    // error rather than skip the event.
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
                next = batch.revision + 1;
            }
            Ok(Notice::Reset) | Err(broadcast::error::RecvError::Lagged(_)) => catch_up = true,
            Ok(Notice::Stopped) | Err(broadcast::error::RecvError::Closed) => {
                let _ = tx.send(Err(Error::Stopped)).await;
                return;
            }
        }
    }
}

/// Sends history from `next` on; returns the revision to continue from, or `None` if the
/// watcher went away.
async fn read_history(
    shared: &Arc<Shared>,
    tx: &mpsc::Sender<Result<WatchBatch>>,
    prefix: &str,
    mut next: Revision,
    prev: bool,
) -> Result<Option<Revision>> {
    loop {
        let s = shared.clone();
        let (batches, upto, more) = tokio::task::spawn_blocking(move || {
            s.history(next, HISTORY_CHUNK, HISTORY_CHUNK_EVENTS)
        })
        .await
        .map_err(|_| Error::Stopped)??;
        for batch in &batches {
            if let Some(b) = filter(batch, prefix, prev)
                && tx.send(Ok(b)).await.is_err()
            {
                return Ok(None);
            }
        }
        next = next.max(upto + 1);
        if !more {
            return Ok(Some(next));
        }
    }
}
