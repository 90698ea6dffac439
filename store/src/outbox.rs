//! Coalescing of a client's txns: concurrent `Client::txn` calls share HTTP requests
//! (`POST /v1/txns`), so under load many calls pay for one request's parsing, syscalls and
//! wake-ups on both ends instead of one each. The member then packs them into Raft entries
//! as if they had come one by one (`batcher.rs`), so each txn keeps its own result, its own
//! error and its own revision.
//!
//! A call goes out at once, from the caller's own task, while fewer than `MAX_IN_FLIGHT`
//! requests are out, so a lone caller waits for nothing. Calls made while that many are out
//! queue, and the next request to come back hands all of them (up to `MAX_TXNS` and
//! `MAX_BYTES`) to a task that sends them in one, and goes on while more queue. Only when
//! `BUSY_QUEUE` calls wait do more requests go out, up to `MAX_IN_FLIGHT_BUSY`.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::types::TxnResult;

/// Requests out at once per client. Two keep the member busy (one request's entry is
/// fsynced while the next arrives) while each request still carries all that waited; with
/// four, the member made an entry and an fsync of each small request, and at 16 clients put
/// a third fewer txns through (see `docs/benchmarks.md`).
const MAX_IN_FLIGHT: usize = 2;

/// When this many txns wait, one more request may go out, up to `MAX_IN_FLIGHT_BUSY`.
/// With two requests out and 256 callers, a member used about one of its two cores; with up
/// to four it put a tenth to a fifth more txns through (docs/benchmarks.md). A request that
/// carries this many txns is big enough to be worth its own entry and fsync, so fewer
/// callers (16 never queue this many) keep the two requests that suit them.
const BUSY_QUEUE: usize = 64;

/// Requests out at once while `BUSY_QUEUE` txns wait.
const MAX_IN_FLIGHT_BUSY: usize = 4;

/// Txns per request at most, well under the member's `MAX_TXNS_PER_REQUEST`.
pub(crate) const MAX_TXNS: usize = 256;

/// Body bytes per request at most, under the member's default 4 MiB request limit; a txn
/// bigger than this goes alone through `POST /v1/txn`, so its errors stay its own.
pub(crate) const MAX_BYTES: usize = 1 << 20;

struct Queued {
    body: Bytes,
    reply: oneshot::Sender<Result<TxnResult>>,
}

#[derive(Default)]
struct State {
    waiting: VecDeque<Queued>,
    in_flight: usize,
}

#[derive(Default)]
pub(crate) struct Outbox {
    state: Mutex<State>,
    requests: AtomicU64,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Outbox")
    }
}

impl Outbox {
    /// HTTP requests sent for txns so far.
    pub(crate) fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub(crate) fn count_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the queue half-changed (each critical
        // section is a push, a pop run or a counter change), so a poisoned lock is still sound.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Sends one txn (its JSON) of `client`, alone if a request slot is free, else with whatever
/// else is waiting once one frees; waits for its answer.
pub(crate) async fn submit(client: &Client, body: Bytes) -> Result<TxnResult> {
    let answer = {
        let mut st = client.outbox().lock();
        if st.in_flight < MAX_IN_FLIGHT {
            // Nothing waits while a slot is free (a freed slot takes all that waits), so
            // this txn would go alone anyway: it is sent from here, without a hop to a
            // task and back, which is most of a lone caller's cost.
            st.in_flight += 1;
            None
        } else {
            let (reply, answer) = oneshot::channel();
            st.waiting.push_back(Queued {
                body: body.clone(),
                reply,
            });
            if st.waiting.len() >= BUSY_QUEUE && st.in_flight < MAX_IN_FLIGHT_BUSY {
                st.in_flight += 1;
                let batch = take_batch(&mut st.waiting);
                tokio::spawn(send_until_empty(client.clone(), batch));
            }
            Some(answer)
        }
    };
    match answer {
        None => {
            let slot = Slot { client };
            let answers = client.send_txns(std::slice::from_ref(&body)).await;
            // The slot goes to whatever queued meanwhile; if this caller gives up before
            // here, dropping `slot` does the same, and only its own txn is abandoned.
            drop(slot);
            match answers?.pop() {
                Some(a) => a,
                None => Err(Error::Transport {
                    url: "/v1/txns".into(),
                    reason: "no answer for the txn".into(),
                }),
            }
        }
        // A dropped reply means the task carrying it is gone (the runtime is shutting
        // down), so whether the txn was applied is unknown, as after a lost connection.
        Some(answer) => answer.await.unwrap_or_else(|_| {
            Err(Error::Transport {
                url: "/v1/txns".into(),
                reason: "the request carrying this txn was dropped".into(),
            })
        }),
    }
}

/// A request slot held by a caller sending its own txn; released on drop, when it passes to
/// the txns queued meanwhile, if any.
struct Slot<'a> {
    client: &'a Client,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let outbox = self.client.outbox();
        let mut st = outbox.lock();
        // Outside a runtime (it is shutting down) no task can take the queue over; its
        // callers then see their replies dropped.
        match tokio::runtime::Handle::try_current() {
            Ok(handle) if !st.waiting.is_empty() => {
                let batch = take_batch(&mut st.waiting);
                handle.spawn(send_until_empty(self.client.clone(), batch));
            }
            _ => st.in_flight -= 1,
        }
    }
}

