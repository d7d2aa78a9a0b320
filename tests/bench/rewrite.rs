//! Native throughput of the exposition rewrite (`make bench`, section 2): the library's
//! `Rewriter::rewrite_as` timed in-process over a whole body, the way the filter calls it once per
//! scrape — followed, when the contract has a `policy`, by judging the rewritten body as the
//! filter then does (`Policy::judge`). A criterion-style harness with std only: warm-up iterations, then N timed iterations
//! (each one a whole body); prints the median and the best, in ms and MB/s of input (1 MB = 10^6 B).
//!
//!   cargo bench --bench rewrite                       # built-in cases (contracts in tests/bench/,
//!                                                     # generated 1 MB and 8 MB bodies)
//!   cargo bench --bench rewrite -- [--warmup N] [--iters N] [--node KEY=VALUE]...
//!       [--case NAME CONTRACT BODY_FILE]...           # what tests/bench/rewrite_throughput.py runs
//!
//!   cargo bench --bench rewrite -- --count [--only NAME] [--case ...]  # one untimed rewrite per case inside
//!                                                     # `counted`, for callgrind's
//!                                                     # --toggle-collect (instructions per byte)
//!
//! Besides the human-readable lines, each case prints one `BENCH {json}` line for the harness.

use std::collections::HashMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use metricpact::contract::compile::compile_file;
use metricpact::exposition::{Format, Rewriter};
use metricpact::policy::Policy;

struct Case {
    name: String,
    contract: PathBuf,
    body: Vec<u8>,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench rewrite: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut warmup = 3usize;
    let mut iters = 15usize;
    let mut count = false;
    let mut only: Option<String> = None;
    let mut node: HashMap<String, Vec<u8>> = [
        ("NAME", "cart-7d9f8b6c5-x2x8k"),
        ("NAMESPACE", "shop"),
        ("WORKLOAD_NAME", "cart"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
    .collect();
    let mut cases = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |what: &str| args.next().ok_or_else(|| format!("{arg} needs {what}"));
        match arg.as_str() {
            "--bench" => {} // added by `cargo bench`
            "--count" => count = true,
            "--only" => only = Some(value("a case name")?),
            "--warmup" => warmup = value("a count")?.parse().map_err(|e| format!("--warmup: {e}"))?,
            "--iters" => iters = value("a count")?.parse::<usize>().map_err(|e| format!("--iters: {e}"))?.max(1),
            "--node" => {
                let pair = value("KEY=VALUE")?;
                let (k, v) = pair.split_once('=').ok_or_else(|| format!("--node takes KEY=VALUE, got `{pair}`"))?;
                node.insert(k.to_string(), v.as_bytes().to_vec());
            }
            "--case" => {
                let name = value("NAME CONTRACT BODY")?;
                let contract = PathBuf::from(value("CONTRACT BODY")?);
                let body_path = value("BODY")?;
                let body = std::fs::read(&body_path).map_err(|e| format!("{body_path}: {e}"))?;
                cases.push(Case { name, contract, body });
            }
            "-h" | "--help" => {
                println!("usage: cargo bench --bench rewrite -- [--warmup N] [--iters N] [--count] [--only NAME] [--node KEY=VALUE]... [--case NAME CONTRACT BODY_FILE]...");
                return Ok(());
            }
            other => return Err(format!("unknown argument `{other}` (see --help)")),
        }
    }
    if cases.is_empty() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bench");
        for (size, label) in [(1_000_000, "1mb"), (8_000_000, "8mb")] {
            let body = exposition(size);
            for contract in ["inject", "rename", "sum", "policy"] {
                cases.push(Case { name: format!("{contract}-{label}"), contract: dir.join(format!("rewrite-{contract}.yaml")), body: body.clone() });
            }
        }
    }

