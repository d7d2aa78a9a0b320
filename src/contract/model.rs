//! The contract as people write it (YAML, format `metricpact/v1`). Every field is optional unless
//! noted; defaults follow the OpenTelemetry HTTP server semantic conventions. Values later checks
//! point at are `Spanned`, so problems are reported at their `line:col`.

use schemars::JsonSchema;
use serde::Deserialize;
use serde_saphyr::Spanned;

/// The only contract format this build reads.
pub const FORMAT: &str = "metricpact/v1";

/// The JSON Schema of the contract format, generated from these types (their `///` docs become
/// the schema's descriptions).
pub fn json_schema() -> serde_json::Value {
    let mut schema = serde_json::to_value(schemars::schema_for!(Contract)).unwrap_or_default();
    schema["title"] = serde_json::json!("metricpact contract (metricpact/v1)");
    schema
}

/// A metrics contract.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Contract {
    /// Contract format; must be `metricpact/v1`.
    #[schemars(with = "String")]
    pub format: Spanned<String>,
    /// Contract name: lowercase letters, digits and `-` (it names rendered Kubernetes objects).
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// Contract version, e.g. `1.4.0`; exported in `metricpact_contract_info`.
    #[schemars(with = "String")]
    pub version: Spanned<String>,
    /// Free text for reviewers.
    #[serde(default)]
    pub description: Option<String>,
    /// The traffic metrics the sidecar emits.
    #[serde(default)]
    pub metrics: Metrics,
    /// Labels of the request counter and duration histogram, in order. Omit for the OTel set.
    #[serde(default)]
    #[schemars(with = "Option<Vec<LabelDef>>")]
    pub labels: Option<Spanned<Vec<LabelDef>>>,
    /// HTTP methods kept verbatim; all others become `_OTHER`. Replaces the default list.
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")]
    pub methods: Option<Spanned<Vec<Spanned<String>>>>,
    /// How request paths become `http_route` values.
    #[serde(default)]
    pub routes: Routes,
    /// Cardinality budgets.
    #[serde(default)]
    pub cardinality: Cardinality,
    /// Client-side metrics for the sidecar's outbound traffic (off by default).
    #[serde(default)]
    #[schemars(with = "Option<ClientMetricsDef>")]
    pub client_metrics: Option<Spanned<ClientMetricsDef>>,
    /// The workload the rendered Istio and autoscaling objects target; `render` flags override it.
    /// Without it, Istio objects apply mesh-wide and no autoscaler is rendered.
    #[serde(default)]
    #[schemars(with = "Option<WorkloadDef>")]
    pub workload: Option<Spanned<WorkloadDef>>,
    /// Autoscaling targets for the rendered KEDA ScaledObject and HPA.
    #[serde(default)]
    #[schemars(with = "Option<AutoscalingDef>")]
    pub autoscaling: Option<Spanned<AutoscalingDef>>,
    /// Rewrite of the app's own metrics when they are scraped through the sidecar.
    #[serde(default)]
    #[schemars(with = "Option<ExpositionDef>")]
    pub exposition: Option<Spanned<ExpositionDef>>,
    /// Renames in progress: each old metric or label name is still emitted beside its new name
    /// until the sunset date, so dashboards, alerts and autoscalers can move at their own pace.
    #[serde(default)]
    #[schemars(with = "Option<Vec<MigrationDef>>")]
    pub migrations: Option<Vec<Spanned<MigrationDef>>>,
    /// Rules for the app's own metrics, judged on what Prometheus stores (after the exposition
    /// rewrite): `verify --target app` reports every violation with its rule id.
    #[serde(default)]
    #[schemars(with = "Option<NamingPolicyDef>")]
    pub policy: Option<Spanned<NamingPolicyDef>>,
}

