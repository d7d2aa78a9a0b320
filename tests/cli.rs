//! The real `metricpact` binary on real files: every shipped contract checks clean, broken
//! contracts get `file:line:col` diagnostics and exit 1, `compile` emits what the filter reads.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use metricpact::config::PluginConfig;

fn metricpact(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_metricpact")).args(args).output().expect("run metricpact")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `diff` names the new contract at the start of every finding line; the text after it.
fn unprefixed(out: &str, new: &Path) -> String {
    let prefix = format!("{}: ", new.display());
    out.lines()
        .map(|l| match l.strip_prefix(&prefix) {
            Some(rest) => format!("{rest}\n"),
            None if l.starts_with("    breaks: ") => format!("{l}\n"),
            None => panic!("a diff line without the file: {l}"),
        })
        .collect()
}

fn temp_contract(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("metricpact-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn shipped_contracts() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("contracts");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_shipped_contract_checks_clean_and_compiles() {
    let files = shipped_contracts();
    assert!(files.len() >= 3, "{files:?}");
    for file in &files {
        let check = metricpact(&["check", file.to_str().unwrap()]);
        assert!(check.status.success(), "{}: {}", file.display(), stdout(&check));
        assert_eq!(stdout(&check), "", "{} has warnings", file.display());
        let compiled = metricpact(&["compile", file.to_str().unwrap()]);
        assert!(compiled.status.success());
        let config = PluginConfig::from_json(&compiled.stdout).expect("compile output is a valid plugin config");
        metricpact::telemetry::Engine::new(&config, &|_, _| None).expect("the filter accepts it");
    }
}

#[test]
fn default_contract_compiles_to_the_otel_label_set() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("contracts/http-server.yaml");
    let config = PluginConfig::from_json(&metricpact(&["compile", file.to_str().unwrap()]).stdout).unwrap();
    let labels: Vec<_> = config.labels.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(
        labels,
        [
            "http_request_method",
            "http_route",
            "http_response_status_code",
            "error_type",
            "url_scheme",
            "network_protocol_version",
            "k8s_pod_name",
            "k8s_namespace_name",
            "k8s_workload_name",
            "service_name"
        ]
    );
    let duration = config.duration.unwrap();
    assert_eq!(duration.name, "http_server_request_duration_milliseconds");
    assert_eq!(duration.buckets, [5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 750.0, 1000.0, 2500.0, 5000.0, 7500.0, 10000.0]);
    assert_eq!(config.requests.unwrap().name, "http_server_requests_total");
    assert_eq!(config.contract.hash.len(), 12);
}

#[test]
fn minimal_contract_gets_otel_defaults() {
    let file = temp_contract("minimal.yaml", "format: metricpact/v1\nname: minimal\nversion: '1'\n");
    let config = PluginConfig::from_json(&metricpact(&["compile", file.to_str().unwrap()]).stdout).unwrap();
    assert_eq!(config.labels.len(), 10);
    assert_eq!(config.methods, ["CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"]);
    // Microsecond unit scales the OTel default buckets.
    let file = temp_contract(
        "micro.yaml",
        "format: metricpact/v1\nname: micro\nversion: '1'\nmetrics:\n  duration:\n    name: d_microseconds\n    unit: microseconds\n",
    );
    let config = PluginConfig::from_json(&metricpact(&["compile", file.to_str().unwrap()]).stdout).unwrap();
    assert_eq!(config.duration.unwrap().buckets[..3], [5000.0, 10000.0, 25000.0]);
}

const BROKEN: &str = r#"format: metricpact/v1
name: Broken_Name
version: 1.0.0
metrics:
  requests:
    name: http_requests
  duration:
    name: latency_seconds
    buckets: [10, 5, 20]
  active_requests:
    labels: [http_response_status_code, nope]
labels:
  - name: http_response_status_code
    from: response.status_code
  - name: code
    from: response.status_code
  - name: status_code
    from: response.status_code
  - name: pod
    from: node.NAME
  - name: http-route
    from: request.route
  - name: tenant
    from: request.headers.x-tenant
  - name: tenant
    value: a
  - name: reporter
    value: b
routes:
  rules:
    - regex: '/users/([0-9]+'
      template: /users/{id}
    - prefix: /a
      regex: /b
      template: /x
    - regex: /c/(?P<v>x)
      template: /c/${w}
"#;

#[test]
fn broken_contract_reports_every_problem_at_its_position() {
    let file = temp_contract("broken.yaml", BROKEN);
    let out = metricpact(&["check", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let f = file.display().to_string();
    let expected = [
        format!("{f}:2:7: error: contract name must be 1-63 lowercase letters, digits or `-`, starting and ending with a letter or digit (it names Kubernetes objects)"),
        format!("{f}:6:11: error[counter-total]: counter `http_requests` must end in `_total`"),
        format!("{f}:8:11: error[histogram-unit]: histogram `latency_seconds` records milliseconds: its name must end in `_milliseconds`"),
        format!("{f}:9:19: error[buckets-increasing]: buckets must be strictly increasing: 5 follows 10"),
        format!("{f}:11:14: error[active-label-response]: `http_response_status_code` comes from the response, which an in-flight request does not have"),
        format!("{f}:11:41: error[active-label-unknown]: `nope` is not one of the contract's labels"),
        format!("{f}:15:11: error[label-conflict]: label `code` is a suffix of `http_response_status_code`: Envoy's unanchored tag regex for `code` would also match inside `http_response_status_code`; rename one of them"),
        format!("{f}:17:11: error[label-conflict]: label `status_code` is a suffix of `http_response_status_code`: Envoy's unanchored tag regex for `status_code` would also match inside `http_response_status_code`; rename one of them"),
        format!("{f}:19:11: error[label-conflict]: label `pod` collides with the `pod` target label Prometheus attaches to every scraped series; use a distinct name such as `k8s_pod_name`"),
        format!("{f}:21:11: error[label-name]: `http-route` is not a valid Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*, not starting with `__`)"),
        format!("{f}:24:11: error: unknown source `request.headers.x-tenant`; did you mean `request.header.x-tenant`? (sources: request.method, request.route, request.scheme, request.protocol, request.header.NAME, response.status_code, response.status_class, response.error_type, node.KEY, node.KEY.FIELD, and for gRPC requests request.grpc_method, request.grpc_service, response.grpc_status, response.grpc_status_name)"),
        format!("{f}:25:11: error[label-duplicate]: duplicate label `tenant`"),
        format!("{f}:27:11: error[label-conflict]: label `reporter` reuses a tag name Istio's sidecar already extracts; the first extractor wins, so rename it"),
        format!("{f}:31:14: error[route-regex]: regex does not compile: regex parse error: /users/([0-9]+ ^ error: unclosed group"),
        format!("{f}:34:14: error: route rule has more than one of `exact`, `prefix`, `regex`; split it into separate rules"),
        format!("{f}:37:17: error[route-template]: template refers to capture `w`, which the regex does not define"),
    ];
    let got = stdout(&out);
    let got: Vec<&str> = got.lines().collect();
    assert_eq!(got, expected.iter().map(String::as_str).collect::<Vec<_>>());
}

#[test]
fn structural_errors_have_positions_too() {
    let cases = [
        ("format: metricpact/v1\nname: x\nversion: '1'\nmetrics:\n  requests:\n    nmae: y\n", "6:5: error: unknown key `nmae` in `metrics.requests`; did you mean `name`? (valid keys: name, enabled)"),
        ("format: metricpact/v1\nname: x\nversion: '1'\ncardinality:\n  max_series: lots\n", "5:15: error: `cardinality.max_series` must be a whole number from 0 to 4294967295, found the string `lots`"),
        ("format: metricpact/v1\nname: x\nversion: '1'\nname: y\n", "4:1: error: duplicate key `name`; each key may appear once"),
        ("format: metricpact/v1\nname: x\nversion: '1'\nlabels: [{name: a, from: {x: 1}}]\n", "4:26: error: `labels[0].from` must be a source (e.g. `request.route`) or a list of sources tried in order, found a mapping with 1 key"),
        ("format: metricpact/v2\nname: x\nversion: '1'\n", "1:9: error: unsupported format `metricpact/v2`; this build reads `metricpact/v1`"),
        ("format: metricpact/v1\nname: x\nversion: '1'\nroutes:\n  unmatched: raw\n", "5:14: warning: `unmatched: raw` puts raw request paths"),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let file = temp_contract(&format!("structural{i}.yaml"), text);
        let out = metricpact(&["check", file.to_str().unwrap()]);
        let got = stdout(&out);
        assert!(got.starts_with(&format!("{}:{want}", file.display())), "case {i}: {got}");
        let warning_only = want.contains("warning");
        assert_eq!(out.status.code(), Some(if warning_only { 0 } else { 1 }), "case {i}");
    }
}

#[test]
fn strict_mode_fails_on_warnings() {
    let file = temp_contract("warn.yaml", "format: metricpact/v1\nname: x\nversion: '1'\nroutes:\n  unmatched: raw\n");
    assert_eq!(metricpact(&["check", "--strict", file.to_str().unwrap()]).status.code(), Some(1));
}

#[test]
fn json_output_lists_diagnostics() {
    let file = temp_contract("json.yaml", "format: metricpact/v1\nname: x\nversion: ''\n");
    let out = metricpact(&["check", "--format", "json", file.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["findings"][0]["line"], 3);
    assert_eq!(v["findings"][0]["severity"], "error");
    assert_eq!(v["findings"][0]["message"], "contract version must not be empty");
}

#[test]
fn compile_refuses_a_broken_contract() {
    let file = temp_contract("broken2.yaml", BROKEN);
    let out = metricpact(&["compile", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains(":6:11: error[counter-total]: counter `http_requests` must end in `_total`"));
}

#[test]
fn missing_file_is_an_io_error() {
    // Unusable input (the README's convention: 2), told apart from a contract with errors (1).
    let out = metricpact(&["check", "/nonexistent/contract.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stdout(&out).starts_with("/nonexistent/contract.yaml: error: cannot read contract: No such file"));
}

#[test]
fn every_command_takes_its_contract_the_same_way() {
    // A positional CONTRACT, or --contract CONTRACT (the spelling render/verify/rewrite had): the
    // same output and exit code either way, in every command that reads one contract.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let http = root.join("contracts/http-server.yaml");
    let rest = root.join("contracts/rest-api.yaml");
    let (http, rest) = (http.to_str().unwrap(), rest.to_str().unwrap());
    let scrape = temp_contract("same-way.txt", "# TYPE orders_created_total counter\norders_created_total 12\n");
    let scrape = scrape.to_str().unwrap();
    let cases: [(&str, &str, &[&str]); 6] = [
        ("check", http, &[]),
        ("compile", http, &[]),
        ("envoy-stats", http, &[]),
        ("render", http, &[]),
        ("verify", http, &[scrape]),
        ("rewrite", rest, &[scrape]),
    ];
    for (command, contract, rest_args) in cases {
        let positional: Vec<&str> = [command, contract].iter().chain(rest_args).copied().collect();
        let option: Vec<&str> = [command, "--contract", contract].iter().chain(rest_args).copied().collect();
        let (a, b) = (metricpact(&positional), metricpact(&option));
        // check prints nothing for a clean contract; the others print what they made.
        assert_eq!(a.stdout.is_empty(), command == "check", "{command}: {}", String::from_utf8_lossy(&a.stderr));
        assert_eq!((a.status.code(), stdout(&a)), (b.status.code(), stdout(&b)), "{command}");
        assert_eq!(metricpact(&[command]).status.code(), Some(2), "{command} without a contract");
        if command == "check" {
            continue; // takes any number of contracts
        }
        // Given twice: a usage error.
        let twice: Vec<&str> = [command, "--contract", contract, contract].iter().chain(rest_args).copied().collect();
        assert_eq!(metricpact(&twice).status.code(), Some(2), "{command} with the contract twice");
    }
}

#[test]
fn exit_codes_are_the_same_in_every_command() {
    // 2: unusable input (a file that cannot be read), in every command that reads a contract.
    let missing = "/nonexistent/contract.yaml";
    for args in [
        vec!["compile", missing],
        vec!["envoy-stats", missing],
        vec!["render", "--contract", missing],
        vec!["rewrite", "--contract", missing, "-"],
        vec!["verify", "--contract", missing, "-"],
        vec!["diff", missing, missing],
    ] {
        assert_eq!(metricpact(&args).status.code(), Some(2), "{args:?}");
    }
    // 1: a contract with errors is a finding, in every command.
    let broken = temp_contract("exit-codes-broken.yaml", BROKEN);
    let broken = broken.to_str().unwrap();
    let good = Path::new(env!("CARGO_MANIFEST_DIR")).join("contracts/http-server.yaml");
    let good = good.to_str().unwrap();
    for args in [
        vec!["check", broken],
        vec!["compile", broken],
        vec!["envoy-stats", broken],
        vec!["render", "--contract", broken],
        vec!["rewrite", "--contract", broken, "-"],
        vec!["verify", "--contract", broken, "-"],
        vec!["diff", good, broken],
        vec!["diff", broken, good],
    ] {
        assert_eq!(metricpact(&args).status.code(), Some(1), "{args:?}");
    }
    // Usage errors are 2 (clap's own convention, kept).
    assert_eq!(metricpact(&["check"]).status.code(), Some(2));
    assert_eq!(metricpact(&["verify", "--contract", good, "--bogus"]).status.code(), Some(2));
}

#[test]
fn verify_takes_its_exposition_as_rewrite_does() {
    // A positional FILE, like `rewrite`; `--file` still works.
    let contract = Path::new(env!("CARGO_MANIFEST_DIR")).join("contracts/http-server.yaml");
    let contract = contract.to_str().unwrap();
    let saved = temp_contract("verify-empty.txt", "# nothing here\n");
    let saved = saved.to_str().unwrap();
    let positional = metricpact(&["verify", "--contract", contract, saved]);
    let flag = metricpact(&["verify", "--contract", contract, "--file", saved]);
    assert_eq!(positional.status.code(), Some(1), "{}", String::from_utf8_lossy(&positional.stderr));
    assert_eq!((positional.status.code(), stdout(&positional)), (flag.status.code(), stdout(&flag)));
    assert!(stdout(&positional).contains(&format!("{saved}: violation[metric-missing]: http_server_requests_total: ")), "{}", stdout(&positional));
}

#[test]
fn every_command_has_help() {
    let top = metricpact(&["--help"]);
    assert!(top.status.success() && stdout(&top).contains("Usage: metricpact"));
    // Every subcommand the top-level help lists (so a new one cannot be left out here).
    let listed: Vec<String> = stdout(&top)
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter(|l| !l.starts_with("   ")) // a wrapped description, not a command
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect();
    assert_eq!(listed, ["check", "compile", "envoy-stats", "render", "package", "schema", "verify", "diff", "rewrite", "routes"]);
    assert!(stdout(&top).contains("Exit codes: 0 clean; 1 findings"), "{}", stdout(&top));
    for command in &listed {
        let out = metricpact(&[command, "--help"]);
        assert!(out.status.success(), "{command} --help");
        assert!(stdout(&out).contains(&format!("Usage: metricpact {command}")), "{command} --help: {}", stdout(&out));
        assert!(stdout(&out).contains("Exit codes: 0 clean; 1 findings"), "{command} --help: {}", stdout(&out));
    }
}

#[test]
fn envoy_stats_lists_a_tag_per_label_and_the_buckets() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("contracts/http-server.yaml");
    let out = metricpact(&["envoy-stats", file.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tags = v["stats_tags"].as_array().unwrap();
    assert_eq!(tags.len(), 10 + metricpact::names::SELF_LABEL_NAMES.len());
    assert_eq!(tags[1]["tag_name"], "http_route");
    assert_eq!(tags[1]["regex"], "(http_route=\\.=(.*?);\\.;)");
    assert_eq!(v["histogram_bucket_settings"][0]["match"]["prefix"], "wasmcustom.http_server_request_duration_milliseconds.");
}

#[test]
fn github_format_prints_workflow_annotations() {
    let file = temp_contract("gh.yaml", "format: metricpact/v1\nname: x\nversion: ''\nroutes:\n  unmatched: raw\n");
    let out = metricpact(&["check", "--format", "github", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let f = file.display().to_string().replace(':', "%3A").replace(',', "%2C");
    let lines: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    assert_eq!(
        lines,
        [
            format!("::error file={f},line=3,col=10,title=metricpact check::contract version must not be empty"),
            format!("::warning file={f},line=5,col=14,title=metricpact check::`unmatched: raw` puts raw request paths in `http_route`; they are cut and capped, but OTel says routes must not come from raw paths"),
        ]
    );
}

#[test]
fn checked_in_json_schema_matches_the_contract_types() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("contracts/metricpact.schema.json");
    let checked_in = std::fs::read_to_string(&path).expect("contracts/metricpact.schema.json");
    let generated = stdout(&metricpact(&["schema"]));
    assert!(checked_in == generated, "contracts/metricpact.schema.json is out of date: run `make schema`");
    let schema: serde_json::Value = serde_json::from_str(&generated).unwrap();
    assert_eq!(schema["additionalProperties"], false);
    // Every field is documented for editors.
    fn undocumented(v: &serde_json::Value, path: &str, out: &mut Vec<String>) {
        if let Some(props) = v.get("properties").and_then(|p| p.as_object()) {
            for (name, prop) in props {
                let described = prop.get("description").is_some()
                    || prop.get("$ref").is_some() && prop.get("description").is_some();
                if !described {
                    out.push(format!("{path}.{name}"));
                }
            }
        }
        if let Some(defs) = v.get("$defs").and_then(|d| d.as_object()) {
            for (name, def) in defs {
                undocumented(def, name, out);
            }
        }
    }
    let mut missing = Vec::new();
    undocumented(&schema, "Contract", &mut missing);
    assert!(missing.is_empty(), "fields without a description: {missing:?}");
}

#[test]
fn every_shipped_contract_names_the_schema_for_editors() {
    for file in shipped_contracts() {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.starts_with("# yaml-language-server: $schema=metricpact.schema.json\n"), "{}", file.display());
    }
}

#[test]
fn diff_classifies_changes_and_names_what_they_break() {
    let base = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("contracts/http-server.yaml")).unwrap();
    let old = temp_contract("diff-old.yaml", &base);
    let renamed = base
        .replace("name: http_server_requests_total     # must end in _total", "name: http_requests_total")
        .replace("  - name: url_scheme\n", "  - name: tenant\n    from: request.header.x-tenant\n  - name: url_scheme\n");
    let new = temp_contract("diff-new.yaml", &renamed);
    let out = metricpact(&["diff", old.to_str().unwrap(), new.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        unprefixed(&stdout(&out), &new),
        "breaking[metric-renamed]: request counter renamed from `http_server_requests_total` to `http_requests_total`: queries on `http_server_requests_total` find nothing\n\
         \x20   breaks: KEDA trigger qps-per-pod (http_server_requests_total)\n\
         \x20   breaks: prometheus-adapter rule http_server_requests_total -> http_server_requests_per_second\n\
         \x20   breaks: HPA Pods metric http_server_requests_per_second\n\
         \x20   breaks: recording rule namespace_pod:http_server_requests:rate*\n\
         compatible[label-added]: label `tenant` added: existing series split, sums are unchanged\n"
    );
    // Only compatible changes: exit 0.
    let added = temp_contract("diff-added.yaml", &base.replace("  - name: url_scheme\n", "  - name: tenant\n    from: request.header.x-tenant\n  - name: url_scheme\n"));
    let out = metricpact(&["diff", old.to_str().unwrap(), added.to_str().unwrap(), "--format", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["breaking"], false);
    assert_eq!(v["ok"], true);
    assert_eq!(v["findings"][0]["rule"], "label-added");
    assert_eq!(v["findings"][0]["kind"], "compatible");
    assert_eq!(v["findings"][0]["severity"], "notice");
    // Identical contracts.
    let out = metricpact(&["diff", old.to_str().unwrap(), old.to_str().unwrap()]);
    assert_eq!((out.status.code(), stdout(&out).as_str()), (Some(0), "no changes to the metrics contract\n"));
}

#[test]
fn diff_names_the_autoscalers_that_select_by_the_workload_label() {
    let base = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("contracts/http-server.yaml")).unwrap();
    let old = temp_contract("diff-workload-old.yaml", &base);
    let start = base.find("  - name: k8s_workload_name\n").unwrap();
    let end = start + base[start..].find("    from: node.WORKLOAD_NAME\n").unwrap() + "    from: node.WORKLOAD_NAME\n".len();
    let new = temp_contract("diff-workload-new.yaml", &format!("{}{}", &base[..start], &base[end..]));
    let out = metricpact(&["diff", old.to_str().unwrap(), new.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        unprefixed(&stdout(&out), &new),
        "breaking[label-removed]: label `k8s_workload_name` is gone: queries, dashboards and alerts selecting or grouping by it break\n\
         \x20   breaks: KEDA triggers qps-per-pod and p95-latency (select k8s_workload_name=WORKLOAD)\n\
         \x20   breaks: prometheus-adapter external rule (seriesQuery k8s_workload_name!=\"\")\n\
         \x20   breaks: HPA External metric selector (k8s_workload_name)\n"
    );
}

#[test]
fn check_warns_about_rate_windows_shorter_than_four_scrapes() {
    let file = temp_contract(
        "short-window.yaml",
        "format: metricpact/v1\nname: w\nversion: '1'\nworkload: {target: {name: w}}\nautoscaling:\n  qps_per_pod: 10\n  rate_window: 30s\n  latency_window: 1m\n",
    );
    let out = metricpact(&["check", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        stdout(&out),
        format!(
            "{}:7:16: warning: `30s` spans fewer than 4 scrapes at the 15 s interval the rendered scrape wiring uses: \
             rate() then rests on a sample or two, and one missed scrape drops a pod from the sum; use 1m or more\n",
            file.display()
        )
    );
}

/// The shipped default contract with `edit` applied to its text.
fn default_contract_with(name: &str, edit: &[(&str, &str)]) -> PathBuf {
    let mut text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("contracts/http-server.yaml")).unwrap();
    for (from, to) in edit {
        assert!(text.contains(from), "{from}");
        text = text.replacen(from, to, 1);
    }
    temp_contract(name, &text)
}

fn line_of(file: &Path, needle: &str) -> usize {
    1 + std::fs::read_to_string(file).unwrap().lines().position(|l| l.contains(needle)).unwrap()
}

#[test]
fn check_warns_when_the_p95_threshold_is_not_a_bucket_bound() {
    let file = default_contract_with("p95-between.yaml", &[("p95_latency_ms: 250 ", "p95_latency_ms: 300 ")]);
    let out = metricpact(&["check", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        stdout(&out),
        format!(
            "{}:{}:19: warning: p95_latency_ms 300 (300 milliseconds) falls inside the bucket (250, 500], so \
             histogram_quantile can only guess which side of it the p95 is; add 300 to metrics.duration.buckets (or use \
             `histogram: native`)\n",
            file.display(),
            line_of(&file, "p95_latency_ms: 300")
        )
    );
    // A bound at the threshold, or native histograms: nothing to say.
    let bound = default_contract_with("p95-bound.yaml", &[("p95_latency_ms: 250 ", "p95_latency_ms: 500 ")]);
    assert_eq!(stdout(&metricpact(&["check", bound.to_str().unwrap()])), "");
    // Native: no bucket to decide it -- but whole milliseconds go to the zero bucket below 1 ms.
    let native = default_contract_with("p95-native.yaml", &[("p95_latency_ms: 250 ", "p95_latency_ms: 300 "), ("histogram: classic", "histogram: native")]);
    let out = metricpact(&["check", native.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        stdout(&out),
        format!(
            "{}:{}:16: warning: native histograms put every value within 0.5 of zero into the zero bucket, and Envoy \
             records whole milliseconds: requests faster than 1 ms all count as 0 (a p50 of a fast service reads 0); \
             `unit: microseconds` keeps them apart\n",
            native.display(),
            line_of(&native, "histogram: native")
        )
    );
}

#[test]
fn diff_calls_a_switch_to_native_histograms_breaking_and_both_a_safe_step() {
    let classic = default_contract_with("hist-classic.yaml", &[]);
    let native = default_contract_with("hist-native.yaml", &[("histogram: classic", "histogram: native")]);
    let both = default_contract_with("hist-both.yaml", &[("histogram: classic", "histogram: both")]);
    let run = |a: &Path, b: &Path| {
        let out = metricpact(&["diff", a.to_str().unwrap(), b.to_str().unwrap()]);
        (out.status.code(), unprefixed(&stdout(&out), b))
    };
    let h = "http_server_request_duration_milliseconds";
    assert_eq!(
        run(&classic, &native),
        (
            Some(1),
            format!(
                "breaking[histogram-now-native]: `{h}` is stored as a native histogram only: its `_bucket` series are gone, so \
                 queries with `_bucket` and `by (le)` find nothing; move over with `histogram: both` first (both shapes are \
                 stored), then `native`\n\
                 \x20   breaks: KEDA trigger p95-latency ({h}_bucket)\n\
                 \x20   breaks: prometheus-adapter external rule {h}_bucket -> {h}_p95\n\
                 \x20   breaks: HPA External metric {h}_p95\n\
                 \x20   breaks: recording rule namespace_pod:{h}:p95_*\n"
            )
        )
    );
    assert_eq!(
        run(&classic, &both),
        (
            Some(0),
            format!(
                "compatible[histogram-mode-changed]: `{h}` is now stored as classic and native histograms (both): the existing \
                 series stay; rendered queries read the native one\n"
            )
        )
    );
    assert_eq!(run(&native, &classic).0, Some(1));
    assert!(run(&native, &classic).1.starts_with("breaking[histogram-now-classic]: "));
    assert_eq!(run(&both, &native).0, Some(1));
}

/// The shipped default contract with its request counter and `url_scheme` label renamed, the
/// renames declared as migrations ending on `sunset`; returns the file and the sunset's line.
fn migrating_contract(name: &str, sunset: &str) -> (PathBuf, usize) {
    let base = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("contracts/http-server.yaml")).unwrap();
    let renamed = base
        .replace("name: http_server_requests_total     # must end in _total", "name: http_requests_total")
        .replace("  - name: url_scheme\n", "  - name: http_scheme\n")
        .replace("labels: [http_request_method, url_scheme,", "labels: [http_request_method, http_scheme,");
    assert_ne!(renamed, base);
    let text = format!(
        "{renamed}migrations:\n  - metric: http_server_requests_total\n    renamed_to: http_requests_total\n    sunset: {sunset}\n  - label: url_scheme\n    renamed_to: http_scheme\n    sunset: {sunset}\n    note: dashboards team moves first\n"
    );
    let line = renamed.lines().count() + 4;
    (temp_contract(name, &text), line)
}

fn metricpact_on(today: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_metricpact")).env("METRICPACT_TODAY", today).args(args).output().expect("run metricpact")
}

#[test]
fn check_judges_migrations_by_their_sunset() {
    let (file, line) = migrating_contract("migrating.yaml", "2027-02-01");
    let path = file.to_str().unwrap();
    let out = metricpact_on("2026-11-23", &["check", path]);
    assert_eq!((out.status.code(), stdout(&out).as_str()), (Some(0), ""));
    let out = metricpact_on("2027-01-31", &["check", path]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        stdout(&out),
        format!(
            "{path}:{line}:13: warning: metric `http_server_requests_total` stops being emitted in 1 day (2027-02-01): move what still queries it to `http_requests_total`\n\
             {path}:{}:13: warning: label `url_scheme` stops being emitted in 1 day (2027-02-01): move what still queries it to `http_scheme`\n",
            line + 3
        )
    );
    assert_eq!(metricpact_on("2027-01-31", &["check", "--strict", path]).status.code(), Some(1));
    let out = metricpact_on("2027-02-01", &["check", path]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).starts_with(&format!(
        "{path}:{line}:13: error: the migration of metric `http_server_requests_total` to `http_requests_total` ended on 2027-02-01: remove it (and the old name's last users)\n"
    )), "{}", stdout(&out));
    let out = metricpact_on("2027-2-1", &["check", path]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("METRICPACT_TODAY=`2027-2-1` is not a YYYY-MM-DD date"), "{}", stdout(&out));
}

#[test]
fn bad_migrations_are_reported_where_they_are() {
    let base = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("contracts/http-server.yaml")).unwrap();
    let line = base.lines().count();
    let text = format!(
        "{base}migrations:\n  - metric: http_old_total\n    renamed_to: http_nope_total\n    sunset: 2099-01-01\n  - label: http_route\n    renamed_to: url_scheme\n    sunset: 2099-01-01\n  - label: pod\n    renamed_to: http_route\n    sunset: 2099-01-01\n  - metric: x_total\n    label: y\n    renamed_to: http_route\n    sunset: 2099-01-01\n  - label: old_route\n    renamed_to: http_route\n    sunset: 2099-02-30\n"
    );
    let file = temp_contract("bad-migrations.yaml", &text);
    let path = file.to_str().unwrap();
    let out = metricpact_on("2026-11-23", &["check", path]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stdout(&out),
        format!(
            "{path}:{}:17: error[migration-new-unknown]: `http_nope_total` is not a traffic metric of this contract (and the contract has no `exposition` section)\n\
             {path}:{}:12: error[migration-old-current]: `http_route` is still a label of this contract: a migration keeps an old name alive beside a new one\n\
             {path}:{}:12: error[migration-label-conflict]: label `pod` collides with the `pod` target label Prometheus attaches to every scraped series; use a distinct name such as `k8s_pod_name`\n\
             {path}:{}:5: error: a migration needs exactly one of `metric` or `label` (the old name)\n\
             {path}:{}:13: error: sunset `2099-02-30` is not a date in the form YYYY-MM-DD\n",
            line + 3, line + 5, line + 8, line + 11, line + 17
        )
    );
}

#[test]
fn diff_accepts_renames_declared_as_migrations() {
    let old = Path::new(env!("CARGO_MANIFEST_DIR")).join("contracts/http-server.yaml");
    let (new, _) = migrating_contract("diff-migrating.yaml", "2027-02-01");
    let out = metricpact_on("2026-11-23", &["diff", old.to_str().unwrap(), new.to_str().unwrap()]);
    assert_eq!(
        (out.status.code(), unprefixed(&stdout(&out), &new).as_str()),
        (
            Some(0),
            "compatible[metric-migrated]: request counter renamed from `http_server_requests_total` to `http_requests_total` with a migration: both names are emitted until 2027-02-01; move queries on `http_server_requests_total` before then\n\
             compatible[label-migrated]: label `url_scheme` renamed to `http_scheme` with a migration: series carry both until 2027-02-01\n\
             compatible[label-added]: label `http_scheme` added: existing series split, sums are unchanged\n"
        )
    );
    // Once the sunset has passed the new contract no longer compiles, so diff cannot pass it.
    let out = metricpact_on("2027-02-01", &["diff", old.to_str().unwrap(), new.to_str().unwrap()]);
    // A contract with errors is a finding (1) in diff too, as in every command.
    assert_eq!(out.status.code(), Some(1));
    // The compiled configuration carries the migrations and the Envoy stats config extracts the old label.
    let compiled = metricpact_on("2026-11-23", &["compile", new.to_str().unwrap()]);
    let config = PluginConfig::from_json(&compiled.stdout).unwrap();
    let migrations: Vec<_> = config.migrations.iter().map(|m| (m.old.as_str(), m.new.as_str(), m.sunset_unix)).collect();
    assert_eq!(migrations, [("http_server_requests_total", "http_requests_total", 1_801_440_000), ("url_scheme", "http_scheme", 1_801_440_000)]);
    let stats = stdout(&metricpact_on("2026-11-23", &["envoy-stats", new.to_str().unwrap()]));
    assert!(stats.contains("\"tag_name\": \"url_scheme\""), "{stats}");
}

#[test]
fn regex_renames_must_make_valid_metric_names() {
    // Found by the `contract` fuzz target: check accepted `to: no t`, which the filter refuses.
    let text = "format: metricpact/v1\nname: renames\nversion: 1.0.0\nexposition:\n  rename_metrics:\n    - {regex: '(.+)_ms', to: '${1}_milliseconds'}\n    - {regex: '(.+)_a', to: 'no t'}\n    - {regex: '(.+)_b', to: '9$1'}\n    - {regex: '(.+)_c', to: '${1}-c'}\n    - {regex: '(.+)_d', to: '$$1'}\n";
    let file = temp_contract("bad-renames.yaml", text);
    let path = file.to_str().unwrap();
    let out = metricpact(&["check", path]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stdout(&out),
        format!(
            "{path}:7:29: error[rename-template-name]: `no t` is not a valid Prometheus metric name\n\
             {path}:8:29: error[rename-template-name]: `9$1` cannot make a valid Prometheus metric name: it starts with a digit\n\
             {path}:9:29: error[rename-template-name]: `${{1}}-c` cannot make a valid Prometheus metric name: `-` outside the captures\n\
             {path}:10:29: error[rename-template-name]: `$$1` cannot make a valid Prometheus metric name: `$` outside the captures\n"
        )
    );
}

#[test]
fn a_structural_error_serde_gives_no_position_for_is_placed_by_the_yaml_parser() {
    // Found by the `contract` fuzz target: serde reports a duplicate field that the YAML parser
    // (keys spelled differently behind a tag) did not, and gives no position. The file also
    // breaks YAML further down, which the YAML parser reports with its position.
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus/contract/regression-duplicate-field-without-position.yaml");
    let path = file.to_str().unwrap();
    let out = metricpact(&["check", path]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), format!("{path}:10:11: error: mapping values are not allowed in this context\n"));
}

#[test]
fn check_says_where_grpc_sources_cannot_work() {
    // A gRPC source behind one that always has a value is dead; gRPC calls are POSTs.
    let file = temp_contract(
        "grpc-misuse.yaml",
        "format: metricpact/v1\nname: g\nversion: '1'\nlabels:\n  - name: rpc_method\n    from: [request.route, request.grpc_method]\n  \
         - name: http_request_method\n    from: request.method\nmethods: [GET]\n",
    );
    let out = metricpact(&["check", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let f = file.display();
    assert_eq!(
        stdout(&out),
        format!(
            "{f}:6:11: warning: `request.route` always has a value, so `request.grpc_method` after it is never used; put the \
             gRPC source first: it has a value for gRPC requests only, and the others fall through to the next\n\
             {f}:9:10: warning: label `rpc_method` reads gRPC calls, and every gRPC call is a POST, but `methods` lacks POST: \
             `request.method` reads `_OTHER` for all of them; add POST\n"
        )
    );
    // In the right order, with POST: nothing to say; the shipped gRPC contract is clean.
    let good = temp_contract(
        "grpc-ok.yaml",
        "format: metricpact/v1\nname: g\nversion: '1'\nlabels:\n  - name: rpc_method\n    from: [request.grpc_method, request.route]\nmethods: [POST]\n",
    );
    assert_eq!(stdout(&metricpact(&["check", good.to_str().unwrap()])), "");
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("contracts/grpc-service.yaml");
    let out = metricpact(&["check", "--strict", shipped.to_str().unwrap()]);
    assert_eq!((out.status.code(), stdout(&out)), (Some(0), String::new()));
}

#[test]
fn diff_says_removing_error_type_breaks_the_error_ratio_rule() {
    let old = default_contract_with("errors-old.yaml", &[]);
    let new = default_contract_with("errors-new.yaml", &[("  - name: error_type\n    from: response.error_type\n", "")]);
    let out = metricpact(&["diff", old.to_str().unwrap(), new.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        unprefixed(&stdout(&out), &new),
        "breaking[label-removed]: label `error_type` is gone: queries, dashboards and alerts selecting or grouping by it break\n\
         \x20   breaks: recording rule namespace_pod:http_server_requests:error_ratio_rate*\n"
    );
}
