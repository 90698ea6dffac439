//! The prune guard: holds back a sync that would delete a large part of what Git applied.
//!
//! A commit that moves manifests to another folder, a wrong path in the config or a bad
//! merge looks to the planner exactly like "delete everything", so before a plan with
//! deletes is applied, [`check`] asks whether it deletes
//! - more than [`PrunePolicy::max_share`] of the Git-owned inventory (the rule is "more than":
//!   exactly the share goes ahead),
//! - the whole inventory, whatever the share allows (as Argo CD's automated sync refuses to
//!   prune an application down to nothing unless `allowEmpty` is set), or
//! - any Namespace, because deleting one deletes everything in it, Git-owned or not.
//!
//! A held sync applies nothing (the commit is all-or-nothing) and is reported with the
//! reason. It goes ahead when the config allows pruning ([`PrunePolicy::allow`]) or the commit
//! message carries the trailer `Coxswain-Allow-Prune: yes` ([`ALLOW_PRUNE_TRAILER`]), so a
//! deliberate large delete is a reviewed decision written into history.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::plan::Plan;

/// The commit trailer key that lets one commit's prune through; its value must be
/// [`ALLOW_PRUNE_VALUE`]. The caller parses trailers and passes the answer to [`check`].
pub const ALLOW_PRUNE_TRAILER: &str = "Coxswain-Allow-Prune";
/// The trailer value that allows the prune.
pub const ALLOW_PRUNE_VALUE: &str = "yes";
/// Default [`PrunePolicy::max_share`]: a quarter of the inventory.
pub const DEFAULT_MAX_SHARE: f64 = 0.25;

/// How much one commit may delete without an explicit allowance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrunePolicy {
    /// The largest share (0.0 to 1.0) of the Git-owned objects one commit may delete.
    pub max_share: f64,
    /// The config allows every prune.
    pub allow: bool,
}

impl Default for PrunePolicy {
    fn default() -> Self {
        Self {
            max_share: DEFAULT_MAX_SHARE,
            allow: false,
        }
    }
}

impl PrunePolicy {
    /// A policy from config, refusing a share that is not a number from 0 to 1.
    pub fn new(max_share: f64, allow: bool) -> Result<Self> {
        if !(0.0..=1.0).contains(&max_share) {
            return Err(Error::Config {
                field: "prune.max_share".into(),
                reason: format!("{max_share} is not a share from 0 to 1"),
            });
        }
        Ok(Self { max_share, allow })
    }

    /// The share [`check`] applies: a value [`PrunePolicy::new`] would refuse (NaN, negative)
    /// counts as 0, so a broken policy holds every delete rather than none.
    fn effective_share(&self) -> f64 {
        if self.max_share.is_nan() || self.max_share < 0.0 {
            0.0
        } else {
            self.max_share
        }
    }
}

/// What let a sync through that the guard would have held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum AllowedBy {
    /// The commit carries `Coxswain-Allow-Prune: yes`.
    Trailer,
    /// [`PrunePolicy::allow`] is set.
    Config,
}

/// The guard's answer for one plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Verdict {
    /// Nothing to object to.
    Proceed,
    /// The guard would hold this sync, but it is allowed; `reason` says what it deletes, for
    /// the log and the commit's note.
    Allowed { by: AllowedBy, reason: String },
    /// Apply nothing; `reason` says what the commit would delete and how to let it through.
    Held { reason: String },
}

impl Verdict {
    /// True when the sync must not be applied.
    pub fn is_held(&self) -> bool {
        matches!(self, Verdict::Held { .. })
    }

    /// The reason, unless the verdict is a plain [`Verdict::Proceed`].
    pub fn reason(&self) -> Option<&str> {
        match self {
            Verdict::Proceed => None,
            Verdict::Allowed { reason, .. } | Verdict::Held { reason } => Some(reason),
        }
    }
}

