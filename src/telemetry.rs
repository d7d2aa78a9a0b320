//! The per-request core of the filter, independent of proxy-wasm: resolves each request's label
//! values, maps label combinations to metric ids (defined once, then cached), enforces the
//! cardinality budgets, and drives a [`MetricHost`] (Envoy in production, a recorder in tests).

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::config::{ContractInfo, MigrationKind, NodeLookup, PluginConfig, Source, Unmatched, MAX_LABELS};
use crate::labels::{sanitize, sanitize_str, ValueTable, EMPTY_ID, OTHER_ID};
use crate::names::OTHER;
use crate::routes::{RouteMatcher, RouteOutcome};

/// Names of metricpact's self-metrics.
pub const CONTRACT_INFO_METRIC: &str = "metricpact_contract_info";
pub const LABEL_OVERFLOW_METRIC: &str = "metricpact_label_overflow_total";
pub const SERIES_OVERFLOW_METRIC: &str = "metricpact_series_overflow_total";
pub const EXPOSITION_SCRAPES_METRIC: &str = "metricpact_exposition_scrapes_total";
pub const MISSING_REQUIRED_METRIC: &str = "metricpact_exposition_missing_required_total";
/// Largest linear memory of the sidecar's metricpact VMs, in bytes (Wasm memory only grows).
pub const VM_MEMORY_METRIC: &str = "metricpact_vm_memory_bytes";
pub const SELF_METRIC_NAMES: [&str; 6] = [
    CONTRACT_INFO_METRIC,
    LABEL_OVERFLOW_METRIC,
    SERIES_OVERFLOW_METRIC,
    EXPOSITION_SCRAPES_METRIC,
    MISSING_REQUIRED_METRIC,
    VM_MEMORY_METRIC,
];

/// Separators of Istio's stat-name label encoding (`name=.=value;.;`).
const VALUE_SEPARATOR: &str = "=.=";
const FIELD_SEPARATOR: &str = ";.;";

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

/// gRPC status names by code (grpc/grpc doc/statuscodes.md; OpenTelemetry spells them so).
pub const GRPC_STATUS_NAMES: [&str; 17] = [
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
    "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
];

/// The codes as label values.
const GRPC_STATUS_CODES: [&str; 17] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16"];

/// Whether a gRPC status is an error: for a server, only those OpenTelemetry's RPC conventions
/// count as server errors (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE,
/// DATA_LOSS: the others are the caller's); for a client every status but OK.
pub fn grpc_is_error(code: usize, client: bool) -> bool {
    if client {
        code != 0
    } else {
        matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
    }
}

/// Whether a request is gRPC, by its `content-type`: `application/grpc`, alone or followed by `+`
/// (`+proto`, `+json`) or parameters, as Envoy's `Grpc::Common::hasGrpcContentType` decides
/// (`application/grpc-web` is not gRPC: its status travels in the body).
fn is_grpc(content_type: Option<&[u8]>) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    content_type.is_some_and(|c| {
        c.len() >= GRPC.len() && c[..GRPC.len()].eq_ignore_ascii_case(GRPC) && matches!(c.get(GRPC.len()), None | Some(b'+' | b';'))
    })
}

/// `(service, method)` of a gRPC `:path` `/package.Service/Method` (query cut), if it has that shape.
fn grpc_path(path: &[u8]) -> Option<(&[u8], &[u8])> {
    let path = path.split(|&b| b == b'?').next()?.strip_prefix(b"/")?;
    let slash = path.iter().position(|&b| b == b'/')?;
    let (service, method) = (&path[..slash], &path[slash + 1..]);
    (!service.is_empty() && !method.is_empty() && !method.contains(&b'/')).then_some((service, path))
}

/// Why the engine could not be built from a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A series key: one value id per label position (0 = empty for positions a metric lacks).
type Key = [u32; MAX_LABELS];

/// Keys are small integers we assign, never attacker-chosen bytes, so a fast non-keyed hash is safe.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = crate::labels::fast_mix(self.0, bytes);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type IdMap<V> = HashMap<Key, V, BuildHasherDefault<IdHasher>>;

struct Label {
    name: String,
    sources: Vec<Source>,
    /// Value id used when no source yields a value.
    default_id: u32,
    /// For labels whose sources are all static: the value id fixed at configure time.
    static_id: Option<u32>,
    response_side: bool,
    overflow_counter: Option<u32>,
    /// Process-wide budget scope of this label's values.
    budget_scope: String,
    max_values: u32,
}

