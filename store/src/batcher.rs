//! Write batching: transactions that arrive while earlier entries are still in flight are
//! packed into one Raft entry, so many clients share one append, one replication round and
//! one fsync instead of queueing for one each.
//!
//! Two transactions that write the same key never share an entry: every write of a key then
//! has its own revision, which is what compare-and-swap on `resourceVersion` relies on.

use std::collections::HashSet;
use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::error::{Error, Result};
use crate::types::{NodeId, Raft, Request, Txn, TxnResult};

/// Transactions per entry at most; bounds the entry's size together with the op limits.
const MAX_BATCH: usize = 512;

pub(crate) struct Pending {
    pub txn: Txn,
    pub reply: oneshot::Sender<Result<TxnResult>>,
}

/// Starts the batcher; it stops when every sender is dropped.
pub(crate) fn spawn(raft: Raft, in_flight: usize) -> mpsc::Sender<Pending> {
    let (tx, rx) = mpsc::channel(4096);
    tokio::spawn(run(raft, rx, Arc::new(Semaphore::new(in_flight.max(1)))));
    tx
}

async fn run(raft: Raft, mut rx: mpsc::Receiver<Pending>, slots: Arc<Semaphore>) {
    let mut carried: Option<Pending> = None;
    loop {
        let first = match carried.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        // Waiting for a free slot is what lets a batch grow under load; with no load there
        // is a free slot at once and a lone write is not delayed.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut keys: HashSet<String> = first.txn.written_keys().map(str::to_string).collect();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            let Ok(p) = rx.try_recv() else { break };
            if p.txn.written_keys().any(|k| keys.contains(k)) {
                carried = Some(p);
                break;
            }
            keys.extend(p.txn.written_keys().map(str::to_string));
            batch.push(p);
        }
        let (txns, replies): (Vec<Txn>, Vec<_>) =
            batch.into_iter().map(|p| (p.txn, p.reply)).unzip();
        let n = txns.len();
        // Proposed here, in arrival order, and only the wait for the answer runs in its own
        // task: entries then get their revisions in the order their txns arrived, which a
        // spawned `client_write` per batch did not promise.
        let answer = match raft.client_write_ff(Request { txns }).await {
            Ok(rx) => rx,
            Err(fatal) => {
                let err = write_error(RaftError::Fatal(fatal));
                for reply in replies {
                    let _ = reply.send(Err(err.duplicate()));
                }
                continue;
            }
        };
        tokio::spawn(async move {
            let result = answer.await;
            drop(slot);
            match result {
                Ok(Ok(resp)) if resp.data.results.len() == n => {
                    for (reply, r) in replies.into_iter().zip(resp.data.results) {
                        let _ = reply.send(Ok(r));
                    }
                }
                Ok(Ok(resp)) => {
                    let e = format!(
                        "entry {} answered {} results for {n} txns",
                        resp.log_id,
                        resp.data.results.len()
                    );
                    for reply in replies {
                        let _ = reply.send(Err(Error::Raft(e.clone())));
                    }
                }
                Ok(Err(e)) => {
                    let err = write_error(RaftError::APIError(e));
                    for reply in replies {
                        let _ = reply.send(Err(err.duplicate()));
                    }
                }
                // The core dropped the answer: it stopped.
                Err(_) => {
                    for reply in replies {
                        let _ = reply.send(Err(Error::Stopped));
                    }
                }
            }
        });
    }
}

pub(crate) fn write_error(
    e: RaftError<NodeId, ClientWriteError<NodeId, openraft::BasicNode>>,
) -> Error {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => Error::NotLeader {
            leader: f.leader_id.zip(f.leader_node.map(|n| n.addr)),
        },
        RaftError::Fatal(openraft::error::Fatal::Stopped) => Error::Stopped,
        other => Error::Raft(other.to_string()),
    }
}
