#!/usr/bin/env node
// A small "catalog" service for the metricpact demo: plain Node (`http` module), no npm packages,
// no metrics of its own.
//
// Routes (JSON responses, each after a random latency of 100-300 ms):
//   GET /products/{id}      one product; ids starting with "unknown" answer 404
//   GET /products?page=N    a page of products
//   GET /healthz            liveness, no delay
// Anything else answers 404.
//
// Usage: node node_app.js --port N [--delay-ms MS]     (binds 127.0.0.1 only)
//   --delay-ms MS   every /products request takes exactly MS ms instead of 100-300 ms
//                   (tests use it to put a known latency into a known histogram bucket)
"use strict";

const http = require("http");

const PRODUCT = /^\/products\/([A-Za-z0-9-]+)$/;

function parsePort(argv) {
  const i = argv.indexOf("--port");
  const value = i >= 0 ? argv[i + 1] : argv[0];
  const port = Number.parseInt(value, 10);
  if (!Number.isInteger(port) || port <= 0 || port > 65535) {
    console.error("usage: node node_app.js --port N");
    process.exit(2);
  }
  return port;
}

function parseDelay(argv) {
  const i = argv.indexOf("--delay-ms");
  if (i < 0) return null;
  const delay = Number.parseFloat(argv[i + 1]);
  if (!Number.isFinite(delay) || delay < 0) {
    console.error("--delay-ms needs a non-negative number of milliseconds");
    process.exit(2);
  }
  return delay;
}

const FIXED_DELAY_MS = parseDelay(process.argv.slice(2));

function reply(res, status, payload) {
  const body = JSON.stringify(payload) + "\n";
  res.writeHead(status, {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(body),
  });
  res.end(body);
}

function later(fn) {
  setTimeout(fn, FIXED_DELAY_MS === null ? 100 + Math.random() * 200 : FIXED_DELAY_MS);
}

function product(id) {
  return { id, name: `Product ${id}`, priceCents: 100 + (id.length * 137) % 9000 };
}

function handle(req, res) {
  const url = new URL(req.url, "http://catalog.local");
  if (req.method !== "GET" && req.method !== "HEAD") {
    return reply(res, 405, { error: "method not allowed" });
  }
  if (url.pathname === "/healthz") {
    return reply(res, 200, { status: "ok" });
  }
  if (url.pathname === "/products") {
    const page = Math.max(1, Number.parseInt(url.searchParams.get("page") || "1", 10) || 1);
    return later(() => {
      const items = Array.from({ length: 10 }, (_, i) => product(`p-${(page - 1) * 10 + i + 1}`));
      reply(res, 200, { page, items });
    });
  }
  const match = PRODUCT.exec(url.pathname);
  if (match) {
    return later(() => {
      if (match[1].startsWith("unknown")) {
        return reply(res, 404, { error: "no such product", id: match[1] });
      }
      reply(res, 200, product(match[1]));
    });
  }
  reply(res, 404, { error: "not found", path: url.pathname });
}

const server = http.createServer(handle);
// Envoy keeps upstream connections open for a long time; a shorter server-side keep-alive
// would race with it and turn into occasional 503s (upstream reset).
server.keepAliveTimeout = 120 * 1000;
server.headersTimeout = 125 * 1000;

server.listen(parsePort(process.argv.slice(2)), "127.0.0.1");

for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => {
    server.close();
    server.closeAllConnections();
    process.exit(0);
  });
}