    if let Some(only) = &only {
        cases.retain(|c| &c.name == only);
        if cases.is_empty() {
            return Err(format!("--only {only}: no such case"));
        }
    }
    let lookup = |key: &str, field: Option<&str>| {
        let k = match field {
            Some(f) => format!("{key}.{f}"),
            None => key.to_string(),
        };
        node.get(&k).cloned()
    };
    println!("exposition rewrite, in-process (Rewriter::rewrite_as over the whole body): {warmup} warm-up + {iters} timed iterations per case");
    for case in &cases {
        let compiled = compile_file(&case.contract);
        let Some(config) = compiled.config else {
            let diagnostics: Vec<String> = compiled.diagnostics.iter().map(|d| d.to_string()).collect();
            return Err(format!("{}: contract does not compile:\n{}", case.contract.display(), diagnostics.join("\n")));
        };
        let spec = config.exposition.as_ref().ok_or_else(|| format!("{}: no `exposition` section", case.contract.display()))?;
        let rewriter = Rewriter::new(spec, &lookup, config.max_value_length as usize)?;
        let policy = config.policy.as_ref().map(Policy::new).transpose()?;
        let format = Format::detect(None, &case.body);
        if count {
            // Warm (allocator, caches), then the one rewrite callgrind counts.
            rewriter.rewrite_as(&case.body, format).map_err(|e| format!("{}: the body is not rewritten: {e}", case.name))?;
            let out_bytes = counted(&rewriter, policy.as_ref(), &case.body, format);
            println!("COUNT {{\"case\":\"{}\",\"in_bytes\":{},\"out_bytes\":{out_bytes}}}", case.name, case.body.len());
            continue;
        }
        let once = || {
            let rewritten = rewriter.rewrite_as(black_box(&case.body), format);
            if let (Some(policy), Ok(r)) = (&policy, &rewritten) {
                black_box(judge(policy, &r.body));
            }
            rewritten
        };
        if let Some(policy) = &policy {
            let body = rewriter.rewrite_as(&case.body, format).map_err(|e| format!("{}: the body is not rewritten: {e}", case.name))?.body;
            println!("  {:<14} the policy finds {} violations in the rewritten body", case.name, judge(policy, &body));
        }
        let first = once().map_err(|e| format!("{}: the body is not rewritten: {e}", case.name))?;
        let out_bytes = first.body.len();
        let stats = first.stats.clone();
        drop(first);
        for _ in 1..warmup {
            black_box(once().ok());
        }
        let mut times: Vec<Duration> = Vec::with_capacity(iters);
        for _ in 0..iters {
            let start = Instant::now();
            let out = once();
            let elapsed = start.elapsed();
            black_box(out.ok());
            times.push(elapsed);
        }
        times.sort();
        let median = if iters % 2 == 1 { times[iters / 2] } else { (times[iters / 2 - 1] + times[iters / 2]) / 2 };
        let best = times[0];
        let mbps = |d: Duration| case.body.len() as f64 / 1e6 / d.as_secs_f64();
        println!(
            "  {:<14} {:>6.2} MB -> {:>6.2} MB  median {:>8.3} ms = {:>7.1} MB/s   best {:>8.3} ms = {:>7.1} MB/s   ({} families dropped, {} series aggregated)",
            case.name,
            case.body.len() as f64 / 1e6,
            out_bytes as f64 / 1e6,
            median.as_secs_f64() * 1e3,
            mbps(median),
            best.as_secs_f64() * 1e3,
            mbps(best),
            stats.families_dropped,
            stats.series_aggregated,
        );
        println!(
            "BENCH {{\"case\":\"{}\",\"contract\":\"{}\",\"in_bytes\":{},\"out_bytes\":{},\"iters\":{},\"median_ns\":{},\"best_ns\":{},\"median_mb_s\":{:.1},\"best_mb_s\":{:.1}}}",
            case.name,
            case.contract.display().to_string().replace('\\', "\\\\").replace('"', "\\\""),
            case.body.len(),
            out_bytes,
            iters,
            median.as_nanos(),
            best.as_nanos(),
            mbps(median),
            mbps(best),
        );
    }
    Ok(())
}