#[derive(Clone, Copy, Default)]
struct Series {
    requests: Option<u32>,
    duration: Option<u32>,
    /// The same series under a migrated metric's old name (until its sunset).
    requests_old: Option<u32>,
    duration_old: Option<u32>,
}

#[derive(Clone, Copy, Default)]
struct ActiveIds {
    current: Option<u32>,
    old: Option<u32>,
}

/// Per-stream state between request headers and the end of the stream.
#[derive(Debug, Clone)]
pub struct Flight {
    ids: Key,
    active: Option<u32>,
    active_old: Option<u32>,
    /// A gRPC request: its status is read at the end.
    grpc: bool,
}

/// A traffic metric's old name, emitted beside the new one until `sunset_unix`.
struct OldName {
    name: String,
    sunset_unix: u64,
}

/// A renamed label: its value is written under `old` too, right after the label at `position`.
struct LabelAlias {
    position: usize,
    old: String,
    sunset_unix: u64,
}

/// Counts the engine keeps, for tests and diagnostics.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EngineStats {
    pub series: usize,
    pub active_series: usize,
    pub series_overflows: u64,
}

/// Turns request attributes into label values (immutable after configure).
struct Normalizer {
    methods: Vec<String>,
    routes: RouteMatcher,
    unmatched: Unmatched,
    raw_max_length: usize,
}

/// The configured core: one per Wasm VM (per Envoy worker).
pub struct Engine {
    contract: ContractInfo,
    labels: Vec<Label>,
    /// Value table of each label, parallel to `labels`.
    tables: Vec<ValueTable>,
    normalizer: Normalizer,
    needs_error_type: bool,
    /// Whether requests are told apart as gRPC (a label needs a gRPC source, or error_type does).
    grpc_aware: bool,
    /// Whether a gRPC request's status is read (a label or error_type needs it).
    needs_grpc_status: bool,
    /// Client-side configuration (OpenTelemetry's client rules for gRPC errors).
    client: bool,
    max_value_length: usize,
    max_series: usize,
    requests: Option<String>,
    duration: Option<String>,
    duration_unit_nanos: u64,
    active: Option<String>,
    /// Which label positions the active gauge carries.
    active_mask: [bool; MAX_LABELS],
    series: IdMap<Series>,
    active_series: IdMap<ActiveIds>,
    /// Keys the shared budget refused, remembered (up to `max_series`) to skip asking again.
    refused: IdMap<()>,
    refused_active: IdMap<()>,
    series_overflow_counter: Option<u32>,
    active_overflow_counter: Option<u32>,
    series_overflows: u64,
    /// Process-wide budget scopes of the traffic series and of the active gauge's series.
    series_scope: String,
    active_scope: String,
    requests_old: Option<OldName>,
    duration_old: Option<OldName>,
    active_old: Option<OldName>,
    label_aliases: Vec<LabelAlias>,
    /// The contract-info series: (stat name, metric id).
    contract_info: Option<(String, u32)>,
}

impl Engine {
    /// Validates `config` and builds the engine. `node` looks up Envoy node metadata
    /// (`key`, optional struct `field`); it is called only here, never per request.
    pub fn new(
        config: &PluginConfig,
        node: &NodeLookup<'_>,
    ) -> Result<Engine, ConfigError> {
        crate::validate::plugin_config(config).map_err(ConfigError)?;
        Ok(Self::with_routes(config, Self::routes(config)?, node))
    }

    /// The configuration's route table, compiled (the costly part of building an engine).
    pub fn routes(config: &PluginConfig) -> Result<RouteMatcher, ConfigError> {
        RouteMatcher::new(&config.routes.rules).map_err(|e| ConfigError(format!("routes.rules[{}]: {}", e.rule, e.message)))
    }

