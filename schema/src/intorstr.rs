//! `IntOrString`, as Kubernetes uses for ports (`8080` or `http`) and rollout budgets (`1` or
//! `25%`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Either a whole number or a string; which one is meaningful depends on the field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum IntOrString {
    Int(i32),
    String(String),
}

impl IntOrString {
    /// Resolves a rollout budget (`maxSurge`, `maxUnavailable`) against a total the way
    /// Kubernetes' `GetScaledValueFromIntOrPercent` does. `round_up` picks ceil over floor.
    /// Returns `None` for a string that is not `N%`.
    pub fn scaled_value(&self, total: i32, round_up: bool) -> Option<i32> {
        match self {
            IntOrString::Int(n) => Some(*n),
            IntOrString::String(s) => {
                let pct: i64 = s.strip_suffix('%')?.parse().ok()?;
                let num = pct.checked_mul(i64::from(total))?;
                let v = if round_up {
                    num.checked_add(99)?.div_euclid(100)
                } else {
                    num.div_euclid(100)
                };
                i32::try_from(v).ok()
            }
        }
    }
}

impl std::fmt::Display for IntOrString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IntOrString::Int(n) => write!(f, "{n}"),
            IntOrString::String(s) => f.write_str(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled_values_follow_kubernetes_rounding() {
        let cases = [
            (IntOrString::Int(2), 10, true, Some(2)),
            (IntOrString::String("25%".into()), 10, true, Some(3)),
            (IntOrString::String("25%".into()), 10, false, Some(2)),
            (IntOrString::String("100%".into()), 3, false, Some(3)),
            (IntOrString::String("abc".into()), 3, false, None),
            (IntOrString::String("5".into()), 3, false, None),
        ];
        for (v, total, up, want) in cases {
            assert_eq!(v.scaled_value(total, up), want, "{v} of {total} up={up}");
        }
    }
}
