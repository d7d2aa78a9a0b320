//! The proxy-wasm layer: reads the compiled contract in `on_configure`, then hands each HTTP
//! stream's attributes to the core [`Engine`]. Fails open: nothing here panics on host input, and
//! a stream the engine cannot serve passes untouched.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

use crate::config::PluginConfig;
use crate::exposition::scrape::{decide, is_scrape, Decision, Outcome};
use crate::exposition::{Format, Rewriter, SCRAPE_ACCEPT};
use crate::policy::{Policy, ViolationCounter};
use crate::telemetry::{encode_tags, Engine, Flight, MetricHost, MetricKind, RequestAttributes};

mod attributes;
mod host;
mod stages;
mod stats;

use attributes::{now_nanos, parse_status, property, response_header, HostRequest, HostResponse};
use stages::{reached, Stage};
use stats::{report_memory, stats_host, DiscardedStats, EnvoyStats, MEMORY_GAUGE};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { engine: None, exposition: None, info: None, contract: String::new() }) });
}}

/// Shared-data key holding the contract-info series of the configuration configured last (by any
/// VM with our vm_id).
const LATEST_INFO_KEY: &str = "metricpact.info.latest";

struct Root {
    engine: Option<Rc<RefCell<Engine>>>,
    exposition: Option<Rc<Exposition>>,
    /// The contract-info series this configuration reports: (stat name, metric id).
    info: Option<(String, u32)>,
    /// `name version (hash)` of the loaded contract, for the log.
    contract: String,
}

/// The app-exposition rewrite and its self-metric ids.
struct Exposition {
    /// Mutable only to end migrations at their sunset (on a tick, never during a scrape).
    rewriter: RefCell<Rewriter>,
    max_body_bytes: usize,
    paths: Vec<String>,
    outcomes: [Option<u32>; Outcome::ALL.len()],
    missing: Vec<Option<u32>>,
    /// The contract's policy, judged on each rewritten scrape once it has been sent.
    violations: Option<RefCell<ViolationCounter>>,
    /// Rewritten scrapes waiting for the policy, judged on this configuration's tick.
    pending: RefCell<Vec<Vec<u8>>>,
    /// False once this configuration's root context is gone: nothing is queued for a tick that
    /// will not come (Envoy keeps re-arming a deleted root's timer).
    alive: std::cell::Cell<bool>,
}

impl Exposition {
    fn count(&self, outcome: Outcome) {
        if let Some(id) = self.outcomes[outcome.index()] {
            host::increment_metric(id, 1);
        }
    }
}

impl Context for Root {
    /// The configuration is torn down (an ECDS/LDS update replaced it): its contract-info series
    /// goes to 0, unless the configuration that replaced it reports the same series (the same
    /// contract applied again), which must stay 1. Not every VM's root context is told (Envoy's
    /// main-thread ones live on), so this decides by the latest configuration, not by a count.
    fn on_done(&mut self) -> bool {
        // No tick for a root that is gone (its queued scrapes go with it).
        if let Some(exposition) = &self.exposition {
            exposition.alive.set(false);
            exposition.pending.borrow_mut().clear();
        }
        host::set_tick_period(std::time::Duration::ZERO);
        if let Some((name, id)) = self.info.take() {
            let latest = host::shared_data(LATEST_INFO_KEY).ok().and_then(|(data, _)| data);
            let replaced = latest.as_deref() != Some(name.as_bytes());
            if replaced {
                host::record_metric(id, 0);
            }
            log::info!("metricpact: contract {} unloaded{}", self.contract, if replaced { "" } else { " (still configured)" });
        }
        true
    }
}

/// How often a VM with running migrations looks at the clock for their sunsets.
const MIGRATION_CHECK_PERIOD: std::time::Duration = std::time::Duration::from_secs(60);

