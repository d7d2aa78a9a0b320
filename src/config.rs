//! The compiled plugin configuration: the JSON `metricpact compile` prints and the filter reads
//! from its Envoy plugin configuration. It is explicit (every default already applied) so the
//! filter never has to know contract defaults, and it never contains YAML.

use serde::{Deserialize, Serialize};

/// Version of this JSON layout; the filter refuses any other.
pub const CONFIG_FORMAT: u32 = 1;

/// Most labels a traffic metric may carry; keeps series keys fixed-size on the hot path.
pub const MAX_LABELS: usize = 16;

/// Looks up Envoy node metadata: `key` (e.g. `NAME`, `LABELS`), and a `field` of a struct value.
/// Called at configure time only, never per request.
pub type NodeLookup<'a> = dyn Fn(&str, Option<&str>) -> Option<Vec<u8>> + 'a;

/// Everything the filter needs, with contract defaults applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Layout version, [`CONFIG_FORMAT`].
    pub format: u32,
    /// Identity of the contract this was compiled from (exported as `metricpact_contract_info`).
    pub contract: ContractInfo,
    /// Request counter; `None` when the contract disables it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<MetricSpec>,
    /// Duration histogram; `None` when disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<DurationSpec>,
    /// In-flight gauge; `None` when disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_requests: Option<ActiveSpec>,
    /// Labels of the request counter and duration histogram, in encoding order.
    pub labels: Vec<LabelSpec>,
    /// Methods kept verbatim; every other method becomes `_OTHER`.
    pub methods: Vec<String>,
    /// How request paths become `http_route` values.
    pub routes: RouteTable,
    /// Most distinct label combinations per metric; later combinations go to the overflow series.
    pub max_series: u32,
    /// Longest label value kept (bytes, after sanitizing); longer values are cut.
    pub max_value_length: u32,
    /// How the app's own metrics exposition is rewritten when scraped through the sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposition: Option<ExpositionSpec>,
    /// Renamed traffic metrics and labels whose old names are still emitted until their sunset.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub migrations: Vec<Migration>,
    /// The configuration measures outbound calls (client metrics): every gRPC status but `OK` is an
    /// error then, as OpenTelemetry says for clients.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub client: bool,
    /// Rules for the app's own metrics, judged on the rewritten exposition (`policy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicySpec>,
}

/// A contract's `policy`: naming and content rules for what the app exposes (after the rewrite,
/// i.e. what Prometheus stores), each with a stable id and a severity, and waivers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    pub rules: Vec<PolicyRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waivers: Vec<Waiver>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRule {
    /// Error (fails `verify`) or warning.
    pub error: bool,
    pub check: PolicyCheck,
}

/// What one policy rule requires; its id is [`PolicyCheck::id`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum PolicyCheck {
    /// Counters are stored with `_total`.
    CounterSuffix,
    /// Units as base-unit words (`_seconds` not `_ms`, `_bytes` not `_kb`).
    BaseUnit,
    /// No type suffix (`_total`, `_count`, `_sum`, `_bucket`) on a gauge.
    GaugeTypeSuffix,
    /// Metric and label names in snake_case.
    SnakeCase,
    /// Metric names (of `metric_type`, or all) match `pattern` (whole name).
    NamePattern { pattern: String, #[serde(default, skip_serializing_if = "Option::is_none")] metric_type: Option<String> },
    /// No series carries `label`.
    ForbiddenLabel { label: String },
    /// No value of `label` matches `pattern` (whole value).
    ForbiddenValue { label: String, pattern: String },
    /// At most `max` series per metric.
    SeriesLimit { max: u32 },
    /// Every metric has a HELP text.
    HelpRequired,
}

impl PolicyCheck {
    /// The rule's stable id (findings, `severity`, `waivers`).
    pub fn id(&self) -> &'static str {
        match self {
            PolicyCheck::CounterSuffix => "counter-suffix",
            PolicyCheck::BaseUnit => "base-unit",
            PolicyCheck::GaugeTypeSuffix => "gauge-type-suffix",
            PolicyCheck::SnakeCase => "snake-case",
            PolicyCheck::NamePattern { .. } => "name-pattern",
            PolicyCheck::ForbiddenLabel { .. } => "forbidden-label",
            PolicyCheck::ForbiddenValue { .. } => "forbidden-value",
            PolicyCheck::SeriesLimit { .. } => "series-limit",
            PolicyCheck::HelpRequired => "help-required",
        }
    }
}