/// Judges the deletes of `plan` against an inventory of `owned_count` Git-owned objects
/// (the `owned` map the plan was made from). `allow_trailer` is true when the commit carries
/// `Coxswain-Allow-Prune: yes`. A caller passing fewer owned objects than the plan deletes
/// gets the deletes counted as the whole inventory.
pub fn check(
    plan: &Plan,
    owned_count: usize,
    policy: &PrunePolicy,
    allow_trailer: bool,
) -> Verdict {
    let deletes = plan.deletes.len();
    if deletes == 0 {
        return Verdict::Proceed;
    }
    let inventory = owned_count.max(deletes);
    let ns_prefix = coxswain_store::object_key("", "Namespace", None, "");
    let namespaces: Vec<&str> = plan
        .deletes
        .iter()
        .filter_map(|d| d.key.strip_prefix(ns_prefix.as_str()))
        .collect();

    let mut why = Vec::new();
    // Shares are compared as quotients, not as `deletes > share * inventory`: a quotient of
    // two integers rounds to the same double as the equal share written in config (29 of
    // 100 against 0.29), where the product may round below it.
    let share = deletes as f64 / inventory as f64;
    let max = policy.effective_share();
    if deletes == inventory {
        why.push(format!("it would delete all {inventory} Git-owned objects"));
    } else if share > max {
        why.push(format!(
            "it would delete {deletes} of {inventory} Git-owned objects ({}, more than the {} allowed)",
            percent(share),
            percent(max)
        ));
    }
    if !namespaces.is_empty() {
        why.push(format!(
            "it would delete the Namespace{} {} and everything in {}",
            if namespaces.len() == 1 { "" } else { "s" },
            namespaces.join(", "),
            if namespaces.len() == 1 { "it" } else { "them" },
        ));
    }
    if why.is_empty() {
        return Verdict::Proceed;
    }
    let what = why.join("; ");
    let verdict = if allow_trailer {
        Verdict::Allowed {
            by: AllowedBy::Trailer,
            reason: format!(
                "{what}; allowed by the trailer {ALLOW_PRUNE_TRAILER}: {ALLOW_PRUNE_VALUE}"
            ),
        }
    } else if policy.allow {
        Verdict::Allowed {
            by: AllowedBy::Config,
            reason: format!("{what}; allowed by the config"),
        }
    } else {
        Verdict::Held {
            reason: format!(
                "prune held: {what}; to go ahead, add the trailer \"{ALLOW_PRUNE_TRAILER}: {ALLOW_PRUNE_VALUE}\" to the commit message or allow pruning in the config"
            ),
        }
    };
    tracing::info!(
        deletes,
        inventory,
        held = verdict.is_held(),
        reason = verdict.reason(),
        "prune guard"
    );
    verdict
}

