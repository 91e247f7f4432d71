//! Re-verification of a connected peer (done at every checkpoint): it uses
//! the collateral, time and high-water marks of that moment, and the role.

use std::sync::Arc;

use vfl_attest::devpki::{DevRoot, SimPlatformOptions};
use vfl_attest::freshness::Marks;
use vfl_attest::tls::{self, RaTlsVerifier};
use vfl_attest::{Clock, PartyRole, Policy, SimAttester, SimIdentity, Verifier, cert};
use vfl_bridge::secure::PeerInfo;
use vfl_bridge::{OnReject, RaTls};

fn setup(role: &str) -> (RaTls, PeerInfo) {
    let root = DevRoot::generate().unwrap();
    let id = SimIdentity {
        mr_enclave: [7; 32],
        mr_signer: None,
        isv_prod_id: 1,
        isv_svn: 1,
        debug: false,
    };
    let a = SimAttester::new(&root, &id, &SimPlatformOptions::fresh(Clock::System.now())).unwrap();
    let ours = cert::issue(&a).unwrap();
    let fp = hex::encode(root.fingerprint());
    let policy = format!(
        r#"{{"verify_mr_enclave":"on","verify_mr_signer":"on","verify_isv_prod_id":"on","verify_isv_svn":"on",
            "sgx_mrs":[{{"mr_enclave":"{}","mr_signer":"{fp}","isv_prod_id":"1","isv_svn":"1","mode":"simulated","role":"{role}"}}],
            "allow_simulated":true,"simulated_roots":["{fp}"]}}"#,
        hex::encode([7u8; 32])
    );
    let verifier = RaTlsVerifier::new(Arc::new(Verifier::new(
        Policy::parse(policy.as_bytes(), "p").unwrap(),
        None,
        Clock::System,
    )));
    let key = tls::identity(&ours).unwrap();
    let tls = RaTls {
        server: Arc::new(tls::server_config(key.clone(), verifier.clone()).unwrap()),
        client: Arc::new(tls::client_config(key, verifier.clone()).unwrap()),
        verifier,
        ours: String::new(),
        on_reject: OnReject::Exit,
    };
    // The peer: another process of the same simulated enclave.
    let peer = cert::issue(&a).unwrap();
    let info = PeerInfo {
        conn: 1,
        attested: true,
        report: None,
        cert: Some(Arc::new(peer.cert_der)),
    };
    (tls, info)
}

#[test]
fn a_peer_still_trusted_passes_re_verification() {
    let (tls, peer) = setup("follower");
    let r = tls.reverify(&peer, PartyRole::Follower).unwrap();
    assert_eq!(r.admitted_as, [PartyRole::Follower]);
}

#[test]
fn re_verification_refuses_a_peer_whose_collateral_is_now_stale() {
    let (tls, peer) = setup("follower");
    let r = tls.reverify(&peer, PartyRole::Follower).unwrap();
    // Meanwhile this party saw newer collateral for the peer's platform.
    let newer = Marks {
        tcb_eval: r.quote.collateral_marks.tcb_eval + 1,
        ..r.quote.collateral_marks
    };
    tls.verifier.verifier().freshness().record(&r.quote.platform, &newer);
    let e = tls.reverify(&peer, PartyRole::Follower).unwrap_err();
    assert!(e.contains("peer rejected on re-verification: stale collateral"), "{e}");
}

#[test]
fn re_verification_checks_the_role() {
    let (tls, peer) = setup("leader");
    let e = tls.reverify(&peer, PartyRole::Follower).unwrap_err();
    assert!(e.contains("allow it only as leader"), "{e}");
}