/// Naming and content rules for the app's metrics. Rule ids: `counter-suffix`, `base-unit`,
/// `gauge-type-suffix`, `snake-case` (the `prometheus` preset), `name-pattern`,
/// `forbidden-label`, `forbidden-value`, `series-limit`, `help-required`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NamingPolicyDef {
    /// Rule sets: `prometheus` = counters end in `_total`, base units (`_seconds` not `_ms`,
    /// `_bytes` not `_kb`), no type suffix on gauges, snake_case names.
    #[serde(default)]
    #[schemars(with = "Option<Vec<PresetDef>>")]
    pub presets: Option<Vec<Spanned<PresetDef>>>,
    /// Metric names must match a regex (the whole name), per type if `type` is given.
    #[serde(default)]
    #[schemars(with = "Option<Vec<NamePatternDef>>")]
    pub metric_names: Option<Vec<Spanned<NamePatternDef>>>,
    /// Label names no metric may carry (e.g. `user_id`).
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")]
    pub forbidden_labels: Option<Vec<Spanned<String>>>,
    /// Label values no series may carry: a regex (the whole value) per label.
    #[serde(default)]
    #[schemars(with = "Option<Vec<ForbiddenValueDef>>")]
    pub forbidden_values: Option<Vec<Spanned<ForbiddenValueDef>>>,
    /// Most series one metric may have.
    #[serde(default)]
    #[schemars(with = "Option<u32>")]
    pub max_series_per_metric: Option<Spanned<u32>>,
    /// Every metric must have a HELP text.
    #[serde(default)]
    #[schemars(with = "Option<bool>")]
    pub require_help: Option<Spanned<bool>>,
    /// Severity per rule id: `error` (the default: fails `verify`), `warning`, or `off`.
    #[serde(default)]
    #[schemars(with = "Option<std::collections::BTreeMap<String, RuleSeverityDef>>")]
    pub severity: Option<Spanned<std::collections::BTreeMap<String, RuleSeverityDef>>>,
    /// A rule not applied to one metric, for a reason, until a date (like `migrations`: `check`
    /// warns in the 30 days before and fails from that day on).
    #[serde(default)]
    #[schemars(with = "Option<Vec<WaiverDef>>")]
    pub waivers: Option<Vec<Spanned<WaiverDef>>>,
    /// Honesty checks: an app counter that measures the same requests as a sidecar metric.
    /// `verify --target cross-check` compares their increase over a window (two scrapes of both,
    /// or a Prometheus), the sidecar's count being the truth the app's is judged against.
    #[serde(default)]
    #[schemars(with = "Option<Vec<CrossCheckDef>>")]
    pub cross_checks: Option<Vec<Spanned<CrossCheckDef>>>,
}

/// `{app: app_requests_total, match: [{app: code, sidecar: http_response_status_code, by: status_class}],
/// exclude: {http_route: '/metrics|/healthz'}, tolerance_percent: 5}`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CrossCheckDef {
    /// The app's counter, as Prometheus stores it (after the exposition rewrite), e.g.
    /// `app_requests_total`.
    #[schemars(with = "String")]
    pub app: Spanned<String>,
    /// The sidecar's metric counting the same requests: the request counter (the default), or
    /// the duration histogram's `_count`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub sidecar: Option<Spanned<String>>,
    /// Compare per group: an app label and the sidecar label that says the same thing.
    #[serde(default, rename = "match")]
    #[schemars(with = "Option<Vec<CrossMatchDef>>")]
    pub matching: Option<Vec<Spanned<CrossMatchDef>>>,
    /// Sidecar series the app does not count (its probes, its metrics endpoint): a regex per
    /// sidecar label, matching the whole value.
    #[serde(default)]
    #[schemars(with = "Option<std::collections::BTreeMap<String, String>>")]
    pub exclude: Option<Spanned<std::collections::BTreeMap<String, String>>>,
    /// Largest deviation of the app's count from the sidecar's, in percent of the sidecar's.
    /// Default 5.
    #[serde(default)]
    #[schemars(with = "Option<f64>")]
    pub tolerance_percent: Option<Spanned<f64>>,
    /// Fewest sidecar requests in the window for a judgement (fewer: a warning, no verdict).
    /// Default 100.
    #[serde(default)]
    #[schemars(with = "Option<u64>")]
    pub min_requests: Option<Spanned<u64>>,
}

