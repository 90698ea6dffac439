//! The network side of the API: the wire format, `Peer` (one pooled HTTP client that carries
//! every internal request, authenticated by the cluster token) and `Client` (the `Kv` API
//! over the network, following the leader and resuming watches across members).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::member::Kv;
use crate::outbox::{self, Outbox};
use crate::types::{Consistency, KeyValue, ListPage, Revision, Txn, TxnResult, WatchBatch};
use crate::watch::WatchStream;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GetRequest {
    pub key: String,
    #[serde(default)]
    pub consistency: Consistency,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GetResponse {
    pub revision: Revision,
    pub kv: Option<KeyValue>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListRequest {
    pub prefix: String,
    #[serde(default)]
    pub limit: usize,
    #[serde(default)]
    pub continue_token: Option<String>,
    #[serde(default)]
    pub consistency: Consistency,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WatchRequest {
    pub prefix: String,
    #[serde(default)]
    pub from: Revision,
    #[serde(default)]
    pub prev: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    pub id: u64,
    pub addr: String,
}

/// What `POST /cluster/join` answers once the new member is a voter.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinResponse {
    /// The cluster the member joined; it has adopted this id from the leader's messages.
    pub cluster: Option<String>,
}

/// What `GET /cluster/status` answers: this member's view of the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub id: u64,
    /// The cluster's identity (see `cluster_id.rs`); none on a member still waiting to join.
    #[serde(default)]
    pub cluster: Option<String>,
    pub leader: Option<u64>,
    pub term: u64,
    pub applied: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// Last log index covered by this member's snapshot, if it has one.
    pub snapshot: Option<u64>,
    /// Last log index purged from this member's log.
    pub purged: Option<u64>,
}

/// One line of a watch response.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WatchLine {
    Batch(WatchBatch),
    Error(WireError),
}

/// The answer for one txn of `POST /v1/txns`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxnAnswer {
    Ok(TxnResult),
    /// What `POST /v1/txn` would have answered for this txn alone: the HTTP status and the
    /// error.
    Err {
        status: u16,
        error: WireError,
    },
}

impl TxnAnswer {
    pub fn from_result(r: Result<TxnResult>) -> Self {
        match r {
            Ok(t) => TxnAnswer::Ok(t),
            Err(e) => {
                let (status, error) = WireError::from_error(&e);
                TxnAnswer::Err { status, error }
            }
        }
    }

    pub fn into_result(self) -> Result<TxnResult> {
        match self {
            TxnAnswer::Ok(t) => Ok(t),
            TxnAnswer::Err { status, error } => Err(error.into_error(status)),
        }
    }
}

/// An error as it crosses the wire, so the far side can rebuild the variant that matters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireError {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<(u64, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compacted: Option<(Revision, Revision)>,
}

impl WireError {
    pub fn from_error(e: &Error) -> (u16, WireError) {
        let (status, code) = match e {
            Error::NotLeader { .. } => (421, "not_leader"),
            Error::Compacted { .. } => (410, "compacted"),
            Error::TooLarge { .. } => (413, "too_large"),
            Error::TooManyOps { .. }
            | Error::TooManyTxns { .. }
            | Error::InvalidKey { .. }
            | Error::InvalidValue { .. }
            | Error::BadContinue(_) => (400, "invalid"),
            Error::Unauthorized => (401, "unauthorized"),
            Error::ClusterMismatch { .. } => (409, "cluster_mismatch"),
            Error::Stopped => (503, "stopped"),
            Error::NoSpace { .. } => (crate::error::NO_SPACE_STATUS, "no_space"),
            Error::Remote { status, .. } => (*status, "remote"),
            _ => (500, "internal"),
        };
        let wire = WireError {
            code: code.into(),
            message: e.to_string(),
            leader: match e {
                Error::NotLeader { leader } => leader.clone(),
                _ => None,
            },
            compacted: match e {
                Error::Compacted {
                    requested,
                    compacted,
                } => Some((*requested, *compacted)),
                _ => None,
            },
        };
        (status, wire)
    }

    pub fn into_error(self, status: u16) -> Error {
        match self.code.as_str() {
            "not_leader" => Error::NotLeader {
                leader: self.leader,
            },
            "compacted" => match self.compacted {
                Some((requested, compacted)) => Error::Compacted {
                    requested,
                    compacted,
                },
                None => Error::Remote {
                    status,
                    message: self.message,
                },
            },
            "unauthorized" => Error::Unauthorized,
            _ => Error::Remote {
                status,
                message: self.message,
            },
        }
    }
}

/// The one HTTP client of a process, shared by Raft replication, forwarding and clients.
#[derive(Clone)]
pub struct Peer {
    http: reqwest::Client,
    token: Arc<str>,
    /// A member's cluster id, sent on every request once known; clients have none.
    cluster: Arc<OnceLock<String>>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Peer")
    }
}

