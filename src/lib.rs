//! metricpact: enforce a metrics contract in every Envoy/Istio sidecar.
//!
//! The host-independent core (contract model, label resolution, route templating) lives in plain
//! modules; [`filter`] is the thin proxy-wasm layer compiled only for `wasm32-wasip1`; the
//! contract loader, checker and compiler are native-only (the filter never parses YAML).

pub mod config;
pub mod envoy_stats;
pub mod exposition;
pub mod header_map;
pub mod label_values;
pub mod names;
pub mod policy;
pub mod routes;
pub mod telemetry;
pub mod validate;

#[cfg(not(target_arch = "wasm32"))]
pub mod contract;
#[cfg(not(target_arch = "wasm32"))]
pub mod oci;
#[cfg(not(target_arch = "wasm32"))]
pub mod render;

#[cfg(target_os = "wasi")]
mod filter;
