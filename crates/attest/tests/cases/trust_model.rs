//! The trust model's rules in the policy and the verifier, one refusal per
//! test: policies that pin nothing or say a thing twice, role-specific
//! entries, simulated evidence kept away from production entries, the TCB
//! evaluation floor and collateral high-water marks.

use std::sync::{Arc, Mutex};

use vfl_attest::devpki::{DevRoot, SimPlatformOptions};
use vfl_attest::freshness::{Freshness, MarkStore};
use vfl_attest::policy::PolicyErrorKind;
use vfl_attest::{Clock, Mode, PartyRole, Policy, Rejection, SimAttester, SimIdentity, Verifier, cert};

const ENCLAVE: [u8; 32] = [0x5e; 32];

fn now() -> u64 {
    Clock::System.now()
}

fn kind(json: &str) -> PolicyErrorKind {
    Policy::parse(json.as_bytes(), "p").unwrap_err().kind
}

/// A certificate of a simulated enclave signed (mr_signer) by `signer`.
fn cert_of(root: &DevRoot, signer: [u8; 32], opts: &SimPlatformOptions) -> Vec<u8> {
    let id = SimIdentity {
        mr_enclave: ENCLAVE,
        mr_signer: Some(signer),
        isv_prod_id: 1,
        isv_svn: 1,
        debug: false,
    };
    cert::issue(&SimAttester::new(root, &id, opts).unwrap())
        .unwrap()
        .cert_der
}

/// A simulation policy with `entries` (JSON list items) and `extra` keys.
fn sim_policy(root: &DevRoot, entries: &str, extra: &str) -> Policy {
    let json = format!(
        r#"{{"verify_mr_enclave":"on","verify_mr_signer":"on","verify_isv_prod_id":"on","verify_isv_svn":"on",
            "sgx_mrs":[{entries}],"allow_simulated":true,"simulated_roots":["{}"]{extra}}}"#,
        hex::encode(root.fingerprint())
    );
    Policy::parse(json.as_bytes(), "p").unwrap()
}

fn entry(signer: [u8; 32], role: &str, mode: &str) -> String {
    format!(
        r#"{{"mr_enclave":"{}","mr_signer":"{}","isv_prod_id":"1","isv_svn":"1"{role}{mode}}}"#,
        hex::encode(ENCLAVE),
        hex::encode(signer)
    )
}

#[test]
fn a_policy_pinning_neither_enclave_nor_signer_is_refused() {
    let k = kind(
        r#"{"verify_mr_enclave":"off","verify_mr_signer":"off","verify_isv_prod_id":"on","verify_isv_svn":"on",
            "sgx_mrs":[{"isv_prod_id":"1","isv_svn":"1"}]}"#,
    );
    assert_eq!(k, PolicyErrorKind::PinsNothing);
}

#[test]
fn a_duplicate_key_is_refused() {
    let e = Policy::parse(
        br#"{"verify_mr_enclave":"on","verify_mr_signer":"off","verify_isv_prod_id":"off","verify_isv_svn":"off",
            "sgx_mrs":[],"allow_debug":false,
            "allow_debug":true}"#,
        "p",
    )
    .unwrap_err();
    assert_eq!(e.kind, PolicyErrorKind::DuplicateKey { line: 3 });
    assert_eq!(e.field, "allow_debug");
}

#[test]
fn a_duplicate_key_inside_an_entry_is_refused() {
    let k = kind(
        r#"{"verify_mr_enclave":"on","verify_mr_signer":"off","verify_isv_prod_id":"off","verify_isv_svn":"off",
            "sgx_mrs":[{"mr_enclave":"self","mr_enclave":"0101010101010101010101010101010101010101010101010101010101010101"}]}"#,
    );
    assert!(matches!(k, PolicyErrorKind::DuplicateKey { .. }), "{k}");
}

#[test]
fn an_unknown_role_is_refused() {
    let k = kind(
        r#"{"verify_mr_enclave":"on","verify_mr_signer":"off","verify_isv_prod_id":"off","verify_isv_svn":"off",
            "sgx_mrs":[{"mr_enclave":"self","role":"observer"}]}"#,
    );
    assert!(
        matches!(&k, PolicyErrorKind::Invalid(m) if m.contains("observer")),
        "{k}"
    );
}

