//! The progress counters: their Prometheus registry and the progress line.
//! (The `--metrics-addr` server is the binary's: crates/cli/src/metrics.rs.)

use vfl_trainer::progress::Progress;

#[test]
fn the_registry_reads_the_counters_live() {
    let p = Progress::new("follower");
    let registry = p.registry();
    p.step(32, 0.5);
    use vfl_bridge::Meter;
    p.received(10);
    p.duplicate();
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for line in [
        "vfl_steps_total{role=\"follower\"} 1",
        "vfl_examples_total{role=\"follower\"} 32",
        "vfl_bytes_received_total{role=\"follower\"} 10",
        "vfl_duplicates_total{role=\"follower\"} 1",
        "vfl_auc{role=\"follower\"} NaN",
        "# HELP vfl_loss Loss of the last batch.",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
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
