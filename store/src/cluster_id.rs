//! The cluster's identity: a random id made when a cluster is bootstrapped, kept in every
//! member's log metadata and carried on every Raft message.
//!
//! Why: openraft trusts any message that reaches the right address with a higher term. A
//! member restarted on an empty disk without `--join` bootstraps a new one-member cluster at
//! the old address; without an identity the old leader's messages would silently overwrite
//! it (losing the writes it acknowledged meanwhile), or its votes would disturb the old
//! cluster. With one, each side refuses the other's messages (`Error::ClusterMismatch`).
//!
//! A member that joins has no id until the first append or snapshot from the leader, which
//! it adopts and persists (synced) before handling that message.

use std::sync::{Arc, OnceLock};

use rocksdb::{DB, WriteOptions};

use crate::db::{CF_LOG_META, cf};
use crate::error::{Error, Result};

const KEY: &[u8] = b"cluster_id";

/// The HTTP header that carries the sender's cluster id on internal requests.
pub const HEADER: &str = "x-coxswain-cluster";

/// This member's cluster id, once known. Shared with the member's `Peer`, which sends it.
#[derive(Debug, Clone)]
pub struct ClusterId {
    db: Arc<DB>,
    id: Arc<OnceLock<String>>,
}

impl ClusterId {
    pub fn load(db: Arc<DB>) -> Result<Self> {
        let id = Arc::new(OnceLock::new());
        let stored = db
            .get_cf(cf(&db, CF_LOG_META)?, KEY)
            .map_err(Error::rocks("read cluster id"))?;
        if let Some(bytes) = stored {
            let text = String::from_utf8(bytes).map_err(|e| Error::Corrupt {
                what: "cluster id",
                reason: e.to_string(),
            })?;
            // Cannot fail: the cell was created empty just above.
            let _ = id.set(text);
        }
        Ok(ClusterId { db, id })
    }

    pub fn get(&self) -> Option<&str> {
        self.id.get().map(String::as_str)
    }

    /// The cell the `Peer` reads when it sends.
    pub fn shared(&self) -> Arc<OnceLock<String>> {
        self.id.clone()
    }

    /// Makes a new id for a cluster this member is bootstrapping.
    pub fn generate(&self) -> Result<()> {
        if self.get().is_none() {
            self.adopt(&uuid::Uuid::new_v4().to_string())?;
        }
        Ok(())
    }

    /// Takes `theirs` if this member has no id yet; otherwise checks that it is ours.
    pub fn adopt(&self, theirs: &str) -> Result<()> {
        if let Some(ours) = self.get() {
            return check(ours, theirs);
        }
        if uuid::Uuid::parse_str(theirs).is_err() {
            return Err(Error::ClusterMismatch {
                ours: None,
                theirs: theirs.chars().take(64).collect(),
            });
        }
        // Synced before the message that brought it is handled, so a crash right after
        // cannot leave a member holding the cluster's entries but no identity.
        let mut w = WriteOptions::default();
        w.set_sync(true);
        self.db
            .put_cf_opt(cf(&self.db, CF_LOG_META)?, KEY, theirs.as_bytes(), &w)
            .map_err(Error::rocks("save cluster id"))?;
        // Two adoptions may race (two messages from the leader at once); both carry the same
        // id, and the loser's set is a no-op, so the check below settles it either way.
        let _ = self.id.set(theirs.to_string());
        match self.get() {
            Some(ours) => check(ours, theirs),
            None => Ok(()),
        }
    }
}

fn check(ours: &str, theirs: &str) -> Result<()> {
    if ours == theirs {
        Ok(())
    } else {
        Err(Error::ClusterMismatch {
            ours: Some(ours.to_string()),
            theirs: theirs.to_string(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn generated_id_survives_reopen_and_refuses_another() {
        let dir = tempfile::tempdir().unwrap();
        let first = {
            let db = crate::db::open(dir.path(), crate::db::DEFAULT_MEMTABLE_BUDGET).unwrap();
            let c = ClusterId::load(db).unwrap();
            assert_eq!(c.get(), None);
            c.generate().unwrap();
            c.get().unwrap().to_string()
        };
        let db = crate::db::open(dir.path(), crate::db::DEFAULT_MEMTABLE_BUDGET).unwrap();
        let c = ClusterId::load(db).unwrap();
        assert_eq!(c.get(), Some(first.as_str()));
        c.adopt(&first).unwrap();
        let other = uuid::Uuid::new_v4().to_string();
        assert!(matches!(
            c.adopt(&other),
            Err(Error::ClusterMismatch { ours: Some(_), .. })
        ));
    }

    #[test]
    fn a_member_without_id_adopts_a_well_formed_one_only() {
        let dir = tempfile::tempdir().unwrap();
        let c = ClusterId::load(
            crate::db::open(dir.path(), crate::db::DEFAULT_MEMTABLE_BUDGET).unwrap(),
        )
        .unwrap();
        assert!(c.adopt("not-a-uuid").is_err());
        assert_eq!(c.get(), None);
        let id = uuid::Uuid::new_v4().to_string();
        c.adopt(&id).unwrap();
        assert_eq!(c.get(), Some(id.as_str()));
    }
}
