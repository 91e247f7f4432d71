//! End-to-end RA-TLS: real TLS handshakes over loopback between parties with
//! simulated (development-PKI) evidence, one test per way a peer must be
//! refused, plus the positive cases.

use std::sync::Arc;

use rcgen::PublicKeyData;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use vfl_attest::cert::{self, CertEvidence};
use vfl_attest::devpki::{DevRoot, SimPlatformOptions};
use vfl_attest::policy::write;
use vfl_attest::setup;
use vfl_attest::tls::{self, RaTlsVerifier};
use vfl_attest::{Attester, Clock, Policy, RaTlsCert, SimAttester, SimIdentity, Verifier};

const GOOD_MRENCLAVE: [u8; 32] = [0x11; 32];

fn now() -> u64 {
    Clock::System.now()
}

fn identity(mr_enclave: [u8; 32]) -> SimIdentity {
    SimIdentity {
        mr_enclave,
        mr_signer: None,
        isv_prod_id: 1,
        isv_svn: 2,
        debug: false,
    }
}

fn attester(root: &DevRoot, id: &SimIdentity, opts: &SimPlatformOptions) -> SimAttester {
    SimAttester::new(root, id, opts).unwrap()
}

/// A policy that accepts `root`'s simulated enclaves with GOOD_MRENCLAVE,
/// mr_signer = root fingerprint, isv_prod_id 1, isv_svn >= 2.
fn policy_json(root: &DevRoot, extra: &str) -> String {
    format!(
        r#"{{"verify_mr_enclave":"on","verify_mr_signer":"on","verify_isv_prod_id":"on","verify_isv_svn":"on",
            "sgx_mrs":[{{"mr_enclave":"{}","mr_signer":"{}","isv_prod_id":"1","min_isv_svn":"2","mode":"simulated"}}],
            "allow_simulated":true,"simulated_roots":["{}"]{extra}}}"#,
        hex::encode(GOOD_MRENCLAVE),
        hex::encode(root.fingerprint()),
        hex::encode(root.fingerprint())
    )
}

fn verifier(policy: &str) -> Arc<RaTlsVerifier> {
    let policy = Policy::parse(policy.as_bytes(), "test policy").unwrap();
    RaTlsVerifier::new(Arc::new(Verifier::new(policy, None, Clock::System)))
}

struct Party {
    key: Arc<rustls::sign::CertifiedKey>,
    verifier: Arc<RaTlsVerifier>,
}

fn party(cert: &RaTlsCert, verifier: Arc<RaTlsVerifier>) -> Party {
    Party {
        key: tls::identity(cert).unwrap(),
        verifier,
    }
}

/// Handshake `server` with `client` over loopback and exchange one byte each
/// way; returns each side's outcome.
async fn handshake(server: &Party, client: &Party) -> (Result<(), String>, Result<(), String>) {
    let scfg = tls::server_config(server.key.clone(), server.verifier.clone()).unwrap();
    let ccfg = tls::client_config(client.key.clone(), client.verifier.clone()).unwrap();
    handshake_with(scfg, ccfg).await
}

async fn handshake_with(
    scfg: rustls::ServerConfig,
    ccfg: rustls::ClientConfig,
) -> (Result<(), String>, Result<(), String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let srv = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(|e| tls::describe_error(&e))?;
        let mut tls = TlsAcceptor::from(Arc::new(scfg))
            .accept(tcp)
            .await
            .map_err(|e| tls::describe_error(&e))?;
        let mut b = [0u8; 1];
        tls.read_exact(&mut b).await.map_err(|e| tls::describe_error(&e))?;
        tls.write_all(&b).await.map_err(|e| tls::describe_error(&e))?;
        tls.flush().await.map_err(|e| tls::describe_error(&e))?;
        Ok::<(), String>(())
    });
    let cli = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| tls::describe_error(&e))?;
        let name = rustls::pki_types::ServerName::try_from(tls::SERVER_NAME).unwrap();
        let mut tls = TlsConnector::from(Arc::new(ccfg))
            .connect(name, tcp)
            .await
            .map_err(|e| tls::describe_error(&e))?;
        tls.write_all(&[7]).await.map_err(|e| tls::describe_error(&e))?;
        tls.flush().await.map_err(|e| tls::describe_error(&e))?;
        let mut b = [0u8; 1];
        tls.read_exact(&mut b).await.map_err(|e| tls::describe_error(&e))?;
        Ok::<(), String>(())
    };
    let c = cli.await;
    let s = srv.await.unwrap();
    (s, c)
}

