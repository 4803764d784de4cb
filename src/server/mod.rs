//! `aligner serve`: an OpenAI-compatible correcting server.
//!
//! Components: a fixed pool of model sessions behind a bounded queue ([`pool`]), axum
//! handlers ([`routes`]) with OpenAI-shaped wire types and errors ([`api`]), an upstream client
//! for proxy mode ([`upstream`]) and Prometheus metrics ([`metrics`]). Generation runs on the
//! pool's own threads; the async runtime only moves bytes.

mod api;
mod listen;
mod metrics;
mod pool;
mod routes;
mod upstream;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use clap::Args;

use crate::cli::{cores, usage, GenArgs, ModelArgs};

#[derive(Args)]
#[command(allow_negative_numbers = true)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Defaults for every request; a request's own options override them.
    #[command(flatten)]
    pub gen: GenArgs,
    /// Address to bind (an IP, or a name such as localhost); the default keeps the server on
    /// this machine.
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
    /// Refuse to start without an API key (for servers reachable from other machines).
    #[arg(long)]
    pub require_api_key: bool,
    /// Largest request body accepted; larger ones get 413.
    #[arg(long, default_value_t = 1 << 20, value_name = "BYTES")]
    pub max_body_bytes: usize,
    /// Longest prompt a request may bring, in tokens (0: whatever the context holds). A long
    /// prompt holds a worker for its whole prompt pass.
    #[arg(long, default_value_t = 4096, value_name = "N")]
    pub max_prompt_tokens: usize,
    /// Seconds a request head may take to arrive; also how long an idle keep-alive connection
    /// is kept open.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    pub header_timeout: f64,
    /// Seconds a request body may take to arrive (408 after that).
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    pub body_timeout: f64,
    /// Open connections at most; more wait to be accepted (default: 1024, or fewer when the
    /// open-file limit is lower).
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// On SIGTERM, the most seconds to wait for requests in flight.
    #[arg(long, default_value_t = 60.0, value_name = "SECONDS")]
    pub shutdown_timeout: f64,
    /// On SIGTERM, seconds idle and half-read connections get once no request is in flight.
    #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
    pub shutdown_grace: f64,
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

/// File descriptors kept for everything but client connections (models, logs, the upstream).
const RESERVED_FDS: usize = 64;

fn seconds(flag: &str, value: f64) -> Result<Duration> {
    if !value.is_finite() || value <= 0.0 || value > 1e6 {
        return usage(format!(
            "{flag} must be a positive number of seconds (got {value})"
        ));
    }
    Ok(Duration::from_secs_f64(value))
}

/// Checks every flag before anything is loaded; returns the connection limits.
fn check_args(args: &ServeArgs) -> Result<listen::Limits> {
    if args.workers == 0 {
        return usage("--workers must be at least 1");
    }
    if args.api_key.as_deref().is_some_and(|k| k.trim().is_empty()) {
        return usage("--api-key (or ALIGNER_API_KEY) is empty, which would turn authentication off; give a real key, or unset it to run without one");
    }
    if args.require_api_key && args.api_key.is_none() {
        return usage("--require-api-key is set but no key was given; pass --api-key KEY or set ALIGNER_API_KEY");
    }
    seconds("--upstream-timeout", args.upstream_timeout)?;
    seconds("--body-timeout", args.body_timeout)?;
    let files = listen::raise_file_limit();
    let fd_cap = files.saturating_sub(RESERVED_FDS).max(1);
    let max_connections = match args.max_connections {
        Some(0) => return usage("--max-connections must be at least 1"),
        Some(n) if n > fd_cap => {
            eprintln!("aligner: --max-connections {n} is over what the open-file limit ({files}) allows; using {fd_cap}");
            fd_cap
        }
        Some(n) => n,
        None => fd_cap.min(1024),
    };
    Ok(listen::Limits {
        header_timeout: seconds("--header-timeout", args.header_timeout)?,
        max_connections,
        shutdown_timeout: seconds("--shutdown-timeout", args.shutdown_timeout)?,
        shutdown_grace: seconds("--shutdown-grace", args.shutdown_grace)?,
    })
}

