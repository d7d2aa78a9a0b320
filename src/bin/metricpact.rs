//! The `metricpact` command line: check contracts, compile them to the filter's plugin
//! configuration, print the Envoy stats configuration they need. Exit codes, the same for every
//! command ([`EXIT_CODES`]): 0 clean, 1 findings, 2 unusable input or usage error.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use metricpact::contract::compile::{compile_file, to_json, Compiled};
use metricpact::contract::findings::{self, Severity};

/// The exit-code convention, shown in every command's `--help`.
const EXIT_CODES: &str = "Exit codes: 0 clean; 1 findings (contract errors, violations, breaking changes, a body left \
unchanged); 2 unusable input (a file that cannot be read, an exposition that does not parse) or a usage error.";

#[derive(Parser)]
#[command(name = "metricpact", version, about = "Enforce a metrics contract in every Envoy/Istio sidecar", propagate_version = true, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate contracts; prints `file:line:col: severity: message` per problem, exits 1 on any error.
    #[command(after_help = EXIT_CODES)]
    Check {
        /// Contract files (YAML).
        #[arg(required_unless_present = "contract", value_name = "CONTRACT")]
        files: Vec<PathBuf>,
        /// A contract file, as every command takes it (repeatable; the same as a positional one).
        #[arg(long = "contract", value_name = "CONTRACT")]
        contract: Vec<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Treat warnings as errors.
        #[arg(long)]
        strict: bool,
        /// Also check the routes against an OpenAPI 3.x or Swagger 2.0 document (YAML or JSON): an
        /// error, at the document's path, for each operation whose example request the contract
        /// does not route to that path's own template.
        #[arg(long, value_name = "SPEC")]
        openapi: Option<PathBuf>,
    },
    /// Print the plugin configuration JSON the filter consumes (Envoy `configuration` value).
    #[command(after_help = EXIT_CODES)]
    Compile {
        #[command(flatten)]
        contract: ContractArg,
        /// Indent the JSON.
        #[arg(long)]
        pretty: bool,
    },
    /// Print the Envoy bootstrap `stats_config` (tag extraction, histogram buckets) for a contract.
    #[command(after_help = EXIT_CODES)]
    EnvoyStats {
        #[command(flatten)]
        contract: ContractArg,
    },
    /// Render Istio (EnvoyFilter, WasmPlugin, TrafficExtension, proxy config) and autoscaling
    /// (KEDA, prometheus-adapter, HPA, recording rules) manifests for a contract.
    #[command(after_help = EXIT_CODES)]
    Render(RenderArgs),
    /// Write metricpact.wasm as an OCI image layout istio-agent can pull (push it with
    /// `skopeo copy`, `oras cp --from-oci-layout` or `crane push`), and print the image manifest
    /// digest: the `--wasm-sha256` of `render --wasm-url oci://…`.
    #[command(after_help = EXIT_CODES)]
    Package {
        /// Directory of the OCI image layout (created if missing; an earlier layout is replaced).
        #[arg(long)]
        out: PathBuf,
        /// The module to package.
        #[arg(long, default_value = "target/wasm32-wasip1/release/metricpact.wasm")]
        wasm: PathBuf,
        /// Tag of the image in the layout.
        #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
        tag: String,
    },
    /// Print the JSON Schema of the contract format (for editors: yaml-language-server).
    #[command(after_help = EXIT_CODES)]
    Schema,
    /// Check an exposition (a sidecar's /stats/prometheus, or an app's /metrics) against a
    /// contract; findings have a severity and a rule id; exits 1 on a violation.
    #[command(after_help = EXIT_CODES)]
    Verify {
        #[command(flatten)]
        contract: ContractArg,
        /// A saved exposition; `-` or nothing (without --url) reads stdin.
        #[arg(value_name = "FILE", conflicts_with = "url")]
        input: Option<PathBuf>,
        /// The same as the positional FILE (the earlier spelling).
        #[arg(long, hide = true, conflicts_with_all = ["url", "input"])]
        file: Option<PathBuf>,
        /// Scrape this http:// URL.
        #[arg(long)]
        url: Option<String>,
        /// `sidecar`: the traffic metrics and their labels; `app`: the exposition's required metrics
        /// and the policy; `cross-check`: the policy's honesty checks over a window (--app-url and
        /// --sidecar-url scraped twice, or --prometheus).
        #[arg(long, value_enum, default_value_t = VerifyTarget::Sidecar)]
        target: VerifyTarget,
        /// cross-check: the app's metrics endpoint as Prometheus scrapes it (through the sidecar,
        /// so the rewrite applies), e.g. http://POD:8080/metrics.
        #[arg(long, requires = "sidecar_url", conflicts_with_all = ["url", "input", "prometheus"])]
        app_url: Option<String>,
        /// cross-check: the sidecar's metrics, e.g. http://POD:15090/stats/prometheus.
        #[arg(long, requires = "app_url")]
        sidecar_url: Option<String>,
        /// cross-check: a Prometheus scraping both (http://HOST:9090); the window ends at --end.
        #[arg(long, conflicts_with_all = ["url", "input"])]
        prometheus: Option<String>,
        /// cross-check with --prometheus: label matchers both metrics are selected by, e.g.
        /// `namespace="shop",pod=~"cart-.*"`.
        #[arg(long, default_value = "", requires = "prometheus")]
        selector: String,
        /// cross-check: how long the window is (`30s`, `5m`, `1h`). Default 30s between two
        /// scrapes, 5m with --prometheus.
        #[arg(long)]
        window: Option<String>,
        /// cross-check with --prometheus: when the window ends (Unix seconds; default now).
        #[arg(long, requires = "prometheus")]
        end: Option<f64>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Classify every change between two contract versions as breaking or compatible, naming the
    /// rendered autoscaling objects each breaking change would break; exits 1 on a breaking change.
    #[command(after_help = EXIT_CODES)]
    Diff {
        /// The contract before the change (e.g. from the base branch).
        old: PathBuf,
        /// The contract after the change.
        new: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Apply a contract's `exposition` rewrite to a saved scrape (FILE, or - for stdin), exactly as
    /// the filter does in the sidecar, and print the result.
    #[command(after_help = EXIT_CODES)]
    Rewrite {
        #[command(flatten)]
        contract: ContractArg,
        /// Saved exposition; `-` or nothing reads stdin.
        #[arg(value_name = "FILE")]
        file: Option<PathBuf>,
        /// The Content-Type the app sent: the output format is then decided as the sidecar decides
        /// it (OpenMetrics only when this says so; an OpenMetrics body announced otherwise is
        /// converted to text); `none` stands for a response without one. Without this option,
        /// the format is detected from the body.
        #[arg(long)]
        content_type: Option<String>,
        /// Values for node metadata sources of injected labels, KEY=VALUE or KEY.FIELD=VALUE.
        #[arg(long = "node", value_name = "KEY=VALUE")]
        node: Vec<String>,
    },
    /// Generate the `routes:` section from an OpenAPI 3.x or Swagger 2.0 document (YAML or JSON):
    /// a rule per path whose template is the path template, literal segments before parameters.
    /// Prints the section; with a CONTRACT, the contract with its `routes:` block replaced.
    #[command(after_help = EXIT_CODES)]
    Routes {
        /// Contract file (YAML) whose `routes:` block to replace (or add): printed with the new
        /// block (or written, with --write); its `unmatched` and `raw_max_length` are kept,
        /// every other line stays as it is. Without it, only the block is printed.
        #[arg(value_name = "CONTRACT")]
        contract: Option<PathBuf>,
        /// The same as the positional CONTRACT.
        #[arg(long = "contract", value_name = "CONTRACT")]
        contract_option: Option<PathBuf>,
        /// The OpenAPI or Swagger document.
        #[arg(long, value_name = "SPEC")]
        openapi: PathBuf,
        /// Write the contract in place, once it checks clean with the new block, instead of
        /// printing it.
        #[arg(long)]
        write: bool,
    },
}

/// The contract a command reads: a positional CONTRACT or `--contract CONTRACT`, the same in
/// every command (`render`, `verify` and `rewrite` took only the option before).
#[derive(clap::Args)]
struct ContractArg {
    /// Contract file (YAML).
    #[arg(value_name = "CONTRACT", required_unless_present = "contract_option")]
    contract: Option<PathBuf>,
    /// The same as the positional CONTRACT.
    #[arg(long = "contract", value_name = "CONTRACT", id = "contract_option")]
    contract_option: Option<PathBuf>,
}

impl ContractArg {
    /// The contract, and the command's positional FILE. With `--contract C FILE` clap puts FILE
    /// in the CONTRACT position: it is then the file.
    fn resolve(self, file: Option<PathBuf>) -> anyhow::Result<(PathBuf, Option<PathBuf>)> {
        match (self.contract_option, self.contract, file) {
            (Some(c), positional, None) => Ok((c, positional)),
            (Some(_), Some(_), Some(_)) => anyhow::bail!("usage: the contract is given twice (positional and --contract)"),
            (Some(c), None, file) => Ok((c, file)),
            (None, Some(c), file) => Ok((c, file)),
            (None, None, _) => anyhow::bail!("usage: no contract given"),
        }
    }

    /// The contract of a command that takes no other file.
    fn only(self) -> anyhow::Result<PathBuf> {
        match self.resolve(None)? {
            (c, None) => Ok(c),
            (_, Some(_)) => anyhow::bail!("usage: the contract is given twice (positional and --contract)"),
        }
    }
}

#[derive(clap::Args)]
struct RenderArgs {
    #[command(flatten)]
    contract: ContractArg,
    /// Write one file per object kind into this directory (created if missing) instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Namespace of the workload and the rendered objects (default: the contract's, else
    /// istio-system, which applies the filter mesh-wide).
    #[arg(long)]
    namespace: Option<String>,
    /// Pod label selecting the workload's sidecars, KEY=VALUE; repeatable (default: the contract's).
    #[arg(long = "selector", value_name = "KEY=VALUE")]
    selector: Vec<String>,
    /// Workload to autoscale (default: the contract's workload.target).
    #[arg(long)]
    workload: Option<String>,
    /// Kind of --workload: Deployment, StatefulSet or Rollout (Argo Rollouts).
    #[arg(long, default_value = "Deployment", requires = "workload")]
    workload_kind: String,
    /// Path of metricpact.wasm inside the sidecar (local-file mode, the default).
    #[arg(long, default_value = metricpact::render::DEFAULT_WASM_FILE, conflicts_with = "wasm_url")]
    wasm_file: String,
    /// Download the module from this https:// or oci:// URL instead. An oci:// URL may pin the
    /// image by digest (oci://REGISTRY/REPO@sha256:HEX); otherwise give --wasm-sha256.
    #[arg(long)]
    wasm_url: Option<String>,
    /// What istio-agent verifies the module against (64 hex digits): for https:// the file's
    /// sha256 (sha256sum metricpact.wasm); for oci:// the image MANIFEST digest, which
    /// `metricpact package` prints (not the .wasm file's sha256: that one never matches).
    #[arg(long, requires = "wasm_url")]
    wasm_sha256: Option<String>,
    /// Prometheus URL for KEDA (default: the contract's autoscaling.prometheus_url).
    #[arg(long)]
    prometheus_url: Option<String>,
    /// A file with the pod's current `proxy.istio.io/config` value (ProxyConfig YAML; `-` for
    /// stdin): the rendered patch keeps it and adds metricpact's extraStatTags, instead of
    /// replacing it.
    #[arg(long, value_name = "FILE")]
    proxy_config: Option<PathBuf>,
    /// Label of the rendered PodMonitor and PrometheusRule, KEY=VALUE, repeatable: what your
    /// Prometheus Operator's podMonitorSelector/ruleSelector match (default:
    /// release=kube-prometheus-stack, kube-prometheus-stack's default for that release name).
    #[arg(long = "monitor-label", value_name = "KEY=VALUE")]
    monitor_labels: Vec<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum VerifyTarget {
    Sidecar,
    App,
    CrossCheck,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// One line per finding: `file:line:col: severity[rule]: message`
    Text,
    /// One JSON document: `{"ok": bool, "findings": [...]}`
    Json,
    /// GitHub Actions workflow commands (`::error file=…,line=…,col=…::message`), shown on the PR diff
    Github,
}

impl From<Format> for findings::Format {
    fn from(f: Format) -> findings::Format {
        match f {
            Format::Text => findings::Format::Text,
            Format::Json => findings::Format::Json,
            Format::Github => findings::Format::Github,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("metricpact: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match cli.command {
        Command::Check { mut files, contract, format, strict, openapi } => {
            files.extend(contract);
            let mut failed = false;
            let mut unreadable = false;
            let mut all = Vec::new();
            // --openapi: the document is read once; one that cannot be used is unusable input (2).
            let spec = openapi.as_deref().map(metricpact::contract::openapi::load);
            if let Some(read) = &spec {
                let found = match read {
                    Ok(spec) => spec.warnings.clone(),
                    Err(problems) => problems.clone(),
                };
                unreadable |= read.is_err();
                failed |= found.iter().any(|d| d.severity == Severity::Error || (strict && d.severity == Severity::Warning));
                all.extend(found);
            }
            for file in &files {
                let mut compiled = compile_file(file);
                if let (Some(Ok(spec)), Some(config)) = (&spec, &compiled.config) {
                    compiled.diagnostics.extend(metricpact::contract::openapi::coverage(spec, file, &config.routes));
                }
                unreadable |= compiled.unreadable;
                failed |= compiled
                    .diagnostics
                    .iter()
                    .any(|d| d.severity == Severity::Error || (strict && d.severity == Severity::Warning));
                all.extend(compiled.diagnostics);
            }
            findings::write(&mut out, format.into(), findings::Command::Check, &all, !failed, Default::default())?;
            if !failed && format == Format::Text {
                eprintln!("metricpact: {} contract(s) OK", files.len());
            }
            // A file that cannot be read is unusable input (2), not a finding about a contract (1).
            Ok(if unreadable { ExitCode::from(2) } else if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
        }
        Command::Compile { contract, pretty } => {
            let config = match usable(compile_file(&contract.only()?)) {
                Ok(config) => config,
                Err(code) => return Ok(code),
            };
            writeln!(out, "{}", to_json(&config, pretty))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Render(args) => render(args, &mut out),
        Command::Diff { old, new, format } => diff(&old, &new, format, &mut out),
        Command::Verify { contract, input, file, url, target, format, app_url, sidecar_url, prometheus, selector, window, end } => {
            if matches!(target, VerifyTarget::CrossCheck) {
                if input.is_some() || file.is_some() || url.is_some() {
                    anyhow::bail!("--target cross-check scrapes --app-url and --sidecar-url (or reads --prometheus): it takes no FILE or --url");
                }
                let source = match (app_url, sidecar_url, prometheus) {
                    (Some(app), Some(sidecar), None) => CountSource::Scrapes { app, sidecar },
                    (None, None, Some(url)) => CountSource::Prometheus { url, selector, end },
                    _ => anyhow::bail!("--target cross-check needs --app-url and --sidecar-url (two scrapes of each), or --prometheus URL"),
                };
                return cross_check(&contract.only()?, source, window.as_deref(), format, &mut out);
            }
            if app_url.is_some() || prometheus.is_some() || window.is_some() {
                anyhow::bail!("--app-url, --sidecar-url, --prometheus and --window are for --target cross-check");
            }
            let (contract, input) = if url.is_some() { (contract.only()?, None) } else { contract.resolve(input.or(file))? };
            verify(&contract, input, url, target, format, &mut out)
        }
        Command::Package { out: dir, wasm, tag } => package(&dir, &wasm, &tag, &mut out),
        Command::Schema => {
            writeln!(out, "{}", serde_json::to_string_pretty(&metricpact::contract::model::json_schema())?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Rewrite { contract, file, content_type, node } => {
            let (contract, file) = contract.resolve(file)?;
            rewrite(&contract, file, content_type, &node, &mut out)
        }
        Command::Routes { contract, contract_option, openapi, write } => {
            let contract = match (contract, contract_option) {
                (Some(_), Some(_)) => anyhow::bail!("usage: the contract is given twice (positional and --contract)"),
                (a, b) => a.or(b),
            };
            if write && contract.is_none() {
                anyhow::bail!("usage: --write needs the contract to write");
            }
            routes(&openapi, contract.as_deref(), write, &mut out)
        }
        Command::EnvoyStats { contract } => {
            let config = match usable(compile_file(&contract.only()?)) {
                Ok(config) => config,
                Err(code) => return Ok(code),
            };
            writeln!(out, "{}", serde_json::to_string_pretty(&metricpact::envoy_stats::stats_config(&config))?)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Prints diagnostics to stderr; returns the configuration if there was no error.
fn compiled_or_report(compiled: Compiled) -> Option<metricpact::config::PluginConfig> {
    for d in &compiled.diagnostics {
        eprintln!("{d}");
    }
    compiled.config
}

/// [`compiled_or_report`], or the exit code of a contract that cannot be used: 2 when the file
/// cannot be read (unusable input), 1 when it has errors (findings).
fn usable(compiled: Compiled) -> Result<metricpact::config::PluginConfig, ExitCode> {
    let unreadable = compiled.unreadable;
    compiled_or_report(compiled).ok_or(ExitCode::from(if unreadable { 2 } else { 1 }))
}

fn render(args: RenderArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    use metricpact::contract::deploy::Target;
    use metricpact::render::{render, to_yaml, Inputs, WasmSource};

    let compiled = compile_file(&args.contract.only()?);
    let deployment = compiled.deployment.clone();
    let config = match usable(compiled) {
        Ok(config) => config,
        Err(code) => return Ok(code),
    };
    let wasm = match args.wasm_url {
        Some(url) => WasmSource::Remote { sha256: module_checksum(&url, args.wasm_sha256.as_deref())?, url },
        None => WasmSource::File(args.wasm_file),
    };
    let existing_proxy_config = match &args.proxy_config {
        None => None,
        Some(path) if path.as_os_str() == "-" => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
            Some(text)
        }
        Some(path) => Some(std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?),
    };
    let mut monitor_labels = std::collections::BTreeMap::new();
    for pair in &args.monitor_labels {
        let Some((k, v)) = pair.split_once('=') else { anyhow::bail!("--monitor-label takes KEY=VALUE, got `{pair}`") };
        monitor_labels.insert(k.to_string(), v.to_string());
    }
    if args.monitor_labels.is_empty() {
        let (k, v) = metricpact::render::DEFAULT_MONITOR_LABEL;
        monitor_labels.insert(k.to_string(), v.to_string());
    }
    let mut selector = deployment.workload.selector.clone();
    if !args.selector.is_empty() {
        selector.clear();
        for pair in &args.selector {
            let Some((k, v)) = pair.split_once('=') else { anyhow::bail!("--selector takes KEY=VALUE, got `{pair}`") };
            selector.insert(k.to_string(), v.to_string());
        }
    }
    let target = match args.workload {
        Some(name) => {
            let kinds = metricpact::contract::deploy::TARGET_KINDS;
            if !kinds.iter().any(|(k, _)| *k == args.workload_kind) {
                let known: Vec<&str> = kinds.iter().map(|(k, _)| *k).collect();
                anyhow::bail!("--workload-kind must be one of {}, got `{}`", known.join(", "), args.workload_kind);
            }
            Some(Target { kind: args.workload_kind, name })
        }
        None => deployment.workload.target.clone(),
    };
    let inputs = Inputs {
        server: &config,
        deployment: &deployment,
        namespace: args.namespace.or(deployment.workload.namespace.clone()),
        selector,
        target,
        wasm,
        prometheus_url: args.prometheus_url,
        existing_proxy_config,
        monitor_labels,
    };
    let files = render(&inputs).map_err(|e| match &args.proxy_config {
        Some(path) => anyhow::anyhow!("{}: {e}", path.display()),
        None => anyhow::anyhow!(e),
    })?;
    match args.out {
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            for file in &files {
                let path = dir.join(file.file);
                std::fs::write(&path, to_yaml(file).map_err(anyhow::Error::msg)?)?;
                eprintln!("metricpact: wrote {}", path.display());
            }
        }
        None => {
            for (i, file) in files.iter().enumerate() {
                if i > 0 {
                    writeln!(out, "---")?;
                }
                write!(out, "{}", to_yaml(file).map_err(anyhow::Error::msg)?)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn package(dir: &std::path::Path, wasm: &std::path::Path, tag: &str, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let module = std::fs::read(wasm).map_err(|e| anyhow::anyhow!("{}: {e}", wasm.display()))?;
    let package = metricpact::oci::Package::new(&module, tag).map_err(|e| anyhow::anyhow!("{}: {e}", wasm.display()))?;
    package.write_layout(dir).map_err(anyhow::Error::msg)?;
    let digest = package.manifest_digest();
    let hex = digest.trim_start_matches("sha256:");
    let layout = dir.display();
    eprintln!("metricpact: wrote the OCI image layout {layout} ({tag}: {} bytes of {}, layer {})", module.len(), wasm.display(), metricpact::oci::LAYER_MEDIA_TYPE);
    eprintln!("metricpact: push it, keeping its digest:");
    eprintln!("  skopeo copy --preserve-digests oci:{layout}:{tag} docker://REGISTRY/metricpact:{tag}");
    eprintln!("  oras cp --from-oci-layout {layout}:{tag} REGISTRY/metricpact:{tag}");
    eprintln!("metricpact: then render with the manifest digest (not sha256sum of the .wasm):");
    eprintln!("  metricpact render ... --wasm-url oci://REGISTRY/metricpact:{tag} --wasm-sha256 {hex}");
    writeln!(out, "{digest}")?;
    Ok(ExitCode::SUCCESS)
}

/// What istio-agent will verify a remote module against: `--wasm-sha256`, or the digest an
/// `oci://…@sha256:HEX` URL pins (both, if given, must agree).
fn module_checksum(url: &str, sha256: Option<&str>) -> anyhow::Result<String> {
    let is_hex64 = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let oci = url.strip_prefix("oci://");
    if !(url.starts_with("https://") || url.starts_with("http://") || oci.is_some()) {
        anyhow::bail!("--wasm-url must be an https://, http:// or oci:// URL");
    }
    let pinned = match oci.and_then(|rest| rest.rsplit_once("@sha256:")) {
        Some((_, digest)) if is_hex64(digest) => Some(digest.to_string()),
        Some((_, digest)) => anyhow::bail!("--wasm-url pins `sha256:{digest}`, which is not 64 lowercase hex digits"),
        None => None,
    };
    let sha256 = sha256.map(|s| s.strip_prefix("sha256:").unwrap_or(s));
    match (sha256, pinned) {
        (Some(given), _) if !is_hex64(given) => {
            anyhow::bail!("--wasm-sha256 must be 64 lowercase hex digits (for oci://: the manifest digest `metricpact package` prints, without `sha256:`)")
        }
        (Some(given), Some(pinned)) if given != pinned => {
            anyhow::bail!("--wasm-sha256 {given} differs from the digest the URL pins ({pinned}); istio-agent would refuse the module")
        }
        (Some(given), _) => Ok(given.to_string()),
        (None, Some(pinned)) => Ok(pinned),
        (None, None) if oci.is_some() => anyhow::bail!(
            "an oci:// --wasm-url needs the image manifest digest: --wasm-sha256 HEX (printed by `metricpact package`) or oci://REGISTRY/REPO@sha256:HEX"
        ),
        (None, None) => anyhow::bail!("an https:// --wasm-url needs --wasm-sha256 (sha256sum metricpact.wasm)"),
    }
}

fn rewrite(contract: &std::path::Path, file: Option<PathBuf>, content_type: Option<String>, node: &[String], out: &mut impl Write) -> anyhow::Result<ExitCode> {
    use std::io::Read;

    let config = match usable(compile_file(contract)) {
        Ok(config) => config,
        Err(code) => return Ok(code),
    };
    let Some(spec) = &config.exposition else {
        anyhow::bail!("{} has no `exposition` section: nothing to rewrite", contract.display());
    };
    let mut values = std::collections::HashMap::new();
    for pair in node {
        let Some((k, v)) = pair.split_once('=') else { anyhow::bail!("--node takes KEY=VALUE, got `{pair}`") };
        values.insert(k.to_string(), v.as_bytes().to_vec());
    }
    let lookup = |key: &str, field: Option<&str>| {
        let k = match field {
            Some(f) => format!("{key}.{f}"),
            None => key.to_string(),
        };
        values.get(&k).cloned()
    };
    let rewriter = metricpact::exposition::Rewriter::new(spec, &lookup, config.max_value_length as usize).map_err(anyhow::Error::msg)?;
    let mut body = Vec::new();
    match file.as_deref().filter(|p| p.as_os_str() != "-") {
        Some(path) => body = std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
        None => {
            std::io::stdin().read_to_end(&mut body)?;
        }
    }
    let format = match content_type.as_deref() {
        // `none`: the app sent no Content-Type, which the sidecar announces as text.
        Some("none") | Some("") => metricpact::exposition::Format::announced(None),
        Some(ct) => metricpact::exposition::Format::announced(Some(ct)),
        None => metricpact::exposition::Format::detect(None, &body),
    };
    match rewriter.rewrite_as(&body, format) {
        Ok(rewritten) => {
            out.write_all(&rewritten.body)?;
            let stats = &rewritten.stats;
            eprintln!(
                "metricpact: rewritten as {} ({} families dropped, {} series dropped, {} series aggregated{})",
                rewritten.format.content_type(),
                stats.families_dropped,
                stats.series_dropped,
                stats.series_aggregated,
                if stats.aggregation_refused > 0 { format!(", {} label drops refused (gauges)", stats.aggregation_refused) } else { String::new() },
            );
            for i in &stats.missing_required {
                eprintln!("metricpact: required metric `{}` is missing", spec.require_metrics[*i]);
            }
            Ok(if stats.missing_required.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Err(e) => {
            // What the filter does too: pass the body through unchanged, and say why.
            out.write_all(&body)?;
            eprintln!("metricpact: left unchanged: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

/// `routes`: the document's `routes:` section, or the contract with it (printed, or written).
fn routes(spec: &std::path::Path, contract: Option<&std::path::Path>, write: bool, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    use metricpact::contract::load::Source;
    use metricpact::contract::openapi;

    let document = match openapi::load(spec) {
        Ok(document) => document,
        Err(problems) => {
            problems.iter().for_each(|d| eprintln!("{d}"));
            return Ok(ExitCode::from(2));
        }
    };
    document.warnings.iter().for_each(|d| eprintln!("{d}"));
    let shown = spec.display().to_string();
    let Some(contract) = contract else {
        write!(out, "{}", openapi::routes_block(&document, &shown, metricpact::config::Unmatched::Other, None))?;
        return Ok(ExitCode::SUCCESS);
    };
    let source = match Source::read(contract) {
        Ok(source) => source,
        Err((d, unreadable)) => {
            eprintln!("{d}");
            return Ok(ExitCode::from(if unreadable { 2 } else { 1 }));
        }
    };
    let config = match usable(metricpact::contract::compile::compile_source(&source)) {
        Ok(config) => config,
        Err(code) => return Ok(code),
    };
    let update = match openapi::update_contract(&source, &config, &document, &shown) {
        Ok(update) => update,
        Err(problems) => {
            problems.iter().for_each(|d| eprintln!("{d}"));
            eprintln!("metricpact: {} left as it is: with the new routes block it would not check", contract.display());
            return Ok(ExitCode::from(1));
        }
    };
    for rule in &update.dropped {
        eprintln!("metricpact: the new routes block has no rule {rule}: {} does not list that path", spec.display());
    }
    if !write {
        write!(out, "{}", update.text)?;
    } else if update.text == source.text {
        eprintln!("metricpact: {} is up to date", contract.display());
    } else {
        openapi::write_in_place(contract, &update.text).map_err(|e| anyhow::anyhow!("{}: {e}", contract.display()))?;
        eprintln!("metricpact: wrote {} route rules from {} to {}", document.routes.len(), spec.display(), contract.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn diff(old: &std::path::Path, new: &std::path::Path, format: Format, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    use metricpact::contract::diff::diff;
    let old_compiled = compile_file(old);
    let old_deploy = old_compiled.deployment.clone();
    let new_compiled = compile_file(new);
    let new_deploy = new_compiled.deployment.clone();
    let (old_config, new_config) = match (usable(old_compiled), usable(new_compiled)) {
        (Ok(old), Ok(new)) => (old, new),
        // Either contract unreadable: 2; otherwise a broken contract is a finding, 1.
        (Err(a), Err(b)) => return Ok(if a == ExitCode::from(2) || b == ExitCode::from(2) { ExitCode::from(2) } else { a }),
        (Err(code), _) | (_, Err(code)) => return Ok(code),
    };
    let mut changes = diff(&old_config, &old_deploy, &new_config, &new_deploy);
    for c in &mut changes {
        c.file = new.to_path_buf();
    }
    let breaking = changes.iter().any(|c| c.severity == Severity::Error);
    let mut extra = serde_json::Map::new();
    extra.insert("breaking".into(), breaking.into());
    findings::write(out, format.into(), findings::Command::Diff, &changes, !breaking, extra)?;
    if changes.is_empty() && format == Format::Text {
        writeln!(out, "no changes to the metrics contract")?;
    }
    Ok(if breaking { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// GET an http:// URL over a plain TCP connection (no TLS: scrape targets inside the mesh).
/// The body of a GET of `url`, which must answer 200.
fn http_get(url: &str) -> anyhow::Result<Vec<u8>> {
    let (status, body) = http_request(url)?;
    if status != "200" {
        anyhow::bail!("{url}: HTTP status {status}");
    }
    Ok(body)
}

/// The status and body of a GET of `url`.
fn http_request(url: &str) -> anyhow::Result<(String, Vec<u8>)> {
    use std::io::Read;
    let rest = url.strip_prefix("http://").ok_or_else(|| anyhow::anyhow!("{url}: only http:// URLs can be scraped"))?;
    let (host, path) = rest.split_once('/').map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let address = if host.contains(':') { host.to_string() } else { format!("{host}:80") };
    let mut stream = std::net::TcpStream::connect(&address)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/plain;version=0.0.4\r\nAccept-Encoding: identity\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| anyhow::anyhow!("{url}: malformed HTTP response"))?;
    let head = String::from_utf8_lossy(&response[..split]);
    let status = head.split_whitespace().nth(1).unwrap_or("").to_string();
    let body = &response[split + 4..];
    if head.lines().any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.to_ascii_lowercase().contains("chunked")) {
        return Ok((status, dechunk(body).ok_or_else(|| anyhow::anyhow!("{url}: malformed chunked body"))?));
    }
    Ok((status, body.to_vec()))
}

/// Decodes an HTTP/1.1 chunked body.
fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&body[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

fn verify(contract: &std::path::Path, file: Option<PathBuf>, url: Option<String>, target: VerifyTarget, format: Format, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    use metricpact::contract::verify::{verify, Target};
    use std::io::Read;

    let config = match usable(compile_file(contract)) {
        Ok(config) => config,
        Err(code) => return Ok(code),
    };
    let saved = file.clone().filter(|p| p.as_os_str() != "-" && url.is_none());
    let (body, source) = match (file, url) {
        (_, Some(url)) => (http_get(&url)?, url),
        (Some(path), None) if path.as_os_str() != "-" => (std::fs::read(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?, path.display().to_string()),
        _ => {
            let mut body = Vec::new();
            std::io::stdin().read_to_end(&mut body)?;
            (body, "-".to_string())
        }
    };
    let body = String::from_utf8(body).map_err(|_| anyhow::anyhow!("{source}: the exposition is not UTF-8"))?;
    let target = match target {
        VerifyTarget::Sidecar => Target::Sidecar,
        VerifyTarget::App | VerifyTarget::CrossCheck => Target::App,
    };
    let report = verify(&config, &body, target).map_err(|e| anyhow::anyhow!("{source}: {e}"))?;
    // A saved exposition is the file the findings are about (GitHub annotates it when it is in
    // the repository); a URL or stdin is not a file.
    let mut report = report;
    if let Some(path) = &saved {
        for f in &mut report.findings {
            f.file = path.clone();
        }
    }
    let violated = report.findings.iter().any(|f| f.severity == Severity::Error);
    let mut extra = serde_json::Map::new();
    extra.insert(
        "coverage".into(),
        serde_json::json!({"metrics_expected": report.metrics_expected, "metrics_found": report.metrics_found,
                           "labels_expected": report.labels_expected, "labels_seen": report.labels_seen}),
    );
    findings::write(out, format.into(), findings::Command::Verify, &report.findings, !violated, extra)?;
    if format == Format::Text {
        writeln!(
            out,
            "coverage: {}/{} contract metrics present, {}/{} contract labels seen",
            report.metrics_found, report.metrics_expected, report.labels_seen, report.labels_expected
        )?;
    }
    Ok(if violated { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// Where a cross-check's counts come from.
enum CountSource {
    /// Both endpoints scraped at the window's start and end.
    Scrapes { app: String, sidecar: String },
    /// Instant queries at the window's start and end.
    Prometheus { url: String, selector: String, end: Option<f64> },
}

/// `30s`, `5m`, `1h` (or plain seconds) in seconds.
fn window_seconds(window: &str) -> anyhow::Result<u64> {
    let (digits, unit) = match window.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => window.split_at(i),
        None => (window, "s"),
    };
    let n: u64 = digits.parse().map_err(|_| anyhow::anyhow!("--window `{window}`: expected a duration like 30s, 5m or 1h"))?;
    let seconds = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        _ => None,
    }
    .ok_or_else(|| anyhow::anyhow!("--window `{window}`: expected a duration like 30s, 5m or 1h"))?;
    if seconds == 0 {
        anyhow::bail!("--window must be longer than 0");
    }
    Ok(seconds)
}

/// `verify --target cross-check`: every honesty check of the contract's policy over one window.
fn cross_check(contract: &std::path::Path, source: CountSource, window: Option<&str>, format: Format, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    use metricpact::contract::crosscheck::{snapshot, snapshot_of_query, Side};

    let compiled = compile_file(contract);
    let checks = compiled.deployment.cross_checks.clone();
    if let Err(code) = usable(compiled) {
        return Ok(code);
    }
    if checks.is_empty() {
        eprintln!("{}: the contract's policy has no cross_checks", contract.display());
        return Ok(ExitCode::from(2));
    }
    let default = if matches!(source, CountSource::Prometheus { .. }) { "5m" } else { "30s" };
    let seconds = window_seconds(window.unwrap_or(default))?;
    let label = format!("{seconds} s");
    let mut findings = Vec::new();
    match source {
        CountSource::Scrapes { app, sidecar } => {
            // Both endpoints at (nearly) the same instant: a request finishing between the two
            // scrapes would count on one side only.
            let both = || -> anyhow::Result<(String, String)> {
                let (a, s) = std::thread::scope(|scope| {
                    let a = scope.spawn(|| http_get(&app));
                    let s = scope.spawn(|| http_get(&sidecar));
                    (a.join(), s.join())
                });
                let text = |body: anyhow::Result<Vec<u8>>, url: &str| -> anyhow::Result<String> {
                    String::from_utf8(body?).map_err(|_| anyhow::anyhow!("{url}: the exposition is not UTF-8"))
                };
                Ok((text(a.map_err(|_| anyhow::anyhow!("{app}: scrape failed"))?, &app)?, text(s.map_err(|_| anyhow::anyhow!("{sidecar}: scrape failed"))?, &sidecar)?))
            };
            let (app0, sidecar0) = both()?;
            eprintln!("metricpact: cross-check: first scrapes done; the second in {seconds} s");
            std::thread::sleep(std::time::Duration::from_secs(seconds));
            let (app1, sidecar1) = both()?;
            for check in &checks {
                let counts = |side: Side, before: &str, after: &str, url: &str| -> anyhow::Result<Result<_, String>> {
                    let metric = check.metric(side);
                    let before = snapshot(before, metric).map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
                    let after = snapshot(after, metric).map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
                    Ok(check.increase(side, &before, &after))
                };
                match (counts(Side::App, &app0, &app1, &app)?, counts(Side::Sidecar, &sidecar0, &sidecar1, &sidecar)?) {
                    (Ok(a), Ok(s)) => findings.extend(check.judge(&a, &s, &label)),
                    (Err(e), _) | (_, Err(e)) => findings.push(reset_finding(check, e)),
                }
            }
        }
        CountSource::Prometheus { url, selector, end } => {
            let end = match end {
                Some(end) => end,
                None => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs_f64(),
            };
            let start = end - seconds as f64;
            for check in &checks {
                let mut counts = Vec::new();
                let mut reset = None;
                for side in [Side::App, Side::Sidecar] {
                    let (at_start, at_end) = check.prometheus_queries(side, &selector, seconds);
                    let read = |query: &str, time: f64| -> anyhow::Result<_> {
                        snapshot_of_query(&prometheus_query(&url, query, time)?).map_err(|e| anyhow::anyhow!("{url}: `{query}`: {e}"))
                    };
                    let (before, after) = (read(&at_start, start)?, read(&at_end, end)?);
                    let (to_end, to_start) = check.prometheus_resets_queries(side, &selector, seconds);
                    let total = |query: &str, time: f64| -> anyhow::Result<f64> { Ok(read(query, time)?.first().map_or(0.0, |(_, v)| *v)) };
                    let resets = total(&to_end, end)? - total(&to_start, start)?;
                    if resets > 0.0 {
                        reset = Some(format!("`{}` was reset {resets} times in the window (a restart)", check.metric(side)));
                        break;
                    }
                    match check.increase(side, &before, &after) {
                        Ok(groups) => counts.push(groups),
                        Err(e) => {
                            reset = Some(e);
                            break;
                        }
                    }
                }
                match (reset, &counts[..]) {
                    (Some(e), _) => findings.push(reset_finding(check, e)),
                    (None, [app, sidecar]) => findings.extend(check.judge(app, sidecar, &label)),
                    (None, _) => {}
                }
            }
        }
    }
    let violated = findings.iter().any(|f| f.severity == Severity::Error);
    findings::write(out, format.into(), findings::Command::Verify, &findings, !violated, serde_json::Map::new())?;
    Ok(if violated { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// A window a counter reset cut: no verdict, and an error (the check did not run).
fn reset_finding(check: &metricpact::contract::crosscheck::CrossCheck, message: String) -> findings::Finding {
    findings::Finding {
        severity: Severity::Error,
        rule: Some(metricpact::contract::crosscheck::RULE),
        subject: Some(check.app.clone()),
        message: format!("{message}: no verdict for this window; run it again"),
        ..findings::Finding::default()
    }
}

/// `data.result` of a Prometheus instant query at `time`.
fn prometheus_query(base: &str, query: &str, time: f64) -> anyhow::Result<serde_json::Value> {
    let encoded: String = query
        .bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect();
    let url = format!("{}/api/v1/query?query={encoded}&time={time:.3}", base.trim_end_matches('/'));
    // Prometheus answers a bad query with 400 and the reason in the JSON body.
    let (status, body) = http_request(&url).map_err(|e| anyhow::anyhow!("Prometheus `{query}`: {e}"))?;
    let answer: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| anyhow::anyhow!("Prometheus `{query}`: HTTP status {status}, not a Prometheus API answer ({e})"))?;
    if answer["status"] != "success" {
        anyhow::bail!("Prometheus `{query}`: {}", answer["error"].as_str().unwrap_or("failed"));
    }
    Ok(answer["data"]["result"].clone())
}
