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
#[serde(try_from = "PolicyCheckWire", into = "PolicyCheckWire")]
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
    NamePattern { pattern: String, metric_type: Option<String> },
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

/// How a rule travels in the plugin configuration: one flat shape for every rule
/// (`{"rule": "series-limit", "max": 50}`). The filter's JSON reader decodes it with a fraction
/// of the code an enum of nine shapes needs (the module's size budget).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyCheckWire {
    rule: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pattern: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    metric_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max: Option<u32>,
}

impl TryFrom<PolicyCheckWire> for PolicyCheck {
    type Error = String;
    fn try_from(w: PolicyCheckWire) -> Result<PolicyCheck, String> {
        let (takes, needs): (&[&str], &[&str]) = match w.rule.as_str() {
            "name-pattern" => (&["pattern", "metric_type"], &["pattern"]),
            "forbidden-label" => (&["label"], &["label"]),
            "forbidden-value" => (&["label", "pattern"], &["label", "pattern"]),
            "series-limit" => (&["max"], &["max"]),
            _ => (&[], &[]),
        };
        let given = [("pattern", w.pattern.is_some()), ("metric_type", w.metric_type.is_some()), ("label", w.label.is_some()), ("max", w.max.is_some())];
        fields_fit("policy rule", &w.rule, &given, takes, needs)?;
        let missing = |field: &str| format!("policy rule `{}` needs `{field}`", w.rule);
        Ok(match w.rule.as_str() {
            "counter-suffix" => PolicyCheck::CounterSuffix,
            "base-unit" => PolicyCheck::BaseUnit,
            "gauge-type-suffix" => PolicyCheck::GaugeTypeSuffix,
            "snake-case" => PolicyCheck::SnakeCase,
            "help-required" => PolicyCheck::HelpRequired,
            "name-pattern" => PolicyCheck::NamePattern { pattern: w.pattern.clone().ok_or_else(|| missing("pattern"))?, metric_type: w.metric_type },
            "forbidden-label" => PolicyCheck::ForbiddenLabel { label: w.label.clone().ok_or_else(|| missing("label"))? },
            "forbidden-value" => PolicyCheck::ForbiddenValue {
                label: w.label.clone().ok_or_else(|| missing("label"))?,
                pattern: w.pattern.clone().ok_or_else(|| missing("pattern"))?,
            },
            "series-limit" => PolicyCheck::SeriesLimit { max: w.max.ok_or_else(|| missing("max"))? },
            other => return Err(format!("unknown policy rule `{other}`")),
        })
    }
}

impl From<PolicyCheck> for PolicyCheckWire {
    fn from(check: PolicyCheck) -> PolicyCheckWire {
        let mut w = PolicyCheckWire { rule: check.id().to_string(), pattern: None, metric_type: None, label: None, max: None };
        match check {
            PolicyCheck::NamePattern { pattern, metric_type } => (w.pattern, w.metric_type) = (Some(pattern), metric_type),
            PolicyCheck::ForbiddenLabel { label } => w.label = Some(label),
            PolicyCheck::ForbiddenValue { label, pattern } => (w.label, w.pattern) = (Some(label), Some(pattern)),
            PolicyCheck::SeriesLimit { max } => w.max = Some(max),
            PolicyCheck::CounterSuffix | PolicyCheck::BaseUnit | PolicyCheck::GaugeTypeSuffix | PolicyCheck::SnakeCase | PolicyCheck::HelpRequired => {}
        }
        w
    }
}

/// Whether a flat wire shape's optional fields (`given`: name, present) are those its `kind`
/// takes, with those it needs.
fn fields_fit(what: &str, kind: &str, given: &[(&str, bool)], takes: &[&str], needs: &[&str]) -> Result<(), String> {
    for &(field, present) in given {
        if present && !takes.contains(&field) {
            return Err(format!("{what} `{kind}` takes no `{field}`"));
        }
        if !present && needs.contains(&field) {
            return Err(format!("{what} `{kind}` needs `{field}`"));
        }
    }
    Ok(())
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
#[serde(try_from = "KindValue", into = "KindValue")]
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

/// Where a label's value comes from. In the configuration: `{"kind": "request_header", "name": …}`
/// (see [`SourceWire`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "SourceWire", into = "SourceWire")]
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
    Node { key: String, field: Option<String> },
    /// A fixed value.
    Constant { value: String },
}

