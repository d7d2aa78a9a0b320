//! The `metricpact` command line: check contracts, compile them to the filter's plugin
//! configuration, print the Envoy stats configuration they need. Exit codes: 0 success,
//! 1 a contract has errors, 2 usage or I/O error.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use metricpact::contract::compile::{compile_file, to_json, Compiled};
use metricpact::contract::load::Severity;

#[derive(Parser)]
#[command(name = "metricpact", version, about = "Enforce a metrics contract in every Envoy/Istio sidecar", propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate contracts; prints `file:line:col: severity: message` per problem, exits 1 on any error.
    Check {
        /// Contract files (YAML).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Treat warnings as errors.
        #[arg(long)]
        strict: bool,
    },
    /// Print the plugin configuration JSON the filter consumes (Envoy `configuration` value).
    Compile {
        /// Contract file (YAML).
        file: PathBuf,
        /// Indent the JSON.
        #[arg(long)]
        pretty: bool,
    },
    /// Print the Envoy bootstrap `stats_config` (tag extraction, histogram buckets) for a contract.
    EnvoyStats {
        /// Contract file (YAML).
        file: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
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
        Command::Check { files, format, strict } => {
            let mut failed = false;
            let mut all = Vec::new();
            for file in &files {
                let compiled = compile_file(file);
                failed |= compiled
                    .diagnostics
                    .iter()
                    .any(|d| d.severity == Severity::Error || (strict && d.severity == Severity::Warning));
                all.extend(compiled.diagnostics);
            }
            match format {
                Format::Text => {
                    for d in &all {
                        writeln!(out, "{d}")?;
                    }
                    if !failed {
                        eprintln!("metricpact: {} contract(s) OK", files.len());
                    }
                }
                Format::Json => {
                    let items: Vec<_> = all
                        .iter()
                        .map(|d| {
                            serde_json::json!({
                                "file": d.file.display().to_string(),
                                "line": d.line,
                                "column": d.column,
                                "severity": match d.severity { Severity::Error => "error", Severity::Warning => "warning" },
                                "message": d.message,
                            })
                        })
                        .collect();
                    writeln!(out, "{}", serde_json::to_string_pretty(&serde_json::json!({"ok": !failed, "diagnostics": items}))?)?;
                }
            }
            Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
        }
        Command::Compile { file, pretty } => {
            let Some(config) = compiled_or_report(compile_file(&file)) else { return Ok(ExitCode::from(1)) };
            writeln!(out, "{}", to_json(&config, pretty))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::EnvoyStats { file } => {
            let Some(config) = compiled_or_report(compile_file(&file)) else { return Ok(ExitCode::from(1)) };
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