/// A good party: trusted root, GOOD_MRENCLAVE, verifying with the standard policy.
fn good(root: &DevRoot) -> Party {
    let a = attester(root, &identity(GOOD_MRENCLAVE), &SimPlatformOptions::fresh(now()));
    party(&cert::issue(&a).unwrap(), verifier(&policy_json(root, "")))
}

/// Server = bad party, client = good verifier: the client must refuse with a
/// reason containing `reason`, and the server must see the handshake fail.
async fn client_refuses(root: &DevRoot, bad: Party, reason: &str) {
    let g = good(root);
    let (s, c) = handshake(&bad, &g).await;
    let c = c.expect_err("the client accepted a peer it must refuse");
    assert!(c.contains(reason), "client error {c:?} does not say {reason:?}");
    let s = s.expect_err("the server did not notice the refusal");
    assert!(s.contains("the peer refused the connection"), "server error {s:?}");
}

/// Client = bad party, server = good verifier: the server must refuse.
async fn server_refuses(root: &DevRoot, bad: Party, reason: &str) {
    let g = good(root);
    let (s, c) = handshake(&g, &bad).await;
    let s = s.expect_err("the server accepted a peer it must refuse");
    assert!(s.contains(reason), "server error {s:?} does not say {reason:?}");
    let c = c.expect_err("the client did not notice the refusal");
    assert!(c.contains("the peer refused the connection"), "client error {c:?}");
}

fn bad_party(root: &DevRoot, id: SimIdentity, opts: SimPlatformOptions) -> Party {
    let a = attester(root, &id, &opts);
    // The bad party itself trusts everyone from `root` so only the good side decides.
    party(&cert::issue(&a).unwrap(), verifier(&policy_json(root, "")))
}

#[tokio::test]
async fn matching_pair_handshakes_and_both_sides_know_the_peer() {
    let root = DevRoot::generate().unwrap();
    let (a, b) = (good(&root), good(&root));
    let (s, c) = handshake(&a, &b).await;
    assert_eq!(s, Ok(()));
    assert_eq!(c, Ok(()));
}

#[tokio::test]
async fn rejects_mr_enclave_not_listed() {
    let root = DevRoot::generate().unwrap();
    let bad = bad_party(&root, identity([0x22; 32]), SimPlatformOptions::fresh(now()));
    client_refuses(
        &root,
        bad,
        &format!(
            "mr_enclave expected {} got {}",
            hex::encode(GOOD_MRENCLAVE),
            hex::encode([0x22; 32])
        ),
    )
    .await;
}

#[tokio::test]
async fn rejects_mr_enclave_not_listed_on_the_server_side_too() {
    let root = DevRoot::generate().unwrap();
    let bad = bad_party(&root, identity([0x22; 32]), SimPlatformOptions::fresh(now()));
    server_refuses(&root, bad, "mr_enclave expected").await;
}

#[tokio::test]
async fn rejects_mr_signer_not_listed() {
    let root = DevRoot::generate().unwrap();
    let id = SimIdentity {
        mr_signer: Some([0x33; 32]),
        ..identity(GOOD_MRENCLAVE)
    };
    let bad = bad_party(&root, id, SimPlatformOptions::fresh(now()));
    client_refuses(
        &root,
        bad,
        &format!(
            "mr_signer expected {} got {}",
            hex::encode(root.fingerprint()),
            hex::encode([0x33; 32])
        ),
    )
    .await;
}

#[tokio::test]
async fn rejects_other_isv_prod_id() {
    let root = DevRoot::generate().unwrap();
    let id = SimIdentity {
        isv_prod_id: 9,
        ..identity(GOOD_MRENCLAVE)
    };
    client_refuses(
        &root,
        bad_party(&root, id, SimPlatformOptions::fresh(now())),
        "isv_prod_id expected 1 got 9",
    )
    .await;
}

#[tokio::test]
async fn rejects_isv_svn_below_minimum() {
    let root = DevRoot::generate().unwrap();
    let id = SimIdentity {
        isv_svn: 1,
        ..identity(GOOD_MRENCLAVE)
    };
    client_refuses(
        &root,
        bad_party(&root, id, SimPlatformOptions::fresh(now())),
        "isv_svn 1 is below the minimum 2",
    )
    .await;
}

