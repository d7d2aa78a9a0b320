//! The per-request core of the filter, independent of proxy-wasm: resolves each request's label
//! values ([`labels`]), judges how its stream ended ([`error_type`]), maps label combinations to
//! metric ids defined once under the sidecar-wide budgets ([`series`], [`budget`]), keeps renames
//! running until their sunset ([`migrations`]), and drives a [`MetricHost`] (Envoy in production,
//! a recorder in tests). [`Engine`] ties them together per request.

use std::borrow::Cow;

use crate::config::{ContractInfo, NodeLookup, PluginConfig, Source, MAX_LABELS};
use crate::label_values::sanitize;
use crate::routes::RouteMatcher;

pub mod budget;
mod error_type;
mod labels;
mod migrations;
mod series;

pub use error_type::{error_type, grpc_is_error, status_class, GRPC_STATUS_NAMES};
pub use series::SeriesIds;

use error_type::{is_grpc, Needs, Verdict};
use labels::{LabelSet, Normalizer, RequestSide};
use migrations::OldName;
use series::{push_tag, Key, SeriesSet, SetMetric};

/// Names of metricpact's self-metrics.
pub const CONTRACT_INFO_METRIC: &str = "metricpact_contract_info";
pub const LABEL_OVERFLOW_METRIC: &str = "metricpact_label_overflow_total";
pub const SERIES_OVERFLOW_METRIC: &str = "metricpact_series_overflow_total";
pub const EXPOSITION_SCRAPES_METRIC: &str = "metricpact_exposition_scrapes_total";
pub const MISSING_REQUIRED_METRIC: &str = "metricpact_exposition_missing_required_total";
/// Policy violations found in the app's scrapes, by rule, metric and severity (`policy.rs`).
pub const POLICY_VIOLATIONS_METRIC: &str = "metricpact_policy_violations_total";
/// Largest linear memory of the sidecar's metricpact VMs, in bytes (Wasm memory only grows).
pub const VM_MEMORY_METRIC: &str = "metricpact_vm_memory_bytes";
pub const SELF_METRIC_NAMES: [&str; 7] = [
    CONTRACT_INFO_METRIC,
    LABEL_OVERFLOW_METRIC,
    SERIES_OVERFLOW_METRIC,
    EXPOSITION_SCRAPES_METRIC,
    MISSING_REQUIRED_METRIC,
    POLICY_VIOLATIONS_METRIC,
    VM_MEMORY_METRIC,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// The metric side of the host (Envoy's stats and shared data through proxy-wasm).
pub trait MetricHost {
    /// Defines a metric by its full (label-encoded) name; `None` if the host refused.
    fn define(&mut self, kind: MetricKind, name: &str) -> Option<u32>;
    fn increment(&mut self, id: u32, delta: i64);
    fn record(&mut self, id: u32, value: u64);
    /// Admits `member` into the process-wide budget `scope` holding at most `max` members
    /// (every Envoy worker runs its own VM; budgets must hold for the sidecar as a whole).
    /// Already-admitted members are admitted again. Called only for values new to this VM.
    fn admit(&mut self, scope: &str, member: &str, max: u32) -> bool;
}

/// A request attribute's bytes: borrowed where the host already holds them (the filter's header
/// map, read once per request), owned where a hostcall returned them. Each request resolves
/// several attributes, so copying none of them is a saving on every request.
pub type Bytes<'a> = Cow<'a, [u8]>;

/// What the request side offers; each call may be a hostcall, so the engine asks only for what
/// the contract's labels need.
pub trait RequestAttributes {
    fn method(&self) -> Option<Bytes<'_>>;
    fn path(&self) -> Option<Bytes<'_>>;
    fn scheme(&self) -> Option<Bytes<'_>>;
    fn forwarded_proto(&self) -> Option<Bytes<'_>>;
    /// Envoy's `request.protocol`: `HTTP/1.1`, `HTTP/2`, …
    fn protocol(&self) -> Option<Bytes<'_>>;
    fn header(&self, name: &str) -> Option<Bytes<'_>>;
}

/// What is known once the stream is done.
pub trait ResponseAttributes {
    /// The status sent downstream; `None` when no response was sent.
    fn status_code(&self) -> Option<u32>;
    /// Envoy's `response.code_details` (e.g. `via_upstream`, `no_healthy_upstream`).
    fn code_details(&self) -> Option<Vec<u8>>;
    fn duration_nanos(&self) -> Option<u64>;
    /// Whether the response reached its end (`false`: its body was cut short, e.g. the upstream
    /// reset mid-body; the status then says nothing of the failure).
    fn completed(&self) -> bool {
        true
    }
    /// Envoy's `response.grpc_status`: the trailers' `grpc-status`, else the headers' (a
    /// trailers-only response), else mapped from the HTTP status; -1 when unparsable. Asked for
    /// gRPC requests only.
    fn grpc_status(&self) -> Option<i64> {
        None
    }
}

/// Why the engine could not be built from a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Per-stream state between request headers and the end of the stream.
#[derive(Debug, Clone)]
pub struct Flight {
    ids: Key,
    /// The active gauge's ids this stream raised (lowered at the end).
    active: SeriesIds,
    /// A gRPC request: its status is read at the end.
    grpc: bool,
}

/// Counts the engine keeps, for tests and diagnostics.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EngineStats {
    pub series: usize,
    pub active_series: usize,
    pub series_overflows: u64,
}