    /// Builds the engine of an already validated `config` around its compiled `routes`
    /// ([`Engine::routes`]), for callers that build many engines of one configuration (the fuzz
    /// targets: a fresh engine per input, the regexes compiled once).
    pub fn with_routes(
        config: &PluginConfig,
        routes: RouteMatcher,
        node: &NodeLookup<'_>,
    ) -> Engine {
        let max_value_length = config.max_value_length as usize;
        let clean = |v: &[u8]| sanitize(v, max_value_length).into_owned();
        let mut labels = Vec::with_capacity(config.labels.len());
        let mut tables = Vec::with_capacity(config.labels.len());
        for spec in &config.labels {
            let mut table = ValueTable::new(spec.max_values, spec.allowed.as_deref());
            for source in &spec.sources {
                match source {
                    Source::RequestMethod => {
                        for m in &config.methods {
                            table.intern_fixed(m);
                        }
                    }
                    Source::RequestRoute => {
                        for index in routes.fixed_rules() {
                            table.intern_fixed(&clean(routes.template(index).as_bytes()));
                        }
                    }
                    Source::ResponseGrpcStatusName => {
                        for name in GRPC_STATUS_NAMES {
                            table.intern_fixed(name);
                        }
                    }
                    Source::ResponseGrpcStatus => {
                        for code in GRPC_STATUS_CODES {
                            table.intern_fixed(code);
                        }
                    }
                    _ => {}
                }
            }
            let default_id = table.intern_fixed(&clean(spec.default.as_bytes()));
            let static_id = spec.sources.iter().all(Source::is_static).then(|| {
                // The first source with a value wins: an empty one falls through to the next.
                let value = spec.sources.iter().find_map(|s| match s {
                    Source::Constant { value } => Some(clean(value.as_bytes())).filter(|v| !v.is_empty()),
                    Source::Node { key, field } => node(key, field.as_deref()).map(|v| clean(&v)).filter(|v| !v.is_empty()),
                    _ => None,
                });
                match value.filter(|v| !v.is_empty()) {
                    Some(v) => table.intern_fixed(&v),
                    None => default_id,
                }
            });
            // Node metadata is read here only: in a chain with request sources, it becomes the
            // constant it is for this sidecar (or goes, when the node lacks it).
            let sources = spec
                .sources
                .iter()
                .filter_map(|s| match s {
                    Source::Node { key, field } => node(key, field.as_deref())
                        .map(|v| Source::Constant { value: String::from_utf8_lossy(&v).into_owned() }),
                    other => Some(other.clone()),
                })
                .collect();
            labels.push(Label {
                name: spec.name.clone(),
                sources,
                default_id,
                static_id,
                response_side: spec.sources.iter().any(Source::is_response_side),
                overflow_counter: None,
                budget_scope: format!("{}.label.{}", scope_prefix(config), spec.name),
                max_values: spec.max_values,
            });
            tables.push(table);
        }
        let old_name = |metric: Option<&String>| {
            let m = config.old_metric_name(metric?)?;
            Some(OldName { name: m.old.clone(), sunset_unix: m.sunset_unix })
        };
        let label_aliases = config
            .migrations
            .iter()
            .filter(|m| m.kind == MigrationKind::Label)
            .filter_map(|m| {
                let position = labels.iter().position(|l| l.name == m.new)?;
                Some(LabelAlias { position, old: m.old.clone(), sunset_unix: m.sunset_unix })
            })
            .collect();
        let mut active_mask = [false; MAX_LABELS];
        if let Some(active) = &config.active_requests {
            for name in &active.labels {
                if let Some(i) = labels.iter().position(|l| &l.name == name) {
                    active_mask[i] = true;
                }
            }
        }
        Engine {
            contract: config.contract.clone(),
            needs_error_type: labels.iter().any(|l| l.sources.contains(&Source::ResponseErrorType)),
            grpc_aware: labels.iter().any(|l| l.sources.iter().any(|s| s.is_grpc_only() || *s == Source::ResponseErrorType)),
            needs_grpc_status: labels.iter().any(|l| {
                l.sources.iter().any(|s| matches!(s, Source::ResponseGrpcStatus | Source::ResponseGrpcStatusName | Source::ResponseErrorType))
            }),
            client: config.client,
            labels,
            tables,
            normalizer: Normalizer {
                methods: config.methods.clone(),
                routes,
                unmatched: config.routes.unmatched,
                raw_max_length: config.routes.raw_max_length as usize,
            },
            max_value_length,
            max_series: config.max_series as usize,
            requests: config.requests.as_ref().map(|m| m.name.clone()),
            duration: config.duration.as_ref().map(|m| m.name.clone()),
            duration_unit_nanos: config.duration.as_ref().map_or(1_000_000, |d| d.unit.nanos()),
            active: config.active_requests.as_ref().map(|m| m.name.clone()),
            active_mask,
            series: IdMap::default(),
            active_series: IdMap::default(),
            refused: IdMap::default(),
            refused_active: IdMap::default(),
            series_overflow_counter: None,
            active_overflow_counter: None,
            series_overflows: 0,
            series_scope: format!("{}.series", scope_prefix(config)),
            active_scope: format!("{}.active", scope_prefix(config)),
            requests_old: old_name(config.requests.as_ref().map(|m| &m.name)),
            duration_old: old_name(config.duration.as_ref().map(|m| &m.name)),
            active_old: old_name(config.active_requests.as_ref().map(|m| &m.name)),
            label_aliases,
            contract_info: None,
        }
    }