/// A [`Source`] as the configuration carries it: one flat shape. serde's internally tagged enums
/// buffer each value before decoding it, which cost the module ~15 KB of code.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceWire {
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    field: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<String>,
}

/// The plain sources by their `kind`.
const PLAIN_SOURCES: [(&str, Source); 11] = [
    ("request_method", Source::RequestMethod),
    ("request_route", Source::RequestRoute),
    ("request_scheme", Source::RequestScheme),
    ("request_protocol", Source::RequestProtocol),
    ("response_status_code", Source::ResponseStatusCode),
    ("response_status_class", Source::ResponseStatusClass),
    ("response_error_type", Source::ResponseErrorType),
    ("request_grpc_method", Source::RequestGrpcMethod),
    ("request_grpc_service", Source::RequestGrpcService),
    ("response_grpc_status", Source::ResponseGrpcStatus),
    ("response_grpc_status_name", Source::ResponseGrpcStatusName),
];

impl TryFrom<SourceWire> for Source {
    type Error = String;
    fn try_from(w: SourceWire) -> Result<Source, String> {
        let (takes, needs): (&[&str], &[&str]) = match w.kind.as_str() {
            "request_header" => (&["name"], &["name"]),
            "node" => (&["key", "field"], &["key"]),
            "constant" => (&["value"], &["value"]),
            _ => (&[], &[]),
        };
        let given = [("name", w.name.is_some()), ("key", w.key.is_some()), ("field", w.field.is_some()), ("value", w.value.is_some())];
        fields_fit("source", &w.kind, &given, takes, needs)?;
        Ok(match w.kind.as_str() {
            "request_header" => Source::RequestHeader { name: w.name.unwrap_or_default() },
            "node" => Source::Node { key: w.key.unwrap_or_default(), field: w.field },
            "constant" => Source::Constant { value: w.value.unwrap_or_default() },
            kind => PLAIN_SOURCES.iter().find(|(k, _)| *k == kind).map(|(_, s)| s.clone()).ok_or_else(|| format!("unknown source kind `{kind}`"))?,
        })
    }
}

impl From<Source> for SourceWire {
    fn from(source: Source) -> SourceWire {
        let mut w = SourceWire { kind: String::new(), name: None, key: None, field: None, value: None };
        w.kind = match source {
            Source::RequestHeader { name } => {
                w.name = Some(name);
                "request_header"
            }
            Source::Node { key, field } => {
                (w.key, w.field) = (Some(key), field);
                "node"
            }
            Source::Constant { value } => {
                w.value = Some(value);
                "constant"
            }
            plain => PLAIN_SOURCES.iter().find(|(_, s)| *s == plain).map_or("", |(k, _)| k),
        }
        .to_string();
        w
    }
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
#[serde(try_from = "KindValue", into = "KindValue")]
pub enum RouteMatch {
    Exact(String),
    Prefix(String),
    /// Must match the whole path (it is anchored at both ends).
    Regex(String),
}

/// A [`NameMatch`] or [`RouteMatch`] as the configuration carries it: `{"kind": "regex", "value": …}`
/// (one flat shape decodes with less code than serde's adjacently tagged enums).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KindValue {
    kind: String,
    value: String,
}

impl TryFrom<KindValue> for NameMatch {
    type Error = String;
    fn try_from(w: KindValue) -> Result<NameMatch, String> {
        match w.kind.as_str() {
            "exact" => Ok(NameMatch::Exact(w.value)),
            "regex" => Ok(NameMatch::Regex(w.value)),
            kind => Err(format!("unknown match kind `{kind}` (exact, regex)")),
        }
    }
}