impl Root {
    /// Ends the migrations whose sunset has passed, and keeps a tick running while any remain.
    fn end_migrations(&mut self) {
        let Some(now) = now_nanos().map(|n| n / 1_000_000_000) else {
            // No clock this time: look again in a minute.
            host::set_tick_period(MIGRATION_CHECK_PERIOD);
            return;
        };
        let mut next = None;
        if let Some(mut engine) = self.engine.as_ref().and_then(|e| e.try_borrow_mut().ok()) {
            if engine.expire_migrations(now) {
                log::info!("metricpact: a migration reached its sunset: old traffic names are no longer emitted");
            }
            next = engine.next_sunset();
        }
        if let Some(mut rewriter) = self.exposition.as_ref().and_then(|e| e.rewriter.try_borrow_mut().ok()) {
            if rewriter.expire_migrations(now) {
                log::info!("metricpact: a migration reached its sunset: old exposition names are no longer written");
            }
            next = next.into_iter().chain(rewriter.next_sunset()).min();
        }
        let period = if next.is_some() { MIGRATION_CHECK_PERIOD } else { std::time::Duration::ZERO };
        host::set_tick_period(period);
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = match host::buffer(host::PLUGIN_CONFIGURATION, usize::MAX) {
            Some(bytes) if !bytes.is_empty() => bytes,
            _ => {
                log::error!("metricpact: refusing to start: no plugin configuration (pass the output of `metricpact compile CONTRACT`)");
                return false;
            }
        };
        let bytes = stages::configure(bytes);
        let config = match PluginConfig::from_json(&bytes) {
            Ok(config) => config,
            Err(e) => {
                log::error!("metricpact: refusing to start: invalid plugin configuration: {e}");
                return false;
            }
        };
        // Every rule the configuration breaks, in one line, before anything is built from it.
        let errors = crate::validate::plugin_config(&config);
        if !errors.is_empty() {
            log::error!("metricpact: refusing to start: invalid plugin configuration: {}", crate::validate::summary(&errors));
            return false;
        }
        let node = |key: &str, field: Option<&str>| {
            let mut path = vec!["xds", "node", "metadata", key];
            path.extend(field);
            property(&path)
        };
        if let Some(spec) = &config.exposition {
            let policy = match config.policy.as_ref().map(Policy::new).transpose() {
                Ok(policy) => policy,
                Err(e) => {
                    log::error!("metricpact: refusing to start: invalid plugin configuration: policy: {e}");
                    return false;
                }
            };
            match Rewriter::new(spec, &node, config.max_value_length as usize) {
                Ok(rewriter) => self.exposition = Some(Rc::new(define_exposition_metrics(rewriter, spec, policy))),
                Err(e) => {
                    log::error!("metricpact: refusing to start: invalid plugin configuration: exposition: {e}");
                    return false;
                }
            }
        }
        // Validated above: build without validating again.
        match Engine::routes(&config).map(|routes| Engine::with_routes(&config, routes, &node)) {
            Ok(mut engine) => {
                engine.define_self_metrics(&mut EnvoyStats);
                if let Some((name, id)) = engine.contract_info() {
                    host::set_shared_data(LATEST_INFO_KEY, name.as_bytes(), 0);
                    self.info = Some((name.to_string(), id));
                }
                let gauge = EnvoyStats.define(MetricKind::Gauge, crate::telemetry::VM_MEMORY_METRIC);
                MEMORY_GAUGE.with(|g| g.set((gauge, 0)));
                report_memory();
                self.engine = Some(Rc::new(RefCell::new(engine)));
                self.end_migrations();
                self.contract = format!("{} {} ({})", config.contract.name, config.contract.version, config.contract.hash);
                log::info!("metricpact: contract {} loaded", self.contract);
                true
            }
            Err(e) => {
                log::error!("metricpact: refusing to start: invalid plugin configuration: {e}");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        if let Some(exposition) = &self.exposition {
            let scrapes = std::mem::take(&mut *exposition.pending.borrow_mut());
            for body in scrapes {
                judge_scrape(exposition, &body);
            }
        }
        // Also sets the tick period back: the migrations' check, or none.
        self.end_migrations();
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            engine: self.engine.clone(),
            exposition: self.exposition.clone(),
            flight: None,
            status: None,
            response_done: None,
            started_nanos: None,
            scrape: None,
            judge: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream {
    engine: Option<Rc<RefCell<Engine>>>,
    exposition: Option<Rc<Exposition>>,
    flight: Option<Flight>,
    status: Option<u32>,
    /// Whether the response reached its end; `None` if its headers never passed this filter.
    response_done: Option<bool>,
    started_nanos: Option<u64>,
    /// Set while this stream is a metrics scrape whose response we hold for rewriting.
    scrape: Option<Scrape>,
    /// A rewritten scrape body for the policy, queued in `on_log` and judged [`JUDGE_DELAY`]
    /// later, once Envoy has written the response (judging never holds the scrape).
    judge: Option<(Rc<Exposition>, Vec<u8>)>,
}

struct Scrape {
    exposition: Rc<Exposition>,
    /// Decided at response headers; `None` until then.
    format: Option<Format>,
}

fn define_exposition_metrics(rewriter: Rewriter, spec: &crate::config::ExpositionSpec, policy: Option<Policy>) -> Exposition {
    let mut outcomes = [None; Outcome::ALL.len()];
    for (slot, outcome) in outcomes.iter_mut().zip(Outcome::ALL) {
        let name = format!("{}.{}", crate::telemetry::EXPOSITION_SCRAPES_METRIC, encode_tags(&[("metricpact_result", outcome.label())]));
        *slot = EnvoyStats.define(MetricKind::Counter, &name);
    }
    let missing = spec
        .require_metrics
        .iter()
        .map(|m| {
            let name = format!("{}.{}", crate::telemetry::MISSING_REQUIRED_METRIC, encode_tags(&[("metricpact_metric", m)]));
            EnvoyStats.define(MetricKind::Counter, &name)
        })
        .collect();
    let violations = policy.map(|p| RefCell::new(ViolationCounter::new(p)));
    Exposition {
        max_body_bytes: rewriter.max_body_bytes(),
        rewriter: RefCell::new(rewriter),
        paths: spec.paths.clone(),
        outcomes,
        missing,
        violations,
        pending: RefCell::new(Vec::new()),
        alive: std::cell::Cell::new(true),
    }
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if !reached(Stage::Headers) {
            return Action::Continue;
        }
        let request = HostRequest::default();
        if !reached(Stage::Labels) {
            // Bench builds only: what the engine would read, without it.
            let _ = request.path();
            if reached(Stage::Properties) {
                self.started_nanos = now_nanos();
                let _ = request.protocol();
            }
            return Action::Continue;
        }
        if let Some(mut engine) = self.engine.as_ref().and_then(|e| e.try_borrow_mut().ok()) {
            if engine.records_duration() {
                self.started_nanos = now_nanos();
            }
            self.flight = Some(engine.start(stats_host(&mut EnvoyStats, &mut DiscardedStats), &request));
        }
        if let Some(exposition) = &self.exposition {
            if is_scrape(&exposition.paths, request.method().as_deref(), request.path().as_deref()) {
                // Ask the app for the text format, uncompressed. The response headers leave before
                // the body can be read (proxy-wasm cannot hold them and still see the body without
                // allow_on_headers_stop_iteration), so the format must be known from them: text is
                // what every client library speaks, and an app that sends OpenMetrics anyway either
                // says so in its Content-Type or gets converted to text.
                host::set_header(host::REQUEST_HEADERS, "accept", SCRAPE_ACCEPT);
                host::set_header(host::REQUEST_HEADERS, "accept-encoding", "identity");
                self.scrape = Some(Scrape { exposition: exposition.clone(), format: None });
            }
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if !reached(Stage::Headers) {
            return Action::Continue;
        }
        self.status = response_header(":status").and_then(|s| parse_status(&s));
        self.response_done = Some(end_of_stream);
        let Some(scrape) = self.scrape.as_mut() else { return Action::Continue };
        let exposition = scrape.exposition.clone();
        match decide(self.status, end_of_stream, exposition.max_body_bytes, &mut |name| response_header(name)) {
            Decision::Pass => self.scrape = None,
            Decision::Refuse(outcome) => {
                exposition.count(outcome);
                self.scrape = None;
            }
            Decision::Rewrite(format) => {
                // Envoy sends these headers before the body can be rewritten, so they are fixed
                // now: the format follows what the app declared (the body is rewritten in that
                // format), and the length goes, since it changes (HTTP/1.1 then uses chunked
                // encoding).
                host::set_header(host::RESPONSE_HEADERS, "content-type", format.content_type());
                host::remove_header(host::RESPONSE_HEADERS, "content-length");
                scrape.format = Some(format);
            }
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if end_of_stream {
            self.response_done = Some(true);
        }
        let Some(scrape) = self.scrape.as_ref() else { return Action::Continue };
        let exposition = scrape.exposition.clone();
        if body_size > exposition.max_body_bytes {
            // Release what was held, unchanged; the rest streams through.
            exposition.count(Outcome::TooLarge);
            self.scrape = None;
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let format = scrape.format;
        self.scrape = None;
        let Some(format) = format else { return Action::Continue };
        let Some(body) = host::buffer(host::RESPONSE_BODY, body_size) else { return Action::Continue };
        let Ok(rewriter) = exposition.rewriter.try_borrow() else { return Action::Continue };
        match rewriter.rewrite_as(&body, format) {
            Ok(rewritten) => {
                if host::replace_buffer(host::RESPONSE_BODY, body_size, &rewritten.body) {
                    exposition.count(Outcome::Rewritten);
                    for i in rewritten.stats.missing_required {
                        if let Some(Some(id)) = exposition.missing.get(i) {
                            host::increment_metric(*id, 1);
                        }
                    }
                    if exposition.violations.is_some() {
                        self.judge = Some((exposition.clone(), rewritten.body));
                    }
                }
            }
            Err(e) => exposition.count(Outcome::of_error(&e)),
        }
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        self.response_done = Some(true);
        Action::Continue
    }

    fn on_log(&mut self) {
        if let Some((exposition, body)) = self.judge.take() {
            queue_for_judging(&exposition, body);
        }
        if !reached(Stage::Labels) {
            // Bench builds only: the clock read and, for failures, the details property.
            if reached(Stage::Properties) {
                let _ = now_nanos();
                if self.status.is_none_or(|s| s >= 500) {
                    let _ = property(&["response", "code_details"]);
                }
            }
            return;
        }
        if let Some(mut engine) = self.engine.as_ref().and_then(|e| e.try_borrow_mut().ok()) {
            let (mut envoy, mut discarded) = (EnvoyStats, DiscardedStats);
            let host = stats_host(&mut envoy, &mut discarded);
            let flight = match self.flight.take() {
                Some(flight) => flight,
                None => engine.late_flight(host, &HostRequest::default()),
            };
            let response = HostResponse { status: self.status, response_done: self.response_done, started_nanos: self.started_nanos };
            engine.finish(host, flight, &response);
        }
        report_memory();
    }
}

/// Most scrapes waiting for judgement per configuration and VM; a later one replaces the
/// oldest (scrapes of one app repeat each other: the newest is the one worth judging).
const MAX_PENDING_JUDGEMENTS: usize = 2;

/// Queues a rewritten scrape for judging on its configuration's tick, [`JUDGE_DELAY`] later.
/// `on_log` runs before Envoy has written the response to the socket (that happens on later
/// event-loop passes), so judging here would hold the scrape's last bytes. The tick period set
/// from a stream is its own root context's.
fn queue_for_judging(exposition: &Exposition, body: Vec<u8>) {
    if !exposition.alive.get() {
        return;
    }
    let mut pending = exposition.pending.borrow_mut();
    // Only the first arms the tick: setting the period again restarts the timer, and scrapes
    // more often than the delay would put the judgement off for good.
    if pending.is_empty() {
        host::set_tick_period(JUDGE_DELAY);
    }
    if pending.len() >= MAX_PENDING_JUDGEMENTS {
        pending.remove(0);
    }
    pending.push(body);
}

/// How long after a scrape's stream ends its body is judged. Envoy may still be writing a large
/// response then (the socket takes it in pieces, each on a later event-loop pass), and judging
/// blocks the worker: a 14.6 MB scrape judged after 1 ms took 59 ms to its last byte instead of
/// 32 ms. A second is past the transfer of any scrape a Prometheus reads in time, and a counter
/// loses nothing by waiting it.
const JUDGE_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

/// Counts the policy's violations in a rewritten scrape (waivers as of now). A body the policy
/// cannot read was rewritten from one the rewriter read, so this does not happen; if it did, the
/// log says so (once per scrape, at most every scrape interval).
fn judge_scrape(exposition: &Exposition, body: &[u8]) {
    let Some(mut counter) = exposition.violations.as_ref().and_then(|v| v.try_borrow_mut().ok()) else { return };
    let now = now_nanos().map_or(0, |n| n / 1_000_000_000);
    let judged = std::str::from_utf8(body).map_err(|e| e.to_string()).and_then(|body| counter.count(&mut EnvoyStats, body, now));
    if let Err(e) = judged {
        log::warn!("metricpact: policy: could not judge a scrape: {e}");
    }
}