/// The traffic set's slots.
const REQUESTS: usize = 0;
const DURATION: usize = 1;
/// The active set's one slot.
const ACTIVE: usize = 0;

/// The configured core: one per Wasm VM (per Envoy worker).
pub struct Engine {
    contract: ContractInfo,
    labels: LabelSet,
    normalizer: Normalizer,
    needs_error_type: bool,
    /// Whether requests are told apart as gRPC (a label needs a gRPC source, or error_type does).
    grpc_aware: bool,
    /// Whether a gRPC request's status is read (a label or error_type needs it).
    needs_grpc_status: bool,
    client: bool,
    max_value_length: usize,
    duration_unit_nanos: u64,
    /// Request counter and duration histogram.
    traffic: SeriesSet,
    /// The active-requests gauge, over the labels it carries.
    active: SeriesSet,
    /// The contract-info series: (stat name, metric id).
    contract_info: Option<(String, u32)>,
}

impl Engine {
    /// Validates `config` and builds the engine. `node` looks up Envoy node metadata
    /// (`key`, optional struct `field`); it is called only here, never per request.
    pub fn new(config: &PluginConfig, node: &NodeLookup<'_>) -> Result<Engine, ConfigError> {
        let errors = crate::validate::plugin_config(config);
        if !errors.is_empty() {
            return Err(ConfigError(crate::validate::summary(&errors)));
        }
        Ok(Self::with_routes(config, Self::routes(config)?, node))
    }

    /// The configuration's route table, compiled (the costly part of building an engine).
    pub fn routes(config: &PluginConfig) -> Result<RouteMatcher, ConfigError> {
        RouteMatcher::new(&config.routes.rules).map_err(|e| ConfigError(format!("routes.rules[{}]: {}", e.rule, e.message)))
    }

    /// Builds the engine of an already validated `config` around its compiled `routes`
    /// ([`Engine::routes`]), for callers that build many engines of one configuration (the fuzz
    /// targets: a fresh engine per input, the regexes compiled once).
    pub fn with_routes(config: &PluginConfig, routes: RouteMatcher, node: &NodeLookup<'_>) -> Engine {
        let prefix = scope_prefix(config);
        let labels = LabelSet::new(config, &routes, node, prefix);
        let metric = |kind, name: &String| SetMetric { kind, name: name.clone(), old: OldName::of(config, name) };
        let traffic = SeriesSet::new(
            [
                config.requests.as_ref().map(|m| metric(MetricKind::Counter, &m.name)),
                config.duration.as_ref().map(|m| metric(MetricKind::Histogram, &m.name)),
            ],
            None,
            config.max_series as usize,
            format!("{prefix}.series"),
        );
        let mut active_mask = [false; MAX_LABELS];
        if let Some(active) = &config.active_requests {
            for position in active.labels.iter().filter_map(|name| labels.position(name)) {
                active_mask[position] = true;
            }
        }
        let active = SeriesSet::new(
            [config.active_requests.as_ref().map(|m| metric(MetricKind::Gauge, &m.name)), None],
            Some(active_mask),
            config.max_series as usize,
            format!("{prefix}.active"),
        );
        Engine {
            contract: config.contract.clone(),
            needs_error_type: labels.any_source(|s| *s == Source::ResponseErrorType),
            grpc_aware: labels.any_source(|s| s.is_grpc_only() || *s == Source::ResponseErrorType),
            needs_grpc_status: labels.any_source(|s| {
                matches!(s, Source::ResponseGrpcStatus | Source::ResponseGrpcStatusName | Source::ResponseErrorType)
            }),
            client: config.client,
            labels,
            normalizer: Normalizer {
                methods: config.methods.clone(),
                routes,
                unmatched: config.routes.unmatched,
                raw_max_length: config.routes.raw_max_length as usize,
            },
            max_value_length: config.max_value_length as usize,
            duration_unit_nanos: config.duration.as_ref().map_or(1_000_000, |d| d.unit.nanos()),
            traffic,
            active,
            contract_info: None,
        }
    }

    /// Ends the migrations whose sunset has passed at `now_unix` (seconds); the filter calls it at
    /// configure time and then periodically. Old metric names stop counting at once. An ended
    /// label alias changes every series name, so the series are defined afresh without it, under
    /// new budget scopes (the old stats stay in Envoy, frozen). Returns whether anything ended.
    pub fn expire_migrations(&mut self, now_unix: u64) -> bool {
        let mut ended = self.traffic.expire_old_names(now_unix);
        ended |= self.active.expire_old_names(now_unix);
        if let Some(sunset) = self.labels.expire_aliases(now_unix) {
            ended = true;
            self.traffic.restart(sunset);
            self.active.restart(sunset);
        }
        ended
    }

    /// The earliest sunset of a migration still running, if any.
    pub fn next_sunset(&self) -> Option<u64> {
        self.traffic.sunsets().chain(self.active.sunsets()).chain(self.labels.alias_sunsets()).min()
    }

