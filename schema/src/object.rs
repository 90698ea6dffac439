//! The registry of supported kinds and [`Object`], the sum of all of them.
//!
//! Everything that dispatches on `apiVersion` + `kind` goes through [`KindInfo`], so adding a
//! kind is one line in the `kinds!` table below plus its types.

use std::sync::OnceLock;

use serde::Serialize;

use crate::kinds::apps::{DaemonSet, Deployment, ReplicaSet};
use crate::kinds::autoscaling::HorizontalPodAutoscaler;
use crate::kinds::batch::{CronJob, Job};
use crate::kinds::core::{ConfigMap, Endpoints, Namespace, Node, Secret, Service};
use crate::kinds::pod::Pod;
use crate::meta::ObjectMeta;

/// Static facts about one supported kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindInfo {
    /// `apps/v1`, or `v1` for the core group.
    pub api_version: &'static str,
    /// `apps`, or `""` for the core group (as Kubernetes writes it).
    pub group: &'static str,
    pub kind: &'static str,
    /// The lower-case plural used in store keys and on the CLI (`deployments`).
    pub plural: &'static str,
    pub namespaced: bool,
    /// File name under `schema/schemas/`.
    pub schema_file: &'static str,
    /// The JSON Schema text, embedded at build time so validation needs no files at run time.
    pub schema_text: &'static str,
}

macro_rules! kinds {
    ($($variant:ident($ty:ty) = $api:literal, $group:literal, $plural:literal, $ns:literal, $file:literal;)*) => {
        /// Every supported kind, in a stable order (core first, as `kubectl api-resources`).
        pub static KINDS: &[KindInfo] = &[$(KindInfo {
            api_version: $api,
            group: $group,
            kind: stringify!($variant),
            plural: $plural,
            namespaced: $ns,
            schema_file: $file,
            schema_text: include_str!(concat!("../schemas/", $file)),
        },)*];

        /// One object of any supported kind.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Object {
            $($variant(Box<$ty>),)*
        }

        impl Object {
            /// Decodes a JSON value whose `apiVersion` and `kind` were already looked up.
            pub fn from_value(info: &KindInfo, value: serde_json::Value) -> Result<Object, serde_json::Error> {
                match info.kind {
                    $(stringify!($variant) => serde_json::from_value::<$ty>(value).map(|o| Object::$variant(Box::new(o))),)*
                    other => Err(serde::de::Error::custom(format!("unsupported kind {other}"))),
                }
            }

            /// The object as JSON, exactly as it will be stored.
            pub fn to_value(&self) -> Result<serde_json::Value, serde_json::Error> {
                match self {
                    $(Object::$variant(o) => serde_json::to_value(o),)*
                }
            }

            pub fn meta(&self) -> &ObjectMeta {
                match self {
                    $(Object::$variant(o) => &o.metadata,)*
                }
            }

            pub fn meta_mut(&mut self) -> &mut ObjectMeta {
                match self {
                    $(Object::$variant(o) => &mut o.metadata,)*
                }
            }

            /// The registry entry of this object's kind.
            pub fn info(&self) -> &'static KindInfo {
                let kind = match self {
                    $(Object::$variant(_) => stringify!($variant),)*
                };
                // Every variant has an entry: both come from the same macro table.
                KINDS.iter().find(|k| k.kind == kind).unwrap_or(&KINDS[0])
            }
        }

        impl Serialize for Object {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                match self {
                    $(Object::$variant(o) => o.serialize(s),)*
                }
            }
        }

        /// The Rust type's JSON Schema for a kind, as generated from the types (the source
        /// of the files in `schema/schemas/`).
        pub fn generated_schema(info: &KindInfo) -> Option<serde_json::Value> {
            let schema = match info.kind {
                $(stringify!($variant) => schemars::schema_for!($ty),)*
                _ => return None,
            };
            Some(finish_schema(info, schema.to_value()))
        }
    };
}