/// Every policy rule id.
pub const POLICY_RULES: &[&str] =
    &["counter-suffix", "base-unit", "gauge-type-suffix", "snake-case", "name-pattern", "forbidden-label", "forbidden-value", "series-limit", "help-required"];

/// A rule not applied to one metric until `expires_unix` (seconds, 00:00 UTC of `expires`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Waiver {
    pub rule: String,
    pub metric: String,
    pub reason: String,
    pub expires: String,
    pub expires_unix: u64,
}

/// A declared rename: until `sunset_unix` the old name is emitted beside the new one, so queries,
/// dashboards and autoscalers on either keep working while they move.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Migration {
    pub kind: MigrationKind,
    /// The name before the rename (a metric name as queried: counters with `_total`).
    pub old: String,
    /// The current name.
    pub new: String,
    /// Day the old name stops (`YYYY-MM-DD`, 00:00 UTC), as written in the contract.
    pub sunset: String,
    /// The same instant in Unix seconds.
    pub sunset_unix: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationKind {
    Metric,
    Label,
}

impl Migration {
    /// Whether the old name is still emitted at `now_unix` (seconds).
    pub fn active_at(&self, now_unix: u64) -> bool {
        now_unix < self.sunset_unix
    }
}

/// The app-exposition rewrite. Operations apply in this order: keep/drop metrics, drop series
/// (both on the app's original names), rename metrics, rename labels, map values, drop labels
/// (aggregating counters and histograms), inject labels; then required metrics are checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpositionSpec {
    /// Request paths (exact, query ignored) whose GET responses are metric scrapes.
    pub paths: Vec<String>,
    /// Bodies larger than this pass through unchanged.
    pub max_body_bytes: u32,
    /// When set, only metrics matching one of these regexes (whole name) are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_metrics: Option<Vec<String>>,
    /// Metrics matching one of these regexes (whole name) are dropped.
    #[serde(default)]
    pub drop_metrics: Vec<String>,
    /// Series whose label matches a regex are dropped.
    #[serde(default)]
    pub drop_series: Vec<SeriesDrop>,
    #[serde(default)]
    pub rename_metrics: Vec<MetricRename>,
    #[serde(default)]
    pub rename_labels: Vec<LabelRename>,
    #[serde(default)]
    pub map_values: Vec<ValueMap>,
    #[serde(default)]
    pub drop_labels: Vec<LabelDrop>,
    #[serde(default)]
    pub inject_labels: Vec<Injection>,
    /// Metrics (final names) that must be present; each missing one is counted per scrape.
    #[serde(default)]
    pub require_metrics: Vec<String>,
    /// Renamed metrics (final names, counters with `_total`) and labels of the rewritten output
    /// whose old names are written beside the new ones until their sunset.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub migrations: Vec<Migration>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeriesDrop {
    pub label: String,
    /// Whole-value regex.
    pub regex: String,
}