    /// Defines the self-metrics; call once after construction.
    pub fn define_self_metrics(&mut self, host: &mut dyn MetricHost) {
        let clean = |v: &str| sanitize(v.as_bytes(), self.max_value_length).into_owned();
        let (name, version, hash) = (clean(&self.contract.name), clean(&self.contract.version), clean(&self.contract.hash));
        let mut tags = vec![
            ("metricpact_contract_name", name.as_str()),
            ("metricpact_contract_version", version.as_str()),
            ("metricpact_contract_hash", hash.as_str()),
        ];
        // The pod's identity (labels fixed per sidecar: node metadata, constants; current names,
        // not migration aliases) goes on the info series too, so it exists from the moment the
        // filter runs: autoscaling queries read it to tell "this workload's filter reports, without
        // traffic" (0) from "no data" (an error).
        let blank = self.labels.blank_key();
        for (position, label) in self.labels.labels.iter().enumerate() {
            if label.is_static() {
                tags.push((label.name.as_str(), self.labels.value(position, blank[position])));
            }
        }
        let info = format!("{CONTRACT_INFO_METRIC}.{}", encode_tags(&tags));
        if let Some(id) = host.define(MetricKind::Gauge, &info) {
            host.record(id, 1);
            self.contract_info = Some((info, id));
        }
        self.labels.define_overflow_counters(host);
        self.traffic.define_overflow_counter(host);
        self.active.define_overflow_counter(host);
    }

    /// The contract-info series (stat name, metric id), once defined.
    pub fn contract_info(&self) -> Option<(&str, u32)> {
        self.contract_info.as_ref().map(|(name, id)| (name.as_str(), *id))
    }

    /// Whether requests need timing (the duration histogram is enabled).
    pub fn records_duration(&self) -> bool {
        self.traffic.has(DURATION)
    }

    pub fn stats(&self) -> EngineStats {
        EngineStats {
            series: self.traffic.len(),
            active_series: self.active.len(),
            series_overflows: self.traffic.overflows() + self.active.overflows(),
        }
    }

    /// Called at request headers: resolves request-side labels and marks the request active.
    pub fn start(&mut self, host: &mut dyn MetricHost, request: &dyn RequestAttributes) -> Flight {
        let mut flight = self.late_flight(host, request);
        if self.active.is_enabled() {
            flight.active = self.active.ids(host, &flight.ids, &self.labels);
            for id in flight.active.of(ACTIVE) {
                host.increment(id, 1);
            }
        }
        flight
    }

    /// For a stream whose request headers never reached the filter (an earlier filter answered
    /// it): resolves request-side labels from what the stream still has, without an active mark.
    pub fn late_flight(&mut self, host: &mut dyn MetricHost, request: &dyn RequestAttributes) -> Flight {
        let mut ids = self.labels.blank_key();
        // A lookup in the header map the other labels fetch anyway: no hostcall of its own.
        let grpc = self.grpc_aware && is_grpc(request.header("content-type").as_deref());
        let side = RequestSide { normalizer: &self.normalizer, request, grpc };
        for (i, id) in ids.iter_mut().enumerate().take(self.labels.labels.len()) {
            let label = &self.labels.labels[i];
            if !label.is_static() && !label.response_side {
                *id = self.labels.resolve(i, host, &side);
            }
        }
        Flight { ids, active: SeriesIds::default(), grpc }
    }

    /// Called when the stream is done (Envoy's access-log time): counts the request, records its
    /// duration and ends its active mark.
    pub fn finish(&mut self, host: &mut dyn MetricHost, mut flight: Flight, response: &dyn ResponseAttributes) {
        for id in flight.active.of(ACTIVE) {
            host.increment(id, -1);
        }
        if !self.traffic.is_enabled() {
            return;
        }
        let needs = Needs {
            grpc_status: flight.grpc && self.needs_grpc_status,
            error_type: self.needs_error_type,
            client: self.client,
        };
        let verdict = Verdict::of(response, needs);
        for i in 0..self.labels.labels.len() {
            if self.labels.labels[i].response_side {
                flight.ids[i] = self.labels.resolve(i, host, &verdict);
            }
        }
        let series = self.traffic.ids(host, &flight.ids, &self.labels);
        for id in series.of(REQUESTS) {
            host.increment(id, 1);
        }
        if series.has(DURATION) {
            if let Some(nanos) = response.duration_nanos() {
                for id in series.of(DURATION) {
                    host.record(id, nanos / self.duration_unit_nanos);
                }
            }
        }
    }
}

/// Budgets are namespaced by the configuration's first metric name: the server and client
/// filters of one sidecar may share a VM id (and so Envoy's shared data), not their budgets.
fn scope_prefix(config: &PluginConfig) -> &str {
    config.metric_names().first().copied().unwrap_or("metricpact")
}

/// Encodes `(name, value)` pairs the way Istio's `extraStatTags` regexes extract them.
pub fn encode_tags(tags: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (name, value) in tags {
        push_tag(&mut out, name, value);
    }
    out
}

#[cfg(test)]
mod tests;
