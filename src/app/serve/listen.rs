//! The accept loop: connection limits, read timeouts and a bounded graceful shutdown.
//!
//! `axum::serve` has no read timeouts and no connection cap: one `GET /hea` held a connection
//! (and a clean shutdown) for minutes, and 1,100 idle sockets exhausted the process's file
//! descriptors. Here each connection is served by hyper's HTTP/1 server with a header-read
//! timer, which runs from the moment a connection waits for a request head, so it is also the
//! keep-alive idle timeout; at most `max_connections` are open at once (more wait in the
//! kernel's backlog). On shutdown, idle connections close at once, requests in flight get
//! `shutdown_timeout` to finish, and whatever is left (half-sent heads, idle keep-alives) gets
//! `shutdown_grace`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Connection settings (`aligner serve` flags).
#[derive(Debug, Clone)]
pub struct Limits {
    /// A request head (or, between requests, the next one) must arrive within this.
    pub header_timeout: Duration,
    pub max_connections: usize,
    /// The most shutdown waits for requests in flight.
    pub shutdown_timeout: Duration,
    /// What idle or half-read connections get once no request is in flight.
    pub shutdown_grace: Duration,
}

/// Requests being handled, including streamed responses until their last byte.
#[derive(Debug, Default)]
pub struct InFlight(AtomicUsize);

impl InFlight {
    pub fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.0.fetch_add(1, Ordering::SeqCst);
        InFlightGuard(Arc::clone(self))
    }

    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// Counts one request in flight until dropped.
pub struct InFlightGuard(Arc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Raises the soft limit on open files to the hard one and returns it: every connection is a
/// descriptor, and running out stops `accept` for everyone.
pub fn raise_file_limit() -> usize {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
        usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX)
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then drains as described above.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    in_flight: Arc<InFlight>,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut shutdown = std::pin::pin!(shutdown);
    let mut backoff_noted = false;
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&permits).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors or a reset before accept: wait a little, go on.
                    if !backoff_noted {
                        eprintln!("aligner: accept failed ({e}); retrying");
                        backoff_noted = true;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .keep_alive(true);
        let connection =
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
            drop(permit);
        });
    }
    drop(listener);
    drain(graceful, &limits, &in_flight).await;
}

async fn drain(graceful: GracefulShutdown, limits: &Limits, in_flight: &InFlight) {
    let all_closed = graceful.shutdown();
    let requests_done = async {
        let deadline = tokio::time::Instant::now() + limits.shutdown_timeout;
        while in_flight.count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if in_flight.count() > 0 {
            eprintln!(
                "aligner: {} request(s) still running after --shutdown-timeout; exiting anyway",
                in_flight.count()
            );
        }
        tokio::time::sleep(limits.shutdown_grace).await;
    };
    tokio::select! {
        _ = all_closed => {}
        _ = requests_done => {}
    }
}

/// The addresses `host:port` names: an IP literal (IPv6 with or without brackets) or a name
/// such as `localhost`, resolved by the system.
pub async fn resolve(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    Ok(tokio::net::lookup_host((bare, port)).await?.collect())
}
