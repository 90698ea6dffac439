//! TaintToleration: a node's `NoSchedule` and `NoExecute` taints reject pods that do not
//! tolerate them (filter); its `PreferNoSchedule` taints make it less attractive to pods
//! that do not tolerate them (score, weight 3).

use coxswain_schema::kinds::core::Taint;
use coxswain_schema::kinds::pod::{TaintEffect, Toleration, TolerationOperator};

use super::framework::{CycleState, Reason, default_normalize};
use super::pod_info::PodInfo;
use super::{NodeInfo, Snapshot};

/// Kubernetes' message, completed with the taint: `node(s) had untolerated taint {k: v}`.
pub const REASON_PREFIX: &str = "node(s) had untolerated taint";

/// Kubernetes' default weight for TaintToleration.
pub const WEIGHT: i64 = 3;

/// The message for an untolerated taint, as Kubernetes prints it (an empty value leaves
/// `{key: }`).
pub fn reason_message(taint: &Taint) -> String {
    format!(
        "{REASON_PREFIX} {{{}: {}}}",
        taint.key,
        taint.value.as_deref().unwrap_or("")
    )
}

/// Kubernetes' `Toleration.ToleratesTaint`: the effect matches (an empty effect matches
/// all), the key matches (an empty key matches all), and with `Equal` (the default) the
/// value matches while `Exists` ignores it.
pub fn tolerates(t: &Toleration, key: &str, value: &str, effect: TaintEffect) -> bool {
    if let Some(e) = t.effect
        && e != TaintEffect::Any
        && e != effect
    {
        return false;
    }
    if let Some(k) = t.key.as_deref()
        && !k.is_empty()
        && k != key
    {
        return false;
    }
    match t.operator {
        Some(TolerationOperator::Exists) => true,
        None | Some(TolerationOperator::Equal) => t.value.as_deref().unwrap_or("") == value,
    }
}

fn tolerates_taint(t: &Toleration, taint: &Taint) -> bool {
    tolerates(
        t,
        &taint.key,
        taint.value.as_deref().unwrap_or(""),
        taint.effect,
    )
}

/// Rejects the node at its first `NoSchedule`/`NoExecute` taint no toleration matches.
pub fn filter<'n>(pod: &PodInfo, node: &'n NodeInfo, _: &CycleState<'_>) -> Result<(), Reason<'n>> {
    let untolerated = node.taints().iter().find(|taint| {
        matches!(
            taint.effect,
            TaintEffect::NoSchedule | TaintEffect::NoExecute
        ) && !pod.tolerations.iter().any(|t| tolerates_taint(t, taint))
    });
    match untolerated {
        Some(taint) => Err(Reason::UntoleratedTaint(taint)),
        None => Ok(()),
    }
}

/// The raw score: how many `PreferNoSchedule` taints the pod does not tolerate. Only
/// tolerations whose effect is empty or `PreferNoSchedule` count, as in Kubernetes.
pub fn count_intolerable(pod: &PodInfo, node: &NodeInfo) -> i64 {
    let prefer = |t: &&Toleration| {
        matches!(
            t.effect,
            None | Some(TaintEffect::Any) | Some(TaintEffect::PreferNoSchedule)
        )
    };
    node.taints()
        .iter()
        .filter(|taint| taint.effect == TaintEffect::PreferNoSchedule)
        .filter(|taint| {
            !pod.tolerations
                .iter()
                .filter(prefer)
                .any(|t| tolerates_taint(t, taint))
        })
        .count() as i64
}

