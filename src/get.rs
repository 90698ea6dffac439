//! `coxswain get pods|deployments|replicasets|nodes|all [-n NS|-A] [-o wide|json|yaml]`:
//! what is stored, printed the way kubectl prints it (its columns, its STATUS and AGE
//! wording), or as a Kubernetes List object.
//!
//! It reads the stored JSON as it is rather than the schema's typed structs: the columns
//! need a handful of fields, and `-o json` must print exactly what is stored, including
//! fields a newer writer added.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use coxswain_store::{Client, Consistency, Kv};
use serde_json::{Value, json};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to list: pods (po), deployments (deploy), replicasets (rs), nodes (no) or all.
    resource: String,
    /// Only this object.
    name: Option<String>,
    /// The namespace to list.
    #[arg(
        short,
        long,
        default_value = "default",
        conflicts_with = "all_namespaces"
    )]
    namespace: String,
    /// List every namespace.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    /// wide (more columns), json or yaml (a List object).
    #[arg(short, long, value_enum)]
    output: Option<Output>,
    #[command(flatten)]
    from: Endpoint,
}

/// Which running coxswain a reading command (`get`, `top`) asks.
#[derive(Debug, clap::Args)]
pub struct Endpoint {
    /// A store member to read from (host:port of `coxswain server` or `coxswain up`).
    #[arg(long, conflicts_with = "data")]
    server: Option<String>,
    /// The data folder of a running coxswain: its address and token are read from there.
    #[arg(long)]
    data: Option<PathBuf>,
    /// The cluster's shared token (or set COXSWAIN_TOKEN); not needed with --data.
    #[arg(long, env = "COXSWAIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Wide,
    Json,
    Yaml,
}

/// The kinds `get` knows, with kubectl's names for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Pod,
    Deployment,
    ReplicaSet,
    Node,
}

impl Kind {
    fn parse(word: &str) -> Option<Kind> {
        Some(match word.to_ascii_lowercase().as_str() {
            "po" | "pod" | "pods" => Kind::Pod,
            "deploy" | "deployment" | "deployments" => Kind::Deployment,
            "rs" | "replicaset" | "replicasets" => Kind::ReplicaSet,
            "no" | "node" | "nodes" => Kind::Node,
            _ => return None,
        })
    }

    fn prefix(self) -> &'static str {
        match self {
            Kind::Pod => "/core/Pod/",
            Kind::Deployment => "/apps/Deployment/",
            Kind::ReplicaSet => "/apps/ReplicaSet/",
            Kind::Node => "/core/Node/",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Kind::Pod | Kind::Node => "v1",
            Kind::Deployment | Kind::ReplicaSet => "apps/v1",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Pod => "Pod",
            Kind::Deployment => "Deployment",
            Kind::ReplicaSet => "ReplicaSet",
            Kind::Node => "Node",
        }
    }

    /// kubectl's prefix for a row of `get all`.
    fn short(self) -> &'static str {
        match self {
            Kind::Pod => "pod",
            Kind::Deployment => "deployment.apps",
            Kind::ReplicaSet => "replicaset.apps",
            Kind::Node => "node",
        }
    }

    fn namespaced(self) -> bool {
        self != Kind::Node
    }
}

/// The data folder `coxswain up` uses by default, relative to where it runs.
const LOCAL_DATA: &str = ".coxswain";

/// Where a running coxswain says it listens, written into its data folder at start.
pub const ENDPOINT_FILE: &str = "endpoint.json";

/// Writes `DATA/endpoint.json` (mode 0600: it holds the token) so that `coxswain get --data`
/// finds the coxswain that owns the folder.
pub fn write_endpoint(data: &Path, address: &str, token: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = data.join(ENDPOINT_FILE);
    let body = json!({ "address": address, "token": token, "pid": std::process::id() });
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(body.to_string().as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn read_endpoint(data: &Path) -> anyhow::Result<(String, String)> {
    let path = data.join(ENDPOINT_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no running coxswain owns {} (cannot read {})",
            data.display(),
            path.display()
        )
    })?;
    let v: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    match (v["address"].as_str(), v["token"].as_str()) {
        (Some(a), Some(t)) => Ok((a.to_owned(), t.to_owned())),
        _ => bail!("{} lacks address or token", path.display()),
    }
}