/// One label pair of a cross-check: `{app: code, sidecar: http_response_status_code, by: status_class}`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CrossMatchDef {
    /// The app's label.
    #[schemars(with = "String")]
    pub app: Spanned<String>,
    /// The sidecar's label (one of the contract's labels).
    #[schemars(with = "String")]
    pub sidecar: Spanned<String>,
    /// `value` (the default): the values must be equal; `status_class`: compared as `2xx`, `5xx`…
    #[serde(default)]
    #[schemars(with = "Option<CompareDef>")]
    pub by: Option<Spanned<CompareDef>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CompareDef {
    Value,
    StatusClass,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PresetDef {
    Prometheus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RuleSeverityDef {
    Error,
    Warning,
    Off,
}

/// `{pattern: '^http_[a-z_]+_seconds$', type: histogram}`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NamePatternDef {
    /// Regex the whole metric name must match.
    #[schemars(with = "String")]
    pub pattern: Spanned<String>,
    /// Only metrics of this type (`counter`, `gauge`, `histogram`, `summary`, …).
    #[serde(default, rename = "type")]
    #[schemars(with = "Option<String>")]
    pub kind: Option<Spanned<String>>,
}

/// `{label: path, pattern: '.*[0-9]{4,}.*'}`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForbiddenValueDef {
    /// The label.
    #[schemars(with = "String")]
    pub label: Spanned<String>,
    /// Regex no whole value of it may match.
    #[schemars(with = "String")]
    pub pattern: Spanned<String>,
}

/// `{rule: base-unit, metric: legacy_latency_ms, reason: …, expires: 2027-03-31}`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaiverDef {
    /// The rule id waived.
    #[schemars(with = "String")]
    pub rule: Spanned<String>,
    /// The metric (its name as stored; a histogram's base name).
    #[schemars(with = "String")]
    pub metric: Spanned<String>,
    /// Why, for reviewers.
    #[schemars(with = "String")]
    pub reason: Spanned<String>,
    /// Last day the waiver holds is the day before (`YYYY-MM-DD`, from 00:00 UTC).
    #[schemars(with = "String")]
    pub expires: Spanned<String>,
}

/// One rename in progress: give `metric` or `label` (the old name), `renamed_to` and `sunset`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MigrationDef {
    /// The metric's old name, as queried (counters with `_total`): a traffic metric's previous
    /// name, or the previous name of an app metric in the rewritten exposition.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub metric: Option<Spanned<String>>,
    /// The label's old name (a traffic label, or a label of the rewritten exposition).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub label: Option<Spanned<String>>,
    /// The current name: a traffic metric or label of this contract, or a metric or label name
    /// the exposition rewrite produces.
    #[schemars(with = "String")]
    pub renamed_to: Spanned<String>,
    /// Day the old name stops being emitted (`YYYY-MM-DD`, from 00:00 UTC). `check` warns in the
    /// 30 days before it and fails from that day on: remove the migration then.
    #[schemars(with = "String")]
    pub sunset: Spanned<String>,
    /// Free text for reviewers (who is moving, where to ask).
    #[serde(default)]
    pub note: Option<String>,
}