    /// Ends the migrations whose sunset has passed at `now_unix` (seconds); the filter calls it at
    /// configure time and then periodically. Old metric names stop counting at once. An ended
    /// label alias changes every series name, so the series are defined afresh without it, under
    /// new budget scopes (the old stats stay in Envoy, frozen). Returns whether anything ended.
    pub fn expire_migrations(&mut self, now_unix: u64) -> bool {
        let mut ended = false;
        for old in [&mut self.requests_old, &mut self.duration_old, &mut self.active_old] {
            if old.as_ref().is_some_and(|o| o.sunset_unix <= now_unix) {
                *old = None;
                ended = true;
            }
        }
        if ended {
            for series in self.series.values_mut() {
                if self.requests_old.is_none() {
                    series.requests_old = None;
                }
                if self.duration_old.is_none() {
                    series.duration_old = None;
                }
            }
            if self.active_old.is_none() {
                for ids in self.active_series.values_mut() {
                    ids.old = None;
                }
            }
        }
        // Every VM ends an alias at its own tick; naming the new scopes after the sunset (not the
        // tick time) keeps the budgets shared.
        let ended_alias = self.label_aliases.iter().map(|a| a.sunset_unix).filter(|&s| s <= now_unix).max();
        self.label_aliases.retain(|a| a.sunset_unix > now_unix);
        if let Some(sunset) = ended_alias {
            ended = true;
            self.series.clear();
            self.active_series.clear();
            self.refused.clear();
            self.refused_active.clear();
            self.series_scope = format!("{}.{sunset}", self.series_scope);
            self.active_scope = format!("{}.{sunset}", self.active_scope);
        }
        ended
    }

    /// The earliest sunset of a migration still running, if any.
    pub fn next_sunset(&self) -> Option<u64> {
        let metrics = [&self.requests_old, &self.duration_old, &self.active_old].into_iter().flatten().map(|o| o.sunset_unix);
        metrics.chain(self.label_aliases.iter().map(|a| a.sunset_unix)).min()
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
        for (position, label) in self.labels.iter().enumerate() {
            let Some(id) = label.static_id else { continue };
            let value = self.tables[position].value(id);
            tags.push((label.name.as_str(), value));
        }
        let info = format!("{CONTRACT_INFO_METRIC}.{}", encode_tags(&tags));
        if let Some(id) = host.define(MetricKind::Gauge, &info) {
            host.record(id, 1);
            self.contract_info = Some((info, id));
        }
        for label in &mut self.labels {
            if label.static_id.is_none() {
                let name = format!("{LABEL_OVERFLOW_METRIC}.{}", encode_tags(&[("metricpact_label", &label.name)]));
                label.overflow_counter = host.define(MetricKind::Counter, &name);
            }
        }
        let overflow_counter = |host: &mut dyn MetricHost, metric: &str| {
            let name = format!("{SERIES_OVERFLOW_METRIC}.{}", encode_tags(&[("metricpact_metric", metric)]));
            host.define(MetricKind::Counter, &name)
        };
        if let Some(metric) = self.requests.as_ref().or(self.duration.as_ref()) {
            self.series_overflow_counter = overflow_counter(host, metric);
        }
        if let Some(metric) = &self.active {
            self.active_overflow_counter = overflow_counter(host, metric);
        }
    }

    /// The contract-info series (stat name, metric id), once defined.
    pub fn contract_info(&self) -> Option<(&str, u32)> {
        self.contract_info.as_ref().map(|(name, id)| (name.as_str(), *id))
    }

    /// Whether requests need timing (the duration histogram is enabled).
    pub fn records_duration(&self) -> bool {
        self.duration.is_some()
    }

