//! The `sluice` command line.
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice::app::RunningServer;
use sluice_core::config::RuntimeConfig;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "An OpenAI-compatible streaming LLM server on llama.cpp"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a GGUF model over the OpenAI API (HTTP/1.1 and h2c on one port,
    /// or TLS with ALPN; WebSockets on /v1/ws).
    Serve(ServeArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on [config: server.host, default 127.0.0.1].
    #[arg(long)]
    host: Option<String>,
    /// Port to listen on; 0 picks a free one [config: server.port, default 8080].
    #[arg(long)]
    port: Option<u16>,
    /// GGUF model file [config: model.path, default models/SmolLM2-135M-Instruct.Q4_1.gguf].
    #[arg(long)]
    model: Option<PathBuf>,
    /// Name clients send as `model` [config: model.served_name, default the file stem].
    #[arg(long)]
    served_name: Option<String>,
    /// Jinja chat template file overriding the GGUF's [config: model.chat_template].
    #[arg(long)]
    chat_template: Option<PathBuf>,
    /// YAML runtime configuration; see config/runtime.yaml for every knob.
    #[arg(long)]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                // llama.cpp logs under the target `llama-cpp-2`; its model
                // loader's metadata dump is INFO, which an operator does not
                // need (RUST_LOG=info,llama-cpp-2=info shows it).
                .unwrap_or_else(|_| EnvFilter::new("info,llama_cpp_2=warn,llama-cpp-2=warn")),
        )
        // Colour codes only for a terminal: a log file or a pod's log
        // collector gets plain `key=value` lines.
        .with_ansi(std::io::stdout().is_terminal())
        .init();
    let cli = Cli::parse();
    let Command::Serve(args) = cli.command;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sluice-http")
        .build()
        .expect("building the tokio runtime");
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!("{message}");
            ExitCode::FAILURE
        }
    }
}

/// The config file (or the defaults) with the command line's overrides.
fn load_config(args: &ServeArgs) -> Result<RuntimeConfig, String> {
    let mut config = match &args.config {
        Some(path) => RuntimeConfig::load(path).map_err(|err| err.to_string())?,
        None => RuntimeConfig::default(),
    };
    if let Some(host) = &args.host {
        config.server.host.clone_from(host);
    }
    if let Some(port) = args.port {
        config.server.port = port;
    }
    if let Some(model) = &args.model {
        config.model.path.clone_from(model);
    }
    if let Some(name) = &args.served_name {
        config.model.served_name = Some(name.clone());
    }
    if let Some(template) = &args.chat_template {
        config.model.chat_template = Some(template.clone());
    }
    config.validate().map_err(|err| err.to_string())?;
    Ok(config)
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    let config = load_config(&args)?;
    let chat_template = match &config.model.chat_template {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|err| format!("cannot read chat template {}: {err}", path.display()))?,
        ),
        None => None,
    };
    let server = RunningServer::start(&config, chat_template)
        .await
        .map_err(|err| {
            format!(
                "cannot start serving on {}:{}: {err}",
                config.server.host, config.server.port
            )
        })?;
    tracing::info!(
        addr = %server.local_addr,
        model = %config.model.path.display(),
        served_name = %config.model.served_name(),
        transport = if config.server.tls.is_some() {
            "TLS (ALPN h2, http/1.1)"
        } else {
            "HTTP/1.1 and h2c"
        },
        "listening"
    );
    // Loading or later: a failed engine serves nothing, so the process
    // drains and exits non-zero for its supervisor to restart it.
    let engine = server.engine().clone();
    let engine_failure = async move { engine.wait_failed().await };
    let reloads = reload_on_sighup(&server, &args);
    let outcome = tokio::select! {
        () = shutdown_signal() => {
            // A second signal means now: no more waiting for streams.
            tokio::spawn(async {
                shutdown_signal().await;
                tracing::warn!("second shutdown signal: exiting at once");
                std::process::exit(130);
            });
            Ok(())
        }
        reason = engine_failure => Err(reason),
        () = reloads => Ok(()),
    };
    server.shutdown();
    server
        .wait()
        .await
        .map_err(|err| format!("server error: {err}"))?;
    outcome
}

/// On SIGHUP, reads the config file again and applies what can change at
/// run time; a file that fails to parse or validate changes nothing.
async fn reload_on_sighup(server: &RunningServer, args: &ServeArgs) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup()).expect("installing the SIGHUP handler");
    while hangup.recv().await.is_some() {
        if args.config.is_none() {
            tracing::warn!("SIGHUP: no --config file to reload");
            continue;
        }
        match load_config(args) {
            Ok(next) => {
                let needs_restart = server.reload(&next);
                tracing::info!(?needs_restart, "SIGHUP: reloaded flags and protocol mode");
            }
            Err(err) => tracing::error!(%err, "SIGHUP: config not reloaded"),
        }
    }
    std::future::pending().await
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("shutdown signal received");
}
