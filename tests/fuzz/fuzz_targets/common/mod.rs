//! Helpers shared by the fuzz targets.
#![allow(dead_code)]

use std::path::PathBuf;

use metricpact::config::PluginConfig;
use metricpact::contract::compile::compile_source;
use metricpact::contract::load::Source;

/// The contracts checked in with the project, embedded so the fuzz binaries run from anywhere.
pub const CONTRACTS: &[(&str, &str)] = &[
    ("contracts/http-server.yaml", include_str!("../../../../contracts/http-server.yaml")),
    ("contracts/rest-api.yaml", include_str!("../../../../contracts/rest-api.yaml")),
    ("contracts/grpc-service.yaml", include_str!("../../../../contracts/grpc-service.yaml")),
    ("tests/data/contracts/orders-prom-client.yaml", include_str!("../../../data/contracts/orders-prom-client.yaml")),
    ("tests/data/contracts/items-prometheus-client.yaml", include_str!("../../../data/contracts/items-prometheus-client.yaml")),
    ("tests/data/contracts/checkout-otel.yaml", include_str!("../../../data/contracts/checkout-otel.yaml")),
];

/// Compiles an embedded contract; they are all valid, so anything else is a bug in the fixture.
pub fn compile(path: &str, text: &str) -> PluginConfig {
    let source = Source { path: PathBuf::from(path), text: text.to_string() };
    let compiled = compile_source(&source);
    match compiled.config {
        Some(config) => config,
        None => panic!("{path} does not compile: {:?}", compiled.diagnostics),
    }
}

/// Splits `data` into at most `n` fields at `sep` bytes (the last field keeps the rest).
pub fn fields(data: &[u8], sep: u8, n: usize) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = data.splitn(n, |&b| b == sep).collect();
    out.resize(n, b"");
    out
}