    pub fn stats(&self) -> EngineStats {
        EngineStats {
            series: self.series.len(),
            active_series: self.active_series.len(),
            series_overflows: self.series_overflows,
        }
    }

    /// A flight with only static labels and defaults.
    fn blank_flight(&self) -> Flight {
        let mut ids = [EMPTY_ID; MAX_LABELS];
        for (i, label) in self.labels.iter().enumerate() {
            ids[i] = label.static_id.unwrap_or(label.default_id);
        }
        Flight { ids, active: None, active_old: None, grpc: false }
    }

    /// Called at request headers: resolves request-side labels and marks the request active.
    pub fn start(&mut self, host: &mut dyn MetricHost, request: &dyn RequestAttributes) -> Flight {
        let flight = self.late_flight(host, request);
        self.mark_active(host, flight)
    }

    /// For a stream whose request headers never reached the filter (an earlier filter answered
    /// it): resolves request-side labels from what the stream still has, without an active mark.
    pub fn late_flight(&mut self, host: &mut dyn MetricHost, request: &dyn RequestAttributes) -> Flight {
        let mut flight = self.blank_flight();
        // A lookup in the header map the other labels fetch anyway: no hostcall of its own.
        flight.grpc = self.grpc_aware && is_grpc(request.header("content-type").as_deref());
        for i in 0..self.labels.len() {
            let label = &self.labels[i];
            if label.static_id.is_some() || label.response_side {
                continue;
            }
            let value = label
                .sources
                .iter()
                .find_map(|s| self.normalizer.request_value(s, request, flight.grpc).filter(|v| !v.is_empty()));
            flight.ids[i] = intern(&mut self.tables[i], label, host, value.as_deref(), self.max_value_length);
        }
        flight
    }

    fn mark_active(&mut self, host: &mut dyn MetricHost, mut flight: Flight) -> Flight {
        if self.active.is_some() {
            let mut key = [EMPTY_ID; MAX_LABELS];
            for (i, slot) in key.iter_mut().enumerate() {
                if self.active_mask[i] {
                    *slot = flight.ids[i];
                }
            }
            let ids = self.active_id(host, key);
            flight.active = ids.current;
            flight.active_old = ids.old;
            for id in [ids.current, ids.old].into_iter().flatten() {
                host.increment(id, 1);
            }
        }
        flight
    }

    /// Called when the stream is done (Envoy's access-log time): counts the request, records its
    /// duration and ends its active mark.
    pub fn finish(&mut self, host: &mut dyn MetricHost, mut flight: Flight, response: &dyn ResponseAttributes) {
        for id in [flight.active.take(), flight.active_old.take()].into_iter().flatten() {
            host.increment(id, -1);
        }
        if self.requests.is_none() && self.duration.is_none() {
            return;
        }
        let status = response.status_code().filter(|s| (100..=999).contains(s));
        let cut_short = !response.completed();
        // gRPC: the status is a hostcall too, made for gRPC requests only (None: not gRPC;
        // Some(None): a grpc-status Envoy could not read).
        let grpc = (flight.grpc && self.needs_grpc_status)
            .then(|| response.grpc_status())
            .flatten()
            .map(|code| usize::try_from(code).ok().filter(|&c| c < GRPC_STATUS_NAMES.len()));
        let grpc_error = grpc.is_some_and(|code| code.is_none_or(|c| grpc_is_error(c, self.client)));
        let failed = cut_short || status.is_none_or(|s| s >= 500) || grpc_error;
        // Details are a hostcall: fetched only for failures, and only if a label wants them.
        let error = (failed && self.needs_error_type).then(|| {
            let details = response.code_details();
            match failure_class(details.as_deref()) {
                // A proxy failure keeps its name, gRPC or not.
                Some(class) => Cow::Borrowed(class),
                None if grpc_error => Cow::Borrowed(grpc.flatten().map_or(OTHER, |c| GRPC_STATUS_NAMES[c])),
                // A cut-short 2xx with no known cause still failed: never report its status as the error.
                None if cut_short && status.is_some_and(|s| s < 500) => Cow::Borrowed(OTHER),
                None => error_type(status, details.as_deref()),
            }
        });
        let grpc_code = grpc.map(|c| c.map_or(OTHER, |c| GRPC_STATUS_CODES[c]));
        let grpc_name = grpc.map(|c| c.map_or(OTHER, |c| GRPC_STATUS_NAMES[c]));
        let mut code = itoa3::Buffer::default();
        let code = status.map(|s| code.format(s));
        for i in 0..self.labels.len() {
            let label = &self.labels[i];
            if !label.response_side {
                continue;
            }
            let value = label.sources.iter().find_map(|s| match s {
                Source::ResponseStatusCode => code,
                Source::ResponseStatusClass => status.map(status_class),
                Source::ResponseErrorType => error.as_deref(),
                Source::ResponseGrpcStatus => grpc_code,
                Source::ResponseGrpcStatusName => grpc_name,
                _ => None,
            });
            flight.ids[i] = intern(&mut self.tables[i], label, host, value, self.max_value_length);
        }
        let series = self.series_for(host, flight.ids);
        for id in [series.requests, series.requests_old].into_iter().flatten() {
            host.increment(id, 1);
        }
        if series.duration.is_some() || series.duration_old.is_some() {
            if let Some(nanos) = response.duration_nanos() {
                for id in [series.duration, series.duration_old].into_iter().flatten() {
                    host.record(id, nanos / self.duration_unit_nanos);
                }
            }
        }
    }