impl From<NameMatch> for KindValue {
    fn from(m: NameMatch) -> KindValue {
        let (kind, value) = match m {
            NameMatch::Exact(v) => ("exact", v),
            NameMatch::Regex(v) => ("regex", v),
        };
        KindValue { kind: kind.into(), value }
    }
}

impl TryFrom<KindValue> for RouteMatch {
    type Error = String;
    fn try_from(w: KindValue) -> Result<RouteMatch, String> {
        match w.kind.as_str() {
            "exact" => Ok(RouteMatch::Exact(w.value)),
            "prefix" => Ok(RouteMatch::Prefix(w.value)),
            "regex" => Ok(RouteMatch::Regex(w.value)),
            kind => Err(format!("unknown match kind `{kind}` (exact, prefix, regex)")),
        }
    }
}

impl From<RouteMatch> for KindValue {
    fn from(m: RouteMatch) -> KindValue {
        let (kind, value) = match m {
            RouteMatch::Exact(v) => ("exact", v),
            RouteMatch::Prefix(v) => ("prefix", v),
            RouteMatch::Regex(v) => ("regex", v),
        };
        KindValue { kind: kind.into(), value }
    }
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

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn flat_wire_shapes_round_trip_and_refuse_what_does_not_belong() {
        for (json, source) in [
            (r#"{"kind":"request_method"}"#, Source::RequestMethod),
            (r#"{"kind":"request_header","name":"x-tenant"}"#, Source::RequestHeader { name: "x-tenant".into() }),
            (r#"{"kind":"node","key":"LABELS","field":"app"}"#, Source::Node { key: "LABELS".into(), field: Some("app".into()) }),
            (r#"{"kind":"node","key":"NAME"}"#, Source::Node { key: "NAME".into(), field: None }),
            (r#"{"kind":"constant","value":"eu"}"#, Source::Constant { value: "eu".into() }),
            (r#"{"kind":"response_grpc_status_name"}"#, Source::ResponseGrpcStatusName),
        ] {
            assert_eq!(serde_json::from_str::<Source>(json).unwrap(), source, "{json}");
            assert_eq!(serde_json::to_string(&source).unwrap(), json);
        }
        for json in [r#"{"kind":"request_method","name":"x"}"#, r#"{"kind":"request_header"}"#, r#"{"kind":"nope"}"#, r#"{"kind":"node","key":"K","other":1}"#] {
            assert!(serde_json::from_str::<Source>(json).is_err(), "{json}");
        }
        let route: RouteMatch = serde_json::from_str(r#"{"kind":"prefix","value":"/api"}"#).unwrap();
        assert_eq!(route, RouteMatch::Prefix("/api".into()));
        assert_eq!(serde_json::to_string(&NameMatch::Regex("a.*".into())).unwrap(), r#"{"kind":"regex","value":"a.*"}"#);
        assert!(serde_json::from_str::<NameMatch>(r#"{"kind":"prefix","value":"a"}"#).is_err());
        let check: PolicyCheck = serde_json::from_str(r#"{"rule":"forbidden-value","label":"path","pattern":"[0-9]+"}"#).unwrap();
        assert_eq!(check, PolicyCheck::ForbiddenValue { label: "path".into(), pattern: "[0-9]+".into() });
        assert_eq!(serde_json::to_string(&PolicyCheck::SeriesLimit { max: 5 }).unwrap(), r#"{"rule":"series-limit","max":5}"#);
        assert!(serde_json::from_str::<PolicyCheck>(r#"{"rule":"series-limit"}"#).is_err());
        assert!(serde_json::from_str::<PolicyCheck>(r#"{"rule":"counter-suffix","max":5}"#).is_err());
        assert!(serde_json::from_str::<PolicyCheck>(r#"{"rule":"series-limit","max":5,"label":"x"}"#).is_err());
    }
}