#[tokio::test]
async fn accepts_isv_svn_above_minimum() {
    let root = DevRoot::generate().unwrap();
    let id = SimIdentity {
        isv_svn: 7,
        ..identity(GOOD_MRENCLAVE)
    };
    let newer = bad_party(&root, id, SimPlatformOptions::fresh(now()));
    let (s, c) = handshake(&newer, &good(&root)).await;
    assert_eq!((s, c), (Ok(()), Ok(())));
}

#[tokio::test]
async fn rejects_debug_enclave() {
    let root = DevRoot::generate().unwrap();
    let id = SimIdentity {
        debug: true,
        ..identity(GOOD_MRENCLAVE)
    };
    client_refuses(
        &root,
        bad_party(&root, id, SimPlatformOptions::fresh(now())),
        "DEBUG enclave",
    )
    .await;
}

#[tokio::test]
async fn rejects_quote_not_bound_to_the_certificate_key() {
    let root = DevRoot::generate().unwrap();
    let a = attester(&root, &identity(GOOD_MRENCLAVE), &SimPlatformOptions::fresh(now()));
    // A genuine quote, but bound to another key than the certificate's.
    let other = cert::new_key().unwrap();
    let quote = a
        .quote(&cert::legacy_report_data(&other.subject_public_key_info()))
        .unwrap();
    let key = cert::new_key().unwrap();
    let ev = CertEvidence {
        legacy_quote: Some(quote),
        tcg: None,
        sim: a.sim_evidence(),
    };
    let c = RaTlsCert {
        cert_der: cert::build_cert(&key, &ev).unwrap(),
        key_der: key.serialize_der(),
        identity: a.identity().clone(),
        mode: a.mode(),
    };
    client_refuses(
        &root,
        party(&c, verifier(&policy_json(&root, ""))),
        "quote is not bound to the certificate key",
    )
    .await;
}

#[tokio::test]
async fn rejects_bad_quote_signature() {
    let root = DevRoot::generate().unwrap();
    let a = attester(&root, &identity(GOOD_MRENCLAVE), &SimPlatformOptions::fresh(now()));
    let key = cert::new_key().unwrap();
    let mut quote = a
        .quote(&cert::legacy_report_data(&key.subject_public_key_info()))
        .unwrap();
    quote[436 + 5] ^= 0x01; // inside the ISV report signature (after the 4-byte length at 432)
    let ev = CertEvidence {
        legacy_quote: Some(quote),
        tcg: None,
        sim: a.sim_evidence(),
    };
    let c = RaTlsCert {
        cert_der: cert::build_cert(&key, &ev).unwrap(),
        key_der: key.serialize_der(),
        identity: a.identity().clone(),
        mode: a.mode(),
    };
    client_refuses(
        &root,
        party(&c, verifier(&policy_json(&root, ""))),
        "ISV enclave report signature is invalid",
    )
    .await;
}

#[tokio::test]
async fn rejects_expired_collateral() {
    let root = DevRoot::generate().unwrap();
    let t = now();
    let opts = SimPlatformOptions {
        tcb_status: "UpToDate".into(),
        issued_at: t - 60 * 86_400,
        next_update: t - 30 * 86_400,
        ..SimPlatformOptions::fresh(t)
    };
    client_refuses(
        &root,
        bad_party(&root, identity(GOOD_MRENCLAVE), opts),
        "collateral is not valid at",
    )
    .await;
}

#[tokio::test]
async fn rejects_untrusted_root() {
    let root = DevRoot::generate().unwrap();
    let rogue = DevRoot::generate().unwrap();
    let bad = bad_party(
        &rogue,
        SimIdentity {
            mr_signer: Some(root.fingerprint()),
            ..identity(GOOD_MRENCLAVE)
        },
        SimPlatformOptions::fresh(now()),
    );
    client_refuses(
        &root,
        bad,
        &format!(
            "development root {}, which is not in the policy's simulated_roots",
            hex::encode(rogue.fingerprint())
        ),
    )
    .await;
}

