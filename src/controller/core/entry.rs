//! Which path a pass takes, from the resource's metadata and status alone.

use crate::api::DeletionPolicy;

/// The path of a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// Deleted and no finalizer of this operator on it: nothing to do but forget it.
    Forget,
    /// Deleted with `openconnectors.io/abandon: "true"`: release the finalizer, keep the remote.
    Abandon,
    /// Deleted with `deletionPolicy: Orphan`: release the finalizer, keep the remote.
    Orphan,
    /// Deleted: delete the remote instances it owns, then release the finalizer.
    Delete,
    /// `openconnectors.io/paused: "true"`: no platform calls.
    Paused,
    /// Reconcile; `forced` when a new `reconcile-requested-at` token asks for a read now.
    Run {
        /// A read of the remote instance is due regardless of the resync interval.
        forced: bool,
    },
}

/// What [`entry`] looks at.
#[derive(Debug, Clone, Copy, Default)]
pub struct EntryFacts<'a> {
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// The operator's finalizer is on the resource.
    pub has_finalizer: bool,
    /// The abandon annotation is `"true"`.
    pub abandon: bool,
    /// The paused annotation is `"true"`.
    pub paused: bool,
    /// `spec.deletionPolicy`.
    pub policy: DeletionPolicy,
    /// The `reconcile-requested-at` annotation.
    pub requested: Option<&'a str>,
    /// `status.lastHandledReconcileAt`.
    pub handled: Option<&'a str>,
}

/// The path of a pass. Deletion wins over pause (a paused resource can still be deleted).
pub fn entry(facts: EntryFacts<'_>) -> Entry {
    if facts.deleting {
        return match () {
            () if !facts.has_finalizer => Entry::Forget,
            () if facts.abandon => Entry::Abandon,
            () if facts.policy == DeletionPolicy::Orphan => Entry::Orphan,
            () => Entry::Delete,
        };
    }
    if facts.paused {
        return Entry::Paused;
    }
    Entry::Run { forced: facts.requested.is_some() && facts.requested != facts.handled }
}

#[cfg(test)]
mod tests {
    use super::*;

    // ---- Entry: deletion rows, pause and reconcile requests. ----

    #[test]
    fn entry_decides_the_path_from_metadata() {
        let base = EntryFacts { has_finalizer: true, ..EntryFacts::default() };
        let deleting = EntryFacts { deleting: true, ..base };
        let orphan = DeletionPolicy::Orphan;
        let cases: Vec<(&str, EntryFacts<'_>, Entry)> = vec![
            ("plain", base, Entry::Run { forced: false }),
            (
                "reconcile requested",
                EntryFacts { requested: Some("t1"), ..base },
                Entry::Run { forced: true },
            ),
            (
                "request already handled",
                EntryFacts { requested: Some("t1"), handled: Some("t1"), ..base },
                Entry::Run { forced: false },
            ),
            (
                "new request token",
                EntryFacts { requested: Some("t2"), handled: Some("t1"), ..base },
                Entry::Run { forced: true },
            ),
            ("paused", EntryFacts { paused: true, requested: Some("t2"), ..base }, Entry::Paused),
            ("deleted, Delete policy", deleting, Entry::Delete),
            ("deleted while paused", EntryFacts { paused: true, ..deleting }, Entry::Delete),
            ("deleted, Orphan policy", EntryFacts { policy: orphan, ..deleting }, Entry::Orphan),
            ("deleted, abandoned", EntryFacts { abandon: true, policy: orphan, ..deleting }, Entry::Abandon),
            (
                "deleted, never created anything",
                EntryFacts { has_finalizer: false, abandon: true, ..deleting },
                Entry::Forget,
            ),
        ];
        for (what, facts, expected) in cases {
            assert_eq!(entry(facts), expected, "{what}");
        }
    }
}