fn take_batch(waiting: &mut VecDeque<Queued>) -> Vec<Queued> {
    let mut bytes = 0;
    let mut batch = Vec::new();
    while let Some(next) = waiting.front() {
        if !batch.is_empty() && (batch.len() == MAX_TXNS || bytes + next.body.len() > MAX_BYTES) {
            break;
        }
        bytes += next.body.len();
        if let Some(q) = waiting.pop_front() {
            batch.push(q);
        }
    }
    batch
}

/// Sends `batch`, answers its callers, and goes on with whatever queued meanwhile; the
/// in-flight slot is given back only when nothing waits, or, for a request beyond the first
/// two, when too little waits, so no call is left behind.
async fn send_until_empty(client: Client, mut batch: Vec<Queued>) {
    let outbox = client.outbox();
    loop {
        let bodies: Vec<Bytes> = batch.iter().map(|q| q.body.clone()).collect();
        match client.send_txns(&bodies).await {
            Ok(answers) if answers.len() == batch.len() => {
                for (q, a) in batch.into_iter().zip(answers) {
                    let _ = q.reply.send(a);
                }
            }
            Ok(answers) => {
                let e = Error::Transport {
                    url: "/v1/txns".into(),
                    reason: format!("{} answers for {} txns", answers.len(), batch.len()),
                };
                for q in batch {
                    let _ = q.reply.send(Err(e.duplicate()));
                }
            }
            Err(e) => {
                for q in batch {
                    let _ = q.reply.send(Err(e.duplicate()));
                }
            }
        }
        // Lets the callers just answered run first: most of them send their next txn at
        // once, and it should ride in the next request rather than in the one after it.
        tokio::task::yield_now().await;
        let mut st = outbox.lock();
        // A request beyond the first two goes on only while the queue is long: a short one
        // is left to the others, which are still out and take it when they come back.
        let extra = st.in_flight > MAX_IN_FLIGHT && st.waiting.len() < BUSY_QUEUE;
        if st.waiting.is_empty() || extra {
            st.in_flight -= 1;
            return;
        }
        batch = take_batch(&mut st.waiting);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(len: usize) -> Queued {
        Queued {
            body: Bytes::from(vec![b' '; len]),
            reply: oneshot::channel().0,
        }
    }

    #[test]
    fn a_batch_stops_at_the_txn_count() {
        let mut waiting: VecDeque<Queued> = (0..MAX_TXNS + 3).map(|_| queued(10)).collect();
        assert_eq!(take_batch(&mut waiting).len(), MAX_TXNS);
        assert_eq!(take_batch(&mut waiting).len(), 3);
        assert!(take_batch(&mut waiting).is_empty());
    }

    #[test]
    fn a_batch_stops_before_the_byte_limit_but_always_takes_one() {
        let mut waiting: VecDeque<Queued> = [MAX_BYTES / 2, MAX_BYTES / 2, 1, MAX_BYTES * 2, 5]
            .into_iter()
            .map(queued)
            .collect();
        assert_eq!(take_batch(&mut waiting).len(), 2);
        // 1 byte, then one over the limit: it is not added to the 1-byte batch...
        assert_eq!(take_batch(&mut waiting).len(), 1);
        // ...but goes alone, rather than never.
        assert_eq!(take_batch(&mut waiting).len(), 1);
        assert_eq!(take_batch(&mut waiting).len(), 1);
        assert!(waiting.is_empty());
    }
}
