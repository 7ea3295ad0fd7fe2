//! The `tail-sampling-selector` service.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use tail_sampling_selector::recovery::{RecoveryRequest, RecoveryState};
use tail_sampling_selector::{app, config::Settings};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// jemalloc, with its background threads purging freed pages. Under glibc's
/// malloc the selector's RSS grew with every maintenance run while in-use
/// heap stayed flat: large Arrow and Parquet buffers, freed on one of many
/// threads, stayed in that thread's arena (docs/performance.md). Its
/// symbols are unprefixed (Cargo.toml), so librdkafka and the other C
/// libraries linked in allocate through it too.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Tail sampling for OpenTelemetry traces: Kafka in, Apache Iceberg out.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// A TOML file layered over the defaults; `TSS__…` variables override both.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log format: `json` (for containers) or `text`.
    #[arg(long, env = "TSS_LOG_FORMAT", default_value = "text")]
    log_format: String,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Run table maintenance (compaction) once, print what it did and exit;
    /// the service must not be told to: it runs maintenance on its schedule.
    Maintenance,
    /// Run only the `[[forward]]` entries: read the sampled topic and send
    /// it on to the OTLP backends, until SIGTERM.
    Forward,
    /// Re-read a time range of the raw topic and store the traces that match
    /// a condition and are not in the table (dropped live). Prints progress
    /// on stderr and the job's final report as JSON; Ctrl-C cancels.
    Recover(RecoverArgs),
}

#[derive(Debug, clap::Args)]
struct RecoverArgs {
    /// Start of the range: RFC 3339, Unix milliseconds, or before now (`-2h`).
    #[arg(long, allow_hyphen_values = true)]
    from: String,
    /// End of the range, as `--from` (default: now).
    #[arg(long, allow_hyphen_values = true)]
    to: Option<String>,
    /// The condition, in the force-rule language as JSON:
    /// `{"resource":[…],"span":[…],"trace":[…]}` (default: every trace).
    #[arg(long = "match", value_name = "JSON")]
    match_: Option<String>,
    /// Stop once this many traces have matched.
    #[arg(long)]
    max_traces: Option<u64>,
    /// Read at most this many messages per second (capped by
    /// `recovery.max_messages_per_sec`).
    #[arg(long)]
    max_messages_per_sec: Option<u32>,
}

impl RecoverArgs {
    fn request(self) -> anyhow::Result<RecoveryRequest> {
        let match_ = match self.match_ {
            Some(json) => {
                serde_json::from_str(&json).context("--match is not a valid condition")?
            }
            None => Default::default(),
        };
        Ok(RecoveryRequest {
            from: self.from,
            to: self.to,
            match_,
            max_traces: self.max_traces,
            max_messages_per_sec: self.max_messages_per_sec,
        })
    }
}

fn init_logging(format: &str) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn,sqlx=warn,datafusion=warn"));
    // Colours only on a terminal: a log file or a collector gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(&args.log_format);
    let settings = Settings::load(args.config.as_deref()).context("invalid configuration")?;
    if let Some(Command::Maintenance) = args.command {
        let outcome = app::maintain_once(&settings)
            .await
            .context("table maintenance failed")?;
        println!("{outcome}");
        return Ok(());
    }
    tracing::info!(?settings, "starting");
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested");
        on_signal.cancel();
    });
    match args.command {
        Some(Command::Forward) => {
            app::forward_only(settings, shutdown).await?;
            return Ok(());
        }
        Some(Command::Recover(recover)) => return recover_once(settings, recover, shutdown).await,
        _ => {}
    }
    app::run(settings, args.config, shutdown).await?;
    Ok(())
}

async fn recover_once(
    settings: Settings,
    args: RecoverArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let request = args.request()?;
    let report = app::recover_once(settings, request, shutdown, |r| {
        eprintln!(
            "{} {:>5.1}% messages {}/{} traces matched {} recovered {}",
            r.state.as_str(),
            r.progress * 100.0,
            r.messages_read,
            r.messages_total,
            r.traces_matched,
            r.traces_recovered
        );
    })
    .await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    match report.state {
        RecoveryState::Done => Ok(()),
        state => anyhow::bail!(
            "the recovery ended {}: {}",
            state.as_str(),
            report.error.unwrap_or_default()
        ),
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "no SIGTERM handler; only Ctrl-C stops the selector");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
