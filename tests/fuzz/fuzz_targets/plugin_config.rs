//! The plugin configuration the filter reads (`PluginConfig::from_json`) and what the filter
//! does with it at configure time, on arbitrary bytes.
//!
//! Properties:
//! - loading never panics, and neither do building the exposition rewriter and the engine from
//!   whatever loaded, defining the self-metrics, routing a few requests and rewriting a body;
//! - a configuration that loads round-trips: serialized (as `metricpact compile` does) and loaded
//!   again it is the same configuration (bucket bounds to the last bit of precision that
//!   serde_json's float parsing keeps).
#![no_main]

use libfuzzer_sys::fuzz_target;
use metricpact::config::PluginConfig;
use metricpact::exposition::Rewriter;
use metricpact::telemetry::{Bytes, Engine, MetricHost, MetricKind, RequestAttributes, ResponseAttributes};

struct Null(u32);

impl MetricHost for Null {
    fn define(&mut self, _kind: MetricKind, _name: &str) -> Option<u32> {
        self.0 += 1;
        Some(self.0)
    }
    fn increment(&mut self, _id: u32, _delta: i64) {}
    fn record(&mut self, _id: u32, _value: u64) {}
    fn admit(&mut self, _scope: &str, _member: &str, _max: u32) -> bool {
        true
    }
}

struct Req(&'static [u8]);

impl RequestAttributes for Req {
    fn method(&self) -> Option<Bytes<'_>> {
        Some(Bytes::Borrowed(b"GET"))
    }
    fn path(&self) -> Option<Bytes<'_>> {
        Some(Bytes::Borrowed(self.0))
    }
    fn scheme(&self) -> Option<Bytes<'_>> {
        Some(Bytes::Borrowed(b"http"))
    }
    fn forwarded_proto(&self) -> Option<Bytes<'_>> {
        None
    }
    fn protocol(&self) -> Option<Bytes<'_>> {
        Some(Bytes::Borrowed(b"HTTP/2"))
    }
    fn header(&self, _name: &str) -> Option<Bytes<'_>> {
        Some(Bytes::Borrowed(self.0))
    }
}

struct Resp;

impl ResponseAttributes for Resp {
    fn status_code(&self) -> Option<u32> {
        Some(503)
    }
    fn code_details(&self) -> Option<Vec<u8>> {
        Some(b"upstream_reset_before_response_started".to_vec())
    }
    fn duration_nanos(&self) -> Option<u64> {
        Some(u64::MAX)
    }
}

fn node(key: &str, _field: Option<&str>) -> Option<Vec<u8>> {
    (key != "MISSING").then(|| b"pod;.;x=.=\"y\xff".to_vec())
}

fn same_buckets(a: &PluginConfig, b: &PluginConfig) -> bool {
    match (&a.duration, &b.duration) {
        (Some(x), Some(y)) => {
            x.buckets.len() == y.buckets.len()
                && x.buckets.iter().zip(&y.buckets).all(|(p, q)| p == q || (p - q).abs() <= p.abs().max(q.abs()) * 4.0 * f64::EPSILON)
        }
        (x, y) => x.is_none() && y.is_none(),
    }
}

const BODY: &[u8] = b"# TYPE a counter\na_total{x=\"1\",pod=\"p\"} 1\na_created 2\n# TYPE h histogram\nh_bucket{le=\"+Inf\",a=\"b\"} 2\nh_sum 1\nh_count 2\n";

fuzz_target!(|data: &[u8]| {
    let Ok(config) = PluginConfig::from_json(data) else { return };

    let json = serde_json::to_vec(&config).expect("a loaded configuration serializes");
    let back = match PluginConfig::from_json(&json) {
        Ok(back) => back,
        Err(e) => panic!("serialized configuration does not load: {e}\n{}", String::from_utf8_lossy(&json)),
    };
    assert!(same_buckets(&config, &back), "bucket bounds changed in a round trip");
    let (mut a, mut b) = (config.clone(), back);
    for c in [&mut a, &mut b] {
        if let Some(d) = c.duration.as_mut() {
            d.buckets.clear();
        }
    }
    assert_eq!(a, b, "configuration changed in a round trip");

    if let Some(spec) = &config.exposition {
        if let Ok(rewriter) = Rewriter::new(spec, &node, config.max_value_length as usize) {
            let _ = rewriter.rewrite(BODY, None);
        }
    }
    if let Ok(mut engine) = Engine::new(&config, &node) {
        let mut host = Null(0);
        engine.define_self_metrics(&mut host);
        for path in [&b"/"[..], b"/users/42?x=1", b"/a;.;b=.=c/\xff\xfe"] {
            let flight = engine.start(&mut host, &Req(path));
            engine.finish(&mut host, flight, &Resp);
        }
    }
});
