//! The Prometheus endpoint and the progress line.

use std::io::{Read, Write};

use vfl_trainer::progress::{Progress, serve_metrics};

fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_serves_the_counters() {
    let p = Progress::new("leader");
    p.step(32, 0.5);
    p.step(32, 0.25);
    use vfl_bridge::Meter;
    p.sent(1000);
    p.received(10);
    p.set_auc(Some(0.75));
    let addr = serve_metrics("127.0.0.1:0", p.clone()).await.unwrap();
    let body = tokio::task::spawn_blocking(move || get(addr, "/metrics"))
        .await
        .unwrap();
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    assert!(body.contains("text/plain; version=0.0.4"), "{body}");
    for line in [
        "vfl_steps_total{role=\"leader\"} 2",
        "vfl_examples_total{role=\"leader\"} 64",
        "vfl_loss{role=\"leader\"} 0.25",
        "vfl_auc{role=\"leader\"} 0.75",
        "vfl_bytes_sent_total{role=\"leader\"} 1000",
        "vfl_bytes_received_total{role=\"leader\"} 10",
        "vfl_reconnects_total{role=\"leader\"} 0",
        "# TYPE vfl_steps_total counter",
    ] {
        assert!(body.contains(line), "missing {line:?} in\n{body}");
    }
    let missing = tokio::task::spawn_blocking(move || get(addr, "/nope")).await.unwrap();
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
}

#[tokio::test]
async fn a_taken_metrics_address_is_a_clear_error() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let e = serve_metrics(&addr, Progress::new("follower"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("--metrics-addr") && e.contains(&addr), "{e}");
}

#[test]
fn progress_line_shows_examples_rate_loss_and_eta() {
    let p = Progress::new("leader");
    assert!(p.line().contains("loss n/a"));
    p.step(100, 0.4321);
    p.set_fraction(0.5);
    let l = p.line();
    assert!(
        l.contains("step 1") && l.contains("100 examples") && l.contains("loss 0.4321") && l.contains("ETA"),
        "{l}"
    );
}
