//! The HTTP/1.1 server loop: bounded against clients that hold connections.
//!
//! `axum::serve` sets no timer, so a client that sends its headers a byte at a time, or never
//! sends a request on an open connection, holds a task and a descriptor forever. Here every
//! connection is served by hyper with a timer and a header read timeout (which also bounds the
//! wait for the next request on a kept-alive connection), the number of open connections is
//! bounded (past it, accepting pauses and the kernel's backlog queues), and a stop ends the
//! server in bounded time: accepting stops, idle connections close, connections with a request
//! in flight get until [`Server::drain`]'s deadline, and whatever is left then is dropped.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Bounds on connections.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Time to receive a request's headers, and to wait for the next request on an idle
    /// kept-alive connection.
    pub header_read_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
}

/// A server that accepted connections until its stop signal; [`Server::drain`] ends them.
pub struct Server {
    connections: JoinSet<()>,
    graceful: GracefulShutdown,
}

/// Accepts and serves connections until `stop` is cancelled, then returns the server to drain.
pub async fn accept(listener: TcpListener, app: Router, limits: Limits, stop: CancellationToken) -> Server {
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout).keep_alive(true);
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    loop {
        // Finished connections are reaped as we go, so the set stays as large as what is open.
        while connections.try_join_next().is_some() {}
        let permit = tokio::select! {
            () = stop.cancelled() => break,
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let stream = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        connections.spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
    Server { connections, graceful }
}

impl Server {
    /// Asks every connection to close after its request in flight; resolves when all have.
    /// Dropping the future before then leaves the rest to [`Server::abort`].
    pub async fn drain(&mut self) {
        let graceful = std::mem::replace(&mut self.graceful, GracefulShutdown::new());
        graceful.shutdown().await;
        while self.connections.join_next().await.is_some() {}
    }

    /// Drops every connection still open.
    pub async fn abort(mut self) {
        self.connections.abort_all();
        while self.connections.join_next().await.is_some() {}
    }

    /// Connections still open.
    pub fn open(&self) -> usize {
        self.connections.len()
    }
}