impl Endpoint {
    /// The address and token to read from: `--data`'s running coxswain, else `--server`
    /// with `--token`; with neither, a `coxswain up` of this folder is the one asked.
    pub fn resolve(&self) -> anyhow::Result<(String, String)> {
        let (data, server, token) = (
            self.data.as_deref(),
            self.server.as_deref(),
            self.token.as_deref(),
        );
        let local = Path::new(LOCAL_DATA);
        let data = match (data, server) {
            (None, None) if local.join(ENDPOINT_FILE).exists() => Some(local),
            (data, _) => data,
        };
        match data {
            Some(data) => {
                let (address, stored) = read_endpoint(data)?;
                Ok((address, token.map_or(stored, str::to_owned)))
            }
            None => Ok((
                server.unwrap_or("127.0.0.1:7400").to_owned(),
                token
                    .context("a token is needed: pass --token, set COXSWAIN_TOKEN or use --data")?
                    .to_owned(),
            )),
        }
    }
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let kinds = if args.resource.eq_ignore_ascii_case("all") {
        if args.name.is_some() {
            bail!("a name cannot be given with `all`");
        }
        vec![Kind::Pod, Kind::Deployment, Kind::ReplicaSet]
    } else {
        let mut kinds = Vec::new();
        for word in args.resource.split(',') {
            let kind = Kind::parse(word).with_context(|| {
                format!(
                    "the server doesn't have a resource type {word:?} \
                     (known: pods, deployments, replicasets, nodes, all)"
                )
            })?;
            kinds.push(kind);
        }
        kinds
    };
    let (address, token) = args.from.resolve()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let client = Client::new(vec![address.clone()], &token);
    let namespace = (!args.all_namespaces).then_some(args.namespace.as_str());
    let mut lists = Vec::new();
    for kind in &kinds {
        let items = rt
            .block_on(list(&client, *kind, namespace, args.name.as_deref()))
            .with_context(|| format!("reading {}s from {address}", kind.name()))?;
        lists.push((*kind, items));
    }
    if let Some(name) = &args.name
        && lists.iter().all(|(_, items)| items.is_empty())
    {
        let kind = kinds.first().map_or("", |k| k.short());
        eprintln!("Error from server (NotFound): {kind} \"{name}\" not found");
        return Ok(ExitCode::from(1));
    }
    match args.output {
        Some(Output::Json) => println!("{}", serde_json::to_string_pretty(&as_list(&lists))?),
        Some(Output::Yaml) => print!("{}", serde_norway::to_string(&as_list(&lists))?),
        wide => {
            let now = Utc::now();
            let text = tables(&lists, wide == Some(Output::Wide), args.all_namespaces, now);
            if text.is_empty() {
                match namespace {
                    Some(ns) if kinds.iter().any(|k| k.namespaced()) => {
                        eprintln!("No resources found in {ns} namespace.");
                    }
                    _ => eprintln!("No resources found"),
                }
            } else {
                print!("{text}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Every stored object of `kind` in `namespace` (all namespaces when `None`), by name.
async fn list<K: Kv>(
    kv: &K,
    kind: Kind,
    namespace: Option<&str>,
    name: Option<&str>,
) -> anyhow::Result<Vec<Value>> {
    let prefix = match (kind.namespaced(), namespace) {
        (true, Some(ns)) => format!("{}{ns}/", kind.prefix()),
        _ => kind.prefix().to_owned(),
    };
    list_under(kv, &prefix, name).await
}

/// The object `prefix` + `name`, or every object under `prefix` (linearizable, paged by 500).
pub(crate) async fn list_under<K: Kv>(
    kv: &K,
    prefix: &str,
    name: Option<&str>,
) -> anyhow::Result<Vec<Value>> {
    if let Some(name) = name {
        let (_, kv_item) = kv
            .get(&format!("{prefix}{name}"), Consistency::Linearizable)
            .await?;
        return Ok(kv_item.map(|kv| kv.value).into_iter().collect());
    }
    let mut items = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = kv
            .list(prefix, 500, token.as_deref(), Consistency::Linearizable)
            .await?;
        items.extend(page.items.into_iter().map(|kv| kv.value));
        match page.continue_token {
            Some(t) => token = Some(t),
            None => return Ok(items),
        }
    }
}

/// kubectl's `-o json` shape: a typed list (`PodList`) for one kind, `List` for several.
fn as_list(lists: &[(Kind, Vec<Value>)]) -> Value {
    let (api_version, kind) = match lists {
        [(k, _)] => (k.api_version(), format!("{}List", k.name())),
        _ => ("v1", "List".to_owned()),
    };
    let items: Vec<Value> = lists
        .iter()
        .flat_map(|(k, items)| {
            items.iter().map(|item| {
                // Stored objects keep apiVersion and kind; put them back if a writer did not.
                let mut item = item.clone();
                if let Some(map) = item.as_object_mut() {
                    map.entry("apiVersion").or_insert(json!(k.api_version()));
                    map.entry("kind").or_insert(json!(k.name()));
                }
                item
            })
        })
        .collect();
    json!({
        "apiVersion": api_version,
        "kind": kind,
        "metadata": { "resourceVersion": "" },
        "items": items,
    })
}

/// The tables of every kind, separated by a blank line as in `kubectl get all`.
fn tables(
    lists: &[(Kind, Vec<Value>)],
    wide: bool,
    all_namespaces: bool,
    now: DateTime<Utc>,
) -> String {
    let prefixed = lists.len() > 1;
    let mut out = String::new();
    for (kind, items) in lists {
        if items.is_empty() {
            continue;
        }
        let mut header: Vec<&str> = Vec::new();
        if all_namespaces && kind.namespaced() {
            header.push("NAMESPACE");
        }
        header.extend(columns(*kind, wide));
        let mut rows = vec![header.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()];
        for item in items {
            let mut row = Vec::new();
            if all_namespaces && kind.namespaced() {
                row.push(
                    text(item, "/metadata/namespace")
                        .unwrap_or("default")
                        .to_owned(),
                );
            }
            let mut cells = cells(*kind, item, wide, now);
            if prefixed && let Some(first) = cells.first_mut() {
                *first = format!("{}/{first}", kind.short());
            }
            row.extend(cells);
            rows.push(row);
        }
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&align(&rows));
    }
    out
}

fn columns(kind: Kind, wide: bool) -> Vec<&'static str> {
    let (mut base, extra): (Vec<&str>, &[&str]) = match kind {
        Kind::Pod => (
            vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
            &["IP", "NODE", "NOMINATED NODE", "READINESS GATES"],
        ),
        Kind::Deployment => (
            vec!["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
            &["CONTAINERS", "IMAGES", "SELECTOR"],
        ),
        Kind::ReplicaSet => (
            vec!["NAME", "DESIRED", "CURRENT", "READY", "AGE"],
            &["CONTAINERS", "IMAGES", "SELECTOR"],
        ),
        Kind::Node => (
            vec!["NAME", "STATUS", "ROLES", "AGE", "VERSION"],
            &[
                "INTERNAL-IP",
                "EXTERNAL-IP",
                "OS-IMAGE",
                "KERNEL-VERSION",
                "CONTAINER-RUNTIME",
            ],
        ),
    };
    if wide {
        base.extend(extra);
    }
    base
}

fn cells(kind: Kind, item: &Value, wide: bool, now: DateTime<Utc>) -> Vec<String> {
    let name = text(item, "/metadata/name").unwrap_or("").to_owned();
    let age = age(item, now);
    let int = |p: &str| item.pointer(p).and_then(Value::as_i64).unwrap_or(0);
    match kind {
        Kind::Pod => {
            let mut row = pod_row(item, now);
            row.insert(0, name);
            if wide {
                row.push(text(item, "/status/podIP").unwrap_or("<none>").to_owned());
                row.push(text(item, "/spec/nodeName").unwrap_or("<none>").to_owned());
                row.push("<none>".into());
                row.push("<none>".into());
            }
            row
        }
        Kind::Deployment => {
            let desired = item
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            let mut row = vec![
                name,
                format!("{}/{desired}", int("/status/readyReplicas")),
                int("/status/updatedReplicas").to_string(),
                int("/status/availableReplicas").to_string(),
                age,
            ];
            if wide {
                row.extend(template_columns(item));
            }
            row
        }
        Kind::ReplicaSet => {
            let desired = item
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            let mut row = vec![
                name,
                desired.to_string(),
                int("/status/replicas").to_string(),
                int("/status/readyReplicas").to_string(),
                age,
            ];
            if wide {
                row.extend(template_columns(item));
            }
            row
        }
        Kind::Node => {
            let mut row = vec![
                name,
                node_status(item),
                node_roles(item),
                age,
                text(item, "/status/nodeInfo/kubeletVersion")
                    .unwrap_or("")
                    .to_owned(),
            ];
            if wide {
                let address = |kind: &str| {
                    item.pointer("/status/addresses")
                        .and_then(Value::as_array)
                        .and_then(|a| a.iter().find(|a| a["type"] == kind))
                        .and_then(|a| a["address"].as_str())
                        .unwrap_or("<none>")
                        .to_owned()
                };
                let info = |f: &str| {
                    text(item, &format!("/status/nodeInfo/{f}"))
                        .unwrap_or("<unknown>")
                        .to_owned()
                };
                row.extend([
                    address("InternalIP"),
                    address("ExternalIP"),
                    info("osImage"),
                    info("kernelVersion"),
                    info("containerRuntimeVersion"),
                ]);
            }
            row
        }
    }
}

/// READY, STATUS, RESTARTS and AGE of a pod, worked out as kubectl's printPod does.
pub(crate) fn pod_row(pod: &Value, now: DateTime<Utc>) -> Vec<String> {
    let statuses = |p: &str| {
        pod.pointer(p)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let containers = statuses("/status/containerStatuses");
    let inits = statuses("/status/initContainerStatuses");
    let total = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let init_total = pod
        .pointer("/spec/initContainers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let mut reason = text(pod, "/status/reason")
        .or_else(|| text(pod, "/status/phase"))
        .unwrap_or("Pending")
        .to_owned();
    // kubectl counts the init containers' restarts while the pod initializes, and only the
    // app containers' after.
    let mut restarts = Restarts::default();
    let mut initializing = false;
    for (i, c) in inits.iter().enumerate() {
        restarts.add(c);
        let state = &c["state"];
        if let Some(term) = state.get("terminated").filter(|t| !t.is_null()) {
            if term["exitCode"].as_i64() == Some(0) {
                continue;
            }
            reason = match term["reason"].as_str() {
                Some(r) if !r.is_empty() => format!("Init:{r}"),
                _ => match term["signal"].as_i64() {
                    Some(s) if s != 0 => format!("Init:Signal:{s}"),
                    _ => format!("Init:ExitCode:{}", term["exitCode"].as_i64().unwrap_or(0)),
                },
            };
        } else if let Some(r) = state
            .pointer("/waiting/reason")
            .and_then(Value::as_str)
            .filter(|r| !r.is_empty() && *r != "PodInitializing")
        {
            reason = format!("Init:{r}");
        } else {
            reason = format!("Init:{i}/{init_total}");
        }
        initializing = true;
        break;
    }
    let mut ready = 0;
    if !initializing {
        restarts = Restarts::default();
        let mut has_running = false;
        for c in containers.iter().rev() {
            restarts.add(c);
            let state = &c["state"];
            if let Some(r) = state
                .pointer("/waiting/reason")
                .and_then(Value::as_str)
                .filter(|r| !r.is_empty())
            {
                reason = r.to_owned();
            } else if let Some(term) = state.get("terminated").filter(|t| !t.is_null()) {
                reason = match term["reason"].as_str() {
                    Some(r) if !r.is_empty() => r.to_owned(),
                    _ => match term["signal"].as_i64() {
                        Some(s) if s != 0 => format!("Signal:{s}"),
                        _ => format!("ExitCode:{}", term["exitCode"].as_i64().unwrap_or(0)),
                    },
                };
            } else if state.get("running").is_some_and(|r| !r.is_null())
                && c["ready"].as_bool() == Some(true)
            {
                has_running = true;
                ready += 1;
            } else if state.get("running").is_some_and(|r| !r.is_null()) {
                has_running = true;
            }
        }
        // kubectl: a pod whose containers are all done but one still runs is "Running",
        // or "NotReady" if its Ready condition is false.
        if reason == "Completed" && has_running {
            reason = if pod_ready(pod) {
                "Running".into()
            } else {
                "NotReady".into()
            };
        }
    }
    if pod.pointer("/metadata/deletionTimestamp").is_some() {
        reason = "Terminating".into();
    }
    let restarts = match restarts.last {
        Some(t) if restarts.count > 0 => {
            format!("{} ({} ago)", restarts.count, human_duration(now - t))
        }
        _ => restarts.count.to_string(),
    };
    vec![format!("{ready}/{total}"), reason, restarts, age(pod, now)]
}

/// The RESTARTS column: the sum of restart counts and when the last restart's run ended.
#[derive(Default)]
struct Restarts {
    count: i64,
    last: Option<DateTime<Utc>>,
}

impl Restarts {
    fn add(&mut self, status: &Value) {
        self.count += status["restartCount"].as_i64().unwrap_or(0);
        let finished = status
            .pointer("/lastState/terminated/finishedAt")
            .and_then(Value::as_str)
            .and_then(parse_time);
        if let Some(t) = finished
            && self.last.is_none_or(|l| t > l)
        {
            self.last = Some(t);
        }
    }
}

fn pod_ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// kubectl's node STATUS: Ready / NotReady / Unknown, plus SchedulingDisabled when cordoned.
fn node_status(node: &Value) -> String {
    let ready = node
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["status"].as_str());
    let mut status = match ready {
        Some("True") => "Ready",
        Some("False") => "NotReady",
        _ => "Unknown",
    }
    .to_owned();
    if node.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        status.push_str(",SchedulingDisabled");
    }
    status
}

/// Roles from `node-role.kubernetes.io/<role>` labels, as kubectl shows them.
fn node_roles(node: &Value) -> String {
    let roles: Vec<&str> = node
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|labels| {
            labels
                .keys()
                .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                .filter(|r| !r.is_empty())
                .collect()
        })
        .unwrap_or_default();
    if roles.is_empty() {
        "<none>".into()
    } else {
        roles.join(",")
    }
}

/// CONTAINERS, IMAGES and SELECTOR of a workload's pod template.
fn template_columns(item: &Value) -> [String; 3] {
    let containers = item
        .pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let join = |field: &str| {
        containers
            .iter()
            .filter_map(|c| c[field].as_str())
            .collect::<Vec<_>>()
            .join(",")
    };
    let selector = item
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    [join("name"), join("image"), selector]
}

fn text<'a>(item: &'a Value, pointer: &str) -> Option<&'a str> {
    item.pointer(pointer).and_then(Value::as_str)
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn age(item: &Value, now: DateTime<Utc>) -> String {
    match text(item, "/metadata/creationTimestamp").and_then(parse_time) {
        Some(t) => human_duration(now - t),
        None => "<unknown>".into(),
    }
}

/// kubectl's `duration.HumanDuration`: two units while they say something, one after.
fn human_duration(d: chrono::TimeDelta) -> String {
    let secs = d.num_seconds();
    if secs < -1 {
        return "<invalid>".into();
    }
    let secs = secs.max(0);
    let (mins, hours, days) = (secs / 60, secs / 3600, secs / 86_400);
    if secs < 120 {
        format!("{secs}s")
    } else if mins < 10 {
        match secs % 60 {
            0 => format!("{mins}m"),
            s => format!("{mins}m{s}s"),
        }
    } else if mins < 180 {
        format!("{mins}m")
    } else if hours < 8 {
        match mins % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        }
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 24 * 8 {
        match hours % 24 {
            0 => format!("{days}d"),
            h => format!("{days}d{h}h"),
        }
    } else if hours < 24 * 365 * 2 {
        format!("{days}d")
    } else if hours < 24 * 365 * 8 {
        match days % 365 {
            0 => format!("{}y", days / 365),
            d => format!("{}y{d}d", days / 365),
        }
    } else {
        format!("{}y", days / 365)
    }
}

/// Left-aligned columns three spaces apart, as kubectl's tabwriter prints them.
pub(crate) fn align(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let pad = widths[i] + 3;
                let _ = write!(line, "{cell:<pad$}");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        parse_time("2026-01-01T12:00:00Z").unwrap()
    }