#[tokio::test]
async fn rejects_tcb_status_not_allowed() {
    let root = DevRoot::generate().unwrap();
    let opts = SimPlatformOptions {
        tcb_status: "OutOfDate".into(),
        ..SimPlatformOptions::fresh(now())
    };
    client_refuses(
        &root,
        bad_party(&root, identity(GOOD_MRENCLAVE), opts),
        "TCB status OutOfDate is not allowed",
    )
    .await;
}

#[tokio::test]
async fn accepts_tcb_status_the_policy_allows() {
    let root = DevRoot::generate().unwrap();
    let opts = SimPlatformOptions {
        tcb_status: "SWHardeningNeeded".into(),
        ..SimPlatformOptions::fresh(now())
    };
    let server = bad_party(&root, identity(GOOD_MRENCLAVE), opts);
    let a = attester(&root, &identity(GOOD_MRENCLAVE), &SimPlatformOptions::fresh(now()));
    let lenient = verifier(&policy_json(
        &root,
        r#","allowed_tcb_statuses":["UpToDate","SWHardeningNeeded"]"#,
    ));
    let client = party(&cert::issue(&a).unwrap(), lenient);
    assert_eq!(handshake(&server, &client).await, (Ok(()), Ok(())));
}

#[tokio::test]
async fn rejects_simulated_evidence_when_the_policy_does_not_allow_it() {
    let root = DevRoot::generate().unwrap();
    let a = attester(&root, &identity(GOOD_MRENCLAVE), &SimPlatformOptions::fresh(now()));
    let strict = format!(
        r#"{{"verify_mr_enclave":"on","verify_mr_signer":"off","verify_isv_prod_id":"off","verify_isv_svn":"off",
            "sgx_mrs":[{{"mr_enclave":"{}"}}]}}"#,
        hex::encode(GOOD_MRENCLAVE)
    );
    let production = party(&cert::issue(&a).unwrap(), verifier(&strict));
    let sim = bad_party(&root, identity(GOOD_MRENCLAVE), SimPlatformOptions::fresh(now()));
    let (s, c) = handshake(&sim, &production).await;
    let c = c.unwrap_err();
    assert!(c.contains("the policy does not set allow_simulated"), "{c}");
    assert!(s.is_err());
}

#[tokio::test]
async fn rejects_chain_of_two_certificates() {
    let root = DevRoot::generate().unwrap();
    let a = attester(&root, &identity(GOOD_MRENCLAVE), &SimPlatformOptions::fresh(now()));
    let c = cert::issue(&a).unwrap();
    let extra = cert::issue(&a).unwrap();
    let key = tls::certified_key(vec![c.cert_der.clone(), extra.cert_der.clone()], &c.key_der).unwrap();
    let bad = Party {
        key,
        verifier: verifier(&policy_json(&root, "")),
    };
    client_refuses(&root, bad, "presented 2 certificates").await;
}

#[tokio::test]
async fn rejects_handshake_signed_by_another_key() {
    let root = DevRoot::generate().unwrap();
    let a = attester(&root, &identity(GOOD_MRENCLAVE), &SimPlatformOptions::fresh(now()));
    // A genuine enclave's certificate replayed by someone holding a different key.
    let genuine = cert::issue(&a).unwrap();
    let thief = cert::new_key().unwrap();
    let key = tls::certified_key(vec![genuine.cert_der.clone()], &thief.serialize_der()).unwrap();
    assert!(key.keys_match().is_err());
    let bad = Party {
        key,
        verifier: verifier(&policy_json(&root, "")),
    };
    client_refuses(&root, bad, "handshake signature does not verify").await;
}

#[tokio::test]
async fn rejects_certificate_without_evidence() {
    let root = DevRoot::generate().unwrap();
    let key = cert::new_key().unwrap();
    let der = cert::build_cert(&key, &CertEvidence::default()).unwrap();
    let c = RaTlsCert {
        cert_der: der,
        key_der: key.serialize_der(),
        identity: vfl_attest::Identity::Sgx(vfl_attest::sgx::EnclaveIdentity {
            mr_enclave: [0; 32],
            mr_signer: [0; 32],
            isv_prod_id: 0,
            isv_svn: 0,
            attributes: [0; 16],
        }),
        mode: vfl_attest::Mode::Simulated,
    };
    client_refuses(
        &root,
        party(&c, verifier(&policy_json(&root, ""))),
        "carries no attestation evidence",
    )
    .await;
}

