//! `aligner serve`: an OpenAI-compatible correcting server.
//!
//! Components: a fixed pool of model sessions behind a bounded queue ([`pool`]), axum
//! handlers ([`routes`]) with OpenAI-shaped wire types and errors ([`api`]), an upstream client
//! for proxy mode ([`upstream`]) and Prometheus metrics ([`metrics`]). Generation runs on the
//! pool's own threads; the async runtime only moves bytes.

mod api;
mod listen;
mod metrics;
mod middleware;
mod pool;
mod routes;
mod upstream;
mod wire;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

use super::args::ServeArgs;
use super::errors::usage;
use super::workers::{self, load_workers, WorkerCount, Workers};

/// Requests per worker decoding together by default: 1, chosen by measurement
/// (benches/serve_load.py, README "Batched decoding"). With 8 clients on 2 cores, corrections
/// that mostly copy the answer ran one by one with copy drafts at 12.7 req/s on 2 workers,
/// p99 974 ms; 2 workers x 4 slots (drafting in the batch) at 13.7 req/s but p99 1954 ms and
/// a quarter more memory. `--batch-size` turns batching on for throughput and long rewrites.
const BATCH_SLOTS: usize = 1;

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
    workers::check_batch_size(args.batch_size)?;
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

pub fn run(args: ServeArgs) -> Result<()> {
    let limits = check_args(&args)?;
    let Workers {
        mut models,
        config: mut defaults,
        dir,
        model_args,
    } = load_workers(&args.model, &args.gen, WorkerCount::Exactly(args.workers))?;
    let slots = workers::batch_size(&mut models[0], args.batch_size, BATCH_SLOTS)?;
    let first = &models[0];
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
    // A crashed worker's replacement shares this handle's session where it can.
    let prototype = std::sync::Mutex::new(first.share().ok());
    let reload_dir = dir.clone();
    let loader: pool::Loader = Box::new(move || {
        let guard = prototype.lock().ok();
        match guard.as_deref().and_then(Option::as_ref) {
            Some(first) => workers::another(first, &model_args, &reload_dir),
            None => workers::load(&model_args, &reload_dir),
        }
        .map(|m| Box::new(m) as Box<dyn pool::Corrector>)
        .map_err(|e| format!("{e:#}"))
    });
    let workers = models
        .into_iter()
        .map(|m| Box::new(m) as Box<dyn pool::Corrector>)
        .collect();
    let pool = pool::Pool::start(workers, args.queue, slots, loader)
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
        api_key: args.api_key.as_deref().map(middleware::key_digest),
        next_id: AtomicU64::new(1),
        in_flight: Arc::clone(&in_flight),
        max_body_bytes: args.max_body_bytes,
        body_timeout: Duration::from_secs_f64(args.body_timeout),
    });
    let app = router(state, args.max_body_bytes);

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

/// The routes and their middleware over `state`. Separate from [`run`] so that the HTTP
/// behaviour is tested over a pool of scripted workers (see `tests.rs`).
fn router(state: Arc<routes::AppState>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v1/correct", post(routes::correct))
        .route("/v1/chat/completions", post(routes::chat))
        .route("/v1/models", get(routes::models))
        .route("/health", get(routes::health))
        .route("/metrics", get(routes::metrics))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            middleware::read_body,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            middleware::require_key,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            middleware::record,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            middleware::track,
        ))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
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