    #[test]
    fn ages_read_like_kubectl() {
        let cases = [
            (5, "5s"),
            (119, "119s"),
            (125, "2m5s"),
            (600, "10m"),
            (3 * 3600 + 60, "3h1m"),
            (10 * 3600, "10h"),
            (3 * 86_400 + 3600, "3d1h"),
            (30 * 86_400, "30d"),
            (3 * 365 * 86_400 + 86_400, "3y1d"),
        ];
        for (secs, want) in cases {
            assert_eq!(human_duration(chrono::TimeDelta::seconds(secs)), want);
        }
    }

    #[test]
    fn pod_rows_follow_kubectl_status_rules() {
        let running = json!({
            "metadata": {"name": "web-1", "creationTimestamp": "2026-01-01T11:59:00Z"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}]},
            "status": {"phase": "Running", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 0, "state": {"running": {}}},
                {"name": "b", "ready": false, "restartCount": 2, "state": {"running": {}},
                 "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2026-01-01T11:59:50Z"}}}
            ]}
        });
        assert_eq!(
            pod_row(&running, now()),
            ["1/2", "Running", "2 (10s ago)", "60s"]
        );

        let crashing = json!({
            "metadata": {"name": "web-2"},
            "spec": {"containers": [{"name": "a"}]},
            "status": {"phase": "Running", "containerStatuses": [
                {"name": "a", "ready": false, "restartCount": 3,
                 "state": {"waiting": {"reason": "CrashLoopBackOff"}}}
            ]}
        });
        assert_eq!(pod_row(&crashing, now())[1], "CrashLoopBackOff");

        let killed = json!({
            "metadata": {"name": "web-3"},
            "spec": {"containers": [{"name": "a"}]},
            "status": {"phase": "Failed", "containerStatuses": [
                {"name": "a", "ready": false, "restartCount": 0,
                 "state": {"terminated": {"exitCode": 137, "signal": 9}}}
            ]}
        });
        assert_eq!(pod_row(&killed, now())[1], "Signal:9");

        let initializing = json!({
            "metadata": {"name": "web-4"},
            "spec": {"initContainers": [{"name": "i"}, {"name": "j"}], "containers": [{"name": "a"}]},
            "status": {"phase": "Pending", "initContainerStatuses": [
                {"name": "i", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 0}}},
                {"name": "j", "ready": false, "restartCount": 0, "state": {"running": {}}}
            ]}
        });
        assert_eq!(pod_row(&initializing, now())[1], "Init:1/2");

        let deleting = json!({
            "metadata": {"name": "web-5", "deletionTimestamp": "2026-01-01T11:59:00Z"},
            "spec": {"containers": [{"name": "a"}]},
            "status": {"phase": "Running"}
        });
        assert_eq!(pod_row(&deleting, now())[1], "Terminating");

        let unscheduled =
            json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}});
        assert_eq!(pod_row(&unscheduled, now())[..3], ["0/1", "Pending", "0"]);
    }

    #[test]
    fn tables_align_and_prefix_kinds_in_get_all() {
        let deploy = json!({
            "metadata": {"name": "web", "namespace": "shop", "creationTimestamp": "2026-01-01T11:00:00Z"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"spec": {"containers": [{"name": "httpd", "image": "busybox"}]}}},
            "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}
        });
        let one = tables(
            &[(Kind::Deployment, vec![deploy.clone()])],
            false,
            false,
            now(),
        );
        assert_eq!(
            one,
            "NAME   READY   UP-TO-DATE   AVAILABLE   AGE\nweb    2/3     3            2           60m\n"
        );
        let wide = tables(
            &[(Kind::Deployment, vec![deploy.clone()])],
            true,
            true,
            now(),
        );
        assert!(wide.starts_with("NAMESPACE   NAME   READY"), "{wide}");
        assert!(wide.contains("httpd        busybox   app=web"), "{wide}");
        let all = tables(
            &[(Kind::Pod, vec![]), (Kind::Deployment, vec![deploy])],
            false,
            false,
            now(),
        );
        assert!(all.contains("deployment.apps/web"), "{all}");
    }

    #[test]
    fn one_kind_lists_as_its_typed_list_and_several_as_list() {
        let pod = json!({"metadata": {"name": "p"}});
        let list = as_list(&[(Kind::Pod, vec![pod.clone()])]);
        assert_eq!(list["kind"], "PodList");
        assert_eq!(list["apiVersion"], "v1");
        assert_eq!(list["items"][0]["kind"], "Pod");
        let mixed = as_list(&[(Kind::Pod, vec![pod]), (Kind::Deployment, vec![])]);
        assert_eq!(mixed["kind"], "List");
    }

    #[test]
    fn node_status_and_roles() {
        let node = json!({
            "metadata": {"name": "n1", "labels": {"node-role.kubernetes.io/control-plane": ""}},
            "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}
        });
        assert_eq!(node_status(&node), "Ready,SchedulingDisabled");
        assert_eq!(node_roles(&node), "control-plane");
        assert_eq!(node_status(&json!({})), "Unknown");
    }
}
