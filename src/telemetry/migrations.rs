//! Renames in progress: a traffic metric or label emitted under its old name too, beside the new
//! one, until the migration's sunset; dashboards and alerts move over while both exist.

use crate::config::{MigrationKind, PluginConfig};

/// A traffic metric's old name, emitted beside the new one until `sunset_unix`.
pub(super) struct OldName {
    pub name: String,
    pub sunset_unix: u64,
}

impl OldName {
    /// The old name of `metric`, if a migration renames it.
    pub fn of(config: &PluginConfig, metric: &str) -> Option<OldName> {
        let m = config.old_metric_name(metric)?;
        Some(OldName { name: m.old.clone(), sunset_unix: m.sunset_unix })
    }
}

/// A renamed label: its value is written under `old` too, right after the label at `position`.
pub(super) struct LabelAlias {
    pub position: usize,
    pub old: String,
    pub sunset_unix: u64,
}

/// The label aliases of `config`, positioned among its `labels` (by name).
pub(super) fn label_aliases(config: &PluginConfig, labels: &[&str]) -> Vec<LabelAlias> {
    config
        .migrations
        .iter()
        .filter(|m| m.kind == MigrationKind::Label)
        .filter_map(|m| {
            let position = labels.iter().position(|l| *l == m.new)?;
            Some(LabelAlias { position, old: m.old.clone(), sunset_unix: m.sunset_unix })
        })
        .collect()
}

/// Ends the aliases whose sunset has passed at `now_unix`; returns the latest sunset that ended,
/// if any did.
pub(super) fn expire_aliases(aliases: &mut Vec<LabelAlias>, now_unix: u64) -> Option<u64> {
    let ended = aliases.iter().map(|a| a.sunset_unix).filter(|&s| s <= now_unix).max();
    aliases.retain(|a| a.sunset_unix > now_unix);
    ended
}
