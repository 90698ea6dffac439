//! A container's environment and command line, built the way the kubelet builds them, so that
//! a manifest written for Kubernetes sees the same variables here: the image's `Env` first,
//! then `envFrom` (ConfigMaps and Secrets, in order, with their `prefix`), then `env` (literal
//! values with `$(VAR)` expansion, and `valueFrom`: ConfigMap and Secret keys, the downward
//! API's `fieldRef` and `resourceFieldRef`). [`argv`] expands `command` and `args` the same
//! way and combines them with the image's entrypoint and cmd.
//!
//! ConfigMaps and Secrets come through the [`Lookup`] trait, which the agent implements over
//! the store (tests over a map). Secret values cross it already decoded: the store holds them
//! base64-encoded as the manifest wrote them, so [`secret_data`] and
//! [`config_map_binary_data`] decode them (this crate has no base64 dependency, hence the
//! small strict decoder below) for the implementation to call.
//!
//! One deliberate difference from Kubernetes: its kubelet never sees the image's variables, so
//! there `$(PATH)` in `env[].value` or in `args` stays as written; here the image's variables
//! count as "defined earlier" and expand. No manifest that works on Kubernetes relies on such
//! a reference staying unexpanded.
//!
//! Errors are [`Error::Config`] whose `field` is the pod field at fault, in the index form
//! of the API (`spec.containers[0].env[2].valueFrom.secretKeyRef`,
//! `spec.initContainers[1].command`), so that the pod's status points at the line to fix.

use std::collections::{BTreeMap, HashMap};

use coxswain_schema::kinds::core::{ConfigMap, Secret};
use coxswain_schema::kinds::pod::{
    Container, EnvVarSource, KeySelector, ObjectFieldSelector, Pod, ResourceFieldSelector,
};
use coxswain_schema::names;
use coxswain_schema::quantity::Quantity;

use crate::error::{Error, Result};
use crate::image::ImageConfig;

