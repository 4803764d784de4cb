//! `aligner serve`: an OpenAI-compatible correcting server.
//!
//! Components: a fixed pool of model sessions behind a bounded queue ([`pool`]), axum
//! handlers ([`routes`]) with OpenAI-shaped wire types and errors ([`api`]), an upstream client
//! for proxy mode ([`upstream`]) and Prometheus metrics ([`metrics`]). Generation runs on the
//! pool's own threads; the async runtime only moves bytes.

mod api;
mod metrics;
mod pool;
mod routes;
mod upstream;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use clap::Args;

use crate::cli::{GenArgs, ModelArgs};

#[derive(Args)]
#[command(allow_negative_numbers = true)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Defaults for every request; a request's own options override them.
    #[command(flatten)]
    pub gen: GenArgs,
    /// Address to bind; the default keeps the server on this machine.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to bind; 0 picks a free one (printed on stderr).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Model sessions generating in parallel.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Requests that may wait for a free worker; beyond that the server answers 429.
    #[arg(long, default_value_t = 8)]
    pub queue: usize,
    /// Require `Authorization: Bearer KEY` on /v1/* (or set ALIGNER_API_KEY).
    #[arg(long, env = "ALIGNER_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Largest request body accepted; larger ones get 413.
    #[arg(long, default_value_t = 1 << 20, value_name = "BYTES")]
    pub max_body_bytes: usize,
    /// OpenAI-compatible server whose answers /v1/chat/completions corrects.
    #[arg(long, value_name = "URL")]
    pub upstream: Option<String>,
    /// Model name sent upstream (default: the client's).
    #[arg(long, value_name = "NAME")]
    pub upstream_model: Option<String>,
    /// Environment variable holding the upstream's API key.
    #[arg(long, value_name = "VAR")]
    pub upstream_key_env: Option<String>,
    /// Seconds to wait for the upstream before answering 504.
    #[arg(long, default_value_t = 120.0, value_name = "SECONDS")]
    pub upstream_timeout: f64,
}

fn threads_per_worker(args: &ServeArgs) -> usize {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    args.model.threads.unwrap_or((cores / args.workers).max(1))
}

pub fn serve(args: ServeArgs) -> Result<()> {
    if args.workers == 0 {
        bail!("--workers must be at least 1");
    }
    if !args.upstream_timeout.is_finite() || args.upstream_timeout <= 0.0 {
        bail!("--upstream-timeout must be a positive number of seconds");
    }
    let dir = args.model.model_dir()?;
    let mut model_args = args.model.clone();
    model_args.threads = Some(threads_per_worker(&args));
    let models = (0..args.workers)
        .map(|_| model_args.load(&dir))
        .collect::<Result<Vec<_>>>()?;
    let first = &models[0];
    let defaults = args.gen.apply(first.generation_defaults());
    defaults.validate()?;
    let provider = first.provider().label();
    let model_name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "aligner".into());
    let upstream_key = match &args.upstream_key_env {
        Some(var) => Some(
            std::env::var(var)
                .with_context(|| format!("--upstream-key-env {var}: the variable is not set"))?,
        ),
        None => None,
    };
    let upstream = args
        .upstream
        .as_deref()
        .map(|url| {
            upstream::Upstream::new(
                url,
                args.upstream_model.clone(),
                upstream_key,
                Duration::from_secs_f64(args.upstream_timeout),
            )
        })
        .transpose()?;
    let pool = pool::Pool::start(models, args.queue);
    let state = Arc::new(routes::AppState {
        pool: Arc::clone(&pool),
        metrics: metrics::Metrics::default(),
        defaults,
        model_name: model_name.clone(),
        provider: provider.clone(),
        workers: args.workers,
        upstream,
        api_key: args.api_key.clone().filter(|k| !k.is_empty()),
        next_id: AtomicU64::new(1),
    });
    let app = Router::new()
        .route("/v1/correct", post(routes::correct))
        .route("/v1/chat/completions", post(routes::chat))
        .route("/v1/models", get(routes::models))
        .route("/health", get(routes::health))
        .route("/metrics", get(routes::metrics))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            routes::require_key,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            routes::record,
        ))
        .layer(DefaultBodyLimit::max(args.max_body_bytes))
        .with_state(state);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        let addr: SocketAddr = format!("{}:{}", args.host, args.port)
            .parse()
            .with_context(|| format!("--host {} --port {} is not an address to bind", args.host, args.port))?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}; is the port taken?"))?;
        eprintln!(
            "aligner: listening on http://{} (model {model_name}, {provider}, {} worker(s), queue {})",
            listener.local_addr()?,
            args.workers,
            args.queue
        );
        axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await?;
        eprintln!("aligner: shut down after finishing in-flight requests");
        anyhow::Ok(())
    });
    pool.shutdown();
    result
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