fn url(addr: &str, path: &str) -> String {
    if addr.starts_with("http://") || addr.starts_with("https://") {
        format!("{}{path}", addr.trim_end_matches('/'))
    } else {
        format!("http://{addr}{path}")
    }
}

impl Peer {
    pub fn new(token: &str) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(1))
            .pool_idle_timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .build()
            .unwrap_or_else(|e| {
                // Only fails if the TLS backend cannot initialise, and this build has none.
                tracing::error!("http client: {e}; using defaults");
                reqwest::Client::new()
            });
        Peer {
            http,
            token: Arc::from(token),
            cluster: Arc::new(OnceLock::new()),
        }
    }

    /// The same client, sending the member's cluster id (`cluster_id::HEADER`).
    pub fn with_cluster(mut self, cluster: Arc<OnceLock<String>>) -> Self {
        self.cluster = cluster;
        self
    }

    /// Compares in constant time, so the token cannot be guessed byte by byte from timings.
    pub fn token_matches(&self, given: &str) -> bool {
        bool::from(self.token.as_bytes().ct_eq(given.as_bytes()))
    }

    async fn send(
        &self,
        addr: &str,
        path: &str,
        body: &impl Serialize,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response> {
        let bytes = serde_json::to_vec(body).map_err(|e| Error::Transport {
            url: url(addr, path),
            reason: format!("encoding the request: {e}"),
        })?;
        self.send_json(addr, path, bytes, timeout).await
    }

    /// POSTs a body that is JSON already.
    async fn send_json(
        &self,
        addr: &str,
        path: &str,
        body: Vec<u8>,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response> {
        let target = url(addr, path);
        let mut req = self
            .http
            .post(&target)
            .bearer_auth(&*self.token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(id) = self.cluster.get() {
            req = req.header(crate::cluster_id::HEADER, id.as_str());
        }
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        let resp = req.send().await.map_err(|e| Error::Transport {
            url: target.clone(),
            reason: e.to_string(),
        })?;
        let status = resp.status().as_u16();
        if status == 200 {
            return Ok(resp);
        }
        let bytes = resp.bytes().await.map_err(|e| Error::Transport {
            url: target,
            reason: e.to_string(),
        })?;
        Err(match serde_json::from_slice::<WireError>(&bytes) {
            Ok(w) => w.into_error(status),
            Err(_) => Error::Remote {
                status,
                message: String::from_utf8_lossy(&bytes).into_owned(),
            },
        })
    }

    async fn decode<T: DeserializeOwned>(resp: reqwest::Response, target: String) -> Result<T> {
        let bytes = resp.bytes().await.map_err(|e| Error::Transport {
            url: target.clone(),
            reason: e.to_string(),
        })?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Transport {
            url: target,
            reason: format!("bad response: {e}"),
        })
    }

    /// POSTs `body` as JSON and decodes the JSON answer.
    pub async fn call<T: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        body: &impl Serialize,
        timeout: Option<Duration>,
    ) -> Result<T> {
        let resp = self.send(addr, path, body, timeout).await?;
        Self::decode(resp, url(addr, path)).await
    }

    /// Several txns in one request (`POST /v1/txns`), each given as its JSON encoding; one
    /// answer per txn, in order. Each txn succeeds or fails on its own, as if sent alone.
    pub async fn txns(&self, addr: &str, txns: &[Bytes]) -> Result<Vec<TxnAnswer>> {
        let mut body = Vec::with_capacity(txns.iter().map(|t| t.len() + 1).sum::<usize>() + 2);
        body.push(b'[');
        for (i, t) in txns.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(t);
        }
        body.push(b']');
        let resp = self
            .send_json(addr, "/v1/txns", body, Some(Duration::from_secs(10)))
            .await?;
        Self::decode(resp, url(addr, "/v1/txns")).await
    }

    /// The member's view of the cluster (`GET /cluster/status`).
    pub async fn status(&self, addr: &str) -> Result<Status> {
        let target = url(addr, "/cluster/status");
        let transport = |e: reqwest::Error| Error::Transport {
            url: target.clone(),
            reason: e.to_string(),
        };
        let resp = self
            .http
            .get(&target)
            .bearer_auth(&*self.token)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(transport)?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(transport)?;
        if status != 200 {
            return Err(match serde_json::from_slice::<WireError>(&bytes) {
                Ok(w) => w.into_error(status),
                Err(_) => Error::Remote {
                    status,
                    message: String::from_utf8_lossy(&bytes).into_owned(),
                },
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| Error::Transport {
            url: target.clone(),
            reason: format!("bad response: {e}"),
        })
    }

    pub async fn get(
        &self,
        addr: &str,
        key: &str,
        consistency: Consistency,
    ) -> Result<(Revision, Option<KeyValue>)> {
        let r: GetResponse = self
            .call(
                addr,
                "/v1/get",
                &GetRequest {
                    key: key.into(),
                    consistency,
                },
                Some(Duration::from_secs(10)),
            )
            .await?;
        Ok((r.revision, r.kv))
    }

    pub async fn list(
        &self,
        addr: &str,
        prefix: &str,
        limit: usize,
        continue_token: Option<&str>,
        consistency: Consistency,
    ) -> Result<ListPage> {
        self.call(
            addr,
            "/v1/list",
            &ListRequest {
                prefix: prefix.into(),
                limit,
                continue_token: continue_token.map(str::to_string),
                consistency,
            },
            Some(Duration::from_secs(30)),
        )
        .await
    }

    pub async fn txn(&self, addr: &str, txn: &Txn) -> Result<TxnResult> {
        self.call(addr, "/v1/txn", txn, Some(Duration::from_secs(10)))
            .await
    }

    /// Opens a watch on one member; the stream ends with an error when the connection does.
    pub async fn watch(
        &self,
        addr: &str,
        prefix: &str,
        from: Revision,
        prev: bool,
    ) -> Result<WatchStream> {
        let resp = self
            .send(
                addr,
                "/v1/watch",
                &WatchRequest {
                    prefix: prefix.into(),
                    from,
                    prev,
                },
                None,
            )
            .await?;
        let (tx, rx) = mpsc::channel(256);
        let target = url(addr, "/v1/watch");
        tokio::spawn(async move {
            let mut body = resp.bytes_stream();
            let mut buf: Vec<u8> = Vec::new();
            loop {
                let chunk = tokio::select! {
                    c = body.next() => c,
                    () = tx.closed() => return,
                };
                let chunk = match chunk {
                    Some(Ok(c)) => c,
                    Some(Err(e)) => {
                        let _ = tx
                            .send(Err(Error::Transport {
                                url: target.clone(),
                                reason: e.to_string(),
                            }))
                            .await;
                        return;
                    }
                    None => {
                        let _ = tx
                            .send(Err(Error::Transport {
                                url: target.clone(),
                                reason: "watch stream ended".into(),
                            }))
                            .await;
                        return;
                    }
                };
                buf.extend_from_slice(&chunk);
                while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    let item = match serde_json::from_slice::<WatchLine>(&line[..line.len() - 1]) {
                        Ok(WatchLine::Batch(b)) => Ok(b),
                        Ok(WatchLine::Error(w)) => Err(w.into_error(500)),
                        Err(e) => Err(Error::Transport {
                            url: target.clone(),
                            reason: format!("bad watch line: {e}"),
                        }),
                    };
                    let end = item.is_err();
                    if tx.send(item).await.is_err() || end {
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }
}

/// The store over the network. Sends to one member at a time; follows `NotLeader` hints and
/// moves on to the next member when one does not answer.
#[derive(Debug, Clone)]
pub struct Client {
    peer: Peer,
    members: Arc<Vec<String>>,
    current: Arc<AtomicUsize>,
    /// Shared by the clones, so every clone's concurrent txns can share requests.
    outbox: Arc<Outbox>,
    /// How long a call keeps retrying through elections and dead members.
    pub retry_for: Duration,
}

impl Client {
    pub fn new(members: Vec<String>, token: &str) -> Self {
        Client {
            peer: Peer::new(token),
            members: Arc::new(members),
            current: Arc::new(AtomicUsize::new(0)),
            outbox: Arc::new(Outbox::default()),
            retry_for: Duration::from_secs(10),
        }
    }

    fn addr(&self) -> String {
        let i = self.current.load(Ordering::Relaxed) % self.members.len().max(1);
        self.members.get(i).cloned().unwrap_or_default()
    }

    fn rotate(&self, err: &Error) {
        if let Error::NotLeader {
            leader: Some((_, addr)),
        } = err
            && let Some(i) = self.members.iter().position(|m| m == addr)
        {
            self.current.store(i, Ordering::Relaxed);
            return;
        }
        self.current.fetch_add(1, Ordering::Relaxed);
    }

    async fn retrying<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let deadline = tokio::time::Instant::now() + self.retry_for;
        let mut pause = Duration::from_millis(20);
        loop {
            match f(self.addr()).await {
                Err(e) if e.is_retryable() && tokio::time::Instant::now() < deadline => {
                    self.rotate(&e);
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                other => return other,
            }
        }
    }

    /// HTTP requests this client (with its clones) has sent for txns; concurrent txns share
    /// requests, so under load this grows slower than the number of txns.
    pub fn txn_requests(&self) -> u64 {
        self.outbox.requests()
    }

    pub(crate) fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// One `POST /v1/txns` to the current member. A failure moves the client on once for the
    /// whole request, not once per txn in it.
    pub(crate) async fn send_txns(&self, bodies: &[Bytes]) -> Result<Vec<Result<TxnResult>>> {
        self.outbox.count_request();
        let answers = match self.peer.txns(&self.addr(), bodies).await {
            Ok(a) => a,
            Err(e) => {
                if matches!(e, Error::Transport { .. } | Error::NotLeader { .. }) {
                    self.rotate(&e);
                }
                return Err(e);
            }
        };
        let results: Vec<_> = answers.into_iter().map(TxnAnswer::into_result).collect();
        if let Some(e) = results.iter().find_map(|r| match r {
            Err(e @ Error::NotLeader { .. }) => Some(e),
            _ => None,
        }) {
            self.rotate(e);
        }
        Ok(results)
    }

    /// Txns are not retried: after a transport error the write may or may not have
    /// happened, and only the caller knows whether repeating it is safe. `NotLeader` is
    /// retried, since then nothing was proposed.
    async fn txn_once(&self, txn: &Txn) -> Result<TxnResult> {
        let deadline = tokio::time::Instant::now() + self.retry_for;
        loop {
            self.outbox.count_request();
            match self.peer.txn(&self.addr(), txn).await {
                Err(e @ Error::NotLeader { .. }) if tokio::time::Instant::now() < deadline => {
                    self.rotate(&e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e @ Error::Transport { .. }) => {
                    self.rotate(&e);
                    return Err(e);
                }
                other => return other,
            }
        }
    }
}

impl Kv for Client {
    async fn get(
        &self,
        key: &str,
        consistency: Consistency,
    ) -> Result<(Revision, Option<KeyValue>)> {
        self.retrying(|addr| {
            let peer = self.peer.clone();
            let key = key.to_string();
            async move { peer.get(&addr, &key, consistency).await }
        })
        .await
    }

    async fn list(
        &self,
        prefix: &str,
        limit: usize,
        continue_token: Option<&str>,
        consistency: Consistency,
    ) -> Result<ListPage> {
        self.retrying(|addr| {
            let peer = self.peer.clone();
            let prefix = prefix.to_string();
            let token = continue_token.map(str::to_string);
            async move {
                peer.list(&addr, &prefix, limit, token.as_deref(), consistency)
                    .await
            }
        })
        .await
    }

    /// Sent with whatever other txns of this client are waiting (`outbox.rs`); one too big
    /// to share a request goes alone. Retried only on `NotLeader`, as `txn_once` explains.
    async fn txn(&self, txn: Txn) -> Result<TxnResult> {
        let body = match serde_json::to_vec(&txn) {
            Ok(b) if b.len() <= outbox::MAX_BYTES => Bytes::from(b),
            _ => return self.txn_once(&txn).await,
        };
        let deadline = tokio::time::Instant::now() + self.retry_for;
        loop {
            match outbox::submit(self, body.clone()).await {
                Err(Error::NotLeader { .. }) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => return other,
            }
        }
    }

    /// A watch that survives its member: when the connection drops it reconnects to
    /// another member from the revision after the last one delivered.
    async fn watch(&self, prefix: &str, from: Revision, prev: bool) -> Result<WatchStream> {
        // "From now on" is pinned to a revision first, so a reconnect resumes from there
        // rather than from whatever "now" is on the next member.
        let from = if from == 0 {
            self.get("/", Consistency::Serializable).await?.0 + 1
        } else {
            from
        };
        let first = self
            .retrying(|addr| {
                let peer = self.peer.clone();
                let prefix = prefix.to_string();
                async move { peer.watch(&addr, &prefix, from, prev).await }
            })
            .await?;
        let (tx, rx) = mpsc::channel(256);
        let client = self.clone();
        let prefix = prefix.to_string();
        tokio::spawn(async move {
            let mut inner = first;
            let mut next = from;
            loop {
                let item = tokio::select! {
                    i = inner.recv() => i,
                    () = tx.closed() => return,
                };
                match item {
                    Some(Ok(batch)) => {
                        next = batch.revision + 1;
                        if tx.send(Ok(batch)).await.is_err() {
                            return;
                        }
                    }
                    Some(Err(e)) if !e.is_retryable() => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                    _ => {
                        client.current.fetch_add(1, Ordering::Relaxed);
                        let reopened = client
                            .retrying(|addr| {
                                let peer = client.peer.clone();
                                let prefix = prefix.clone();
                                async move { peer.watch(&addr, &prefix, next, prev).await }
                            })
                            .await;
                        match reopened {
                            Ok(s) => inner = s,
                            Err(e) => {
                                let _ = tx.send(Err(e)).await;
                                return;
                            }
                        }
                    }
                }
            }
        });
        Ok(rx)
    }
}
