//! The `affinity-assistant` command.

use affinity_assistant::render::{self, Format, Source};
use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "affinity-assistant",
    version,
    about = "Lets the parallel tasks of a Tekton pipeline run share a ReadWriteOnce volume"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Offline: read YAML files and print the placeholders the add-on would create and what
    /// each task's pod would get. Needs no cluster.
    Render(RenderArgs),
    /// Print the version.
    Version,
}

#[derive(clap::Args)]
struct RenderArgs {
    /// Input file (multi-document YAML or JSON: PipelineRuns, Pipelines, PVCs, Pods, the
    /// feature-flags ConfigMap); `-` reads standard input. Repeatable.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    /// The add-on's feature-flags ConfigMap (YAML).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Output format: apply-able StatefulSets (yaml, json) or a summary for people (table).
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    output: OutputFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum OutputFormat {
    Yaml,
    Json,
    Table,
}

fn read_source(path: &PathBuf) -> Result<Source> {
    let name = path.display().to_string();
    let text = if name == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).context("reading standard input")?;
        s
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {name}"))?
    };
    Ok(Source { name, text })
}

fn run_render(args: RenderArgs) -> Result<()> {
    let sources = args.files.iter().map(read_source).collect::<Result<Vec<_>>>()?;
    let config = args.config.as_ref().map(read_source).transpose()?;
    let report = render::render(&sources, config.as_ref())?;
    let format = match args.output {
        OutputFormat::Yaml => Format::Yaml,
        OutputFormat::Json => Format::Json,
        OutputFormat::Table => Format::Table,
    };
    if format == Format::Json {
        for line in report.summary_lines() {
            eprintln!("{line}");
        }
    }
    print!("{}", report.format(format));
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Render(args) => run_render(args),
        Command::Version => {
            println!("affinity-assistant {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
