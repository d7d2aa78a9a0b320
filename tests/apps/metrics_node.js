#!/usr/bin/env node
// An "orders" service that exposes its own Prometheus metrics with the real `prom-client` npm package,
// the way Node apps typically do: collectDefaultMetrics() on the global registry, business metrics with
// prom-client's naming habits (a counter without `_total`, a histogram in milliseconds), and `/metrics`
// served as `res.setHeader("Content-Type", register.contentType); res.end(await register.metrics())`.
// prom-client does NOT negotiate: the format is fixed by the registry's content type, whatever the
// request's Accept header says (text 0.0.4 by default, OpenMetrics 1.0.0 with --openmetrics).
//
// It is an input for metricpact's exposition rewrite. At startup it records a FIXED set of observations
// so tests can assert exact numbers (see recordFixedObservations() and tests/data/expositions/README.md).
//
// Routes:
//   GET /metrics      the exposition
//   GET|POST /work    request_count{status_code="200"} +1 and
//                     http_request_duration_ms{route="/work",method=<method>,status_code="200"} observes 10
//   GET /healthz      liveness; touches no metric
// Anything else answers 404 (and touches no metric).
//
// Usage: node metrics_node.js --port N [--openmetrics] [--content-type VALUE] [--gzip]
//                                                          (binds 127.0.0.1 only, logs nothing)
//   --openmetrics          register.setContentType(Registry.OPENMETRICS_CONTENT_TYPE): OpenMetrics output,
//                          and the histogram and the counter get exemplars (prom-client allows exemplars
//                          only on OpenMetrics registries)
//   --content-type VALUE   send VALUE as /metrics' Content-Type instead of register.contentType
//                          (simulates broken apps: e.g. "text/plain"); "none" omits the header
//   --gzip                 gzip /metrics (Content-Encoding: gzip) when Accept-Encoding allows gzip
"use strict";

const http = require("http");
const zlib = require("zlib");
const client = require("prom-client");

const { register, Registry } = client;

function usage(message) {
  if (message) console.error(`metrics_node.js: ${message}`);
  console.error("usage: node metrics_node.js --port N [--openmetrics] [--content-type VALUE] [--gzip]");
  process.exit(2);
}

function parseArgs(argv) {
  const opts = { port: null, openmetrics: false, contentType: undefined, gzip: false };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--port") {
      opts.port = Number.parseInt(argv[++i], 10);
    } else if (arg === "--openmetrics") {
      opts.openmetrics = true;
    } else if (arg === "--content-type") {
      if (i + 1 >= argv.length) usage("--content-type needs a value");
      const value = argv[++i];
      opts.contentType = value.toLowerCase() === "none" ? "" : value;
    } else if (arg === "--gzip") {
      opts.gzip = true;
    } else {
      usage(`unknown argument ${arg}`);
    }
  }
  if (!Number.isInteger(opts.port) || opts.port <= 0 || opts.port > 65535) usage("--port N is required");
  return opts;
}

const opts = parseArgs(process.argv.slice(2));

// The registry's format must be chosen before metrics with exemplars are created.
if (opts.openmetrics) register.setContentType(Registry.OPENMETRICS_CONTENT_TYPE);

client.collectDefaultMetrics();

const requestCount = new client.Counter({
  name: "request_count", // no _total: prom-client prints the name as given in text format
  help: "Number of HTTP requests handled, by status code.",
  labelNames: ["status_code"],
  enableExemplars: opts.openmetrics,
});
const requestDuration = new client.Histogram({
  name: "http_request_duration_ms",
  help: "Duration of HTTP requests in ms.",
  labelNames: ["route", "method", "status_code"],
  buckets: [5, 10, 25, 50, 100, 250, 500, 1000], // + the implicit +Inf
  enableExemplars: opts.openmetrics,
});
const checkoutDuration = new client.Summary({
  name: "checkout_duration_seconds",
  help: "Checkout processing time in seconds.",
  percentiles: [0.5, 0.9, 0.99],
});
const queueDepth = new client.Gauge({
  name: "queue_depth",
  help: "Messages waiting, per queue.",
  labelNames: ["queue"],
});
const appErrors = new client.Counter({
  name: "app_errors_total",
  help: "Errors by reason (a label value that needs escaping: quote, backslash, newline, UTF-8).",
  labelNames: ["reason"],
});

