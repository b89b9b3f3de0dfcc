//! The `affinity-assistant` command.

use affinity_assistant::manifests;
use affinity_assistant::render::{self, Format, Source};
use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

mod run;

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
    /// Run in a cluster: the controller and the webhook (or one of them).
    Run(Box<RunArgs>),
    /// Offline: read YAML files and print the placeholders the add-on would create and what
    /// each task's pod would get. Needs no cluster.
    Render(RenderArgs),
    /// Print the install YAML (Namespace, RBAC, config, Deployment, Services, PDB, webhook
    /// configuration) for `kubectl apply -f -`.
    Manifests(ManifestsArgs),
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

#[derive(clap::Args)]
struct ManifestsArgs {
    /// The add-on's namespace.
    #[arg(long, default_value = manifests::DEFAULT_NAMESPACE)]
    namespace: String,
    /// The add-on's container image (default: the release matching this binary).
    #[arg(long)]
    image: Option<String>,
    /// Replicas of the Deployment (one leads the controller; every one serves the webhook).
    #[arg(long, default_value_t = 2)]
    replicas: i32,
    /// Who issues the webhook's certificate.
    #[arg(long, value_enum, default_value_t = ManifestsCertMode::SelfManaged)]
    cert_mode: ManifestsCertMode,
    /// Manage only this namespace (repeatable): Roles there instead of cluster-wide rights,
    /// and the webhook sees only these namespaces. Default: every namespace.
    #[arg(long = "watch-namespace")]
    watch_namespaces: Vec<String>,
    /// A feature-flags value replacing its default (repeatable), e.g. `mode=pipelineruns`.
    #[arg(long = "feature-flag", value_name = "KEY=VALUE", value_parser = manifests::parse_feature_flag)]
    feature_flags: Vec<(String, String)>,
    /// Tekton's namespace, where the add-on may read Tekton's feature-flags (empty: grant nothing).
    #[arg(long, default_value = manifests::DEFAULT_TEKTON_NAMESPACE)]
    tekton_namespace: String,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ManifestsCertMode {
    /// The add-on keeps its own CA and the webhook's caBundle current.
    SelfManaged,
    /// cert-manager issues the certificate and injects the caBundle (cert-manager must be installed).
    CertManager,
}

#[derive(clap::Args)]
struct RunArgs {
    /// The add-on's own namespace: its feature-flags, webhook Secret and leader Lease live there.
    #[arg(long, env = "POD_NAMESPACE", default_value = manifests::DEFAULT_NAMESPACE)]
    namespace: String,
    /// This replica's name: its leader-election identity and Event reporter instance.
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// Watch only this namespace for runs, claims and placeholders (repeatable; default: all).
    #[arg(long = "watch-namespace")]
    watch_namespaces: Vec<String>,
    /// Run only the controller (no webhook server).
    #[arg(long, conflicts_with = "webhook_only")]
    controller_only: bool,
    /// Run only the webhook (it pins only while some controller holds the leader lease).
    #[arg(long)]
    webhook_only: bool,
    /// HTTPS port of the webhook.
    #[arg(long, default_value_t = 8443)]
    webhook_port: u16,
    /// Plain-HTTP port of /metrics, /healthz and /readyz.
    #[arg(long, default_value_t = 8080)]
    metrics_port: u16,
    /// Where the webhook's serving certificate comes from.
    #[arg(long, value_enum, default_value_t = CertMode::SelfManaged)]
    cert_mode: CertMode,
    /// PEM certificate chain (with --cert-mode external, e.g. from cert-manager); hot-reloaded.
    #[arg(long, required_if_eq("cert_mode", "external"))]
    tls_cert_file: Option<PathBuf>,
    /// PEM private key (with --cert-mode external); hot-reloaded.
    #[arg(long, required_if_eq("cert_mode", "external"))]
    tls_key_file: Option<PathBuf>,
    /// Secret holding the self-managed CA and serving certificate.
    #[arg(long, default_value = manifests::TLS_SECRET)]
    tls_secret: String,
    /// The Service in front of the webhook (its DNS names go into the certificate).
    #[arg(long, default_value = manifests::WEBHOOK_SERVICE)]
    service_name: String,
    /// The MutatingWebhookConfiguration whose caBundle the leader keeps current (default
    /// `affinity-assistant`, or `affinity-assistant-local` with --webhook-url).
    #[arg(long)]
    webhook_configuration: Option<String>,
    /// Local mode, for an add-on running outside the cluster: register a webhook configuration
    /// calling this URL (https://HOST:PORT/mutate/pods) with the add-on's own CA, and remove it
    /// on a clean exit. HOST goes into the serving certificate.
    #[arg(long, value_name = "URL")]
    webhook_url: Option<String>,
    /// The leader-election Lease.
    #[arg(long, default_value = manifests::LEASE)]
    lease_name: String,
    /// The add-on's ConfigMap.
    #[arg(long, default_value = manifests::CONFIG_MAP)]
    config_name: String,
    /// Seconds a node must be cordoned or drain-tainted before its placeholders move.
    #[arg(long, default_value_t = 60)]
    move_grace_seconds: u64,
    /// Namespaces reconciled at once.
    #[arg(long, default_value_t = 4)]
    concurrency: u16,
    /// Tekton's namespace, where its feature-flags (coschedule) are read; empty: never read.
    #[arg(long, default_value = manifests::DEFAULT_TEKTON_NAMESPACE)]
    tekton_namespace: String,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CertMode {
    /// Generate a CA and serving certificate, keep them in a Secret, keep the caBundle current.
    SelfManaged,
    /// Read --tls-cert-file / --tls-key-file (cert-manager or your own PKI).
    External,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
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

fn run_manifests(args: ManifestsArgs) -> Result<()> {
    let options = manifests::Options {
        namespace: args.namespace,
        image: args.image.unwrap_or_else(manifests::default_image),
        replicas: args.replicas,
        cert_mode: match args.cert_mode {
            ManifestsCertMode::SelfManaged => manifests::CertMode::SelfManaged,
            ManifestsCertMode::CertManager => manifests::CertMode::CertManager,
        },
        watch_namespaces: args.watch_namespaces,
        feature_flags: args.feature_flags.into_iter().collect(),
        tekton_namespace: Some(args.tekton_namespace).filter(|ns| !ns.is_empty()),
    };
    let objects = manifests::objects(&options)?;
    print!("{}", manifests::to_yaml(&objects).context("writing YAML")?);
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")
            .and_then(|rt| rt.block_on(run::run(*args))),
        Command::Render(args) => run_render(args),
        Command::Manifests(args) => run_manifests(args),
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