#[test]
fn legacy_only_and_tcg_only_certificates_both_verify() {
    let root = DevRoot::generate().unwrap();
    let a = attester(&root, &identity(GOOD_MRENCLAVE), &SimPlatformOptions::fresh(now()));
    let v = Verifier::new(
        Policy::parse(policy_json(&root, "").as_bytes(), "p").unwrap(),
        None,
        Clock::System,
    );
    let key = cert::new_key().unwrap();
    let spki = key.subject_public_key_info();
    let legacy = CertEvidence {
        legacy_quote: Some(a.quote(&cert::legacy_report_data(&spki)).unwrap()),
        tcg: None,
        sim: a.sim_evidence(),
    };
    let r = v.verify_cert(&cert::build_cert(&key, &legacy).unwrap()).unwrap();
    assert_eq!(r.carrier, "gramine-legacy");
    let claims = cert::tcg_claims(&spki);
    let tcg = CertEvidence {
        legacy_quote: None,
        tcg: Some((a.quote(&cert::tcg_report_data(&claims)).unwrap(), claims)),
        sim: a.sim_evidence(),
    };
    let r = v.verify_cert(&cert::build_cert(&key, &tcg).unwrap()).unwrap();
    assert_eq!(r.carrier, "tcg-dice");
    assert_eq!(r.quote.identity.sgx().unwrap().mr_enclave, GOOD_MRENCLAVE);
}

#[test]
fn tcg_evidence_wins_and_a_bad_tcg_extension_is_not_rescued_by_the_legacy_one() {
    let root = DevRoot::generate().unwrap();
    let a = attester(&root, &identity(GOOD_MRENCLAVE), &SimPlatformOptions::fresh(now()));
    let v = Verifier::new(
        Policy::parse(policy_json(&root, "").as_bytes(), "p").unwrap(),
        None,
        Clock::System,
    );
    let key = cert::new_key().unwrap();
    let spki = key.subject_public_key_info();
    let other_claims = cert::tcg_claims(b"some other key");
    let ev = CertEvidence {
        legacy_quote: Some(a.quote(&cert::legacy_report_data(&spki)).unwrap()),
        tcg: Some((a.quote(&cert::tcg_report_data(&other_claims)).unwrap(), other_claims)),
        sim: a.sim_evidence(),
    };
    let err = v
        .verify_cert(&cert::build_cert(&key, &ev).unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("tcg-dice"), "{err}");
}

#[test]
fn gramine_legacy_extension_bytes_are_what_gramine_searches_for() {
    let root = DevRoot::generate().unwrap();
    let a = attester(&root, &identity(GOOD_MRENCLAVE), &SimPlatformOptions::fresh(now()));
    let c = cert::issue(&a).unwrap();
    // Gramine's verifier memmem()s for these 11 bytes, then expects an OCTET STRING with a 2-byte length.
    let needle = [0x06, 0x09, 0x2A, 0x86, 0x48, 0x86, 0xF8, 0x4D, 0x8A, 0x39, 0x06];
    let at = c
        .cert_der
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("legacy OID bytes present");
    assert_eq!(&c.cert_der[at + 11..at + 13], &[0x04, 0x82]);
}

/// Both ends are enclave-vfl: a client offering only TLS 1.2 (otherwise a
/// good party with a valid certificate) is refused by the server.
#[tokio::test]
async fn a_tls12_only_client_is_refused() {
    let root = DevRoot::generate().unwrap();
    let server = good(&root);
    let client = good(&root);
    let scfg = tls::server_config(server.key.clone(), server.verifier.clone()).unwrap();
    let ccfg = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(client.verifier.clone())
        .with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(client.key.clone())));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let srv = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        TlsAcceptor::from(Arc::new(scfg))
            .accept(tcp)
            .await
            .map(|_| ())
            .map_err(|e| tls::describe_error(&e))
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(tls::SERVER_NAME).unwrap();
    let c = TlsConnector::from(Arc::new(ccfg)).connect(name, tcp).await;
    assert!(c.is_err());
    let s = srv.await.unwrap().unwrap_err();
    let lower = s.to_lowercase();
    assert!(lower.contains("incompatible") || lower.contains("version"), "{s}");
}