// A label value with every character the text formats must escape (", \, newline) plus non-ASCII.
const TRICKY_REASON = 'upstream "inventory" said: C:\\queue\\full\nretry in 5s — café';

// Fixed trace ids for the exemplars (--openmetrics only).
const TRACE_A = "4bf92f3577b34da6a3ce929d0e0e4736";
const TRACE_B = "0af7651916cd43dd8448eb211c80319c";

function inc(labels, value = 1, traceId = TRACE_A) {
  if (opts.openmetrics) requestCount.inc({ labels, value, exemplarLabels: { trace_id: traceId } });
  else requestCount.inc(labels, value);
}

function observe(labels, value, traceId = TRACE_A) {
  if (opts.openmetrics) requestDuration.observe({ labels, value, exemplarLabels: { trace_id: traceId } });
  else requestDuration.observe(labels, value);
}

// FIXED OBSERVATIONS: exactly these, once, at startup.
function recordFixedObservations() {
  inc({ status_code: "200" });
  inc({ status_code: "200" });
  inc({ status_code: "200" });
  inc({ status_code: "200" }, 2); // -> 5
  inc({ status_code: "404" }, 1, TRACE_B);
  inc({ status_code: "500" }, 2, TRACE_B);

  const ordersGet = { route: "/api/orders", method: "GET", status_code: "200" };
  observe(ordersGet, 4);
  observe(ordersGet, 20);
  observe(ordersGet, 300, TRACE_B);
  observe({ route: "/api/orders/:id", method: "GET", status_code: "404" }, 12);
  observe({ route: "/api/orders", method: "POST", status_code: "500" }, 1500, TRACE_B);

  for (const seconds of [0.1, 0.2, 0.3, 0.4]) checkoutDuration.observe(seconds);

  queueDepth.set({ queue: "orders" }, 7);
  queueDepth.set({ queue: "emails" }, 0);

  appErrors.inc({ reason: TRICKY_REASON });
}

function gzipAccepted(header) {
  return String(header || "")
    .split(",")
    .some(part => {
      const [coding, ...params] = part.split(";").map(s => s.trim().toLowerCase());
      return coding === "gzip" && !params.some(p => /^q=0(\.0*)?$/.test(p));
    });
}

function send(req, res, status, body, headers) {
  const buf = Buffer.isBuffer(body) ? body : Buffer.from(body);
  res.writeHead(status, { ...headers, "Content-Length": buf.length });
  res.end(req.method === "HEAD" ? undefined : buf);
}

async function serveMetrics(req, res) {
  let body = Buffer.from(await register.metrics());
  const contentType = opts.contentType === undefined ? register.contentType : opts.contentType;
  const headers = contentType ? { "Content-Type": contentType } : {};
  if (opts.gzip && gzipAccepted(req.headers["accept-encoding"])) {
    body = zlib.gzipSync(body);
    headers["Content-Encoding"] = "gzip";
  }
  send(req, res, 200, body, headers);
}

const server = http.createServer((req, res) => {
  const path = new URL(req.url, "http://localhost").pathname;
  const drain = new Promise(resolve => {
    req.on("data", () => {});
    req.on("end", resolve);
  });
  drain.then(async () => {
    if (path === "/metrics" && (req.method === "GET" || req.method === "HEAD")) {
      await serveMetrics(req, res);
    } else if (path === "/work") {
      inc({ status_code: "200" });
      observe({ route: "/work", method: req.method, status_code: "200" }, 10);
      send(req, res, 200, '{"ok":true}\n', { "Content-Type": "application/json" });
    } else if (path === "/healthz") {
      send(req, res, 200, "ok\n", { "Content-Type": "text/plain" });
    } else {
      send(req, res, 404, '{"error":"not found"}\n', { "Content-Type": "application/json" });
    }
  }).catch(err => {
    if (!res.headersSent) send(req, res, 500, String(err), { "Content-Type": "text/plain" });
  });
});

recordFixedObservations();
server.listen(opts.port, "127.0.0.1");
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => {
    server.close();
    process.exit(0);
  });
}
