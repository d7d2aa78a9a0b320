//! `make bench`'s per-stage builds (`cargo build --features bench-stages`): each request stops
//! after a stage, named by `bench_stage` in the plugin configuration, so the instruction counts
//! of the stages attribute the filter's cost. Without the feature every stage is reached and the
//! checks compile away: the shipped module never reads `bench_stage`.

/// The stages of a request, in the order the filter does them.
#[cfg_attr(not(feature = "bench-stages"), allow(dead_code))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// The SDK's callbacks run; the filter does nothing in them.
    Callbacks,
    /// + the request header map and the response `:status`.
    Headers,
    /// + the clock reads and the properties the contract's labels need.
    Properties,
    /// + label resolution and series lookup in the engine, with metric updates discarded.
    Labels,
    /// + the metric updates: the whole filter.
    Metrics,
}

#[cfg(feature = "bench-stages")]
mod imp {
    use super::Stage;
    use std::cell::Cell;

    thread_local! {
        static STAGE: Cell<Stage> = const { Cell::new(Stage::Metrics) };
    }

    pub fn reached(stage: Stage) -> bool {
        STAGE.with(|s| s.get()) >= stage
    }

    /// Takes `bench_stage` out of the configuration JSON (the configuration proper refuses
    /// unknown fields) and remembers it. A stage it does not know stays in, so the
    /// configuration is refused rather than measured as the whole filter.
    pub fn configure(bytes: Vec<u8>) -> Vec<u8> {
        let Ok(serde_json::Value::Object(mut map)) = serde_json::from_slice::<serde_json::Value>(&bytes) else { return bytes };
        let stage = match map.get("bench_stage").and_then(|s| s.as_str()) {
            None => Stage::Metrics,
            Some("callbacks") => Stage::Callbacks,
            Some("headers") => Stage::Headers,
            Some("properties") => Stage::Properties,
            Some("labels") => Stage::Labels,
            Some("metrics") => Stage::Metrics,
            Some(other) => {
                log::error!("metricpact: bench build: unknown bench_stage `{other}`");
                return bytes;
            }
        };
        map.remove("bench_stage");
        STAGE.with(|s| s.set(stage));
        log::warn!("metricpact: bench build, stopping each request after stage {stage:?}");
        serde_json::to_vec(&map).unwrap_or(bytes)
    }
}

#[cfg(not(feature = "bench-stages"))]
mod imp {
    use super::Stage;

    #[inline(always)]
    pub fn reached(_: Stage) -> bool {
        true
    }

    #[inline(always)]
    pub fn configure(bytes: Vec<u8>) -> Vec<u8> {
        bytes
    }
}

pub use imp::{configure, reached};
