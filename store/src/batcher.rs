//! Write batching: transactions that arrive while earlier entries are still in flight are
//! packed into one Raft entry, so many clients share one append, one replication round and
//! one fsync instead of queueing for one each.
//!
//! Two transactions that write the same key never share an entry: every write of a key then
//! has its own revision, which is what compare-and-swap on `resourceVersion` relies on.
//!
//! A write with nothing ahead of it is proposed from its caller's task, and its answer comes
//! from the state machine as soon as the entry is applied (`Answers`): on a quiet member a
//! write crosses no task of the batcher's on either way. Each hand-off between tasks can wake
//! another thread, and on a lone member those wake-ups are a large part of a write's time.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use futures::FutureExt as _;

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::error::{Error, Result};
use crate::types::{NodeId, Raft, Request, Response, Txn, TxnResult};

/// Transactions per entry at most; bounds the entry's size together with the op limits.
const MAX_BATCH: usize = 512;

struct Pending {
    txn: Txn,
    reply: oneshot::Sender<Result<TxnResult>>,
}

type Replies = Vec<oneshot::Sender<Result<TxnResult>>>;

/// The replies to one entry's txns, carried inside the proposing process's copy of the entry
/// so the state machine can answer them as soon as it has applied the entry. If it never
/// sees them (the entry was read back from disk, or never applied), the batcher answers from
/// what openraft returns. Whoever takes them first answers; the other finds nothing.
#[derive(Clone, Default)]
pub struct Answers(Option<Arc<Mutex<Option<Replies>>>>);

impl Answers {
    fn new(replies: Replies) -> Self {
        Answers(Some(Arc::new(Mutex::new(Some(replies)))))
    }

    fn take(&self) -> Option<Replies> {
        let slot = self.0.as_ref()?;
        // A poisoned lock only means a panic elsewhere while it was held; the `Option`
        // inside is still whole.
        slot.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    /// Answers each txn with its result, if nobody has yet. The results are moved out of
    /// `response`: openraft's copy of it then goes nowhere.
    pub(crate) fn answer(&self, response: &mut Response) {
        if let Some(replies) = self.take() {
            send_results(replies, std::mem::take(&mut response.results), None);
        }
    }
}

/// Not part of the entry's value, so two entries with the same txns are equal.
impl PartialEq for Answers {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl fmt::Debug for Answers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "Answers" } else { "-" })
    }
}

fn send_results(replies: Replies, results: Vec<TxnResult>, log_id: Option<String>) {
    if results.len() == replies.len() {
        for (reply, r) in replies.into_iter().zip(results) {
            let _ = reply.send(Ok(r));
        }
        return;
    }
    let e = format!(
        "entry {} answered {} results for {} txns",
        log_id.unwrap_or_default(),
        results.len(),
        replies.len()
    );
    fail_all(Some(replies), &Error::Raft(e));
}

fn fail_all(replies: Option<Replies>, err: &Error) {
    for reply in replies.unwrap_or_default() {
        let _ = reply.send(Err(err.duplicate()));
    }
}

/// The batcher of one member. A write proposes its own entry, from the caller's task, when
/// nothing waits and an entry slot is free, so a lone write is not handed to another task
/// first; otherwise it queues, and the driver task proposes what queued as slots free up.
pub(crate) struct Batcher {
    raft: Raft,
    slots: Arc<Semaphore>,
    queue: Mutex<Queue>,
    /// Wakes the driver; dropped with the batcher, which stops the driver.
    wake: mpsc::Sender<()>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Pending>,
    /// Set while the driver owns the queue: a write then only queues, so entries keep the
    /// order their txns arrived in.
    driving: bool,
}

impl Batcher {
    /// Starts the batcher and its driver task, which stops when the batcher is dropped.
    pub(crate) fn start(raft: Raft, in_flight: usize) -> Arc<Batcher> {
        let (wake, woken) = mpsc::channel(1);
        let batcher = Arc::new(Batcher {
            raft,
            slots: Arc::new(Semaphore::new(in_flight.max(1))),
            queue: Mutex::new(Queue::default()),
            wake,
        });
        tokio::spawn(drive(Arc::downgrade(&batcher), woken));
        batcher
    }

    /// Queues `txn` or proposes it at once; the answer comes on the returned receiver.
    pub(crate) fn submit(&self, txn: Txn) -> oneshot::Receiver<Result<TxnResult>> {
        let (reply, rx) = oneshot::channel();
        self.submit_pending(vec![Pending { txn, reply }]);
        rx
    }

    /// Like `submit` for txns that came together: they queue together before any of them is
    /// proposed, so they share entries as if they had waited, rather than the first ones
    /// each taking an entry (and a slot) of their own.
    pub(crate) fn submit_all(
        &self,
        txns: impl IntoIterator<Item = Txn>,
    ) -> Vec<oneshot::Receiver<Result<TxnResult>>> {
        let (pending, receivers) = txns
            .into_iter()
            .map(|txn| {
                let (reply, rx) = oneshot::channel();
                (Pending { txn, reply }, rx)
            })
            .unzip();
        self.submit_pending(pending);
        receivers
    }

    fn submit_pending(&self, pending: Vec<Pending>) {
        let mut q = self.lock();
        q.waiting.extend(pending);
        if q.driving || q.waiting.is_empty() {
            return;
        }
        match self.slots.clone().try_acquire_owned() {
            Ok(slot) => {
                // Proposed under the lock, so no later write can be proposed before it.
                self.propose_next(&mut q, slot);
                if !q.waiting.is_empty() {
                    // Left behind: more than one entry holds, or a txn writes a key of the
                    // entry just proposed.
                    self.hand_over(&mut q);
                }
            }
            Err(_) => self.hand_over(&mut q),
        }
    }

