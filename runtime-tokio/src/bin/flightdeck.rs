//! The flightdeck gateway binary: the seeds' HTTP/SSE API and the OpenAI-compatible
//! coalescing proxy over one flightdeck manager.
//!
//! `flightdeck --help` lists every flag (each also reads a `FLIGHTDECK_*`
//! environment variable). `flightdeck --demo` runs a self-contained demo over real
//! HTTP on a loopback port and exits.
//!
//! Exit codes: `0` after a graceful shutdown; `2` for a flag whose value cannot be
//! used (nothing was started: fix the command line); `1` for a failure of the
//! environment at start or while serving: the listen address is taken, or, in
//! cluster mode with `--cluster-fallback fail`, Redis is unreachable (the message
//! names its URL). A supervisor may restart on `1` (Redis may come back) and should
//! not on `2`.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use flightdeck_tokio::http::config::Args;
use flightdeck_tokio::http::{demo, serve, shutdown_signal, Gateway};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let args = Args::parse();
    let demo_mode = args.demo;
    let listen = args.listen;
    // The demo prints its own timeline; logs would interleave with it.
    let default_log = if demo_mode { "warn" } else { "info" };
    let filter = match EnvFilter::try_new(args.log.as_deref().unwrap_or(default_log)) {
        Ok(filter) => filter,
        Err(e) => {
            eprintln!("flightdeck: invalid value for --log: {e}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let config = match args.into_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("flightdeck: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("flightdeck: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        if demo_mode {
            return demo::run(config).await;
        }
        let gateway = Gateway::connect(config).await.map_err(|e| e.to_string())?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        let address = listener.local_addr().map_err(|e| e.to_string())?;
        tracing::info!(%address, "flightdeck listening");
        serve(listener, gateway, shutdown_signal())
            .await
            .map_err(|e| format!("server error: {e}"))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flightdeck: {e}");
            ExitCode::FAILURE
        }
    }
}