kinds! {
    Namespace(Namespace) = "v1", "", "namespaces", false, "v1-namespace.json";
    Pod(Pod) = "v1", "", "pods", true, "v1-pod.json";
    Service(Service) = "v1", "", "services", true, "v1-service.json";
    Endpoints(Endpoints) = "v1", "", "endpoints", true, "v1-endpoints.json";
    ConfigMap(ConfigMap) = "v1", "", "configmaps", true, "v1-configmap.json";
    Secret(Secret) = "v1", "", "secrets", true, "v1-secret.json";
    Node(Node) = "v1", "", "nodes", false, "v1-node.json";
    Deployment(Deployment) = "apps/v1", "apps", "deployments", true, "apps-v1-deployment.json";
    ReplicaSet(ReplicaSet) = "apps/v1", "apps", "replicasets", true, "apps-v1-replicaset.json";
    DaemonSet(DaemonSet) = "apps/v1", "apps", "daemonsets", true, "apps-v1-daemonset.json";
    Job(Job) = "batch/v1", "batch", "jobs", true, "batch-v1-job.json";
    CronJob(CronJob) = "batch/v1", "batch", "cronjobs", true, "batch-v1-cronjob.json";
    HorizontalPodAutoscaler(HorizontalPodAutoscaler) = "autoscaling/v2", "autoscaling", "horizontalpodautoscalers", true, "autoscaling-v2-horizontalpodautoscaler.json";
}

/// Pins `apiVersion` and `kind` to constants, so a Deployment schema rejects
/// `kind: Deploymnet` by itself, and gives the schema an `$id` and a title.
fn finish_schema(info: &KindInfo, mut schema: serde_json::Value) -> serde_json::Value {
    if let Some(obj) = schema.as_object_mut() {
        obj.insert(
            "$id".into(),
            format!("https://coxswain.invalid/schemas/{}", info.schema_file).into(),
        );
        obj.insert(
            "title".into(),
            format!("{} {}", info.api_version, info.kind).into(),
        );
        if let Some(props) = obj.get_mut("properties").and_then(|p| p.as_object_mut()) {
            props.insert(
                "apiVersion".into(),
                serde_json::json!({ "const": info.api_version }),
            );
            props.insert("kind".into(), serde_json::json!({ "const": info.kind }));
        }
    }
    add_integer_bounds(&mut schema);
    schema
}

/// Gives `int32`/`int64` fields their range, so an out-of-range number is a schema error at
/// its own field rather than a decoding error for the whole object.
fn add_integer_bounds(schema: &mut serde_json::Value) {
    match schema {
        serde_json::Value::Object(obj) => {
            let range = match obj.get("format").and_then(|f| f.as_str()) {
                Some("int32") => Some((i64::from(i32::MIN), i64::from(i32::MAX))),
                Some("int64") => Some((i64::MIN, i64::MAX)),
                _ => None,
            };
            if let Some((lo, hi)) = range {
                obj.entry("minimum").or_insert(lo.into());
                obj.entry("maximum").or_insert(hi.into());
            }
            obj.values_mut().for_each(add_integer_bounds);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(add_integer_bounds),
        _ => {}
    }
}

/// Looks a kind up by `apiVersion` and `kind`.
pub fn lookup(api_version: &str, kind: &str) -> Option<&'static KindInfo> {
    KINDS
        .iter()
        .find(|k| k.api_version == api_version && k.kind == kind)
}

/// Looks a kind up by `kind` alone (for "did you mean `apps/v1`?" hints).
pub fn lookup_kind(kind: &str) -> Option<&'static KindInfo> {
    KINDS.iter().find(|k| k.kind == kind)
}

/// The compiled validator of kind number `idx` (its position in [`KINDS`]), compiled once on
/// first use. Each kind is compiled only when a document of that kind shows up, so a
/// one-file `coxswain validate` does not pay for all thirteen schemas.
pub(crate) fn validator(idx: usize) -> Option<&'static Result<jsonschema::Validator, String>> {
    type Slot = OnceLock<Result<jsonschema::Validator, String>>;
    static V: OnceLock<Vec<Slot>> = OnceLock::new();
    let slots = V.get_or_init(|| KINDS.iter().map(|_| OnceLock::new()).collect());
    let info = KINDS.get(idx)?;
    Some(slots.get(idx)?.get_or_init(|| {
        let schema: serde_json::Value =
            serde_json::from_str(info.schema_text).map_err(|e| e.to_string())?;
        jsonschema::validator_for(&schema).map_err(|e| e.to_string())
    }))
}
