//! Envoy's stats as the core's [`MetricHost`], and the VM-memory gauge.

use crate::telemetry::{MetricHost, MetricKind};

use super::host;
use super::stages::{reached, Stage};

/// Envoy's stats, through the proxy-wasm metric hostcalls.
pub(super) struct EnvoyStats;

impl MetricHost for EnvoyStats {
    fn define(&mut self, kind: MetricKind, name: &str) -> Option<u32> {
        let kind = match kind {
            MetricKind::Counter => host::COUNTER,
            MetricKind::Gauge => host::GAUGE,
            MetricKind::Histogram => host::HISTOGRAM,
        };
        host::define_metric(kind, name)
    }

    fn increment(&mut self, id: u32, delta: i64) {
        host::increment_metric(id, delta);
    }

    fn record(&mut self, id: u32, value: u64) {
        host::record_metric(id, value);
    }

    /// Budgets live in Envoy's shared data, shared by every VM with our vm_id.
    fn admit(&mut self, scope: &str, member: &str, max: u32) -> bool {
        crate::telemetry::budget::admit(&mut host::SharedData, scope, member, max)
    }
}

/// A metric host that discards every update: the per-stage bench builds' `labels` stage.
pub(super) struct DiscardedStats;

impl MetricHost for DiscardedStats {
    fn define(&mut self, _kind: MetricKind, _name: &str) -> Option<u32> {
        Some(0)
    }
    fn increment(&mut self, _id: u32, _delta: i64) {}
    fn record(&mut self, _id: u32, _value: u64) {}
    fn admit(&mut self, _scope: &str, _member: &str, _max: u32) -> bool {
        true
    }
}

/// Where the engine's metric updates go: Envoy's stats, unless a bench build stops before them.
pub(super) fn stats_host<'a>(envoy: &'a mut EnvoyStats, discarded: &'a mut DiscardedStats) -> &'a mut dyn MetricHost {
    if reached(Stage::Metrics) {
        envoy
    } else {
        discarded
    }
}

thread_local! {
    /// The VM-memory gauge's id, and the memory size (pages) this VM last reported.
    pub(super) static MEMORY_GAUGE: std::cell::Cell<(Option<u32>, usize)> = const { std::cell::Cell::new((None, 0)) };
}

/// Reports this VM's linear memory when it has grown: the gauge keeps the largest of all the
/// sidecar's VMs. Reading the size is one Wasm instruction; the hostcalls happen only on growth.
pub(super) fn report_memory() {
    let pages = core::arch::wasm32::memory_size(0);
    let (id, last) = MEMORY_GAUGE.with(|g| g.get());
    let Some(id) = id else { return };
    if pages == last {
        return;
    }
    MEMORY_GAUGE.with(|g| g.set((Some(id), pages)));
    let bytes = (pages * 65_536) as u64;
    if host::metric(id).is_none_or(|current| current < bytes) {
        host::record_metric(id, bytes);
    }
}