/// A genuine certificate of an enclave the policy refuses, presented by
/// someone without its key (a replay): the refusal is not given (it would
/// count as a verdict and stop a party with `--on-reject exit`); the
/// handshake fails as a bad signature, which anyone can cause.
#[tokio::test]
async fn a_replayed_certificate_of_a_refused_enclave_fails_as_a_bad_signature_not_a_verdict() {
    let root = DevRoot::generate().unwrap();
    let rogue = attester(&root, &identity([0x44; 32]), &SimPlatformOptions::fresh(now()));
    let genuine = cert::issue(&rogue).unwrap();
    let other = cert::issue(&rogue).unwrap();
    // The rogue's certificate with another key: the replayer cannot sign.
    let replayed = tls::certified_key(vec![genuine.cert_der.clone()], &other.key_der).unwrap();
    let client = Party {
        key: replayed,
        verifier: verifier(&policy_json(&root, "")),
    };
    let (s, _) = handshake(&good(&root), &client).await;
    let s = s.unwrap_err();
    assert!(s.contains("handshake signature does not verify"), "{s}");
    // With the key, the same certificate is refused as what it is.
    let (s, _) = handshake(&good(&root), &party(&genuine, verifier(&policy_json(&root, "")))).await;
    assert!(s.unwrap_err().contains("identity is not allowed"));
}

// ------------------------------------------------ the composition root

fn sim_setup(dir: &std::path::Path, policy: std::path::PathBuf, root_key: std::path::PathBuf) -> setup::Setup {
    setup::Setup {
        evidence: setup::Evidence::Simulated {
            root_key,
            claims: setup::SimClaims {
                mr_enclave: None,
                mr_signer: None,
                isv_prod_id: 1,
                isv_svn: 1,
            },
        },
        policy,
        collateral: setup::Collateral::None,
        collateral_cache: dir.join("cache"),
    }
}

fn fresh_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("vfl-ratls-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test]
async fn composition_root_builds_configs_that_admit_a_peer_the_policy_allows() {
    let dir = fresh_dir("setup-ok");
    let (key, policy) = write::self_accepting_sim(&dir).unwrap();
    let parts = setup::build(&sim_setup(&dir, policy, key), None).unwrap();
    assert_eq!(parts.mode, vfl_attest::Mode::Simulated);
    assert!(parts.ours.contains("simulated"), "{}", parts.ours);
    let (s, c) = handshake_with((*parts.server).clone(), (*parts.client).clone()).await;
    s.unwrap();
    c.unwrap();
}

#[tokio::test]
async fn composition_root_configs_refuse_a_peer_the_policy_does_not_list() {
    let dir = fresh_dir("setup-refuse");
    let (key, policy) = write::self_accepting_sim(&dir).unwrap();
    let parts = setup::build(&sim_setup(&dir, policy, key.clone()), None).unwrap();
    // Another enclave under the same development root.
    let (root, _) = DevRoot::load_or_create(&key).unwrap();
    let a = attester(&root, &identity([0x77; 32]), &SimPlatformOptions::fresh(now()));
    // It accepts our composed server (the same policy), so only the server decides.
    let other = party(
        &cert::issue(&a).unwrap(),
        verifier(&std::fs::read_to_string(dir.join("dynamic_config.json")).unwrap()),
    );
    let ccfg = tls::client_config(other.key, other.verifier).unwrap();
    let (s, _) = handshake_with((*parts.server).clone(), ccfg).await;
    let s = s.expect_err("the composed server accepted an enclave its policy does not list");
    assert!(s.contains("mr_enclave"), "{s}");
}

#[test]
fn composition_root_refuses_a_missing_policy() {
    let dir = fresh_dir("setup-nopolicy");
    let e = setup::build(&sim_setup(&dir, dir.join("absent.json"), dir.join("root.pem")), None)
        .err()
        .expect("built without a policy");
    assert!(matches!(e, setup::SetupError::Policy(_)), "{e:?}");
}

#[test]
fn composition_root_refuses_sgx_evidence_outside_an_enclave() {
    let dir = fresh_dir("setup-sgx");
    let (key, policy) = write::self_accepting_sim(&dir).unwrap();
    let mut s = sim_setup(&dir, policy, key);
    s.evidence = setup::Evidence::Sgx {
        device: dir.join("no-attestation-device"),
    };
    let e = setup::build(&s, None).err().expect("SGX evidence without its device");
    assert!(
        matches!(
            e,
            setup::SetupError::Attest(vfl_attest::AttestError::NotInEnclave { .. })
        ),
        "{e:?}"
    );
}
