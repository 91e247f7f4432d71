//! Nothing unauthenticated stops a party, and no second peer displaces a
//! healthy session: probes, garbage, TLS without a certificate and held
//! half-open connections, before and during training; a second follower of
//! the same identity during a run.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common;
use crate::common::{MODEL, finish, free_port};

struct Fixture {
    dir: PathBuf,
}

impl Fixture {
    fn new(name: &str, rows_per_file: u32) -> Self {
        let dir = std::env::temp_dir().join(format!("vfl-avail-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("model.toml"), MODEL).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_vfl"))
            .args(["data", "generate", "--files", "4", "--slots", "16", "--rows-per-file"])
            .arg(rows_per_file.to_string())
            .arg("--out")
            .arg(&dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        Fixture { dir }
    }

    fn party(&self, role: &str, port: u16, extra: &[&str]) -> Child {
        let mut args: Vec<String> = vec![
            role.into(),
            "--data-path".into(),
            self.dir.join(role).display().to_string(),
            "--model".into(),
            self.dir.join("model.toml").display().to_string(),
            "--batch-size".into(),
            "32".into(),
            "--threads".into(),
            "1".into(),
        ];
        if role == "leader" {
            args.extend(["--local-addr".into(), format!("127.0.0.1:{port}")]);
        } else {
            args.extend(["--peer-addr".into(), format!("127.0.0.1:{port}")]);
        }
        if !extra.contains(&"--peer-timeout") {
            args.extend(["--peer-timeout".into(), "30".into()]);
        }
        args.extend(common::sim_flags(&self.dir.join("attestation")));
        args.extend(extra.iter().map(|s| s.to_string()));
        Command::new(env!("CARGO_BIN_EXE_vfl"))
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits until something listens on `port`.
fn wait_listening(port: u16) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(30), "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A TLS client that presents no certificate and accepts any server.
fn tls_without_certificate(addr: SocketAddr) {
    #[derive(Debug)]
    struct AnyServer(Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for AnyServer {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &rustls::pki_types::CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &rustls::pki_types::CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("RATLS").unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let Ok(mut sock) = TcpStream::connect(addr) else { return };
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // The handshake completes on our side; the server then refuses us.
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    let _ = tls.write_all(b"hello");
    let mut b = [0u8; 16];
    let _ = tls.read(&mut b);
}

/// Probes of every kind that has not authenticated: connect and close,
/// garbage, TLS without a certificate.
fn probe(addr: SocketAddr) {
    for _ in 0..5 {
        drop(TcpStream::connect(addr));
    }
    if let Ok(mut s) = TcpStream::connect(addr) {
        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x16\x03\x01\xff\xff garbage garbage");
    }
    tls_without_certificate(addr);
}

/// Connections from another loopback address (127.0.0.2), held open
/// without a byte: half-open handshakes that use up that address's slots.
fn hold_half_open(addr: SocketAddr, n: usize) -> Vec<socket2::Socket> {
    (0..n)
        .filter_map(|_| {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
            s.bind(&"127.0.0.2:0".parse::<SocketAddr>().unwrap().into()).ok()?;
            s.connect(&addr.into()).ok()?;
            Some(s)
        })
        .collect()
}

/// A leader waiting for its follower survives every unauthenticated probe
/// (with the default `--on-reject exit`) and 100 half-open connections,
/// then trains with its follower.
#[test]
fn a_waiting_leader_survives_probes_and_half_open_connections() {
    let f = Fixture::new("wait", 200);
    let port = free_port();
    let l = f.party("leader", port, &[]);
    wait_listening(port);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    probe(addr);
    let held = hold_half_open(addr, 100);
    assert!(held.len() >= 50, "could not open half-open connections from 127.0.0.2");
    std::thread::sleep(Duration::from_millis(500));
    let fo = f.party("follower", port, &[]);
    let (fok, fout) = finish(fo);
    let (lok, lout) = finish(l);
    drop(held);
    assert!(fok && lok, "leader:\n{lout}\nfollower:\n{fout}");
    assert!(lout.contains("800 examples"), "{lout}");
    assert!(lout.contains("before authentication (ignored)"), "{lout}");
}

/// Probes while the pair trains disturb nothing: the run completes with
/// no session restart and no reconnect.
#[test]
fn probes_during_training_do_not_disturb_it() {
    let f = Fixture::new("during", 10000);
    let port = free_port();
    let mut l = f.party("leader", port, &[]);
    let fo = f.party("follower", port, &[]);
    wait_listening(port);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut rounds = 0;
    while l.try_wait().unwrap().is_none() {
        probe(addr);
        rounds += 1;
    }
    let (fok, fout) = finish(fo);
    let (lok, lout) = finish(l);
    assert!(rounds > 0);
    assert!(fok && lok, "leader:\n{lout}\nfollower:\n{fout}");
    assert!(lout.contains("40000 examples"), "{lout}");
    for out in [&lout, &fout] {
        assert!(!out.contains("starting the session over"), "{out}");
        assert!(!out.contains("reconnected"), "{out}");
    }
}

/// A second follower with the same identity while a pair trains is
/// refused (the leader is busy with a healthy session), gives up with that
/// reason, and the running pair finishes with the weights of an
/// undisturbed run and no session restart.
#[test]
fn a_second_follower_during_a_healthy_run_is_refused_and_changes_nothing() {
    let f = Fixture::new("second", 10000);
    let run = |tag: &str, intruder: bool| {
        let port = free_port();
        let export = f.dir.join(format!("export-{tag}")).display().to_string();
        let l = f.party("leader", port, &["--export-path", &export]);
        let fo = f.party("follower", port, &["--export-path", &export]);
        let mut second = None;
        if intruder {
            wait_listening(port);
            std::thread::sleep(Duration::from_millis(800));
            second = Some(f.party("follower", port, &["--peer-timeout", "3"]));
        }
        let (fok, fout) = finish(fo);
        let (lok, lout) = finish(l);
        assert!(fok && lok, "leader:\n{lout}\nfollower:\n{fout}");
        // No session restart: the intruder was never taken for a restarted follower.
        for out in [&lout, &fout] {
            assert!(!out.contains("starting the session over"), "{out}");
        }
        if let Some(s) = second {
            let (sok, sout) = finish(s);
            assert!(!sok, "{sout}");
            assert!(sout.contains("healthy session with another follower process"), "{sout}");
        }
        let root = std::fs::read_dir(&export).unwrap().next().unwrap().unwrap().path();
        ["leader", "follower"].map(|role| {
            vfl_trainer::store::read(&root.join(role).join("model.safetensors"), None)
                .unwrap()
                .tensors
        })
    };
    let undisturbed = run("a", false);
    let disturbed = run("b", true);
    assert!(undisturbed == disturbed, "the weights differ after the intrusion");
}