/// Scores by [`count_intolerable`], reversed: the node with the most intolerable taints gets
/// 0, a node with none gets 100.
pub fn score(pod: &PodInfo, snapshot: &Snapshot, feasible: &[usize], out: &mut [i64]) {
    for (o, &i) in out.iter_mut().zip(feasible) {
        *o = count_intolerable(pod, &snapshot.nodes[i]);
    }
    default_normalize(out, true);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::tests::{node, pod, taint, toleration};

    type Tol = (&'static str, &'static str, &'static str, &'static str);

    #[test]
    fn tolerations_match_taints_like_kubernetes() {
        // (toleration (key, operator, value, effect), taint (key, value, effect), tolerated)
        let cases: &[(Tol, (&str, &str, &str), bool)] = &[
            (
                ("a", "Equal", "x", "NoSchedule"),
                ("a", "x", "NoSchedule"),
                true,
            ),
            (("a", "", "x", "NoSchedule"), ("a", "x", "NoSchedule"), true),
            (
                ("a", "Equal", "y", "NoSchedule"),
                ("a", "x", "NoSchedule"),
                false,
            ),
            (
                ("a", "Exists", "", "NoSchedule"),
                ("a", "x", "NoSchedule"),
                true,
            ),
            (("a", "Exists", "", ""), ("a", "x", "NoExecute"), true),
            (
                ("a", "Exists", "", "NoExecute"),
                ("a", "x", "NoSchedule"),
                false,
            ),
            (("b", "Exists", "", ""), ("a", "x", "NoSchedule"), false),
            (("", "Exists", "", ""), ("a", "x", "NoSchedule"), true),
            (
                ("a", "Equal", "", "NoSchedule"),
                ("a", "", "NoSchedule"),
                true,
            ),
        ];
        for (tol, (k, v, e), want) in cases {
            let t = toleration(tol.0, tol.1, tol.2, tol.3);
            assert_eq!(
                tolerates_taint(&t, &taint(k, v, e)),
                *want,
                "{tol:?} vs {k}={v}:{e}"
            );
        }
    }

    #[test]
    fn filter_rejects_untolerated_no_schedule_and_no_execute_taints() {
        // (taints, tolerations, expected error message or None)
        type TaintSpec = (&'static str, &'static str, &'static str);
        type Case = (&'static [TaintSpec], &'static [Tol], Option<&'static str>);
        let cases: &[Case] = &[
            (&[], &[], None),
            (
                &[("dedicated", "gpu", "NoSchedule")],
                &[],
                Some("node(s) had untolerated taint {dedicated: gpu}"),
            ),
            (
                &[("dedicated", "gpu", "NoSchedule")],
                &[("dedicated", "Equal", "gpu", "NoSchedule")],
                None,
            ),
            (
                &[("node.kubernetes.io/not-ready", "", "NoExecute")],
                &[],
                Some("node(s) had untolerated taint {node.kubernetes.io/not-ready: }"),
            ),
            // PreferNoSchedule never filters.
            (&[("soft", "x", "PreferNoSchedule")], &[], None),
            // The first untolerated taint is the one reported.
            (
                &[("a", "1", "NoSchedule"), ("b", "2", "NoSchedule")],
                &[("a", "Exists", "", "")],
                Some("node(s) had untolerated taint {b: 2}"),
            ),
        ];
        for (taints, tols, want) in cases {
            let mut n = node("n", "1", "1Gi", "10");
            n.spec.get_or_insert_default().taints =
                Some(taints.iter().map(|(k, v, e)| taint(k, v, e)).collect());
            let mut p = pod("p");
            p.spec.tolerations = Some(
                tols.iter()
                    .map(|t| toleration(t.0, t.1, t.2, t.3))
                    .collect(),
            );
            let n = NodeInfo::new(n);
            let got = filter(&PodInfo::new(&p), &n, &CycleState::default())
                .map_err(|r| r.messages().join(";"));
            assert_eq!(got.err().as_deref(), *want, "{taints:?} {tols:?}");
        }
    }

    #[test]
    fn score_prefers_nodes_with_fewer_intolerable_prefer_no_schedule_taints() {
        // Node taints (all PreferNoSchedule) → expected normalised score, for a pod that
        // tolerates "ok" only.
        let cases: &[(&[&str], i64)] =
            &[(&[], 100), (&["a"], 50), (&["a", "b"], 0), (&["ok"], 100)];
        let nodes: Vec<_> = cases
            .iter()
            .enumerate()
            .map(|(i, (keys, _))| {
                let mut n = node(&format!("n{i}"), "1", "1Gi", "10");
                n.spec.get_or_insert_default().taints = Some(
                    keys.iter()
                        .map(|k| taint(k, "", "PreferNoSchedule"))
                        .collect(),
                );
                n
            })
            .collect();
        let snap = Snapshot::new(&nodes, &[]);
        let mut p = pod("p");
        p.spec.tolerations = Some(vec![toleration("ok", "Exists", "", "PreferNoSchedule")]);
        let feasible: Vec<usize> = (0..nodes.len()).collect();
        let mut out = vec![0; nodes.len()];
        score(&PodInfo::new(&p), &snap, &feasible, &mut out);
        let want: Vec<i64> = cases.iter().map(|c| c.1).collect();
        assert_eq!(out, want);
    }
}
