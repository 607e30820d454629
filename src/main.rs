//! The `weir` binary: parse the command line, set up telemetry, run.

use std::process::ExitCode;

use clap::Parser;
use weir::config::{Cli, Command};

/// jemalloc, with its background thread returning freed pages to the kernel within seconds
/// (`.cargo/config.toml` sets the decay). glibc's malloc kept what 300 connections' request
/// heads had used (+24 MiB) after they closed; jemalloc gives it back.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    weir::tls::skip_system_trust_store();
    let cli = Cli::parse();
    let access_log = match &cli.command {
        Command::Edge(a) => a.listen.access_log,
        Command::Demo(a) => a.listen.access_log,
        _ => None,
    };
    weir::telemetry::init_tracing(access_log, cli.log_format);
    match cli.command {
        Command::Validate(args) => weir::validate::run(&args),
        Command::Crds => {
            print!("{}---\n{}", weir::api::backend_policy::crd_yaml(), weir::api::mesh_authorization::crd_yaml());
            ExitCode::SUCCESS
        }
        Command::Edge(args) => run(args.listen.threads, async move {
            let grace = args.drain_timeout;
            let handle = weir::app::start_edge(weir::app::EdgeOptions {
                status: Some(args.status.options()?),
                ..weir::app::EdgeOptions::from_args(args.source.source()?, &args.listen)
            })
            .await?;
            let signal = stop_signal().await?;
            tracing::info!(signal, ?grace, "stopping: no new connections; open ones finish");
            let left = handle.drain(grace).await;
            if left > 0 {
                tracing::warn!(connections = left, "drain timeout reached; closing the rest");
            }
            Ok(())
        }),
        Command::Demo(args) => run(args.listen.threads, weir::demo::run(args)),
        Command::Mesh(args) => run(args.threads, async move {
            let grace = args.drain_timeout;
            let handle = weir::mesh::start_mesh(weir::mesh::MeshOptions::from_args(&args)?).await?;
            let signal = stop_signal().await?;
            tracing::info!(signal, ?grace, "stopping: no new connections; requests in flight finish");
            let left = handle.drain(grace).await;
            if left > 0 {
                tracing::warn!(requests = left, "drain timeout reached; closing the rest");
            }
            Ok(())
        }),
    }
}

/// Waits for SIGTERM (what Kubernetes sends) or Ctrl-C.
async fn stop_signal() -> std::io::Result<&'static str> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => Ok("SIGTERM"),
        r = tokio::signal::ctrl_c() => r.map(|_| "SIGINT"),
    }
}

fn run(threads: Option<usize>, fut: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        builder.worker_threads(n);
    }
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("weir: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weir: {e:#}");
            ExitCode::FAILURE
        }
    }
}