/// The app-exposition rewrite. Operations apply in this order: keep/drop metrics and drop
/// series (app's names), rename metrics, rename labels, map values, drop labels, inject labels.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExpositionDef {
    /// The app's metrics port: `render` annotates the pod for scraping on it and lets plaintext
    /// scrapes through mTLS there.
    #[serde(default)]
    #[schemars(with = "Option<u16>")]
    pub port: Option<Spanned<u16>>,
    /// Paths of the app's metrics endpoint(s) (GET, query ignored). Default `[/metrics]`.
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")]
    pub paths: Option<Vec<Spanned<String>>>,
    /// Larger bodies pass through unchanged. Default 1000000 (Envoy buffers at most
    /// `per_connection_buffer_limit_bytes`, 1 MiB by default).
    #[serde(default)]
    #[schemars(with = "Option<u32>")]
    pub max_body_bytes: Option<Spanned<u32>>,
    /// Keep only metrics whose name matches one of these regexes.
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")]
    pub keep_metrics: Option<Vec<Spanned<String>>>,
    /// Drop metrics whose name matches one of these regexes (e.g. `go_.*`).
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")]
    pub drop_metrics: Option<Vec<Spanned<String>>>,
    /// Drop series whose label value matches a regex.
    #[serde(default)]
    #[schemars(with = "Option<Vec<SeriesDropDef>>")]
    pub drop_series: Option<Vec<Spanned<SeriesDropDef>>>,
    /// Rename metrics: `{from: NAME, to: NEW}` or `{regex: RE, to: 'NEW_$1'}`.
    #[serde(default)]
    #[schemars(with = "Option<Vec<MetricRenameDef>>")]
    pub rename_metrics: Option<Vec<Spanned<MetricRenameDef>>>,
    /// Rename labels: `{from: status_code, to: http_response_status_code}`.
    #[serde(default)]
    #[schemars(with = "Option<Vec<LabelRenameDef>>")]
    pub rename_labels: Option<Vec<Spanned<LabelRenameDef>>>,
    /// Map label values: `{label: L, values: {old: new}}` or `{label: L, regex: RE, to: NEW}`.
    #[serde(default)]
    #[schemars(with = "Option<Vec<ValueMapDef>>")]
    pub map_values: Option<Vec<Spanned<ValueMapDef>>>,
    /// Drop labels; counters and histograms whose series then collide are summed.
    #[serde(default)]
    #[schemars(with = "Option<Vec<LabelDropDef>>")]
    pub drop_labels: Option<Vec<Spanned<LabelDropDef>>>,
    /// Add labels to every series: `{name: k8s_pod_name, from: node.NAME}` or `{name: N, value: V}`.
    #[serde(default)]
    #[schemars(with = "Option<Vec<InjectDef>>")]
    pub inject_labels: Option<Vec<Spanned<InjectDef>>>,
    /// Metrics that must be present after the rewrite; missing ones are counted per scrape.
    #[serde(default)]
    #[schemars(with = "Option<Vec<RequireDef>>")]
    pub require: Option<Vec<Spanned<RequireDef>>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SeriesDropDef {
    /// Label (the app's name for it) whose value decides.
    #[schemars(with = "String")]
    pub label: Spanned<String>,
    /// Series whose value matches this whole-value regex are dropped.
    #[schemars(with = "String")]
    pub regex: Spanned<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricRenameDef {
    /// The metric's name as the app writes it (counters with `_total`).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub from: Option<Spanned<String>>,
    /// A whole-name regex instead of `from`; `to` may use `$1` / `${name}`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub regex: Option<Spanned<String>>,
    /// The new name.
    #[schemars(with = "String")]
    pub to: Spanned<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LabelRenameDef {
    /// The app's label name.
    #[schemars(with = "String")]
    pub from: Spanned<String>,
    /// The contract's label name.
    #[schemars(with = "String")]
    pub to: Spanned<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ValueMapDef {
    /// Label (after renames) whose values are mapped.
    #[schemars(with = "String")]
    pub label: Spanned<String>,
    /// Lookup table: old value to new value.
    #[serde(default)]
    pub values: Option<std::collections::BTreeMap<String, String>>,
    /// A whole-value regex instead of `values`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub regex: Option<Spanned<String>>,
    /// Replacement for `regex` matches; `$1` / `${name}` insert captures.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub to: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LabelDropDef {
    /// Label (after renames) to drop.
    #[schemars(with = "String")]
    pub label: Spanned<String>,
    /// Only on these metrics (final names, regexes); all when absent.
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")]
    pub metrics: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InjectDef {
    /// Label name to add.
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// `node.KEY` or `node.KEY.FIELD`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub from: Option<Spanned<String>>,
    /// A constant instead of `from`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub value: Option<Spanned<String>>,
    /// Value when the node metadata is missing (empty: not injected).
    #[serde(default)]
    pub default: Option<String>,
    /// When the series already has the label: `overwrite` (default) or `keep`.
    #[serde(default)]
    #[schemars(with = "Option<ConflictDef>")]
    pub on_conflict: Option<Spanned<ConflictDef>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConflictDef {
    Overwrite,
    Keep,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequireDef {
    /// Metric name after the rewrite (counters with `_total`).
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// `counter`, `gauge`, `histogram`, `summary`: a label drop on a required gauge is refused
    /// at check time, since gauge series cannot be summed (summary quantiles are kept apart at
    /// rewrite time for the same reason).
    #[serde(default, rename = "type")]
    #[schemars(with = "Option<String>")]
    pub kind: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientMetricsDef {
    /// Set to `true` to measure outbound requests too (rendered as a SIDECAR_OUTBOUND / CLIENT filter).
    #[serde(default)]
    pub enabled: bool,
    /// Client request counter. Default `http_client_requests_total`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub requests: Option<Spanned<String>>,
    /// Client duration histogram. Default `http_client_request_duration_<unit>`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub duration: Option<Spanned<String>>,
    /// Client in-flight gauge. Default `http_client_active_requests`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub active_requests: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkloadDef {
    /// Namespace of the workload (and of the rendered objects).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub namespace: Option<Spanned<String>>,
    /// Pod labels selecting the workload's sidecars, e.g. `{app: cart}`.
    #[serde(default)]
    #[schemars(with = "Option<std::collections::BTreeMap<String, String>>")]
    pub selector: Option<Spanned<std::collections::BTreeMap<String, String>>>,
    /// The scaled object: a Deployment (default) or StatefulSet name.
    #[serde(default)]
    #[schemars(with = "Option<TargetDef>")]
    pub target: Option<Spanned<TargetDef>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetDef {
    /// `Deployment` (default) or `StatefulSet`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub kind: Option<Spanned<String>>,
    /// Name of the Deployment / StatefulSet.
    #[schemars(with = "String")]
    pub name: Spanned<String>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AutoscalingDef {
    /// Fewest replicas. Default 1.
    #[serde(default)]
    #[schemars(with = "Option<u32>")]
    pub min_replicas: Option<Spanned<u32>>,
    /// Most replicas. Default 10.
    #[serde(default)]
    #[schemars(with = "Option<u32>")]
    pub max_replicas: Option<Spanned<u32>>,
    /// Target requests per second per pod (scale out above it).
    #[serde(default)]
    #[schemars(with = "Option<f64>")]
    pub qps_per_pod: Option<Spanned<f64>>,
    /// Target p95 request duration in milliseconds (scale out above it).
    #[serde(default)]
    #[schemars(with = "Option<f64>")]
    pub p95_latency_ms: Option<Spanned<f64>>,
    /// `rate()` window of the QPS queries. Default `1m`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub rate_window: Option<Spanned<String>>,
    /// `rate()` window of the latency queries. Default `2m`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub latency_window: Option<Spanned<String>>,
    /// Prometheus URL KEDA queries. Default `http://prometheus.istio-system.svc:9090`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub prometheus_url: Option<Spanned<String>>,
    /// HPA `behavior`: how fast to scale up and down.
    #[serde(default)]
    pub behavior: Option<BehaviorDef>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BehaviorDef {
    /// How fast to add replicas. Default: 0 s window, Max of 100 % and 4 pods per 15 s.
    #[serde(default)]
    #[schemars(with = "Option<ScalingRulesDef>")]
    pub scale_up: Option<Spanned<ScalingRulesDef>>,
    /// How fast to remove replicas. Default: 300 s window, 50 % per 60 s.
    #[serde(default)]
    #[schemars(with = "Option<ScalingRulesDef>")]
    pub scale_down: Option<Spanned<ScalingRulesDef>>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScalingRulesDef {
    /// Seconds of past recommendations considered (0-3600).
    #[serde(default)]
    #[schemars(with = "Option<u32>")]
    pub stabilization_window_seconds: Option<Spanned<u32>>,
    /// `Max`, `Min` or `Disabled`.
    #[serde(default)]
    #[schemars(with = "Option<SelectPolicyDef>")]
    pub select_policy: Option<Spanned<SelectPolicyDef>>,
    /// At most this much change per period.
    #[serde(default)]
    #[schemars(with = "Option<Vec<PolicyDef>>")]
    pub policies: Option<Vec<Spanned<PolicyDef>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
pub enum SelectPolicyDef {
    Max,
    Min,
    Disabled,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyDef {
    /// `Pods` or `Percent`.
    #[serde(rename = "type")]
    pub kind: PolicyKindDef,
    /// Pods, or percent of the current replicas, per period.
    pub value: u32,
    /// Length of the period, 1-1800 seconds.
    pub period_seconds: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
pub enum PolicyKindDef {
    Pods,
    Percent,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// Request counter (per-pod QPS): `rate()` of it is what autoscaling reads.
    #[serde(default)]
    #[schemars(with = "Option<CounterDef>")]
    pub requests: Option<Spanned<CounterDef>>,
    /// Request duration histogram (p50/p95/p99).
    #[serde(default)]
    #[schemars(with = "Option<DurationDef>")]
    pub duration: Option<Spanned<DurationDef>>,
    /// Gauge of requests in flight.
    #[serde(default)]
    #[schemars(with = "Option<ActiveDef>")]
    pub active_requests: Option<Spanned<ActiveDef>>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CounterDef {
    /// Metric name; must end in `_total`. Default `http_server_requests_total`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub name: Option<Spanned<String>>,
    /// Set to `false` to stop emitting this metric.
    #[serde(default)]
    pub enabled: Option<bool>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DurationDef {
    /// Metric name; must end in the unit (`_milliseconds`). Default
    /// `http_server_request_duration_milliseconds`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub name: Option<Spanned<String>>,
    /// Set to `false` to stop emitting this metric.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Recorded unit: `milliseconds` (default) or `microseconds`. Envoy histograms hold integers.
    #[serde(default)]
    #[schemars(with = "Option<DurationUnitDef>")]
    pub unit: Option<Spanned<DurationUnitDef>>,
    /// Bucket upper bounds in `unit`, strictly increasing. Default: the OTel advisory bounds
    /// (0.005 s … 10 s) expressed in `unit`.
    #[serde(default)]
    #[schemars(with = "Option<Vec<f64>>")]
    pub buckets: Option<Spanned<Vec<Spanned<f64>>>>,
    /// How Prometheus stores it: `classic` (default: `_bucket` series at `buckets`; a quantile is
    /// interpolated inside its bucket), `native` (exponential buckets from Envoy's own
    /// histogram, scraped as protobuf from the sidecar's :15090; a p95 close to the truth
    /// whatever the buckets; needs Prometheus with native histograms on), or `both` (the
    /// classic series stay beside the native ones, for moving queries over).
    #[serde(default)]
    #[schemars(with = "Option<HistogramModeDef>")]
    pub histogram: Option<Spanned<HistogramModeDef>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HistogramModeDef {
    Classic,
    Native,
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DurationUnitDef {
    Milliseconds,
    Microseconds,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ActiveDef {
    /// Metric name (a gauge: no `_total`). Default `http_server_active_requests`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub name: Option<Spanned<String>>,
    /// Set to `false` to stop emitting this metric.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Which labels the gauge carries; only request-side, node and constant labels qualify.
    /// Default: every such label.
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")]
    pub labels: Option<Vec<Spanned<String>>>,
}

/// One label of the traffic metrics.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LabelDef {
    /// Prometheus label name (required).
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// Where the value comes from: one source, or a list tried in order. Sources:
    /// `request.method`, `request.route`, `request.scheme`, `request.protocol`,
    /// `request.header.NAME`, `response.status_code`, `response.status_class`,
    /// `response.error_type`, `node.KEY`, `node.KEY.FIELD` (e.g. `node.LABELS.app`); for gRPC calls
    /// only (`content-type: application/grpc`; absent for other requests): `request.grpc_method`
    /// (`package.Service/Method`), `request.grpc_service`, `response.grpc_status` (`0`…`16`),
    /// `response.grpc_status_name` (`OK`, `NOT_FOUND`, …).
    #[serde(default)]
    #[schemars(with = "Option<FromDef>")]
    pub from: Option<Spanned<FromDef>>,
    /// A constant value instead of `from`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub value: Option<Spanned<String>>,
    /// Value when no source yields one; empty (the default) leaves the label out.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub default: Option<Spanned<String>>,
    /// Most distinct values; later values become `_OTHER`. Default `cardinality.max_values_per_label`.
    #[serde(default)]
    #[schemars(with = "Option<u32>")]
    pub max_values: Option<Spanned<u32>>,
    /// Allow-list: any other value becomes `_OTHER`.
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")]
    pub values: Option<Spanned<Vec<Spanned<String>>>>,
}

/// `from: source` or `from: [source, fallback, …]`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum FromDef {
    One(String),
    Many(Vec<String>),
}

impl FromDef {
    pub fn sources(&self) -> Vec<&str> {
        match self {
            FromDef::One(s) => vec![s.as_str()],
            FromDef::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Routes {
    /// Ordered rules; the first that matches the path (query stripped) gives the route.
    #[serde(default)]
    #[schemars(with = "Vec<RouteRuleDef>")]
    pub rules: Vec<Spanned<RouteRuleDef>>,
    /// What an unmatched path becomes: `other` (`_OTHER`, default) or `raw` (the path itself,
    /// cut to `raw_max_length` and still capped by `max_values`).
    #[serde(default)]
    #[schemars(with = "Option<UnmatchedDef>")]
    pub unmatched: Option<Spanned<UnmatchedDef>>,
    /// Longest raw path kept with `unmatched: raw`. Default 64.
    #[serde(default)]
    #[schemars(with = "Option<u32>")]
    pub raw_max_length: Option<Spanned<u32>>,
}

/// One route rule: exactly one of `exact`, `prefix`, `regex`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteRuleDef {
    /// The whole path equals this.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub exact: Option<Spanned<String>>,
    /// The path starts with this.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub prefix: Option<Spanned<String>>,
    /// The whole path matches this regex (anchored for you).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub regex: Option<Spanned<String>>,
    /// The route value, e.g. `/users/{id}`. `$name`/`${name}`/`$1` insert a regex capture
    /// (`$$` is a literal `$`). Defaults to the `exact` path.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub template: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UnmatchedDef {
    Other,
    Raw,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Cardinality {
    /// Default `max_values` of every label. Default 100.
    #[serde(default)]
    #[schemars(with = "Option<u32>")]
    pub max_values_per_label: Option<Spanned<u32>>,
    /// Most label combinations per metric; later ones share one overflow series. Default 1000.
    #[serde(default)]
    #[schemars(with = "Option<u32>")]
    pub max_series: Option<Spanned<u32>>,
    /// Longest label value in bytes; longer values are cut. Default 128.
    #[serde(default)]
    #[schemars(with = "Option<u32>")]
    pub max_value_length: Option<Spanned<u32>>,
}