    fn series_for(&mut self, host: &mut dyn MetricHost, key: Key) -> Series {
        if let Some(series) = self.series.get(&key) {
            return *series;
        }
        let admitted = (!self.refused.contains_key(&key))
            .then(|| self.encode_key(&key, None))
            .filter(|tags| self.admit_series(host, tags, false));
        let (key, tags) = match admitted {
            Some(tags) => (key, tags),
            None => {
                remember_refusal(&mut self.refused, key, self.max_series);
                self.note_series_overflow(host, false);
                let overflow = self.overflow_key(key);
                if let Some(series) = self.series.get(&overflow) {
                    return *series;
                }
                (overflow, self.encode_key(&overflow, None))
            }
        };
        let define = |host: &mut dyn MetricHost, kind, metric: Option<&str>| {
            metric.and_then(|name| host.define(kind, &format!("{name}.{tags}")))
        };
        let series = Series {
            requests: define(host, MetricKind::Counter, self.requests.as_deref()),
            duration: define(host, MetricKind::Histogram, self.duration.as_deref()),
            requests_old: define(host, MetricKind::Counter, self.requests_old.as_ref().map(|o| o.name.as_str())),
            duration_old: define(host, MetricKind::Histogram, self.duration_old.as_ref().map(|o| o.name.as_str())),
        };
        self.series.insert(key, series);
        series
    }

    fn active_id(&mut self, host: &mut dyn MetricHost, key: Key) -> ActiveIds {
        if let Some(ids) = self.active_series.get(&key) {
            return *ids;
        }
        let admitted = (!self.refused_active.contains_key(&key))
            .then(|| self.encode_key(&key, Some(&self.active_mask)))
            .filter(|tags| self.admit_series(host, tags, true));
        let (key, tags) = match admitted {
            Some(tags) => (key, tags),
            None => {
                remember_refusal(&mut self.refused_active, key, self.max_series);
                self.note_series_overflow(host, true);
                let overflow = self.overflow_key(key);
                if let Some(ids) = self.active_series.get(&overflow) {
                    return *ids;
                }
                (overflow, self.encode_key(&overflow, Some(&self.active_mask)))
            }
        };
        let mut define = |name: Option<&str>| name.and_then(|name| host.define(MetricKind::Gauge, &format!("{name}.{tags}")));
        let ids = ActiveIds { current: define(self.active.as_deref()), old: define(self.active_old.as_ref().map(|o| o.name.as_str())) };
        self.active_series.insert(key, ids);
        ids
    }

    /// Whether a label combination new to this VM fits the sidecar-wide series budget.
    fn admit_series(&self, host: &mut dyn MetricHost, tags: &str, active: bool) -> bool {
        let (local, scope) = if active {
            (self.active_series.len(), &self.active_scope)
        } else {
            (self.series.len(), &self.series_scope)
        };
        local < self.max_series && host.admit(scope, tags, self.max_series as u32)
    }

    fn note_series_overflow(&mut self, host: &mut dyn MetricHost, active: bool) {
        self.series_overflows += 1;
        let counter = if active { self.active_overflow_counter } else { self.series_overflow_counter };
        if let Some(id) = counter {
            host.increment(id, 1);
        }
    }