#[test]
fn release_exports_lists_roles() {
    let p = Policy::parse(
        br#"{"verify_mr_enclave":"on","verify_mr_signer":"off","verify_isv_prod_id":"off","verify_isv_svn":"off",
            "sgx_mrs":[],"release_exports":["leader","follower"]}"#,
        "p",
    )
    .unwrap();
    assert_eq!(p.release_exports, [PartyRole::Leader, PartyRole::Follower]);
    let k = kind(
        r#"{"verify_mr_enclave":"on","verify_mr_signer":"off","verify_isv_prod_id":"off","verify_isv_svn":"off",
            "sgx_mrs":[],"release_exports":["leader","leader"]}"#,
    );
    assert!(matches!(&k, PolicyErrorKind::Invalid(m) if m.contains("twice")), "{k}");
}

#[test]
fn a_production_party_refuses_a_policy_that_admits_simulated_peers() {
    let root = DevRoot::generate().unwrap();
    let p = sim_policy(&root, &entry([1; 32], "", r#","mode":"simulated""#), "");
    let e = p.check_usable_by(Mode::Sgx, "p").unwrap_err();
    assert_eq!(e.kind, PolicyErrorKind::SimulatedUnderSgx);
    assert!(p.check_usable_by(Mode::Simulated, "p").is_ok());
}

#[test]
fn simulated_entries_need_allow_simulated() {
    let k = kind(&format!(
        r#"{{"verify_mr_enclave":"on","verify_mr_signer":"on","verify_isv_prod_id":"on","verify_isv_svn":"on",
            "sgx_mrs":[{}]}}"#,
        entry([1; 32], "", r#","mode":"simulated""#)
    ));
    assert!(
        matches!(&k, PolicyErrorKind::Invalid(m) if m.contains("allow_simulated")),
        "{k}"
    );
}

#[test]
fn simulated_evidence_never_matches_a_production_entry() {
    let root = DevRoot::generate().unwrap();
    // The entry names exactly the simulated enclave, but is for hardware evidence.
    let v = Verifier::new(sim_policy(&root, &entry([1; 32], "", ""), ""), None, Clock::System);
    let e = v
        .verify_cert(&cert_of(&root, [1; 32], &SimPlatformOptions::fresh(now())))
        .unwrap_err();
    match e {
        Rejection::Identity(why) => assert!(why.contains("for sgx evidence only"), "{why}"),
        other => panic!("{other}"),
    }
}

#[test]
fn role_entries_admit_each_signer_in_its_own_role_only() {
    let root = DevRoot::generate().unwrap();
    let (leader, follower) = ([0xa1; 32], [0xf1; 32]);
    let policy = sim_policy(
        &root,
        &format!(
            "{},{}",
            entry(leader, r#","role":"leader""#, r#","mode":"simulated""#),
            entry(follower, r#","role":"follower""#, r#","mode":"simulated""#)
        ),
        "",
    );
    let v = Verifier::new(policy, None, Clock::System);
    let opts = SimPlatformOptions::fresh(now());
    let l = v.verify_cert(&cert_of(&root, leader, &opts)).unwrap();
    assert_eq!(l.admitted_as, [PartyRole::Leader]);
    assert!(l.check_role(PartyRole::Leader).is_ok());
    let why = l.check_role(PartyRole::Follower).unwrap_err();
    assert!(why.contains("allow it only as leader"), "{why}");
    let f = v.verify_cert(&cert_of(&root, follower, &opts)).unwrap();
    assert_eq!(f.admitted_as, [PartyRole::Follower]);
    assert!(f.check_role(PartyRole::Leader).is_err());
    // A third signer building the same enclave is not admitted at all.
    let e = v.verify_cert(&cert_of(&root, [0x33; 32], &opts)).unwrap_err();
    assert!(matches!(e, Rejection::Identity(_)), "{e}");
}

#[test]
fn collateral_below_the_policys_tcb_evaluation_floor_is_refused() {
    let root = DevRoot::generate().unwrap();
    let v = Verifier::new(
        sim_policy(
            &root,
            &entry([1; 32], "", r#","mode":"simulated""#),
            r#","min_tcb_eval_data_number":18"#,
        ),
        None,
        Clock::System,
    );
    let old = SimPlatformOptions {
        tcb_eval_data_number: 17,
        ..SimPlatformOptions::fresh(now())
    };
    let e = v.verify_cert(&cert_of(&root, [1; 32], &old)).unwrap_err();
    assert!(matches!(e, Rejection::TcbEvalBelowFloor { got: 17, min: 18 }), "{e}");
    let current = SimPlatformOptions {
        tcb_eval_data_number: 18,
        ..SimPlatformOptions::fresh(now())
    };
    assert!(v.verify_cert(&cert_of(&root, [1; 32], &current)).is_ok());
}

#[test]
fn older_collateral_than_already_seen_is_refused() {
    let root = DevRoot::generate().unwrap();
    let v = Verifier::new(
        sim_policy(&root, &entry([1; 32], "", r#","mode":"simulated""#), ""),
        None,
        Clock::System,
    );
    let newer = SimPlatformOptions {
        tcb_eval_data_number: 19,
        ..SimPlatformOptions::fresh(now())
    };
    v.verify_cert(&cert_of(&root, [1; 32], &newer)).unwrap();
    let older = SimPlatformOptions {
        tcb_eval_data_number: 18,
        ..SimPlatformOptions::fresh(now())
    };
    let e = v.verify_cert(&cert_of(&root, [1; 32], &older)).unwrap_err();
    assert!(
        matches!(
            e,
            Rejection::StaleCollateral {
                what: "TCB info tcbEvaluationDataNumber",
                got: 18,
                seen: 19,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn a_crl_older_than_already_seen_is_refused() {
    let root = DevRoot::generate().unwrap();
    let v = Verifier::new(
        sim_policy(&root, &entry([1; 32], "", r#","mode":"simulated""#), ""),
        None,
        Clock::System,
    );
    let crl = |n: u32| SimPlatformOptions {
        crl_number: n,
        ..SimPlatformOptions::fresh(now())
    };
    v.verify_cert(&cert_of(&root, [1; 32], &crl(5))).unwrap();
    let e = v.verify_cert(&cert_of(&root, [1; 32], &crl(4))).unwrap_err();
    assert!(
        matches!(
            e,
            Rejection::StaleCollateral {
                what: "PCK CRL number",
                got: 4,
                seen: 5,
                ..
            }
        ),
        "{e}"
    );
}

/// A store in memory standing in for the sealed file.
#[derive(Default, Clone)]
struct MemStore(Arc<Mutex<Option<Vec<u8>>>>);

impl MarkStore for MemStore {
    fn load(&self) -> Result<Option<Vec<u8>>, String> {
        Ok(self.0.lock().unwrap().clone())
    }
    fn save(&self, bytes: &[u8]) -> Result<(), String> {
        *self.0.lock().unwrap() = Some(bytes.to_vec());
        Ok(())
    }
    fn describe(&self) -> String {
        "memory".into()
    }
}

#[test]
fn the_high_water_marks_survive_a_restart() {
    let root = DevRoot::generate().unwrap();
    let store = MemStore::default();
    let policy = sim_policy(&root, &entry([1; 32], "", r#","mode":"simulated""#), "");
    let first = Verifier::with_freshness(
        policy.clone(),
        None,
        Clock::System,
        Arc::new(Freshness::with_store(Box::new(store.clone())).unwrap()),
    );
    let opts = |n: u32| SimPlatformOptions {
        tcb_eval_data_number: n,
        ..SimPlatformOptions::fresh(now())
    };
    first.verify_cert(&cert_of(&root, [1; 32], &opts(20))).unwrap();
    // The next process loads the marks the first one saved.
    let second = Verifier::with_freshness(
        policy,
        None,
        Clock::System,
        Arc::new(Freshness::with_store(Box::new(store)).unwrap()),
    );
    let e = second.verify_cert(&cert_of(&root, [1; 32], &opts(19))).unwrap_err();
    assert!(matches!(e, Rejection::StaleCollateral { seen: 20, .. }), "{e}");
}

fn sgx_kind(json: &str) -> PolicyErrorKind {
    Policy::parse(json.as_bytes(), "p")
        .unwrap()
        .check_usable_by(Mode::Sgx, "p")
        .unwrap_err()
        .kind
}

#[test]
fn a_production_policy_naming_another_enclave_is_refused() {
    // E.g. copied from a peer's identity file: it would admit the peer's own code.
    let k = sgx_kind(&format!(
        r#"{{"verify_mr_enclave":"on","verify_mr_signer":"on","verify_isv_prod_id":"on","verify_isv_svn":"on",
            "sgx_mrs":[{{"mr_enclave":"{}","mr_signer":"{}","isv_prod_id":"1","isv_svn":"1","role":"follower"}}]}}"#,
        "ab".repeat(32),
        "cd".repeat(32)
    ));
    assert!(
        matches!(&k, PolicyErrorKind::NotThisEnclave(m) if m.contains("not \"self\"")),
        "{k}"
    );
}

#[test]
fn a_production_policy_entry_without_a_role_is_refused() {
    let k = sgx_kind(&format!(
        r#"{{"verify_mr_enclave":"on","verify_mr_signer":"on","verify_isv_prod_id":"on","verify_isv_svn":"on",
            "sgx_mrs":[{{"mr_enclave":"self","mr_signer":"{}","isv_prod_id":"1","isv_svn":"1"}}]}}"#,
        "cd".repeat(32)
    ));
    assert!(
        matches!(&k, PolicyErrorKind::NotThisEnclave(m) if m.contains("no role")),
        "{k}"
    );
}

#[test]
fn a_production_policy_that_does_not_pin_the_signer_is_refused() {
    let k = sgx_kind(
        r#"{"verify_mr_enclave":"on","verify_mr_signer":"off","verify_isv_prod_id":"on","verify_isv_svn":"on",
            "sgx_mrs":[{"mr_enclave":"self","isv_prod_id":"1","isv_svn":"1","role":"follower"}]}"#,
    );
    assert!(matches!(k, PolicyErrorKind::NotThisEnclave(_)), "{k}");
    let ok = Policy::parse(
        format!(
            r#"{{"verify_mr_enclave":"on","verify_mr_signer":"on","verify_isv_prod_id":"on","verify_isv_svn":"on",
            "sgx_mrs":[{{"mr_enclave":"self","mr_signer":"{}","isv_prod_id":"1","isv_svn":"1","role":"follower"}}]}}"#,
            "cd".repeat(32)
        )
        .as_bytes(),
        "p",
    )
    .unwrap();
    assert!(ok.check_usable_by(Mode::Sgx, "p").is_ok());
}

mod print_parse {
    use proptest::prelude::*;
    use vfl_attest::PartyRole;
    use vfl_attest::policy::{Policy, SvnRule};

    fn hex32() -> impl Strategy<Value = [u8; 32]> {
        any::<[u8; 32]>()
    }

    proptest! {
        /// A policy written out as JSON (any entries, roles, SVN rules, floor
        /// and releases) parses back to the same values.
        #[test]
        fn a_printed_policy_parses_back(
            entries in proptest::collection::vec((hex32(), hex32(), any::<u16>(), any::<u16>(), any::<bool>(), 0u8..3), 0..5),
            floor in proptest::option::of(any::<u32>()),
            release in proptest::sample::subsequence(vec!["follower", "leader"], 0..=2),
        ) {
            let list: Vec<serde_json::Value> = entries.iter().map(|(e, s, p, v, min, role)| {
                let mut m = serde_json::json!({
                    "mr_enclave": hex::encode(e), "mr_signer": hex::encode(s), "isv_prod_id": p.to_string(),
                });
                m[if *min { "min_isv_svn" } else { "isv_svn" }] = v.to_string().into();
                match role { 1 => m["role"] = "leader".into(), 2 => m["role"] = "follower".into(), _ => {} }
                m
            }).collect();
            let mut doc = serde_json::json!({
                "verify_mr_enclave": "on", "verify_mr_signer": "on", "verify_isv_prod_id": "on", "verify_isv_svn": "on",
                "sgx_mrs": list, "release_exports": release,
            });
            if let Some(f) = floor { doc["min_tcb_eval_data_number"] = f.into(); }
            let p = Policy::parse(serde_json::to_string_pretty(&doc).unwrap().as_bytes(), "p").unwrap();
            prop_assert_eq!(p.entries.len(), entries.len());
            for (got, (e, s, prod, v, min, role)) in p.entries.iter().zip(&entries) {
                prop_assert_eq!(got.mr_enclave, Some(*e));
                prop_assert_eq!(got.mr_signer, Some(*s));
                prop_assert_eq!(got.isv_prod_id, Some(*prod));
                prop_assert_eq!(got.isv_svn, Some(if *min { SvnRule::AtLeast(*v) } else { SvnRule::Equal(*v) }));
                let want = match role { 1 => Some(PartyRole::Leader), 2 => Some(PartyRole::Follower), _ => None };
                prop_assert_eq!(got.role, want);
            }
            prop_assert_eq!(p.min_tcb_eval_data_number, floor);
            prop_assert_eq!(p.release_exports.len(), release.len());
        }
    }
}
