//! The internal HTTP RPC of a member (axum): Raft messages, the `Kv` API (forwarded to the
//! leader when this member cannot answer), watch streams as newline-delimited JSON, and
//! membership. Every request must carry the cluster token.
//!
//! `serve` takes a bound listener and a shutdown future, so tests bind port 0.

use std::future::Future;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::Serialize;
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::client::{
    GetRequest, GetResponse, JoinRequest, JoinResponse, ListRequest, Status, TxnAnswer, WatchLine,
    WatchRequest, WireError,
};
use crate::cluster_id;
use crate::error::Error;
use crate::fast_json::FastJson;
use crate::member::{Kv, Member};
use crate::types::{NodeId, Txn, TypeConfig};

struct ApiError(Error);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, wire) = WireError::from_error(&self.0);
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(wire)).into_response()
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

pub fn router(member: Member) -> Router {
    let limit = member.limits().max_request_bytes;
    // Raft messages carry whole commits (one entry per Git commit), so they get their own,
    // larger body limit.
    let raft = Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/snapshot", post(snapshot))
        .layer(DefaultBodyLimit::max(member.limits().max_raft_bytes));
    Router::new()
        .route("/v1/get", post(get_key))
        .route("/v1/list", post(list))
        .route("/v1/txn", post(txn))
        .route("/v1/txns", post(txns))
        .route("/v1/watch", post(watch))
        .route("/cluster/join", post(join))
        .route("/cluster/remove", post(remove))
        .route("/cluster/status", get(status))
        .layer(DefaultBodyLimit::max(limit))
        .merge(raft)
        .layer(middleware::from_fn_with_state(member.clone(), auth))
        .with_state(member)
}

/// Serves until `shutdown` completes. Then the member stops (its watch streams end, so
/// their connections can close), and the server waits for the requests in flight.
pub async fn serve(
    listener: TcpListener,
    member: Member,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(member.clone());
    let stopping = member.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            if let Err(e) = stopping.shutdown().await {
                tracing::warn!("raft shutdown: {e}");
            }
        })
        .await
}

async fn auth(State(member): State<Member>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !member.token_matches(given) {
        return ApiError(Error::Unauthorized).into_response();
    }
    let span = tracing::debug_span!("request", path = %req.uri().path(), member = member.id());
    next.run(req).instrument(span).await
}

/// Raft answers travel as `Result` in a 200, so openraft's own error reaches the caller.
fn raft_answer<T: Serialize, E: Serialize>(r: Result<T, E>) -> Json<Result<T, E>> {
    Json(r)
}

fn cluster_of(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(cluster_id::HEADER)
        .and_then(|v| v.to_str().ok())
}

async fn append(
    State(m): State<Member>,
    headers: HeaderMap,
    FastJson(req): FastJson<AppendEntriesRequest<TypeConfig>>,
) -> Result<impl IntoResponse, ApiError> {
    m.check_cluster(cluster_of(&headers), true)?;
    Ok(raft_answer(m.raft().append_entries(req).await))
}

async fn vote(
    State(m): State<Member>,
    headers: HeaderMap,
    FastJson(req): FastJson<VoteRequest<NodeId>>,
) -> Result<impl IntoResponse, ApiError> {
    // A vote request never makes a member adopt an id: only a leader's messages do.
    m.check_cluster(cluster_of(&headers), false)?;
    Ok(raft_answer(m.raft().vote(req).await))
}

async fn snapshot(
    State(m): State<Member>,
    headers: HeaderMap,
    FastJson(req): FastJson<InstallSnapshotRequest<TypeConfig>>,
) -> Result<impl IntoResponse, ApiError> {
    m.check_cluster(cluster_of(&headers), true)?;
    Ok(raft_answer(m.raft().install_snapshot(req).await))
}

async fn get_key(
    State(m): State<Member>,
    FastJson(req): FastJson<GetRequest>,
) -> ApiResult<GetResponse> {
    let (revision, kv) = m.get(&req.key, req.consistency).await?;
    Ok(Json(GetResponse { revision, kv }))
}

async fn list(
    State(m): State<Member>,
    FastJson(req): FastJson<ListRequest>,
) -> ApiResult<crate::ListPage> {
    Ok(Json(
        m.list(
            &req.prefix,
            req.limit,
            req.continue_token.as_deref(),
            req.consistency,
        )
        .await?,
    ))
}

async fn txn(State(m): State<Member>, FastJson(req): FastJson<Txn>) -> ApiResult<crate::TxnResult> {
    Ok(Json(m.txn(req).await?))
}

/// Txns per `POST /v1/txns`; a client coalesces at most `outbox::MAX_TXNS`.
const MAX_TXNS_PER_REQUEST: usize = 1024;

/// Several independent txns in one request: each is checked, proposed and answered as if it
/// had come alone to `/v1/txn`, so one bad txn fails only itself. They are handed to the
/// batcher together, in the request's order, and wait together (`Member::txns`).
async fn txns(
    State(m): State<Member>,
    FastJson(req): FastJson<Vec<Txn>>,
) -> ApiResult<Vec<TxnAnswer>> {
    if req.len() > MAX_TXNS_PER_REQUEST {
        return Err(Error::TooManyTxns {
            count: req.len(),
            limit: MAX_TXNS_PER_REQUEST,
        }
        .into());
    }
    let answers = m.txns(req).await;
    Ok(Json(
        answers.into_iter().map(TxnAnswer::from_result).collect(),
    ))
}

async fn watch(
    State(m): State<Member>,
    FastJson(req): FastJson<WatchRequest>,
) -> Result<Response, ApiError> {
    let stream = m.watch(&req.prefix, req.from, req.prev).await?;
    let lines = tokio_stream::wrappers::ReceiverStream::new(stream).map(|item| {
        let line = match item {
            Ok(b) => WatchLine::Batch(b),
            Err(e) => WatchLine::Error(WireError::from_error(&e).1),
        };
        let mut bytes = serde_json::to_vec(&line).unwrap_or_else(|_| b"{}".to_vec());
        bytes.push(b'\n');
        Ok::<_, std::convert::Infallible>(bytes)
    });
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(lines))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
}

async fn join(
    State(m): State<Member>,
    FastJson(req): FastJson<JoinRequest>,
) -> ApiResult<JoinResponse> {
    m.add_member(req.id, &req.addr).await?;
    Ok(Json(JoinResponse {
        cluster: m.cluster_id().map(str::to_string),
    }))
}

#[derive(serde::Deserialize)]
struct RemoveRequest {
    id: NodeId,
}

async fn remove(State(m): State<Member>, FastJson(req): FastJson<RemoveRequest>) -> ApiResult<()> {
    m.remove_member(req.id).await?;
    Ok(Json(()))
}

async fn status(State(m): State<Member>) -> Json<Status> {
    let metrics = m.raft().metrics().borrow().clone();
    let membership = metrics.membership_config.membership();
    Json(Status {
        id: m.id(),
        cluster: m.cluster_id().map(str::to_string),
        leader: metrics.current_leader,
        term: metrics.current_term,
        applied: m.applied(),
        voters: membership.voter_ids().collect(),
        learners: membership.learner_ids().collect(),
        snapshot: metrics.snapshot.map(|l| l.index),
        purged: metrics.purged.map(|l| l.index),
    })
}
