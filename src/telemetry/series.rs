//! Series sets: the metric ids of every label combination one group of metrics has seen. A set
//! defines each combination's metrics once (under their old names too while a migration runs),
//! holds the group to its sidecar-wide series budget and collapses what the budget refuses into
//! an overflow series. The traffic metrics (request counter, duration histogram) are one set, the
//! active-requests gauge, with the labels it carries, another.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::config::MAX_LABELS;
use crate::label_values::EMPTY_ID;

use super::labels::LabelSet;
use super::migrations::OldName;
use super::{MetricHost, MetricKind, SERIES_OVERFLOW_METRIC};

/// A series key: one value id per label position (0 = empty for positions a metric lacks).
pub(super) type Key = [u32; MAX_LABELS];

/// Keys are small integers we assign, never attacker-chosen bytes, so a fast non-keyed hash is safe.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = crate::label_values::fast_mix(self.0, bytes);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type IdMap<V> = HashMap<Key, V, BuildHasherDefault<IdHasher>>;

/// How many metrics a set holds at most (the traffic set: requests and duration).
pub(super) const SLOTS: usize = 2;

/// One metric of a set.
pub(super) struct SetMetric {
    pub kind: MetricKind,
    pub name: String,
    /// Its old name while a migration renames it.
    pub old: Option<OldName>,
}

/// The metric ids of one label combination: per slot, under the current name and the old one.
#[derive(Debug, Clone, Copy, Default)]
pub struct SeriesIds {
    current: [Option<u32>; SLOTS],
    old: [Option<u32>; SLOTS],
}

impl SeriesIds {
    /// The ids of the metric in `slot`: one per name it is emitted under.
    pub fn of(&self, slot: usize) -> impl Iterator<Item = u32> {
        [self.current[slot], self.old[slot]].into_iter().flatten()
    }

    pub fn has(&self, slot: usize) -> bool {
        self.current[slot].is_some() || self.old[slot].is_some()
    }
}

pub(super) struct SeriesSet {
    metrics: [Option<SetMetric>; SLOTS],
    /// The label positions the set's series carry (`None`: all of them).
    mask: Option<[bool; MAX_LABELS]>,
    ids: IdMap<SeriesIds>,
    /// Keys the shared budget refused, remembered (up to `max`) to skip asking again.
    refused: IdMap<()>,
    max: usize,
    /// Process-wide budget scope of the set's series.
    scope: String,
    overflow_counter: Option<u32>,
    overflows: u64,
}

impl SeriesSet {
    pub fn new(metrics: [Option<SetMetric>; SLOTS], mask: Option<[bool; MAX_LABELS]>, max: usize, scope: String) -> SeriesSet {
        SeriesSet { metrics, mask, ids: IdMap::default(), refused: IdMap::default(), max, scope, overflow_counter: None, overflows: 0 }
    }

    /// Whether the set has any metric to emit.
    pub fn is_enabled(&self) -> bool {
        self.metrics.iter().any(Option::is_some)
    }

    pub fn has(&self, slot: usize) -> bool {
        self.metrics[slot].is_some()
    }

    /// Series defined so far (the overflow series included).
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Combinations the budget refused so far.
    pub fn overflows(&self) -> u64 {
        self.overflows
    }

    /// Defines the set's overflow counter, named after its first metric.
    pub fn define_overflow_counter(&mut self, host: &mut dyn MetricHost) {
        let Some(metric) = self.metrics.iter().flatten().next() else { return };
        let name = format!("{SERIES_OVERFLOW_METRIC}.{}", super::encode_tags(&[("metricpact_metric", &metric.name)]));
        self.overflow_counter = host.define(MetricKind::Counter, &name);
    }

    /// The ids of the combination `key` (the positions outside the set's mask ignored), defined on
    /// first sight if the sidecar-wide budget admits it, else those of its overflow series.
    pub fn ids(&mut self, host: &mut dyn MetricHost, key: &Key, labels: &LabelSet) -> SeriesIds {
        let key = match &self.mask {
            None => *key,
            Some(mask) => std::array::from_fn(|i| if mask[i] { key[i] } else { EMPTY_ID }),
        };
        if let Some(ids) = self.ids.get(&key) {
            return *ids;
        }
        let admitted = (!self.refused.contains_key(&key))
            .then(|| labels.encode(&key, self.mask.as_ref()))
            .filter(|tags| self.ids.len() < self.max && host.admit(&self.scope, tags, self.max as u32));
        let (key, tags) = match admitted {
            Some(tags) => (key, tags),
            None => {
                // Beyond `max` refusals are asked again rather than letting traffic grow the cache.
                if self.refused.len() < self.max {
                    self.refused.insert(key, ());
                }
                self.overflows += 1;
                if let Some(id) = self.overflow_counter {
                    host.increment(id, 1);
                }
                let overflow = labels.overflow_key(&key);
                if let Some(ids) = self.ids.get(&overflow) {
                    return *ids;
                }
                (overflow, labels.encode(&overflow, self.mask.as_ref()))
            }
        };
        let mut ids = SeriesIds::default();
        // Current names first, then the old ones (the order the metric ids have always had).
        for (slot, metric) in self.metrics.iter().enumerate() {
            if let Some(metric) = metric {
                ids.current[slot] = host.define(metric.kind, &format!("{}.{tags}", metric.name));
            }
        }
        for (slot, metric) in self.metrics.iter().enumerate() {
            if let Some(old) = metric.as_ref().and_then(|m| m.old.as_ref()) {
                ids.old[slot] = host.define(metric.as_ref().map_or(MetricKind::Counter, |m| m.kind), &format!("{}.{tags}", old.name));
            }
        }
        self.ids.insert(key, ids);
        ids
    }

    /// Stops the old names whose sunset has passed at `now_unix`; returns whether any did.
    pub fn expire_old_names(&mut self, now_unix: u64) -> bool {
        let mut ended = false;
        for (slot, metric) in self.metrics.iter_mut().enumerate() {
            let Some(metric) = metric else { continue };
            if metric.old.as_ref().is_some_and(|o| o.sunset_unix <= now_unix) {
                metric.old = None;
                ended = true;
                for ids in self.ids.values_mut() {
                    ids.old[slot] = None;
                }
            }
        }
        ended
    }

    /// Forgets every series, to define them afresh under a new budget scope: a label alias that
    /// ended changed every series name. Every VM ends an alias at its own tick; naming the scope
    /// after the alias' `sunset` (not the tick time) keeps the budget shared.
    pub fn restart(&mut self, sunset: u64) {
        self.ids.clear();
        self.refused.clear();
        self.scope = format!("{}.{sunset}", self.scope);
    }

    /// The sunsets of the migrations still renaming the set's metrics.
    pub fn sunsets(&self) -> impl Iterator<Item = u64> + '_ {
        self.metrics.iter().flatten().filter_map(|m| m.old.as_ref()).map(|o| o.sunset_unix)
    }
}

/// Separators of Istio's stat-name label encoding (`name=.=value;.;`).
const VALUE_SEPARATOR: &str = "=.=";
const FIELD_SEPARATOR: &str = ";.;";

/// Appends one encoded tag; an empty value is left out, so the label is absent (as Prometheus
/// treats an empty label anyway) and costs no bytes in every series.
pub(super) fn push_tag(out: &mut String, name: &str, value: &str) {
    if value.is_empty() {
        return;
    }
    out.push_str(name);
    out.push_str(VALUE_SEPARATOR);
    out.push_str(value);
    out.push_str(FIELD_SEPARATOR);
}