    fn hand_over(&self, q: &mut Queue) {
        q.driving = true;
        // Full means a wake-up is already pending, which is all the driver needs.
        let _ = self.wake.try_send(());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // A poisoned lock only means a panic elsewhere while it was held; every change to the
        // queue is a single push or pop, so it is still whole.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Packs what waits into one entry (up to `MAX_BATCH`, and never two writes of one key)
    /// and proposes it.
    fn propose_next(&self, q: &mut Queue, slot: OwnedSemaphorePermit) {
        let Some(first) = q.waiting.pop_front() else {
            return;
        };
        let mut keys: HashSet<String> = first.txn.written_keys().map(str::to_string).collect();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            let Some(p) = q.waiting.front() else { break };
            if p.txn.written_keys().any(|k| keys.contains(k)) {
                break;
            }
            keys.extend(p.txn.written_keys().map(str::to_string));
            if let Some(p) = q.waiting.pop_front() {
                batch.push(p);
            }
        }
        let (txns, replies): (Vec<Txn>, Replies) =
            batch.into_iter().map(|p| (p.txn, p.reply)).unzip();
        let answers = Answers::new(replies);
        let request = Request {
            txns,
            answers: answers.clone(),
        };
        // openraft hands the request to its core over an unbounded channel, so the first
        // poll finishes unless the core has stopped (then it would wait to learn why).
        let proposed = self.raft.client_write_ff(request).now_or_never();
        let answer = match proposed {
            Some(Ok(rx)) => rx,
            Some(Err(fatal)) => {
                fail_all(answers.take(), &write_error(RaftError::Fatal(fatal)));
                return;
            }
            None => {
                fail_all(answers.take(), &Error::Stopped);
                return;
            }
        };
        tokio::spawn(async move {
            let result = answer.await;
            drop(slot);
            // Usually the state machine has answered already.
            let Some(replies) = answers.take() else {
                return;
            };
            match result {
                Ok(Ok(resp)) => {
                    send_results(replies, resp.data.results, Some(resp.log_id.to_string()))
                }
                Ok(Err(e)) => fail_all(Some(replies), &write_error(RaftError::APIError(e))),
                // The core dropped the answer: it stopped.
                Err(_) => fail_all(Some(replies), &Error::Stopped),
            }
        });
    }
}

/// The driver: while writes queue, it waits for a free slot and proposes the next entry
/// whenever one frees; with the queue empty it gives the queue back to the writers.
async fn drive(batcher: Weak<Batcher>, mut woken: mpsc::Receiver<()>) {
    while woken.recv().await.is_some() {
        let Some(b) = batcher.upgrade() else { return };
        let slots = b.slots.clone();
        // Not holding the batcher while waiting, so dropping it still stops this task.
        drop(b);
        loop {
            // Waiting for a free slot is what lets a batch grow under load.
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let Some(b) = batcher.upgrade() else { return };
            let mut q = b.lock();
            if q.waiting.is_empty() {
                q.driving = false;
                break;
            }
            b.propose_next(&mut q, slot);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn result(revision: u64) -> TxnResult {
        TxnResult {
            succeeded: true,
            revision,
            deleted: vec![],
        }
    }

    #[tokio::test]
    async fn answers_go_out_once_and_leave_the_response_empty() {
        let (tx1, rx1) = oneshot::channel();
        let (tx2, rx2) = oneshot::channel();
        let answers = Answers::new(vec![tx1, tx2]);
        let copy = answers.clone();
        let mut response = Response {
            results: vec![result(7), result(7)],
        };
        answers.answer(&mut response);
        assert!(response.results.is_empty(), "the results were moved out");
        assert_eq!(rx1.await.unwrap().unwrap().revision, 7);
        assert_eq!(rx2.await.unwrap().unwrap().revision, 7);
        // The batcher's copy finds them taken and answers nothing twice.
        assert!(copy.take().is_none());
        let mut again = Response {
            results: vec![result(8)],
        };
        copy.answer(&mut again);
        assert_eq!(again.results.len(), 1, "nothing taken the second time");
    }

    #[tokio::test]
    async fn a_result_count_that_does_not_match_fails_every_txn() {
        let (tx1, rx1) = oneshot::channel();
        let (tx2, rx2) = oneshot::channel();
        send_results(vec![tx1, tx2], vec![result(3)], Some("1-1-3".into()));
        for rx in [rx1, rx2] {
            let err = rx.await.unwrap().unwrap_err().to_string();
            assert!(err.contains("1 results for 2 txns"), "{err}");
        }
    }

    #[test]
    fn answers_are_not_part_of_the_entry() {
        let (tx, _rx) = oneshot::channel();
        let with = Request {
            txns: vec![Txn::put("/a", serde_json::json!({}))],
            answers: Answers::new(vec![tx]),
        };
        let without = Request::new(vec![Txn::put("/a", serde_json::json!({}))]);
        assert_eq!(with, without);
        let text = serde_json::to_string(&with).unwrap();
        assert!(!text.contains("answers"), "{text}");
        let back: Request = serde_json::from_str(&text).unwrap();
        assert!(back.answers.take().is_none());
    }
}