/// `25%`, `33.3%`: whole percents without decimals, others to one decimal.
fn percent(share: f64) -> String {
    let p = share * 100.0;
    if (p - p.round()).abs() < 1e-9 {
        format!("{p:.0}%")
    } else {
        format!("{p:.1}%")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::plan::Delete;
    use serde_json::json;

    fn deleting(configmaps: usize, namespaces: &[&str]) -> Plan {
        let mut plan = Plan::default();
        for i in 0..configmaps {
            plan.deletes.push(Delete {
                key: coxswain_store::object_key("", "ConfigMap", Some("default"), &format!("c{i}")),
                before: json!({}),
            });
        }
        for ns in namespaces {
            plan.deletes.push(Delete {
                key: coxswain_store::object_key("", "Namespace", None, ns),
                before: json!({}),
            });
        }
        plan
    }

    fn share(max_share: f64) -> PrunePolicy {
        PrunePolicy {
            max_share,
            allow: false,
        }
    }

    /// (case, deleted ConfigMaps, deleted Namespaces, inventory, policy, held, reason parts)
    type Case = (
        &'static str,
        usize,
        &'static [&'static str],
        usize,
        PrunePolicy,
        bool,
        &'static [&'static str],
    );

    #[test]
    fn holds_deletes_above_the_share_all_of_it_and_namespaces() {
        let cases: &[Case] = &[
            (
                "nothing deleted, empty inventory",
                0,
                &[],
                0,
                share(0.25),
                false,
                &[],
            ),
            ("nothing deleted", 0, &[], 10, share(0.0), false, &[]),
            (
                "exactly the share goes ahead",
                1,
                &[],
                4,
                share(0.25),
                false,
                &[],
            ),
            ("below the share", 1, &[], 5, share(0.25), false, &[]),
            ("25 of 100", 25, &[], 100, share(0.25), false, &[]),
            (
                "26 of 100",
                26,
                &[],
                100,
                share(0.25),
                true,
                &["26 of 100", "26%", "more than the 25% allowed"],
            ),
            (
                "29 of 100 at 0.29 (float edge)",
                29,
                &[],
                100,
                share(0.29),
                false,
                &[],
            ),
            ("1 of 3", 1, &[], 3, share(0.25), true, &["1 of 3", "33.3%"]),
            (
                "everything",
                4,
                &[],
                4,
                share(0.25),
                true,
                &["all 4 Git-owned objects"],
            ),
            (
                "everything even when the share allows it",
                4,
                &[],
                4,
                share(1.0),
                true,
                &["all 4"],
            ),
            (
                "share 1.0 allows the rest",
                3,
                &[],
                4,
                share(1.0),
                false,
                &[],
            ),
            (
                "more deletes than the inventory counts as everything",
                3,
                &[],
                0,
                share(0.25),
                true,
                &["all 3"],
            ),
            (
                "one namespace among many",
                0,
                &["team-a"],
                100,
                share(0.25),
                true,
                &["the Namespace team-a and everything in it"],
            ),
            (
                "namespaces are listed",
                0,
                &["team-a", "team-b"],
                100,
                share(1.0),
                true,
                &["Namespaces team-a, team-b and everything in them"],
            ),
            (
                "share and namespace together",
                40,
                &["ns"],
                100,
                share(0.25),
                true,
                &["41 of 100", "Namespace ns"],
            ),
            (
                "NaN share holds any delete",
                1,
                &[],
                100,
                share(f64::NAN),
                true,
                &["0% allowed"],
            ),
        ];
        for (name, cms, nss, inventory, policy, held, parts) in cases {
            let plan = deleting(*cms, nss);
            let v = check(&plan, *inventory, policy, false);
            assert_eq!(v.is_held(), *held, "{name}: {v:?}");
            if *held {
                let reason = v.reason().unwrap();
                assert!(reason.starts_with("prune held: "), "{name}: {reason}");
                assert!(
                    reason.contains("Coxswain-Allow-Prune: yes"),
                    "{name}: {reason}"
                );
                for part in *parts {
                    assert!(reason.contains(part), "{name}: {reason:?} lacks {part:?}");
                }
            } else {
                assert_eq!(v, Verdict::Proceed, "{name}");
            }
        }
    }

    #[test]
    fn trailer_or_config_lets_a_held_sync_through() {
        let plan = deleting(3, &["team"]);
        let strict = PrunePolicy::default();
        let open = PrunePolicy {
            allow: true,
            ..PrunePolicy::default()
        };
        let cases = [
            (strict, false, None),
            (strict, true, Some(AllowedBy::Trailer)),
            (open, false, Some(AllowedBy::Config)),
            (open, true, Some(AllowedBy::Trailer)),
        ];
        for (policy, trailer, want) in cases {
            let v = check(&plan, 4, &policy, trailer);
            match (want, &v) {
                (None, Verdict::Held { .. }) => {}
                (Some(w), Verdict::Allowed { by, reason }) => {
                    assert_eq!(*by, w);
                    assert!(reason.contains("all 4"), "{reason}");
                    assert!(reason.contains("Namespace team"), "{reason}");
                }
                _ => panic!("policy {policy:?}, trailer {trailer}: {v:?}"),
            }
        }
        // An allowance changes nothing for a plan the guard has no objection to.
        assert_eq!(
            check(&deleting(1, &[]), 100, &strict, true),
            Verdict::Proceed
        );
    }

    #[test]
    fn policy_from_config_is_checked() {
        assert_eq!(PrunePolicy::default().max_share, 0.25);
        assert!(!PrunePolicy::default().allow);
        assert_eq!(PrunePolicy::new(0.5, true).unwrap().max_share, 0.5);
        assert!(PrunePolicy::new(0.0, false).is_ok());
        assert!(PrunePolicy::new(1.0, false).is_ok());
        for bad in [-0.1, 1.5, f64::NAN, f64::INFINITY] {
            let err = PrunePolicy::new(bad, false).unwrap_err();
            assert!(
                matches!(&err, Error::Config { field, .. } if field == "prune.max_share"),
                "{bad}: {err}"
            );
        }
        assert_eq!(ALLOW_PRUNE_TRAILER, "Coxswain-Allow-Prune");
    }
}
