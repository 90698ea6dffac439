//! `autoscaling/v2`: HorizontalPodAutoscaler, with Resource metrics (cpu, memory) only,
//! since those are the metrics the node agent measures from cgroups.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use crate::meta::{Condition, ObjectMeta, Time};
use crate::quantity::Quantity;

/// `autoscaling/v2/HorizontalPodAutoscaler`.
#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HorizontalPodAutoscaler {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: HpaSpec,
    pub status: Option<HpaStatus>,
}

/// `HorizontalPodAutoscalerSpec`.
#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HpaSpec {
    pub scale_target_ref: CrossVersionObjectReference,
    pub min_replicas: Option<i32>,
    pub max_replicas: i32,
    pub metrics: Option<Vec<MetricSpec>>,
    pub behavior: Option<HpaBehavior>,
}

/// `CrossVersionObjectReference`.
#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CrossVersionObjectReference {
    pub api_version: Option<String>,
    pub kind: String,
    pub name: String,
}

/// `MetricSourceType`: only `Resource`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum MetricSourceType {
    Resource,
}

/// `MetricSpec`.
#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricSpec {
    #[serde(rename = "type")]
    pub type_: MetricSourceType,
    pub resource: Option<ResourceMetricSource>,
}

/// `ResourceMetricSource`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceMetricSource {
    pub name: String,
    pub target: MetricTarget,
}

/// `MetricTargetType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum MetricTargetType {
    Utilization,
    AverageValue,
    Value,
}

/// `MetricTarget`.
#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricTarget {
    #[serde(rename = "type")]
    pub type_: MetricTargetType,
    pub average_utilization: Option<i32>,
    pub average_value: Option<Quantity>,
    pub value: Option<Quantity>,
}

/// `HorizontalPodAutoscalerBehavior`.
#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HpaBehavior {
    pub scale_up: Option<HpaScalingRules>,
    pub scale_down: Option<HpaScalingRules>,
}

/// `ScalingPolicySelect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SelectPolicy {
    Max,
    Min,
    Disabled,
}

/// `HPAScalingRules`.
#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HpaScalingRules {
    pub stabilization_window_seconds: Option<i32>,
    pub select_policy: Option<SelectPolicy>,
    pub policies: Option<Vec<HpaScalingPolicy>>,
}

/// `HPAScalingPolicyType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ScalingPolicyType {
    Pods,
    Percent,
}

/// `HPAScalingPolicy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HpaScalingPolicy {
    #[serde(rename = "type")]
    pub type_: ScalingPolicyType,
    pub value: i32,
    pub period_seconds: i32,
}

/// `HorizontalPodAutoscalerStatus`.
#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HpaStatus {
    pub observed_generation: Option<i64>,
    pub last_scale_time: Option<Time>,
    pub current_replicas: Option<i32>,
    pub desired_replicas: i32,
    pub current_metrics: Option<Vec<MetricStatus>>,
    pub conditions: Option<Vec<Condition>>,
}

/// `MetricStatus`.
#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricStatus {
    #[serde(rename = "type")]
    pub type_: MetricSourceType,
    pub resource: Option<ResourceMetricStatus>,
}

/// `ResourceMetricStatus`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceMetricStatus {
    pub name: String,
    pub current: MetricValueStatus,
}

/// `MetricValueStatus`.
#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricValueStatus {
    pub average_utilization: Option<i32>,
    pub average_value: Option<Quantity>,
    pub value: Option<Quantity>,
}