/// Renames a metric family (names as the app writes them: counters with `_total`, histograms
/// and summaries by their base name); its suffixes, HELP, TYPE and UNIT follow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricRename {
    #[serde(rename = "match")]
    pub matcher: NameMatch,
    /// New name; with a regex match, `$1` / `${name}` insert captures.
    pub to: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum NameMatch {
    Exact(String),
    /// Whole-name regex.
    Regex(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelRename {
    pub from: String,
    pub to: String,
}

/// Rewrites one label's values: a lookup table, or a whole-value regex with a replacement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueMap {
    pub label: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelDrop {
    pub label: String,
    /// Only on metrics (final names) matching one of these whole-name regexes; all when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Injection {
    pub name: String,
    /// A node metadata or constant source.
    pub source: Source,
    /// Value when the source has none (`""`: do not inject).
    #[serde(default)]
    pub default: String,
    /// When the series already has this label: replace it (`true`) or keep the app's value.
    pub overwrite: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContractInfo {
    pub name: String,
    pub version: String,
    /// Short sha256 of the compiled configuration (without this field).
    pub hash: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricSpec {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DurationSpec {
    pub name: String,
    pub unit: DurationUnit,
    /// Bucket upper bounds in `unit`; applied by Envoy's `histogram_bucket_settings`, carried here
    /// so the whole contract travels with the module.
    #[serde(serialize_with = "whole_numbers")]
    pub buckets: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActiveSpec {
    pub name: String,
    /// Names of the labels (a subset of `labels`, request-side only) the gauge carries.
    pub labels: Vec<String>,
}

/// Unit the duration histogram records in. Envoy histograms take integers, so whole seconds
/// would be useless: the choice is milliseconds (Istio's) or microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DurationUnit {
    Milliseconds,
    Microseconds,
}

impl DurationUnit {
    /// The word the metric name must end with.
    pub fn word(self) -> &'static str {
        match self {
            DurationUnit::Milliseconds => "milliseconds",
            DurationUnit::Microseconds => "microseconds",
        }
    }

    /// Nanoseconds per recorded unit.
    pub fn nanos(self) -> u64 {
        match self {
            DurationUnit::Milliseconds => 1_000_000,
            DurationUnit::Microseconds => 1_000,
        }
    }

    /// Factor from seconds (the OTel unit) to this unit.
    pub fn per_second(self) -> f64 {
        1e9 / self.nanos() as f64
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelSpec {
    pub name: String,
    /// Tried in order; the first that yields a value wins.
    pub sources: Vec<Source>,
    /// Value when no source yields one (`""` means the label is absent).
    pub default: String,
    /// Most distinct values kept; later ones become `_OTHER`.
    pub max_values: u32,
    /// When set, any value outside this list becomes `_OTHER`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed: Option<Vec<String>>,
}

/// Where a label's value comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Source {
    /// `:method`, normalized against `methods`.
    RequestMethod,
    /// `:path` through the route table.
    RequestRoute,
    /// `x-forwarded-proto` when it is `http`/`https`, else `:scheme`.
    RequestScheme,
    /// Negotiated protocol version: `1.0`, `1.1`, `2`, `3`.
    RequestProtocol,
    /// A request header's value.
    RequestHeader { name: String },
    /// HTTP status code sent downstream.
    ResponseStatusCode,
    /// `1xx` … `5xx`.
    ResponseStatusClass,
    /// Set on failure only: the 5xx code, or a proxy failure class from Envoy's response details;
    /// for gRPC requests, the name of an error status (`UNAVAILABLE`, …; on the server side only
    /// the codes OpenTelemetry counts as server errors).
    ResponseErrorType,
    /// gRPC requests (`content-type: application/grpc…`) only: the method, `package.Service/Method`
    /// from `:path` (OpenTelemetry's `rpc.method`); absent for other requests.
    RequestGrpcMethod,
    /// gRPC requests only: `package.Service` from `:path`.
    RequestGrpcService,
    /// gRPC requests only: the status code, `0` … `16`, from the trailers or from the headers of a
    /// trailers-only response (Envoy's `response.grpc_status`).
    ResponseGrpcStatus,
    /// gRPC requests only: the status code's name, `OK`, `NOT_FOUND`, … (OpenTelemetry's
    /// `rpc.response.status_code`).
    ResponseGrpcStatusName,
    /// Envoy node metadata (`xds.node.metadata.KEY`, or field `FIELD` of a struct such as `LABELS`).
    Node {
        key: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        field: Option<String>,
    },
    /// A fixed value.
    Constant { value: String },
}

impl Source {
    /// Known only once the response is done: not allowed on the active-requests gauge.
    pub fn is_response_side(&self) -> bool {
        matches!(
            self,
            Source::ResponseStatusCode
                | Source::ResponseStatusClass
                | Source::ResponseErrorType
                | Source::ResponseGrpcStatus
                | Source::ResponseGrpcStatusName
        )
    }

    /// Has a value for gRPC requests only.
    pub fn is_grpc_only(&self) -> bool {
        matches!(
            self,
            Source::RequestGrpcMethod | Source::RequestGrpcService | Source::ResponseGrpcStatus | Source::ResponseGrpcStatusName
        )
    }

    /// Fixed for the lifetime of the plugin: resolved once at configure time.
    pub fn is_static(&self) -> bool {
        matches!(self, Source::Node { .. } | Source::Constant { .. })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteTable {
    /// Tried in order against the path without its query; the first match wins.
    pub rules: Vec<RouteRule>,
    pub unmatched: Unmatched,
    /// With `unmatched: raw`, raw paths are cut to this many bytes.
    pub raw_max_length: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    #[serde(rename = "match")]
    pub matcher: RouteMatch,
    /// The route value; `$name` / `${name}` / `$1` insert a regex capture, `{id}` is literal.
    pub template: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum RouteMatch {
    Exact(String),
    Prefix(String),
    /// Must match the whole path (it is anchored at both ends).
    Regex(String),
}

/// What a path that matches no rule becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unmatched {
    /// `_OTHER`: the default, keeps `http_route` bounded by the rules.
    Other,
    /// The raw path (query stripped, sanitized, cut, and still subject to `max_values`).
    Raw,
}

/// Writes whole bucket bounds as integers (`250`, not `250.0`), as people write them.
fn whole_numbers<S: serde::Serializer>(values: &[f64], serializer: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = serializer.serialize_seq(Some(values.len()))?;
    for &v in values {
        if v.fract() == 0.0 && v.abs() < 1e15 {
            seq.serialize_element(&(v as i64))?;
        } else {
            seq.serialize_element(&v)?;
        }
    }
    seq.end()
}

/// Methods OTel's HTTP semantic conventions know (RFC 9110 plus PATCH).
pub const DEFAULT_METHODS: &[&str] = &[
    "CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE",
];

impl PluginConfig {
    /// Parses the filter's configuration JSON.
    pub fn from_json(bytes: &[u8]) -> Result<PluginConfig, String> {
        let config: PluginConfig = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if config.format != CONFIG_FORMAT {
            return Err(format!(
                "configuration format {} is not supported (this build reads format {CONFIG_FORMAT}); recompile the contract with a matching metricpact",
                config.format
            ));
        }
        Ok(config)
    }

    /// The traffic metrics' names (counter, histogram, gauge; those enabled).
    pub fn traffic_metric_names(&self) -> Vec<&str> {
        [self.requests.as_ref().map(|m| &m.name), self.duration.as_ref().map(|m| &m.name), self.active_requests.as_ref().map(|m| &m.name)]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect()
    }

    /// Names of every metric the filter emits, self-metrics included.
    pub fn metric_names(&self) -> Vec<&str> {
        let mut names = self.traffic_metric_names();
        names.extend(self.migrations.iter().filter(|m| m.kind == MigrationKind::Metric).map(|m| m.old.as_str()));
        names.extend(crate::telemetry::SELF_METRIC_NAMES);
        names
    }

    /// Names the duration histogram is emitted under (its old one too during a migration).
    pub fn duration_names(&self) -> Vec<&str> {
        let Some(d) = &self.duration else { return Vec::new() };
        std::iter::once(d.name.as_str()).chain(self.old_metric_name(&d.name).map(|m| m.old.as_str())).collect()
    }

    /// The old name of traffic metric `name` while a migration keeps it.
    pub fn old_metric_name(&self, name: &str) -> Option<&Migration> {
        self.migrations.iter().find(|m| m.kind == MigrationKind::Metric && m.new == name)
    }

    /// Every tag name the sidecar must extract (Istio `extraStatTags`), self-metric labels included.
    pub fn tag_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.labels.iter().map(|l| l.name.as_str()).collect();
        names.extend(self.migrations.iter().filter(|m| m.kind == MigrationKind::Label).map(|m| m.old.as_str()));
        names.extend(crate::names::SELF_LABEL_NAMES);
        names
    }
}