/// One rewrite (and the policy's judgement of it), the only code callgrind counts in `--count`
/// mode (`--toggle-collect='rewrite::counted'`); returns the output's size.
#[inline(never)]
fn counted(rewriter: &Rewriter, policy: Option<&Policy>, body: &[u8], format: Format) -> usize {
    let rewritten = black_box(rewriter.rewrite_as(black_box(body), format));
    if let (Some(policy), Ok(r)) = (policy, &rewritten) {
        black_box(judge(policy, &r.body));
    }
    rewritten.map_or(0, |r| r.body.len())
}

/// The policy's violations in a rewritten body, as the filter judges it after the scrape.
fn judge(policy: &Policy, body: &[u8]) -> usize {
    std::str::from_utf8(body).ok().and_then(|b| policy.judge(b, 0).ok()).map_or(0, |v| v.len())
}

/// A prom-client-style text exposition of about `target` bytes, the same shape as
/// tests/bench/rewrite_throughput.py's: runtime noise, then per-route request counters
/// (method x status), a per-route/method millisecond histogram and per-queue gauges.
fn exposition(target: usize) -> Vec<u8> {
    use std::fmt::Write;
    let mut head = String::new();
    head.push_str("# HELP process_cpu_user_seconds_total Total user CPU time spent in seconds.\n# TYPE process_cpu_user_seconds_total counter\nprocess_cpu_user_seconds_total 12.345\n");
    head.push_str("# HELP process_resident_memory_bytes Resident memory size in bytes.\n# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes 98765432\n");
    head.push_str("# HELP nodejs_eventloop_lag_seconds Lag of event loop in seconds.\n# TYPE nodejs_eventloop_lag_seconds gauge\nnodejs_eventloop_lag_seconds 0.00123\n");
    head.push_str("# HELP nodejs_heap_space_size_used_bytes Process heap space size used from Node.js in bytes.\n# TYPE nodejs_heap_space_size_used_bytes gauge\n");
    for (i, s) in ["read_only", "new", "old", "code", "shared", "trusted", "new_large_object"].iter().enumerate() {
        let _ = writeln!(head, "nodejs_heap_space_size_used_bytes{{space=\"{s}\"}} {}", i * 1000 + 17);
    }
    head.push('\n');
    const BOUNDS: [&str; 11] = ["5", "10", "25", "50", "100", "250", "500", "1000", "2500", "5000", "+Inf"];
    const METHODS: [&str; 4] = ["GET", "POST", "PUT", "DELETE"];
    const CODES: [&str; 4] = ["200", "201", "404", "500"];
    let per_route = 16 * 85 + 4 * 13 * 110 + 90;
    let routes = (target.saturating_sub(head.len()) / per_route).max(1);
    let mut s = head;
    s.push_str("# HELP request_count Number of HTTP requests handled, by status code.\n# TYPE request_count counter\n");
    for r in 0..routes {
        for m in METHODS {
            for c in CODES {
                let v = (r * 7 + m.len() * 3 + c.parse::<usize>().unwrap_or(0)) % 100_000;
                let _ = writeln!(s, "request_count{{route=\"/api/v1/orders/{r:05}/items/:id\",method=\"{m}\",status_code=\"{c}\"}} {v}");
            }
        }
    }
    s.push_str("\n# HELP http_request_duration_ms Duration of HTTP requests in ms.\n# TYPE http_request_duration_ms histogram\n");
    for r in 0..routes {
        for m in METHODS {
            let labels = format!("route=\"/api/v1/orders/{r:05}/items/:id\",method=\"{m}\",status_code=\"200\"");
            let mut count = 0;
            for (i, le) in BOUNDS.iter().enumerate() {
                count += (r + i) % 5;
                let _ = writeln!(s, "http_request_duration_ms_bucket{{le=\"{le}\",{labels}}} {count}");
            }
            let _ = writeln!(s, "http_request_duration_ms_sum{{{labels}}} {}", count as f64 * 37.5);
            let _ = writeln!(s, "http_request_duration_ms_count{{{labels}}} {count}");
        }
    }
    s.push_str("\n# HELP queue_depth Messages waiting, per queue.\n# TYPE queue_depth gauge\n");
    for r in 0..routes {
        let _ = writeln!(s, "queue_depth{{queue=\"orders-{r:05}\"}} {}", r % 97);
    }
    s.into_bytes()
}