    /// The key every over-budget combination collapses into: traffic-derived labels become
    /// `_OTHER`, the pod's own identity (static labels) is kept so per-pod sums stay whole.
    fn overflow_key(&self, key: Key) -> Key {
        let mut overflow = key;
        for (i, label) in self.labels.iter().enumerate() {
            if label.static_id.is_none() && key[i] != label.default_id {
                overflow[i] = OTHER_ID;
            }
        }
        overflow
    }

    fn encode_key(&self, key: &Key, mask: Option<&[bool; MAX_LABELS]>) -> String {
        let mut out = String::new();
        for (i, label) in self.labels.iter().enumerate() {
            if mask.is_some_and(|m| !m[i]) {
                continue;
            }
            let value = self.tables[i].value(key[i]);
            push_tag(&mut out, &label.name, value);
            for alias in self.label_aliases.iter().filter(|a| a.position == i) {
                push_tag(&mut out, &alias.old, value);
            }
        }
        out
    }
}

/// Budgets are namespaced by the configuration's first metric name: the server and client
/// filters of one sidecar may share a VM id (and so Envoy's shared data), not their budgets.
fn scope_prefix(config: &PluginConfig) -> &str {
    config.metric_names().first().copied().unwrap_or("metricpact")
}

/// Sanitizes and interns one resolved value (or the label's default), counting overflows.
fn intern(table: &mut ValueTable, label: &Label, host: &mut dyn MetricHost, value: Option<&str>, max_len: usize) -> u32 {
    let Some(value) = value else {
        return label.default_id;
    };
    let interned = table.intern_with(&sanitize_str(value, max_len), |v| host.admit(&label.budget_scope, v, label.max_values));
    if interned.overflowed {
        if let Some(id) = label.overflow_counter {
            host.increment(id, 1);
        }
    }
    interned.id
}

/// Remembers a refused key, up to `cap` of them: beyond that, refusals are asked again rather than
/// letting traffic grow the cache.
fn remember_refusal(refused: &mut IdMap<()>, key: Key, cap: usize) {
    if refused.len() < cap {
        refused.insert(key, ());
    }
}

impl Normalizer {
    fn request_value<'a>(&'a self, source: &'a Source, request: &'a dyn RequestAttributes, grpc: bool) -> Option<Cow<'a, str>> {
        match source {
            Source::RequestGrpcMethod | Source::RequestGrpcService => {
                if !grpc {
                    return None;
                }
                let path = request.path()?;
                Some(match grpc_path(&path) {
                    Some((service, method)) => {
                        let part = if *source == Source::RequestGrpcService { service } else { method };
                        Cow::Owned(String::from_utf8_lossy(part).into_owned())
                    }
                    None => Cow::Borrowed(OTHER),
                })
            }
            Source::RequestMethod => {
                let method = request.method()?;
                let known = self.methods.iter().find(|m| m.as_bytes() == &*method);
                Some(Cow::Borrowed(known.map_or(OTHER, |m| m.as_str())))
            }
            Source::RequestRoute => {
                let path = request.path()?;
                let path = text(&path);
                Some(match self.routes.route(&path) {
                    RouteOutcome::Fixed(i) => Cow::Borrowed(self.routes.template(i)),
                    RouteOutcome::Expanded(s) => Cow::Owned(s),
                    RouteOutcome::Unmatched(raw) => match self.unmatched {
                        Unmatched::Other => Cow::Borrowed(OTHER),
                        Unmatched::Raw => Cow::Owned(raw[..floor_char_boundary(raw, self.raw_max_length)].to_string()),
                    },
                })
            }
            Source::RequestScheme => {
                if let Some(proto) = request.forwarded_proto() {
                    if proto.eq_ignore_ascii_case(b"https") {
                        return Some(Cow::Borrowed("https"));
                    }
                    if proto.eq_ignore_ascii_case(b"http") {
                        return Some(Cow::Borrowed("http"));
                    }
                }
                match &*request.scheme()? {
                    b"http" => Some(Cow::Borrowed("http")),
                    b"https" => Some(Cow::Borrowed("https")),
                    other => Some(Cow::Owned(String::from_utf8_lossy(other).to_ascii_lowercase())),
                }
            }
            Source::RequestProtocol => {
                let protocol = request.protocol()?;
                Some(match &*protocol {
                    b"HTTP/1.1" => Cow::Borrowed("1.1"),
                    b"HTTP/2" => Cow::Borrowed("2"),
                    b"HTTP/3" => Cow::Borrowed("3"),
                    b"HTTP/1.0" => Cow::Borrowed("1.0"),
                    other => Cow::Owned(String::from_utf8_lossy(other.strip_prefix(b"HTTP/").unwrap_or(other)).into_owned()),
                })
            }
            Source::RequestHeader { name } => request.header(name).map(into_text),
            // A static source after request sources that yielded nothing.
            Source::Constant { value } => Some(Cow::Borrowed(value.as_str())),
            _ => None,
        }
    }
}