/// Where the agent finds the ConfigMaps and Secrets of a namespace. `None` means the object
/// does not exist (as opposed to existing with no keys).
pub trait Lookup {
    /// The `data` of ConfigMap `namespace/name`.
    fn config_map(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, String>>;

    /// The decoded values of Secret `namespace/name` (`data` decoded from base64, with
    /// `stringData` merged over it, as the API server does): see [`secret_data`].
    fn secret(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>>;

    /// The decoded `binaryData` of ConfigMap `namespace/name` (see
    /// [`config_map_binary_data`]). Only configMap volumes use it: Kubernetes leaves
    /// `binaryData` out of environment variables. Defaults to none.
    fn config_map_binary(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        let _ = (namespace, name);
        None
    }
}

/// What the node knows about a pod that the pod's manifest does not say, for the downward API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodFacts {
    /// The pod's IP (`status.podIP`, `status.podIPs`); empty when it has none yet.
    pub pod_ip: Option<String>,
    /// The node's IP (`status.hostIP`, `status.hostIPs`).
    pub host_ip: Option<String>,
    /// The node the pod runs on (`spec.nodeName`).
    pub node_name: String,
    /// `spec.serviceAccountName`; Kubernetes' admission sets `default` when a pod names none,
    /// and so does the downward API here.
    pub service_account: Option<String>,
    /// The node's allocatable resources by name (`cpu`, `memory`, `ephemeral-storage`): the
    /// kubelet reports them for `resourceFieldRef: limits.*` of a container without that
    /// limit, since that is all the container may use.
    pub node_allocatable: BTreeMap<String, Quantity>,
}

/// The namespace a pod lives in (`default` when its metadata names none).
pub(crate) fn pod_namespace(pod: &Pod) -> &str {
    pod.metadata.namespace.as_deref().unwrap_or("default")
}

/// The field path of `container` in `pod`: `spec.initContainers[i]` or `spec.containers[i]`
/// (container names are unique across both lists), or `spec.containers{NAME}` for a
/// container that is not in the pod.
pub fn container_field(pod: &Pod, container: &Container) -> String {
    if let Some(i) = pod
        .spec
        .init_containers
        .iter()
        .flatten()
        .position(|c| c.name == container.name)
    {
        return format!("spec.initContainers[{i}]");
    }
    match pod
        .spec
        .containers
        .iter()
        .position(|c| c.name == container.name)
    {
        Some(i) => format!("spec.containers[{i}]"),
        None => format!("spec.containers{{{}}}", container.name),
    }
}

fn config_err(field: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::Config {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The environment in its order: a name keeps the position of its first definition and the
/// value of its last, which is what a container sees when a later source overrides a name.
#[derive(Debug, Default)]
struct EnvList {
    vars: Vec<(String, String)>,
    index: HashMap<String, usize>,
}

impl EnvList {
    fn set(&mut self, name: String, value: String) {
        match self.index.get(&name) {
            Some(&i) => {
                if let Some(slot) = self.vars.get_mut(i) {
                    slot.1 = value;
                }
            }
            None => {
                self.index.insert(name.clone(), self.vars.len());
                self.vars.push((name, value));
            }
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        let i = *self.index.get(name)?;
        self.vars.get(i).map(|(_, v)| v.as_str())
    }
}

/// The environment of `container` in `pod`, as `(NAME, VALUE)` pairs in order: `image_env`
/// (`KEY=VALUE` strings), then `envFrom`, then `env`, a later definition of a name replacing
/// the value of an earlier one in place.
///
/// - `envFrom`: every key of the ConfigMap or Secret, behind `prefix`; keys that do not make
///   a valid variable name, and Secret values that are not NUL-free UTF-8, are skipped with a
///   warning (Kubernetes skips invalid keys and reports them in an event). A missing object
///   is an error unless `optional: true`.
/// - `env[].value`: `$(VAR)` expands with the variables defined before it (see [`expand`]).
/// - `env[].valueFrom`: a missing object or key is an error unless `optional: true`, in which
///   case the variable is left out.
pub fn container_env(
    pod: &Pod,
    container: &Container,
    image_env: &[String],
    facts: &PodFacts,
    lookup: &dyn Lookup,
) -> Result<Vec<(String, String)>> {
    let field = container_field(pod, container);
    let namespace = pod_namespace(pod);
    let mut env = EnvList::default();

    for entry in image_env {
        match entry.split_once('=') {
            Some((name, value)) if !name.is_empty() && !entry.contains('\0') => {
                env.set(name.to_string(), value.to_string());
            }
            // An image config is not the user's to fix; leave the odd entry out.
            _ => tracing::debug!(entry, "skipping an image env entry that is not KEY=VALUE"),
        }
    }

    for (i, from) in container.env_from.iter().flatten().enumerate() {
        let fp = format!("{field}.envFrom[{i}]");
        let prefix = from.prefix.as_deref().unwrap_or("");
        let entries: Vec<(String, String)> = match (&from.config_map_ref, &from.secret_ref) {
            (Some(r), None) => match lookup.config_map(namespace, &r.name) {
                Some(data) => data
                    .into_iter()
                    .filter(|(key, value)| {
                        let ok = !value.contains('\0');
                        if !ok {
                            tracing::warn!(
                                field = %fp, config_map = %r.name, key, "skipping a key of envFrom: its value contains a NUL byte"
                            );
                        }
                        ok
                    })
                    .collect(),
                None if r.optional == Some(true) => continue,
                None => {
                    return Err(config_err(
                        format!("{fp}.configMapRef"),
                        format!("configmap {:?} not found", r.name),
                    ));
                }
            },
            (None, Some(r)) => match lookup.secret(namespace, &r.name) {
                Some(data) => data
                    .into_iter()
                    .filter_map(|(key, bytes)| match env_text(bytes) {
                        Ok(value) => Some((key, value)),
                        Err(why) => {
                            tracing::warn!(
                                field = %fp, secret = %r.name, key, "skipping a key of envFrom: its value {why}"
                            );
                            None
                        }
                    })
                    .collect(),
                None if r.optional == Some(true) => continue,
                None => {
                    return Err(config_err(
                        format!("{fp}.secretRef"),
                        format!("secret {:?} not found", r.name),
                    ));
                }
            },
            _ => {
                return Err(config_err(
                    fp,
                    "must specify exactly one of: `configMapRef` or `secretRef`",
                ));
            }
        };
        for (key, value) in entries {
            let name = format!("{prefix}{key}");
            if let Err(why) = names::is_env_var_name(&name) {
                tracing::warn!(field = %fp, name, "skipping a key of envFrom: {why}");
                continue;
            }
            env.set(name, value);
        }
    }

    for (i, var) in container.env.iter().flatten().enumerate() {
        let ep = format!("{field}.env[{i}]");
        names::is_env_var_name(&var.name).map_err(|why| config_err(format!("{ep}.name"), why))?;
        let value = match (&var.value, &var.value_from) {
            // The kubelet's order: a non-empty literal wins over `valueFrom`.
            (Some(text), _) if !text.is_empty() => expand_with(text, |name| env.get(name)),
            (_, Some(source)) => {
                match value_from(pod, container, source, &ep, facts, lookup, namespace)? {
                    Some(value) => value,
                    None => continue,
                }
            }
            (_, None) => String::new(),
        };
        if value.contains('\0') {
            return Err(config_err(
                ep,
                "the value contains a NUL byte, which an environment variable cannot hold",
            ));
        }
        env.set(var.name.clone(), value);
    }
    Ok(env.vars)
}

/// A Secret value as an environment value: execve takes NUL-terminated strings and this
/// crate's environment is text, so the value must be UTF-8 without NUL.
fn env_text(bytes: Vec<u8>) -> std::result::Result<String, &'static str> {
    if bytes.contains(&0) {
        return Err("contains a NUL byte, which an environment variable cannot hold");
    }
    String::from_utf8(bytes).map_err(|_| "is not UTF-8 text")
}

/// The value of one `valueFrom`; `None` when an optional source is missing.
fn value_from(
    pod: &Pod,
    container: &Container,
    source: &EnvVarSource,
    ep: &str,
    facts: &PodFacts,
    lookup: &dyn Lookup,
    namespace: &str,
) -> Result<Option<String>> {
    let set = [
        source.secret_key_ref.is_some(),
        source.config_map_key_ref.is_some(),
        source.field_ref.is_some(),
        source.resource_field_ref.is_some(),
    ]
    .iter()
    .filter(|s| **s)
    .count();
    if set != 1 {
        return Err(config_err(
            format!("{ep}.valueFrom"),
            "must specify exactly one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`",
        ));
    }
    if let Some(sel) = &source.secret_key_ref {
        let fp = format!("{ep}.valueFrom.secretKeyRef");
        let Some(bytes) = key_ref(sel, "secret", lookup.secret(namespace, &sel.name), &fp)? else {
            return Ok(None);
        };
        return env_text(bytes).map(Some).map_err(|why| {
            config_err(
                fp,
                format!("key {:?} of secret {:?} {why}", sel.key, sel.name),
            )
        });
    }
    if let Some(sel) = &source.config_map_key_ref {
        let fp = format!("{ep}.valueFrom.configMapKeyRef");
        let data = lookup.config_map(namespace, &sel.name);
        return key_ref(sel, "configmap", data, &fp);
    }
    if let Some(sel) = &source.field_ref {
        return field_value(pod, facts, sel)
            .map(Some)
            .map_err(|why| config_err(format!("{ep}.valueFrom.fieldRef.fieldPath"), why));
    }
    if let Some(sel) = &source.resource_field_ref {
        return resource_value(pod, container, facts, sel)
            .map(Some)
            .map_err(|why| config_err(format!("{ep}.valueFrom.resourceFieldRef"), why));
    }
    Ok(None)
}

/// One key of a ConfigMap's or Secret's data (`what` names the kind in errors).
fn key_ref<V>(
    sel: &KeySelector,
    what: &str,
    data: Option<BTreeMap<String, V>>,
    field: &str,
) -> Result<Option<V>> {
    let optional = sel.optional == Some(true);
    let Some(mut data) = data else {
        if optional {
            return Ok(None);
        }
        return Err(config_err(
            field,
            format!("{what} {:?} not found", sel.name),
        ));
    };
    match data.remove(&sel.key) {
        Some(value) => Ok(Some(value)),
        None if optional => Ok(None),
        None => Err(config_err(
            field,
            format!("key {:?} not found in {what} {:?}", sel.key, sel.name),
        )),
    }
}

/// The downward API's `fieldRef` (the paths Kubernetes accepts for environment variables).
fn field_value(
    pod: &Pod,
    facts: &PodFacts,
    sel: &ObjectFieldSelector,
) -> std::result::Result<String, String> {
    if let Some(version) = sel
        .api_version
        .as_deref()
        .filter(|v| !v.is_empty() && *v != "v1")
    {
        return Err(format!("unsupported apiVersion {version:?}: only \"v1\""));
    }
    let path = sel.field_path.as_str();
    let meta = &pod.metadata;
    let value = match path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => pod_namespace(pod).to_string(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => facts.node_name.clone(),
        "spec.serviceAccountName" => facts
            .service_account
            .clone()
            .unwrap_or_else(|| "default".to_string()),
        // coxswain pods are single-stack, so the plural forms hold the one address.
        "status.podIP" | "status.podIPs" => facts.pod_ip.clone().unwrap_or_default(),
        "status.hostIP" | "status.hostIPs" => facts.host_ip.clone().unwrap_or_default(),
        _ => {
            let subscript = |prefix: &str| {
                path.strip_prefix(prefix)
                    .and_then(|rest| rest.strip_suffix("']"))
            };
            if let Some(key) = subscript("metadata.labels['") {
                meta.labels
                    .as_ref()
                    .and_then(|m| m.get(key))
                    .cloned()
                    .unwrap_or_default()
            } else if let Some(key) = subscript("metadata.annotations['") {
                meta.annotations
                    .as_ref()
                    .and_then(|m| m.get(key))
                    .cloned()
                    .unwrap_or_default()
            } else {
                return Err(format!(
                    "unsupported fieldPath {path:?}: supported values: metadata.name, metadata.namespace, metadata.uid, metadata.labels['<KEY>'], metadata.annotations['<KEY>'], spec.nodeName, spec.serviceAccountName, status.podIP, status.podIPs, status.hostIP, status.hostIPs"
                ));
            }
        }
    };
    Ok(value)
}

/// The downward API's `resourceFieldRef`: a limit or request of this container (or of the
/// one `containerName` names) divided by `divisor` (default 1) and rounded up, CPU counted
/// in millicores and the rest in bytes, as Kubernetes does. An unset limit is the node's
/// allocatable amount; an unset request is the limit, or 0 without one (the API server's
/// defaulting).
fn resource_value(
    pod: &Pod,
    container: &Container,
    facts: &PodFacts,
    sel: &ResourceFieldSelector,
) -> std::result::Result<String, String> {
    let target = match sel.container_name.as_deref().filter(|n| !n.is_empty()) {
        None => container,
        Some(name) => pod
            .spec
            .all_containers()
            .find(|c| c.name == name)
            .ok_or_else(|| format!("containerName: container {name:?} not found in the pod"))?,
    };
    let (kind, resource) = match sel.resource.split_once('.') {
        Some((kind @ ("limits" | "requests"), res @ ("cpu" | "memory" | "ephemeral-storage"))) => {
            (kind, res)
        }
        _ => {
            return Err(format!(
                "unsupported resource {:?}: supported values: limits.cpu, limits.memory, limits.ephemeral-storage, requests.cpu, requests.memory, requests.ephemeral-storage",
                sel.resource
            ));
        }
    };
    let resources = target.resources.as_ref();
    let limit = resources
        .and_then(|r| r.limits.as_ref())
        .and_then(|m| m.get(resource));
    let request = resources
        .and_then(|r| r.requests.as_ref())
        .and_then(|m| m.get(resource));
    let zero = Quantity::new("0");
    let amount = match kind {
        "limits" => limit
            .or_else(|| facts.node_allocatable.get(resource))
            .ok_or_else(|| {
                format!(
                    "container {:?} has no {resource} limit and the node's allocatable {resource} is unknown",
                    target.name
                )
            })?,
        _ => request.or(limit).unwrap_or(&zero),
    };
    let one = Quantity::new("1");
    let divisor = sel.divisor.as_ref().unwrap_or(&one);
    let scaled = |q: &Quantity| {
        if resource == "cpu" {
            q.milli_value()
        } else {
            q.value()
        }
        .map_err(|e| e.to_string())
    };
    let value = scaled(amount)?;
    let div = scaled(divisor)?;
    if div <= 0 {
        return Err(format!("divisor {divisor} must be greater than zero"));
    }
    Ok(ceil_div(value, div).to_string())
}

/// `value / divisor` rounded towards positive infinity; `divisor` is positive.
fn ceil_div(value: i64, divisor: i64) -> i64 {
    let floor = value.div_euclid(divisor);
    if value.rem_euclid(divisor) == 0 {
        floor
    } else {
        floor + 1
    }
}

/// Expands `$(VAR)` references in `text` with Kubernetes' rules, `env` giving the values
/// (the last pair of a name wins): `$$` is a literal `$` (so `$$(X)` is the text `$(X)`), a
/// reference to an undefined name stays as written, an unterminated `$(` and a `$` before
/// any other character are kept as they are. There is no nesting: a reference ends at the
/// first `)`.
pub fn expand(text: &str, env: &[(String, String)]) -> String {
    expand_with(text, |name| {
        env.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    })
}

fn expand_with<'a>(text: &str, lookup: impl Fn(&str) -> Option<&'a str>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    // `$`, `(` and `)` are ASCII, so slicing at them always falls on character boundaries.
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('(') {
            match body.find(')') {
                Some(close) => {
                    let name = &body[..close];
                    match lookup(name) {
                        Some(value) => out.push_str(value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &body[close + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = body;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The argv `container` runs: its `command` and `args` with `$(VAR)` expanded from `env`
/// (the image's entrypoint and cmd are not expanded, as in Kubernetes), combined with the
/// image's by [`ImageConfig::argv`]. An empty result, an empty program name or a NUL byte
/// (which execve cannot pass) is an error on the container's `command`.
pub fn argv(
    pod: &Pod,
    container: &Container,
    image_config: &ImageConfig,
    env: &[(String, String)],
) -> Result<Vec<String>> {
    let field = format!("{}.command", container_field(pod, container));
    let expand_all = |list: &Option<Vec<String>>| -> Vec<String> {
        list.iter().flatten().map(|s| expand(s, env)).collect()
    };
    let argv = image_config.argv(
        &expand_all(&container.command),
        &expand_all(&container.args),
    );
    match argv.first() {
        None => {
            return Err(config_err(
                field,
                "no command: the image has no entrypoint or cmd and the container sets none",
            ));
        }
        Some(program) if program.is_empty() => {
            return Err(config_err(field, "the program to run is an empty string"));
        }
        Some(_) => {}
    }
    if let Some(i) = argv.iter().position(|a| a.contains('\0')) {
        return Err(config_err(
            field,
            format!("argument {i} of the command line contains a NUL byte"),
        ));
    }
    Ok(argv)
}

/// A Secret's values as its pods see them: `data` decoded from base64, then `stringData`
/// merged over it (the API server's rule for the write-only field).
pub fn secret_data(secret: &Secret) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut out = decode_map(
        secret.data.as_ref(),
        &format!("secret {:?} data", secret.metadata.name),
    )?;
    for (key, value) in secret.string_data.iter().flatten() {
        out.insert(key.clone(), value.clone().into_bytes());
    }
    Ok(out)
}

/// A ConfigMap's `binaryData`, decoded from base64.
pub fn config_map_binary_data(config_map: &ConfigMap) -> Result<BTreeMap<String, Vec<u8>>> {
    decode_map(
        config_map.binary_data.as_ref(),
        &format!("configmap {:?} binaryData", config_map.metadata.name),
    )
}

fn decode_map(
    map: Option<&BTreeMap<String, String>>,
    what: &str,
) -> Result<BTreeMap<String, Vec<u8>>> {
    map.into_iter()
        .flatten()
        .map(|(key, text)| match decode_base64(text) {
            Some(bytes) => Ok((key.clone(), bytes)),
            None => Err(config_err(
                format!("{what}[{key:?}]"),
                "is not valid base64",
            )),
        })
        .collect()
}

/// Decodes standard base64 with padding, as Go's `StdEncoding` (which Kubernetes uses):
/// line breaks are ignored, anything else outside the alphabet, a missing or misplaced
/// `=`, or stray bits in the last character make it invalid.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    let mut symbols = 0usize;
    let mut padding = 0usize;
    for c in text.bytes() {
        let sextet = match c {
            b'\r' | b'\n' => continue,
            b'=' => {
                padding += 1;
                symbols += 1;
                continue;
            }
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        if padding > 0 {
            return None;
        }
        symbols += 1;
        acc = (acc << 6) | u32::from(sextet);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // With whole quanta and at most two `=`, the padding always matches the data length;
    // the bits left over must be zero for the text to be the canonical encoding.
    if !symbols.is_multiple_of(4) || padding > 2 || acc != 0 {
        return None;
    }
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Maps {
        config_maps: BTreeMap<(String, String), BTreeMap<String, String>>,
        secrets: BTreeMap<(String, String), BTreeMap<String, Vec<u8>>>,
    }

    impl Maps {
        fn cm(mut self, ns: &str, name: &str, data: &[(&str, &str)]) -> Self {
            self.config_maps.insert(
                (ns.into(), name.into()),
                data.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            );
            self
        }
        fn secret(mut self, ns: &str, name: &str, data: &[(&str, &[u8])]) -> Self {
            self.secrets.insert(
                (ns.into(), name.into()),
                data.iter()
                    .map(|(k, v)| (k.to_string(), v.to_vec()))
                    .collect(),
            );
            self
        }
    }

    impl Lookup for Maps {
        fn config_map(&self, ns: &str, name: &str) -> Option<BTreeMap<String, String>> {
            self.config_maps.get(&(ns.into(), name.into())).cloned()
        }
        fn secret(&self, ns: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
            self.secrets.get(&(ns.into(), name.into())).cloned()
        }
    }

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "web-0",
                "namespace": "shop",
                "uid": "1234-abcd",
                "labels": {"app": "web", "app.kubernetes.io/tier": "front"},
                "annotations": {"note": "hello"},
            },
            "spec": spec,
        }))
        .unwrap()
    }

    fn one(container: serde_json::Value) -> Pod {
        pod(serde_json::json!({ "containers": [container] }))
    }

    fn env_of(pod: &Pod, lookup: &Maps) -> Result<Vec<(String, String)>> {
        env_with(pod, &[], lookup, &PodFacts::default())
    }

    fn env_with(
        pod: &Pod,
        image_env: &[&str],
        lookup: &Maps,
        facts: &PodFacts,
    ) -> Result<Vec<(String, String)>> {
        let image_env: Vec<String> = image_env.iter().map(|s| s.to_string()).collect();
        container_env(pod, &pod.spec.containers[0], &image_env, facts, lookup)
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn config_field(err: Error) -> (String, String) {
        match err {
            Error::Config { field, reason } => (field, reason),
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn image_env_then_env_from_then_env_with_overrides_in_place() {
        let p = one(serde_json::json!({
            "name": "app", "image": "x",
            "envFrom": [
                {"configMapRef": {"name": "settings"}},
                {"secretRef": {"name": "creds"}, "prefix": "DB_"},
            ],
            "env": [
                {"name": "MODE", "value": "env-wins"},
                {"name": "EXTRA", "value": "1"},
                {"name": "EXTRA", "value": "2"},
            ],
        }));
        let maps = Maps::default()
            .cm(
                "shop",
                "settings",
                &[("MODE", "from-cm"), ("PATH", "/cm/bin"), ("LEVEL", "3")],
            )
            .secret("shop", "creds", &[("USER", b"admin"), ("PASS", b"s3cret")]);
        let env = env_with(
            &p,
            &["PATH=/usr/bin", "HOME=/root", "junk"],
            &maps,
            &PodFacts::default(),
        )
        .unwrap();
        assert_eq!(
            env,
            pairs(&[
                ("PATH", "/cm/bin"),
                ("HOME", "/root"),
                ("LEVEL", "3"),
                ("MODE", "env-wins"),
                ("DB_PASS", "s3cret"),
                ("DB_USER", "admin"),
                ("EXTRA", "2"),
            ])
        );
    }

    #[test]
    fn env_from_skips_keys_that_are_not_variable_names_and_binary_secret_values() {
        let p = one(serde_json::json!({
            "name": "app", "image": "x",
            "envFrom": [
                {"configMapRef": {"name": "odd"}},
                {"secretRef": {"name": "bin"}},
            ],
        }));
        let maps = Maps::default()
            .cm(
                "shop",
                "odd",
                &[("GOOD", "1"), ("A=B", "2"), ("tab\tkey", "3")],
            )
            .secret(
                "shop",
                "bin",
                &[("KEYSTORE", &[0xff, 0x00, 0x01]), ("OK", b"yes")],
            );
        assert_eq!(
            env_of(&p, &maps).unwrap(),
            pairs(&[("GOOD", "1"), ("OK", "yes")])
        );
    }

    #[test]
    fn env_from_missing_object_is_an_error_unless_optional() {
        let p = one(serde_json::json!({
            "name": "app", "image": "x",
            "envFrom": [{"configMapRef": {"name": "gone", "optional": true}},
                        {"secretRef": {"name": "gone-too"}}],
        }));
        let (field, reason) = config_field(env_of(&p, &Maps::default()).unwrap_err());
        assert_eq!(field, "spec.containers[0].envFrom[1].secretRef");
        assert_eq!(reason, "secret \"gone-too\" not found");
    }

    #[test]
    fn values_expand_with_variables_defined_earlier_only() {
        let p = one(serde_json::json!({
            "name": "app", "image": "x",
            "env": [
                {"name": "A", "value": "a"},
                {"name": "B", "value": "$(A)-$(C)-$(HOME)"},
                {"name": "C", "value": "c"},
                {"name": "D", "value": "$$(A) $(B)"},
            ],
        }));
        let env = env_with(&p, &["HOME=/root"], &Maps::default(), &PodFacts::default()).unwrap();
        assert_eq!(
            env,
            pairs(&[
                ("HOME", "/root"),
                ("A", "a"),
                ("B", "a-$(C)-/root"),
                ("C", "c"),
                ("D", "$(A) a-$(C)-/root"),
            ])
        );
    }

    #[test]
    fn expansion_edge_cases() {
        let env = pairs(&[("X", "x"), ("Y", "why"), ("X", "last"), ("", "empty-name")]);
        let cases = [
            ("$(X)", "last"),
            ("$$(X)", "$(X)"),
            ("$$$(X)", "$last"),
            ("$$", "$"),
            ("$", "$"),
            ("a$", "a$"),
            ("$(", "$("),
            ("$(X", "$(X"),
            ("$(X$(Y)", "$(X$(Y)"),
            ("$($(Y))", "$($(Y))"),
            ("$(UNDEFINED) and $(Y)", "$(UNDEFINED) and why"),
            ("$()", "empty-name"),
            ("$X", "$X"),
            ("$é$(Y)", "$éwhy"),
            ("plain", "plain"),
            ("$(Y)$(Y)", "whywhy"),
            ("(Y)", "(Y)"),
        ];
        for (text, want) in cases {
            assert_eq!(expand(text, &env), want, "expanding {text:?}");
        }
        // No nesting: the expansion of a value is not expanded again.
        let env = pairs(&[("OUTER", "$(INNER)"), ("INNER", "no")]);
        assert_eq!(expand("$(OUTER)", &env), "$(INNER)");
    }

    #[test]
    fn value_from_config_map_and_secret_keys() {
        let p = one(serde_json::json!({
            "name": "app", "image": "x",
            "env": [
                {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "level"}}},
                {"name": "PASS", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
                {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "db", "key": "nope", "optional": true}}},
                {"name": "OPT2", "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "k", "optional": true}}},
            ],
        }));
        let maps = Maps::default()
            .cm("shop", "settings", &[("level", "debug")])
            .cm("other", "gone", &[("k", "wrong namespace")])
            .secret("shop", "db", &[("password", b"hunter2")]);
        assert_eq!(
            env_of(&p, &maps).unwrap(),
            pairs(&[("LEVEL", "debug"), ("PASS", "hunter2")])
        );
    }

    #[test]
    fn value_from_errors_name_the_field() {
        let container = |env: serde_json::Value| {
            pod(serde_json::json!({
                "initContainers": [{"name": "init", "image": "x"}],
                "containers": [{"name": "side", "image": "x"}, {"name": "app", "image": "x", "env": env}],
            }))
        };
        let maps = Maps::default()
            .cm("shop", "settings", &[("level", "debug")])
            .secret("shop", "bin", &[("raw", &[0xc3, 0x28])]);
        let cases = [
            (
                serde_json::json!([{"name": "A", "value": "1"},
                    {"name": "P", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}]),
                "spec.containers[1].env[1].valueFrom.secretKeyRef",
                "secret \"db\" not found",
            ),
            (
                serde_json::json!([{"name": "L", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "colour"}}}]),
                "spec.containers[1].env[0].valueFrom.configMapKeyRef",
                "key \"colour\" not found in configmap \"settings\"",
            ),
            (
                serde_json::json!([{"name": "R", "valueFrom": {"secretKeyRef": {"name": "bin", "key": "raw"}}}]),
                "spec.containers[1].env[0].valueFrom.secretKeyRef",
                "key \"raw\" of secret \"bin\" is not UTF-8 text",
            ),
            (
                serde_json::json!([{"name": "F", "valueFrom": {"fieldRef": {"fieldPath": "spec.hostname"}}}]),
                "spec.containers[1].env[0].valueFrom.fieldRef.fieldPath",
                "unsupported fieldPath \"spec.hostname\"",
            ),
            (
                serde_json::json!([{"name": "N", "valueFrom": {}}]),
                "spec.containers[1].env[0].valueFrom",
                "must specify exactly one of",
            ),
            (
                serde_json::json!([{"name": "BAD=NAME", "value": "1"}]),
                "spec.containers[1].env[0].name",
                "other than '='",
            ),
        ];
        for (env, want_field, want_reason) in cases {
            let p = container(env);
            let err = container_env(&p, &p.spec.containers[1], &[], &PodFacts::default(), &maps)
                .unwrap_err();
            let (field, reason) = config_field(err);
            assert_eq!(field, want_field);
            assert!(
                reason.contains(want_reason),
                "{reason:?} should contain {want_reason:?}"
            );
        }
        // Init containers are named by their own list.
        let p = pod(serde_json::json!({
            "initContainers": [{"name": "init", "image": "x", "env": [
                {"name": "P", "valueFrom": {"secretKeyRef": {"name": "db", "key": "k"}}}]}],
            "containers": [{"name": "app", "image": "x"}],
        }));
        let init = &p.spec.init_containers.as_ref().unwrap()[0];
        let err = container_env(&p, init, &[], &PodFacts::default(), &maps).unwrap_err();
        assert_eq!(
            config_field(err).0,
            "spec.initContainers[0].env[0].valueFrom.secretKeyRef"
        );
    }

    #[test]
    fn field_refs() {
        let field = |path: &str| serde_json::json!({"fieldRef": {"fieldPath": path}});
        let p = one(serde_json::json!({
            "name": "app", "image": "x",
            "env": [
                {"name": "NAME", "valueFrom": field("metadata.name")},
                {"name": "NS", "valueFrom": field("metadata.namespace")},
                {"name": "UID", "valueFrom": field("metadata.uid")},
                {"name": "APP", "valueFrom": field("metadata.labels['app']")},
                {"name": "TIER", "valueFrom": field("metadata.labels['app.kubernetes.io/tier']")},
                {"name": "MISSING", "valueFrom": field("metadata.labels['nope']")},
                {"name": "NOTE", "valueFrom": field("metadata.annotations['note']")},
                {"name": "NODE", "valueFrom": field("spec.nodeName")},
                {"name": "SA", "valueFrom": field("spec.serviceAccountName")},
                {"name": "IP", "valueFrom": field("status.podIP")},
                {"name": "IPS", "valueFrom": field("status.podIPs")},
                {"name": "HOST", "valueFrom": field("status.hostIP")},
                {"name": "V1", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
            ],
        }));
        let facts = PodFacts {
            pod_ip: Some("10.1.0.7".into()),
            host_ip: Some("192.168.1.5".into()),
            node_name: "node-a".into(),
            service_account: None,
            node_allocatable: BTreeMap::new(),
        };
        assert_eq!(
            env_with(&p, &[], &Maps::default(), &facts).unwrap(),
            pairs(&[
                ("NAME", "web-0"),
                ("NS", "shop"),
                ("UID", "1234-abcd"),
                ("APP", "web"),
                ("TIER", "front"),
                ("MISSING", ""),
                ("NOTE", "hello"),
                ("NODE", "node-a"),
                ("SA", "default"),
                ("IP", "10.1.0.7"),
                ("IPS", "10.1.0.7"),
                ("HOST", "192.168.1.5"),
                ("V1", "web-0"),
            ])
        );
        let facts = PodFacts {
            service_account: Some("builder".into()),
            ..facts
        };
        let p = one(serde_json::json!({"name": "app", "image": "x",
            "env": [{"name": "SA", "valueFrom": field("spec.serviceAccountName")}]}));
        assert_eq!(
            env_with(&p, &[], &Maps::default(), &facts).unwrap(),
            pairs(&[("SA", "builder")])
        );
        // A pod without a namespace lives in `default`.
        let mut p = one(serde_json::json!({"name": "app", "image": "x",
            "env": [{"name": "NS", "valueFrom": field("metadata.namespace")}]}));
        p.metadata.namespace = None;
        assert_eq!(
            env_of(&p, &Maps::default()).unwrap(),
            pairs(&[("NS", "default")])
        );
    }

    #[test]
    fn resource_field_refs_divide_and_round_up() {
        let res = |resource: &str, divisor: Option<&str>| {
            let mut sel = serde_json::json!({"resource": resource});
            if let Some(d) = divisor {
                sel["divisor"] = serde_json::json!(d);
            }
            serde_json::json!({"resourceFieldRef": sel})
        };
        let p = pod(serde_json::json!({"containers": [
            {"name": "app", "image": "x",
             "resources": {"limits": {"cpu": "1500m", "memory": "200Mi"},
                           "requests": {"cpu": "250m"}},
             "env": [
                {"name": "LCPU", "valueFrom": res("limits.cpu", None)},
                {"name": "LCPU_M", "valueFrom": res("limits.cpu", Some("1m"))},
                {"name": "RCPU", "valueFrom": res("requests.cpu", None)},
                {"name": "RCPU_M", "valueFrom": res("requests.cpu", Some("1m"))},
                {"name": "RCPU_100M", "valueFrom": res("requests.cpu", Some("100m"))},
                {"name": "LMEM", "valueFrom": res("limits.memory", None)},
                {"name": "LMEM_MI", "valueFrom": res("limits.memory", Some("1Mi"))},
                {"name": "LMEM_G", "valueFrom": res("limits.memory", Some("1G"))},
                {"name": "RMEM", "valueFrom": res("requests.memory", Some("1Mi"))},
                {"name": "SIDE", "valueFrom": {"resourceFieldRef": {"containerName": "side", "resource": "limits.memory", "divisor": "1Ki"}}},
                {"name": "SIDE_REQ", "valueFrom": {"resourceFieldRef": {"containerName": "side", "resource": "requests.cpu"}}},
             ]},
            {"name": "side", "image": "x", "resources": {"limits": {"memory": "1000"}}},
        ]}));
        let env = env_of(&p, &Maps::default()).unwrap();
        assert_eq!(
            env,
            pairs(&[
                ("LCPU", "2"),
                ("LCPU_M", "1500"),
                ("RCPU", "1"),
                ("RCPU_M", "250"),
                ("RCPU_100M", "3"),
                ("LMEM", "209715200"),
                ("LMEM_MI", "200"),
                ("LMEM_G", "1"),
                // No memory request: the limit, as the API server defaults it.
                ("RMEM", "200"),
                ("SIDE", "1"),
                // No cpu request nor limit: zero.
                ("SIDE_REQ", "0"),
            ])
        );
    }

    #[test]
    fn resource_field_ref_limits_default_to_node_allocatable() {
        let p = one(serde_json::json!({"name": "app", "image": "x", "env": [
            {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
            {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
        ]}));
        let err = env_of(&p, &Maps::default()).unwrap_err();
        let (field, reason) = config_field(err);
        assert_eq!(
            field,
            "spec.containers[0].env[0].valueFrom.resourceFieldRef"
        );
        assert!(reason.contains("no cpu limit"), "{reason}");
        let facts = PodFacts {
            node_allocatable: [
                ("cpu".to_string(), Quantity::new("3900m")),
                ("memory".to_string(), Quantity::new("8Gi")),
            ]
            .into(),
            ..PodFacts::default()
        };
        assert_eq!(
            env_with(&p, &[], &Maps::default(), &facts).unwrap(),
            pairs(&[("CPU", "4"), ("MEM", "8192")])
        );
    }

    #[test]
    fn resource_field_ref_errors() {
        let cases = [
            (
                serde_json::json!({"resource": "limits.cpu", "divisor": "0"}),
                "must be greater than zero",
            ),
            (
                serde_json::json!({"resource": "limits.gpu"}),
                "unsupported resource",
            ),
            (
                serde_json::json!({"resource": "limits.cpu", "containerName": "ghost"}),
                "\"ghost\" not found",
            ),
            (
                serde_json::json!({"resource": "limits.cpu", "divisor": "lots"}),
                "lots",
            ),
        ];
        for (sel, want) in cases {
            let p = one(serde_json::json!({"name": "app", "image": "x",
                "resources": {"limits": {"cpu": "1"}},
                "env": [{"name": "V", "valueFrom": {"resourceFieldRef": sel}}]}));
            let (field, reason) = config_field(env_of(&p, &Maps::default()).unwrap_err());
            assert_eq!(
                field,
                "spec.containers[0].env[0].valueFrom.resourceFieldRef"
            );
            assert!(reason.contains(want), "{reason:?} should contain {want:?}");
        }
    }

    #[test]
    fn ceil_div_rounds_up() {
        assert_eq!(ceil_div(1500, 1000), 2);
        assert_eq!(ceil_div(1000, 1000), 1);
        assert_eq!(ceil_div(0, 7), 0);
        assert_eq!(ceil_div(1, 7), 1);
        assert_eq!(ceil_div(-1500, 1000), -1);
        assert_eq!(ceil_div(i64::MAX, 1), i64::MAX);
    }

    #[test]
    fn argv_expands_command_and_args_but_not_the_image() {
        let p = one(serde_json::json!({"name": "app", "image": "x",
            "args": ["--port=$(PORT)", "$$(PORT)", "$(MISSING)"]}));
        let image = ImageConfig {
            entrypoint: vec!["/bin/server".into(), "$(PORT)".into()],
            cmd: vec!["--default".into()],
            ..ImageConfig::default()
        };
        let env = pairs(&[("PORT", "8080")]);
        assert_eq!(
            argv(&p, &p.spec.containers[0], &image, &env).unwrap(),
            [
                "/bin/server",
                "$(PORT)",
                "--port=8080",
                "$(PORT)",
                "$(MISSING)"
            ]
        );
        let p = one(serde_json::json!({"name": "app", "image": "x",
            "command": ["sh", "-c", "echo $(PORT)"]}));
        assert_eq!(
            argv(&p, &p.spec.containers[0], &image, &env).unwrap(),
            ["sh", "-c", "echo 8080"]
        );
    }

    #[test]
    fn argv_errors() {
        let p = one(serde_json::json!({"name": "app", "image": "x"}));
        let (field, reason) = config_field(
            argv(&p, &p.spec.containers[0], &ImageConfig::default(), &[]).unwrap_err(),
        );
        assert_eq!(field, "spec.containers[0].command");
        assert_eq!(
            reason,
            "no command: the image has no entrypoint or cmd and the container sets none"
        );
        let p = one(serde_json::json!({"name": "app", "image": "x", "command": ["$(EMPTY)"]}));
        let env = pairs(&[("EMPTY", "")]);
        let (_, reason) = config_field(
            argv(&p, &p.spec.containers[0], &ImageConfig::default(), &env).unwrap_err(),
        );
        assert!(reason.contains("empty string"), "{reason}");
        let p = one(serde_json::json!({"name": "app", "image": "x", "command": ["sh", "a\u{0}b"]}));
        let (_, reason) = config_field(
            argv(&p, &p.spec.containers[0], &ImageConfig::default(), &[]).unwrap_err(),
        );
        assert!(reason.contains("argument 1"), "{reason}");
    }

    #[test]
    fn base64_decoding() {
        assert_eq!(decode_base64("").unwrap(), b"");
        assert_eq!(decode_base64("Zg==").unwrap(), b"f");
        assert_eq!(decode_base64("Zm8=").unwrap(), b"fo");
        assert_eq!(decode_base64("Zm9v").unwrap(), b"foo");
        assert_eq!(decode_base64("Zm9v\nYmFy").unwrap(), b"foobar");
        assert_eq!(decode_base64("/+8A").unwrap(), [0xff, 0xef, 0x00]);
        for bad in [
            "Zg", "Zg=", "Zg===", "Z===", "Zm9v!", "Zg==Zg==", "Zh==", "Zm9=", "Z",
        ] {
            assert!(decode_base64(bad).is_none(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn secret_data_decodes_and_merges_string_data() {
        let secret: Secret = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"},
            "data": {"user": "YWRtaW4=", "pass": "b2xk"},
            "stringData": {"pass": "new"},
        }))
        .unwrap();
        let data = secret_data(&secret).unwrap();
        assert_eq!(data["user"], b"admin");
        assert_eq!(data["pass"], b"new");
        let bad: Secret = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"},
            "data": {"user": "not base64!"},
        }))
        .unwrap();
        let (field, reason) = config_field(secret_data(&bad).unwrap_err());
        assert_eq!(field, "secret \"db\" data[\"user\"]");
        assert_eq!(reason, "is not valid base64");
        let cm: ConfigMap = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "bin"},
            "binaryData": {"blob": "AAEC"},
        }))
        .unwrap();
        assert_eq!(config_map_binary_data(&cm).unwrap()["blob"], [0u8, 1, 2]);
    }
}
