//! `--metrics-addr`: the Prometheus endpoint (`GET /metrics`, OpenMetrics
//! text from `prometheus-client`) and a liveness endpoint (`GET /healthz`,
//! for Kubernetes probes, which must never use the RA-TLS port), served by
//! hyper from the HTTP stack already in the tree.
//!
//! The port may be reachable by anyone who can reach the host, so the
//! server is bounded: at most [`MAX_CONNECTIONS`] connections at once and
//! [`PER_ADDRESS`] from one source address (more are closed at once), the
//! request head within 2 s and 16 KiB, one request per connection, 10 s per
//! connection; accept errors back off instead of spinning. Nothing it does
//! touches the party's training or its RA-TLS endpoint. Many sources
//! together can still fill the slots for a while: a liveness probe should
//! tolerate a failure or two (Kubernetes' `failureThreshold`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use vfl_bridge::secure::{AddressCounts, AddressSlot};

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 32;

/// Connections served at once from one source address (so that one host
/// cannot hold every slot and starve the liveness probe).
pub const PER_ADDRESS: usize = 4;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// Serves `registry` on `addr` until the process ends; the bound address.
pub async fn serve(addr: &str, registry: Registry) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("--metrics-addr {addr}"))?;
    let local = listener
        .local_addr()
        .with_context(|| format!("--metrics-addr {addr}"))?;
    tokio::spawn(accept_loop(listener, Arc::new(registry)));
    Ok(local)
}

async fn accept_loop(listener: tokio::net::TcpListener, registry: Arc<Registry>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let per_address = AddressCounts::default();
    let mut backoff = Duration::from_millis(10);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => {
                backoff = Duration::from_millis(10);
                x
            }
            // Out of file descriptors (EMFILE) and the like.
            Err(_) => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Some(from) = AddressSlot::take(&per_address, peer.ip(), PER_ADDRESS) else {
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let _held = (slot, from);
            let service = hyper::service::service_fn(move |req| {
                let registry = registry.clone();
                async move { Ok::<_, Infallible>(respond(&req, &registry)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(2))
                .max_buf_size(16 << 10)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(Duration::from_secs(10), conn).await;
        });
    }
}

fn respond(req: &Request<Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics" | "/") => {
            let mut text = String::new();
            match prometheus_client::encoding::text::encode(&mut text, registry) {
                Ok(()) => (StatusCode::OK, OPENMETRICS, text),
                Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, TEXT, "encoding failed\n".into()),
            }
        }
        (&Method::GET, "/healthz") => (StatusCode::OK, TEXT, "ok\n".into()),
        _ => (
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: try /metrics or /healthz\n".into(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    resp
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    /// The response to `request`; empty if the server closed (or reset)
    /// the connection without one.
    fn get(addr: SocketAddr, request: &str) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let mut out = String::new();
        if s.write_all(request.as_bytes()).is_ok() {
            let _ = s.read_to_string(&mut out);
        }
        out
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn metrics_and_health_are_served_other_paths_are_not_found() {
        let rt = runtime();
        let p = vfl_trainer::progress::Progress::new("leader");
        p.step(32, 0.5);
        p.step(32, 0.25);
        vfl_bridge::Meter::sent(&*p, 1000);
        p.set_auc(Some(0.75));
        let addr = rt.block_on(serve("127.0.0.1:0", p.registry())).unwrap();
        let body = get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
        assert!(body.contains(OPENMETRICS), "{body}");
        for line in [
            "vfl_steps_total{role=\"leader\"} 2",
            "vfl_examples_total{role=\"leader\"} 64",
            "vfl_loss{role=\"leader\"} 0.25",
            "vfl_auc{role=\"leader\"} 0.75",
            "vfl_bytes_sent_total{role=\"leader\"} 1000",
            "vfl_reconnects_total{role=\"leader\"} 0",
            "# TYPE vfl_steps counter",
            "# EOF",
        ] {
            assert!(body.contains(line), "missing {line:?} in\n{body}");
        }
        let health = get(addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(
            health.starts_with("HTTP/1.1 200 OK") && health.ends_with("ok\n"),
            "{health}"
        );
        let missing = get(addr, "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        let post = get(addr, "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
        assert!(post.starts_with("HTTP/1.1 404"), "{post}");
    }

    #[test]
    fn a_taken_address_is_an_error_naming_the_flag() {
        let rt = runtime();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let e = rt.block_on(serve(&addr, Registry::default())).unwrap_err();
        let e = format!("{e:#}");
        assert!(e.contains("--metrics-addr") && e.contains(&addr), "{e}");
    }

    /// A client that never finishes its request head is cut after 2 s,
    /// and garbage gets an error; the endpoint keeps serving.
    #[test]
    fn a_silent_client_is_cut_and_garbage_does_not_stop_the_endpoint() {
        let rt = runtime();
        let addr = rt.block_on(serve("127.0.0.1:0", Registry::default())).unwrap();
        let mut silent = std::net::TcpStream::connect(addr).unwrap();
        silent.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
        let started = std::time::Instant::now();
        let mut out = Vec::new();
        let _ = silent.read_to_end(&mut out);
        assert!(started.elapsed() < Duration::from_secs(9), "not cut");
        let garbage = get(addr, "\x16\x03\x01garbage\r\n\r\n");
        assert!(garbage.is_empty() || garbage.starts_with("HTTP/1.1 400"), "{garbage}");
        let ok = get(addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
    }

    /// PER_ADDRESS idle connections from 127.0.0.1, once the server has
    /// taken them.
    fn hold_share(addr: SocketAddr) -> Vec<std::net::TcpStream> {
        let held = (0..PER_ADDRESS)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        held
    }

    /// More than PER_ADDRESS idle connections from one address: the
    /// surplus is closed at once and, when they go, the endpoint serves
    /// again.
    #[test]
    fn connections_beyond_the_limit_are_closed() {
        let rt = runtime();
        let addr = rt.block_on(serve("127.0.0.1:0", Registry::default())).unwrap();
        let held = hold_share(addr);
        let over = get(addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(over.is_empty(), "{over}");
        drop(held);
        std::thread::sleep(Duration::from_millis(200));
        let ok = get(addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
    }

    /// One address holding its share does not keep another address out.
    #[test]
    fn another_address_is_served_while_one_holds_its_share() {
        let rt = runtime();
        let addr = rt.block_on(serve("127.0.0.1:0", Registry::default())).unwrap();
        let held = hold_share(addr);
        let other = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        other
            .bind(&"127.0.0.2:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        other.connect(&addr.into()).unwrap();
        let mut s: std::net::TcpStream = other.into();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
        drop(held);
    }
}