/// Bytes as text, invalid UTF-8 replaced: `from_utf8_lossy`'s result, but valid input (nearly
/// all of it) takes `from_utf8`'s faster scan.
fn text(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// [`text`] of an attribute, borrowing what the attribute borrows.
fn into_text(bytes: Bytes<'_>) -> Cow<'_, str> {
    match bytes {
        Cow::Borrowed(b) => text(b),
        Cow::Owned(v) => Cow::Owned(String::from_utf8(v).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())),
    }
}

/// Formats a status code without allocating.
mod itoa3 {
    #[derive(Default)]
    pub struct Buffer([u8; 3]);

    impl Buffer {
        /// `code` must be 100..=999.
        pub fn format(&mut self, code: u32) -> &str {
            self.0 = [b'0' + (code / 100 % 10) as u8, b'0' + (code / 10 % 10) as u8, b'0' + (code % 10) as u8];
            std::str::from_utf8(&self.0).unwrap_or("")
        }
    }
}

/// Appends one encoded tag; an empty value is left out, so the label is absent (as Prometheus
/// treats an empty label anyway) and costs no bytes in every series.
fn push_tag(out: &mut String, name: &str, value: &str) {
    if value.is_empty() {
        return;
    }
    out.push_str(name);
    out.push_str(VALUE_SEPARATOR);
    out.push_str(value);
    out.push_str(FIELD_SEPARATOR);
}

/// Encodes `(name, value)` pairs the way Istio's `extraStatTags` regexes extract them.
pub fn encode_tags(tags: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (name, value) in tags {
        push_tag(&mut out, name, value);
    }
    out
}

fn floor_char_boundary(s: &str, max: usize) -> usize {
    if s.len() <= max {
        return s.len();
    }
    let mut i = max;
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// `2xx`-style class of a status code.
pub fn status_class(status: u32) -> &'static str {
    match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        5 => "5xx",
        _ => OTHER,
    }
}

/// OTel `error.type` for a failed server request: a proxy failure class when Envoy's response
/// details say the response did not come from the upstream, else the 5xx status as a string.
pub fn error_type(status: Option<u32>, details: Option<&[u8]>) -> Cow<'static, str> {
    match (failure_class(details), status) {
        (Some(class), _) => Cow::Borrowed(class),
        (None, Some(status)) => Cow::Owned(status.to_string()),
        (None, None) => Cow::Borrowed(OTHER),
    }
}

/// The proxy failure class Envoy's response details name, if any.
fn failure_class(details: Option<&[u8]>) -> Option<&'static str> {
    let details = details.and_then(|d| std::str::from_utf8(d).ok()).unwrap_or("");
    if details.is_empty() || details == "via_upstream" {
        None
    } else if details.contains("timeout") || details == "max_duration_reached" {
        Some("timeout")
    } else if details.contains("no_healthy_upstream") {
        Some("no_healthy_upstream")
    } else if details.contains("connection_failure") || details.contains("connection_termination") && details.contains("before_response") {
        Some("connection_failure")
    } else if details.starts_with("upstream_reset") {
        Some("upstream_reset")
    } else if details.contains("cluster_not_found") || details.contains("route_not_found") {
        Some("no_route")
    } else if details.starts_with("downstream_") || details.starts_with("http") && details.ends_with(".remote_reset") {
        // `http2.remote_reset` (and h3's) at the stream level is the downstream codec's peer, the
        // client, resetting: a gRPC client's deadline or cancel.
        Some("downstream_disconnect")
    } else if details.contains("overload") {
        Some("overload")
    } else {
        None
    }
}

#[cfg(test)]
mod tests;