fn threads_per_worker(args: &ServeArgs) -> Result<usize> {
    Ok(args
        .model
        .threads()?
        .unwrap_or((cores() / args.workers).max(1)))
}

pub fn serve(args: ServeArgs) -> Result<()> {
    let limits = check_args(&args)?;
    let dir = args.model.model_dir()?;
    let mut model_args = args.model.clone();
    model_args.threads = Some(threads_per_worker(&args)?);
    let models = (0..args.workers)
        .map(|_| model_args.load(&dir))
        .collect::<Result<Vec<_>>>()?;
    let first = &models[0];
    let mut defaults = args.gen.apply(first.generation_defaults());
    if args.max_prompt_tokens > 0 {
        defaults = defaults.with_max_prompt_tokens(args.max_prompt_tokens);
    }
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
    let reload_dir = dir.clone();
    let loader: pool::Loader = Box::new(move || {
        model_args
            .load(&reload_dir)
            .map(|m| Box::new(m) as Box<dyn pool::Corrector>)
            .map_err(|e| format!("{e:#}"))
    });
    let workers = models
        .into_iter()
        .map(|m| Box::new(m) as Box<dyn pool::Corrector>)
        .collect();
    let pool = pool::Pool::start(workers, args.queue, loader)
        .context("cannot start the worker threads")?;
    let in_flight = Arc::new(listen::InFlight::default());
    let state = Arc::new(routes::AppState {
        pool: Arc::clone(&pool),
        metrics: metrics::Metrics::default(),
        defaults,
        model_name: model_name.clone(),
        provider: provider.clone(),
        workers: args.workers,
        upstream,
        api_key: args.api_key.as_deref().map(routes::key_digest),
        next_id: AtomicU64::new(1),
        in_flight: Arc::clone(&in_flight),
        max_body_bytes: args.max_body_bytes,
        body_timeout: Duration::from_secs_f64(args.body_timeout),
    });
    let app = Router::new()
        .route("/v1/correct", post(routes::correct))
        .route("/v1/chat/completions", post(routes::chat))
        .route("/v1/models", get(routes::models))
        .route("/health", get(routes::health))
        .route("/metrics", get(routes::metrics))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            routes::read_body,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            routes::require_key,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            routes::record,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            routes::track,
        ))
        .layer(DefaultBodyLimit::max(args.max_body_bytes))
        .with_state(state);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        let addrs = listen::resolve(&args.host, args.port).await.ok().filter(|a| !a.is_empty());
        let Some(addrs) = addrs else {
            return usage(format!(
                "--host {} is not an address or a name this machine resolves; use an IP such as 127.0.0.1 or ::1, or localhost",
                args.host
            ));
        };
        let listener = bind(&addrs).await?;
        let local = listener.local_addr()?;
        if !local.ip().is_loopback() && args.api_key.is_none() {
            eprintln!(
                "aligner: warning: listening on {local} without an API key: anyone who can reach it can use it; pass --api-key KEY (and --require-api-key to make this an error)"
            );
        }
        eprintln!(
            "aligner: listening on http://{local} (model {model_name}, {provider}, {} worker(s), queue {}, up to {} connections)",
            args.workers, args.queue, limits.max_connections
        );
        listen::serve(listener, app, limits, in_flight, shutdown_signal()).await;
        eprintln!("aligner: shut down after finishing in-flight requests");
        anyhow::Ok(())
    });
    pool.shutdown();
    result
}

/// Binds the first of `addrs` that works (a name may resolve to IPv6 and IPv4 both).
async fn bind(addrs: &[SocketAddr]) -> Result<tokio::net::TcpListener> {
    let mut last = None;
    for addr in addrs {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(e) => last = Some((addr, e)),
        }
    }
    let (addr, e) = last.context("no address to bind")?;
    Err(e).with_context(|| format!("cannot listen on {addr}; is the port taken?"))
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
