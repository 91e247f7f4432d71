//! TDX evidence: Intel's TDX sample quotes through dcap-qvl, the `tdx_mrs`
//! policy list, the configfs-tsm attester against a fake tree, and simulated
//! TDX evidence in RA-TLS certificates.

use std::path::{Path, PathBuf};

use vfl_attest::collateral::FileCollateral;
use vfl_attest::devpki::{DevRoot, SimPlatformOptions};
use vfl_attest::policy::PolicyErrorKind;
use vfl_attest::quote::QuoteView;
use vfl_attest::verify::{QuoteReport, Rejection, Root, verify_quote};
use vfl_attest::{
    AttestError, Attester, Clock, Identity, Mode, Policy, SimAttester, SimTdIdentity, TdxAttester, TeeType, Verifier,
    cert,
};

const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/dcap-qvl");
/// 2025-06-20T00:00:00Z: inside the `tdx_quote` collateral's window.
const V4_TIME: u64 = 1_750_377_600;
/// 2026-10-20T00:00:00Z: inside the `tdx_quote_td15ex` collateral's window.
const TD15EX_TIME: u64 = 1_792_454_400;
/// 2026-03-01T00:00:00Z: inside the `tdx_quote_outdated` collateral's window.
const OUTDATED_TIME: u64 = 1_772_323_200;

fn sample(name: &str) -> (Vec<u8>, dcap_qvl::QuoteCollateralV3) {
    let quote = std::fs::read(format!("{FIX}/{name}")).unwrap();
    let c = FileCollateral::load(Path::new(&format!("{FIX}/{name}_collateral.json"))).unwrap();
    (quote, c.collateral().clone())
}

fn verified(name: &str, at: u64) -> QuoteReport {
    let (q, c) = sample(name);
    verify_quote(&q, &c, &Root::Intel, at).unwrap()
}

fn td(r: &QuoteReport) -> &vfl_attest::tdx::TdIdentity {
    r.identity.tdx().expect("a TD identity")
}

#[test]
fn intel_tdx_v4_sample_verifies_and_reports_the_td() {
    let r = verified("tdx_quote", V4_TIME);
    assert_eq!(r.tee_type, TeeType::Tdx);
    assert_eq!(r.quote_version, 4);
    assert_eq!(r.tcb_status, "UpToDate");
    let id = td(&r);
    assert!(
        hex::encode(id.mr_td).starts_with("91eb2b44"),
        "{}",
        hex::encode(id.mr_td)
    );
    assert!(!r.debug);
    // The JSON report names the TEE and every TD field.
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["tee_type"], "tdx");
    for k in [
        "mr_td",
        "rtmr0",
        "rtmr1",
        "rtmr2",
        "rtmr3",
        "mr_config_id",
        "mr_owner",
        "mr_owner_config",
        "td_attributes",
        "xfam",
        "tee_tcb_svn",
    ] {
        assert!(v[k].is_string(), "{k} missing from {v}");
    }
    assert_eq!(v["td_attributes"], "0000001000000000");
}

#[test]
fn intel_tdx_v5_td15ex_sample_verifies() {
    let r = verified("tdx_quote_td15ex", TD15EX_TIME);
    assert_eq!(r.tee_type, TeeType::Tdx);
    assert_eq!(r.quote_version, 5);
    assert_eq!(r.tcb_status, "UpToDate");
    let (q, _) = sample("tdx_quote_td15ex");
    // What we read before verification is what dcap-qvl verified.
    assert_eq!(QuoteView::parse(&q).unwrap().identity(), &r.identity);
}

/// Intel's `tdx_quote_outdated` comes from a platform whose PCK certificate
/// names a CPU SVN below every TCB level its collateral lists (the lowest is
/// OutOfDate). Like Intel's QVL, dcap-qvl then assigns no status at all:
/// the quote is refused as unrecognised, which is stricter than OutOfDate.
/// (dcap-qvl reaches OutOfDate for it only through its
/// `danger-allow-tcb-override` feature, which enclave-vfl does not enable.)
#[test]
fn intel_tdx_outdated_sample_is_below_every_tcb_level_and_refused() {
    let (q, c) = sample("tdx_quote_outdated");
    let parsed = dcap_qvl::quote::Quote::parse(&q).unwrap();
    let chain = dcap_qvl::intel::extract_cert_chain(&parsed).unwrap();
    let pck = dcap_qvl::intel::parse_pck_extension(&chain[0]).unwrap();
    let info: serde_json::Value = serde_json::from_str(&c.tcb_info).unwrap();
    let levels = info["tcbLevels"].as_array().unwrap();
    assert_eq!(levels.last().unwrap()["tcbStatus"], "OutOfDate");
    for level in levels {
        let needed: Vec<u64> = level["tcb"]["sgxtcbcomponents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["svn"].as_u64().unwrap())
            .collect();
        assert!(
            pck.cpu_svn
                .iter()
                .zip(&needed)
                .any(|(have, need)| u64::from(*have) < *need),
            "CPU SVN {:?} meets level {needed:?}",
            pck.cpu_svn
        );
    }
    let e = verify_quote(&q, &c, &Root::Intel, OUTDATED_TIME).unwrap_err();
    assert!(
        matches!(&e, Rejection::Quote(m) if m.contains("No matching TCB level")),
        "{e}"
    );
}

/// A TD whose platform is OutOfDate gets that status, which a policy must
/// allow by name (simulated platform: Intel's samples have no such quote).
#[test]
fn an_out_of_date_td_platform_needs_the_status_allowed() {
    let root = DevRoot::generate().unwrap();
    let now = Clock::System.now();
    let a = SimAttester::new_tdx(
        &root,
        &SimTdIdentity {
            mr_td: [9; 48],
            rtmr: [[0; 48], [1; 48], [2; 48], [3; 48]],
            mr_config_id: [0; 48],
            debug: false,
        },
        &SimPlatformOptions {
            tcb_status: "OutOfDate".into(),
            ..SimPlatformOptions::fresh_tdx(now)
        },
    )
    .unwrap();
    let c = cert::issue(&a).unwrap();
    let strict = Verifier::new(sim_td_policy(&root, [9; 48], ""), None, Clock::System);
    let e = strict.verify_cert(&c.cert_der).unwrap_err();
    assert!(
        matches!(&e, Rejection::TcbStatus { status, .. } if status == "OutOfDate"),
        "{e}"
    );
    let lenient = Verifier::new(
        sim_td_policy(&root, [9; 48], r#","allowed_tcb_statuses":["UpToDate","OutOfDate"]"#),
        None,
        Clock::System,
    );
    assert_eq!(lenient.verify_cert(&c.cert_der).unwrap().quote.tcb_status, "OutOfDate");
}

fn flip_every_byte(name: &str, at: u64) {
    let (quote, coll) = sample(name);
    let mut accepted = Vec::new();
    for i in 0..quote.len() {
        let mut q = quote.clone();
        q[i] ^= 0xff;
        if verify_quote(&q, &coll, &Root::Intel, at).is_ok() {
            accepted.push(i);
        }
    }
    assert!(
        accepted.is_empty(),
        "{name} with these bytes flipped was accepted: {accepted:?}"
    );
}

#[test]
fn one_flipped_byte_anywhere_in_the_tdx_v4_sample_is_refused() {
    flip_every_byte("tdx_quote", V4_TIME);
}

#[test]
fn one_flipped_byte_anywhere_in_the_tdx_td15ex_sample_is_refused() {
    flip_every_byte("tdx_quote_td15ex", TD15EX_TIME);
}

#[test]
fn one_flipped_byte_anywhere_in_the_tdx_outdated_sample_is_refused() {
    flip_every_byte("tdx_quote_outdated", OUTDATED_TIME);
}

#[test]
fn tdx_sample_is_refused_after_its_collateral_expired() {
    let (q, c) = sample("tdx_quote");
    let e = verify_quote(&q, &c, &Root::Intel, V4_TIME + 400 * 86_400).unwrap_err();
    assert!(matches!(e, Rejection::CollateralExpired { .. }), "{e}");
}

#[test]
fn tdx_sample_with_sgx_collateral_is_refused() {
    let (q, _) = sample("tdx_quote");
    let (_, sgx) = sample("sgx_quote");
    let e = verify_quote(&q, &sgx, &Root::Intel, V4_TIME).unwrap_err();
    assert!(matches!(e, Rejection::Quote(_)), "{e}");
}

#[test]
fn non_zero_bytes_after_a_tdx_quote_are_refused_zero_padding_is_not() {
    let (q, c) = sample("tdx_quote");
    // Intel's sample ends in 70 zero bytes of padding after its signature data.
    assert!(q.ends_with(&[0; 70]));
    let mut padded = q.clone();
    padded.extend_from_slice(&[0; 16]);
    assert!(verify_quote(&padded, &c, &Root::Intel, V4_TIME).is_ok());
    let mut junk = q.clone();
    junk.push(1);
    let e = verify_quote(&junk, &c, &Root::Intel, V4_TIME).unwrap_err();
    assert!(
        matches!(&e, Rejection::Quote(m) if m.contains("malformed quote")),
        "{e}"
    );
}

// ---- tdx_mrs ----

fn tdx_policy(mr_td: &str, extra: &str) -> Policy {
    Policy::parse(
        format!(
            r#"{{"tdx_mrs":[{{"mr_td":"{mr_td}","role":"follower"}}],"allowed_tcb_statuses":["UpToDate"]{extra}}}"#
        )
        .as_bytes(),
        "tdx policy",
    )
    .unwrap()
}

#[test]
fn tdx_only_policy_needs_no_sgx_flags_and_admits_the_pinned_td() {
    let r = verified("tdx_quote", V4_TIME);
    let p = tdx_policy(&hex::encode(td(&r).mr_td), "");
    let v = Verifier::new(p, None, Clock::Fixed(V4_TIME));
    assert_eq!(v.appraise(&r, Mode::Tdx).unwrap(), vec![0]);
    assert_eq!(
        v.policy().roles_of(TeeType::Tdx, &[0]),
        vec![vfl_attest::PartyRole::Follower]
    );
}

#[test]
fn another_mr_td_is_refused_naming_mr_td() {
    let r = verified("tdx_quote", V4_TIME);
    let v = Verifier::new(tdx_policy(&"ab".repeat(48), ""), None, Clock::Fixed(V4_TIME));
    let e = v.appraise(&r, Mode::Tdx).unwrap_err();
    let Rejection::Identity(why) = &e else { panic!("{e}") };
    assert!(why.contains("tdx_mrs[0]: mr_td expected abab"), "{why}");
    assert!(why.contains(&format!("got {}", hex::encode(td(&r).mr_td))), "{why}");
}

#[test]
fn a_pinned_rtmr_that_differs_is_refused_naming_it() {
    let r = verified("tdx_quote", V4_TIME);
    let p = Policy::parse(
        format!(
            r#"{{"tdx_mrs":[{{"mr_td":"{}","rtmr2":"{}"}}]}}"#,
            hex::encode(td(&r).mr_td),
            "00".repeat(47) + "01"
        )
        .as_bytes(),
        "p",
    )
    .unwrap();
    let e = Verifier::new(p, None, Clock::Fixed(V4_TIME))
        .appraise(&r, Mode::Tdx)
        .unwrap_err();
    assert!(
        matches!(&e, Rejection::Identity(m) if m.contains("rtmr2 expected")),
        "{e}"
    );
}

#[test]
fn an_sgx_only_policy_refuses_a_tdx_quote() {
    let r = verified("tdx_quote", V4_TIME);
    let p = Policy::parse(
        br#"{"verify_mr_enclave":"on","verify_mr_signer":"off","verify_isv_prod_id":"off","verify_isv_svn":"off",
            "sgx_mrs":[{"mr_enclave":"0101010101010101010101010101010101010101010101010101010101010101"}]}"#,
        "p",
    )
    .unwrap();
    let e = Verifier::new(p, None, Clock::Fixed(V4_TIME))
        .appraise(&r, Mode::Tdx)
        .unwrap_err();
    assert!(
        matches!(&e, Rejection::Identity(m) if m.contains("tdx_mrs is empty or missing")),
        "{e}"
    );
}

#[test]
fn a_tdx_only_policy_refuses_an_sgx_quote() {
    let (q, c) = sample("sgx_quote");
    let r = verify_quote(&q, &c, &Root::Intel, V4_TIME).unwrap();
    let p = Policy::parse(
        format!(
            r#"{{"tdx_mrs":[{{"mr_td":"{}"}}],"allowed_tcb_statuses":["ConfigurationAndSWHardeningNeeded"]}}"#,
            "ab".repeat(48)
        )
        .as_bytes(),
        "p",
    )
    .unwrap();
    let e = Verifier::new(p, None, Clock::Fixed(V4_TIME))
        .appraise(&r, Mode::Sgx)
        .unwrap_err();
    assert!(
        matches!(&e, Rejection::Identity(m) if m.contains("sgx_mrs is empty or missing")),
        "{e}"
    );
}

fn kind(json: &str) -> PolicyErrorKind {
    Policy::parse(json.as_bytes(), "p").unwrap_err().kind
}

/// The policy is refused as invalid, the reason saying `needle`.
fn refused_as_invalid(json: &str, needle: &str) {
    let k = kind(json);
    assert!(matches!(&k, PolicyErrorKind::Invalid(m) if m.contains(needle)), "{k}");
}

#[test]
fn a_td_entry_without_any_measurement_is_refused() {
    refused_as_invalid(r#"{"tdx_mrs":[{"role":"leader"}]}"#, "pins mr_td");
}

#[test]
fn a_td_measurement_of_the_wrong_length_is_refused() {
    refused_as_invalid(
        &format!(r#"{{"tdx_mrs":[{{"mr_td":"{}"}}]}}"#, "ab".repeat(32)),
        "96 hex digits",
    );
}

#[test]
fn an_unknown_td_entry_key_is_refused() {
    refused_as_invalid(
        &format!(r#"{{"tdx_mrs":[{{"mr_td":"{}","rtmr4":"00"}}]}}"#, "ab".repeat(48)),
        "unknown key",
    );
}

#[test]
fn a_td_entry_mode_other_than_tdx_or_simulated_is_refused() {
    refused_as_invalid(
        &format!(r#"{{"tdx_mrs":[{{"mr_td":"{}","mode":"sgx"}}]}}"#, "ab".repeat(48)),
        "\"tdx\" or \"simulated\"",
    );
}

#[test]
fn a_simulated_td_entry_needs_allow_simulated() {
    refused_as_invalid(
        &format!(
            r#"{{"tdx_mrs":[{{"mr_td":"{}","mode":"simulated"}}]}}"#,
            "ab".repeat(48)
        ),
        "allow_simulated",
    );
}

#[test]
fn a_policy_with_neither_list_is_refused() {
    refused_as_invalid(
        r#"{"verify_mr_enclave":"on","verify_mr_signer":"on","verify_isv_prod_id":"on","verify_isv_svn":"on"}"#,
        "tdx_mrs",
    );
}

fn full_td_entry(role: &str, mr_td: &str) -> String {
    format!(
        r#"{{"role":"{role}","mr_td":"{mr_td}","rtmr0":"{0}","rtmr1":"{0}","rtmr2":"{0}"}}"#,
        "11".repeat(48)
    )
}

/// A hardware party's check of a TD entry with `drop` left out of a full one.
fn weak_td(drop: &str) -> PolicyErrorKind {
    let mut entry: serde_json::Value = serde_json::from_str(&full_td_entry("leader", &"11".repeat(48))).unwrap();
    entry.as_object_mut().unwrap().remove(drop);
    let p = Policy::parse(serde_json::json!({ "tdx_mrs": [entry] }).to_string().as_bytes(), "p").unwrap();
    assert!(p.check_usable_by(Mode::Simulated, "p").is_ok());
    let sgx = p.check_usable_by(Mode::Sgx, "p").unwrap_err().kind;
    assert_eq!(p.check_usable_by(Mode::Tdx, "p").unwrap_err().kind, sgx);
    sgx
}

#[test]
fn a_hardware_party_refuses_a_td_entry_without_rtmr0() {
    // RTMR0 covers the ACPI tables the host hands the TD.
    assert_eq!(weak_td("rtmr0"), PolicyErrorKind::WeakTdEntry("no rtmr0".into()));
}

#[test]
fn a_hardware_party_refuses_a_td_entry_without_rtmr1() {
    assert_eq!(weak_td("rtmr1"), PolicyErrorKind::WeakTdEntry("no rtmr1".into()));
}

#[test]
fn a_hardware_party_refuses_a_td_entry_without_rtmr2() {
    assert_eq!(weak_td("rtmr2"), PolicyErrorKind::WeakTdEntry("no rtmr2".into()));
}

#[test]
fn a_hardware_party_refuses_a_td_entry_without_a_role() {
    assert_eq!(weak_td("role"), PolicyErrorKind::WeakTdEntry("no role".into()));
}

#[test]
fn a_full_td_entry_is_usable_by_both_kinds_of_hardware_party() {
    let p = Policy::parse(
        format!(r#"{{"tdx_mrs":[{}]}}"#, full_td_entry("leader", &"11".repeat(48))).as_bytes(),
        "p",
    )
    .unwrap();
    assert!(p.check_usable_by(Mode::Sgx, "p").is_ok());
    assert!(p.check_usable_by(Mode::Tdx, "p").is_ok());
}

#[test]
fn an_sgx_party_cannot_say_self_for_a_td() {
    let p = Policy::parse(
        format!(r#"{{"tdx_mrs":[{}]}}"#, full_td_entry("follower", "self")).as_bytes(),
        "p",
    )
    .unwrap();
    let e = p.check_usable_by(Mode::Sgx, "p").unwrap_err();
    assert!(matches!(e.kind, PolicyErrorKind::SelfOfOtherTee(_)), "{e}");
    // A TD party can: "self" is its own mr_td.
    assert!(p.check_usable_by(Mode::Tdx, "p").is_ok());
}

#[test]
fn a_td_party_admits_enclaves_by_signer_and_role_not_self() {
    let sgx = |entry: &str| {
        Policy::parse(
            format!(
                r#"{{"verify_mr_enclave":"off","verify_mr_signer":"on","verify_isv_prod_id":"on","verify_isv_svn":"on",
                    "sgx_mrs":[{entry}]}}"#
            )
            .as_bytes(),
            "p",
        )
        .unwrap()
    };
    let signer = "22".repeat(32);
    let ok = sgx(&format!(
        r#"{{"role":"leader","mr_signer":"{signer}","isv_prod_id":"1","min_isv_svn":"1"}}"#
    ));
    assert!(ok.check_usable_by(Mode::Tdx, "p").is_ok());
    let own = sgx(r#"{"role":"leader","mr_signer":"self","isv_prod_id":"1","min_isv_svn":"1"}"#);
    let e = own.check_usable_by(Mode::Tdx, "p").unwrap_err();
    assert!(matches!(e.kind, PolicyErrorKind::SelfOfOtherTee(_)), "{e}");
    let no_role = sgx(&format!(
        r#"{{"mr_signer":"{signer}","isv_prod_id":"1","min_isv_svn":"1"}}"#
    ));
    let e = no_role.check_usable_by(Mode::Tdx, "p").unwrap_err();
    assert_eq!(e.kind, PolicyErrorKind::WeakEnclaveEntry("no role".into()));
    // Any version of that signer's product would be too much.
    let any_version = Policy::parse(
        format!(
            r#"{{"verify_mr_enclave":"off","verify_mr_signer":"on","verify_isv_prod_id":"on","verify_isv_svn":"off",
                "sgx_mrs":[{{"role":"leader","mr_signer":"{signer}","isv_prod_id":"1"}}]}}"#
        )
        .as_bytes(),
        "p",
    )
    .unwrap();
    let e = any_version.check_usable_by(Mode::Tdx, "p").unwrap_err();
    assert!(
        matches!(&e.kind, PolicyErrorKind::WeakEnclaveEntry(m) if m.contains("isv_svn")),
        "{e}"
    );
}

#[test]
fn a_td_party_refuses_a_policy_that_admits_simulated_tds() {
    let root = DevRoot::generate().unwrap();
    let p = Policy::parse(
        format!(
            r#"{{"tdx_mrs":[{}],"allow_simulated":true,"simulated_roots":["{}"]}}"#,
            full_td_entry("leader", &"11".repeat(48)).replace(r#""role""#, r#""mode":"simulated","role""#),
            hex::encode(root.fingerprint())
        )
        .as_bytes(),
        "p",
    )
    .unwrap();
    let e = p.check_usable_by(Mode::Tdx, "p").unwrap_err();
    assert_eq!(e.kind, PolicyErrorKind::SimulatedUnderSgx);
}

#[test]
fn self_in_a_td_entry_binds_to_our_own_td() {
    let me = sim_td([5; 48], false);
    let mut p = Policy::parse(
        format!(r#"{{"tdx_mrs":[{}]}}"#, r#"{"mr_td":"self","rtmr1":"self"}"#).as_bytes(),
        "p",
    )
    .unwrap();
    assert!(p.uses_self());
    // Unbound, "self" matches nothing.
    assert!(p.check_identity(me.identity(), Mode::Tdx).is_err());
    p.bind_self(me.identity());
    assert_eq!(p.check_identity(me.identity(), Mode::Tdx), Ok(vec![0]));
    let other = sim_td([6; 48], false);
    let e = p.check_identity(other.identity(), Mode::Tdx).unwrap_err().0;
    assert!(e.contains("mr_td expected 0505"), "{e}");
}

#[test]
fn statuses_of_td_relaunch_are_allowed_by_name() {
    let p = Policy::parse(
        format!(
            r#"{{"tdx_mrs":[{{"mr_td":"{}"}}],"allowed_tcb_statuses":["UpToDate","TDRelaunchAdvised"]}}"#,
            "ab".repeat(48)
        )
        .as_bytes(),
        "p",
    )
    .unwrap();
    assert!(p.allowed_tcb_statuses.contains(&"TDRelaunchAdvised".to_string()));
}

// ---- simulated TDX evidence ----

fn sim_td(mr_td: [u8; 48], debug: bool) -> SimAttester {
    let root = DevRoot::generate().unwrap();
    sim_td_under(&root, mr_td, debug)
}

fn sim_td_under(root: &DevRoot, mr_td: [u8; 48], debug: bool) -> SimAttester {
    SimAttester::new_tdx(
        root,
        &SimTdIdentity {
            mr_td,
            rtmr: [[0; 48], [1; 48], [2; 48], [3; 48]],
            mr_config_id: [0; 48],
            debug,
        },
        &SimPlatformOptions::fresh_tdx(Clock::System.now()),
    )
    .unwrap()
}

fn sim_td_policy(root: &DevRoot, mr_td: [u8; 48], extra: &str) -> Policy {
    Policy::parse(
        format!(
            r#"{{"tdx_mrs":[{{"mode":"simulated","role":"follower","mr_td":"{}","rtmr1":"{}","rtmr2":"{}"}}],
                "allow_simulated":true,"simulated_roots":["{}"]{extra}}}"#,
            hex::encode(mr_td),
            hex::encode([1u8; 48]),
            hex::encode([2u8; 48]),
            hex::encode(root.fingerprint())
        )
        .as_bytes(),
        "p",
    )
    .unwrap()
}

#[test]
fn a_simulated_td_certificate_verifies_against_tdx_mrs() {
    let root = DevRoot::generate().unwrap();
    let a = sim_td_under(&root, [9; 48], false);
    let c = cert::issue(&a).unwrap();
    assert_eq!(c.identity.tee(), TeeType::Tdx);
    let v = Verifier::new(sim_td_policy(&root, [9; 48], ""), None, Clock::System);
    let r = v.verify_cert(&c.cert_der).unwrap();
    assert_eq!(r.mode, Mode::Simulated);
    assert_eq!(r.quote.tee_type, TeeType::Tdx);
    assert_eq!(r.quote.quote_version, 4);
    // A TD's quote travels in the TCG DICE extension only.
    assert_eq!(r.carrier, "tcg-dice");
    assert_eq!(r.matched_entries, vec![0]);
    assert!(r.admits(vfl_attest::PartyRole::Follower));
    assert!(
        r.check_role(vfl_attest::PartyRole::Leader)
            .unwrap_err()
            .contains("tdx_mrs[0]")
    );
    assert!(
        r.to_string().contains(&format!("mr_td={}", hex::encode([9u8; 48]))),
        "{r}"
    );
}

#[test]
fn a_simulated_td_quote_passes_the_structure_check() {
    let a = sim_td([9; 48], false);
    let q = a.quote(&[7; 64]).unwrap();
    vfl_attest::quote::check_quote_structure(&q).unwrap();
    let v = QuoteView::parse(&q).unwrap();
    assert_eq!(v.tee, TeeType::Tdx);
    assert_eq!(v.report_data(), [7; 64]);
}

#[test]
fn a_debug_td_is_refused_unless_the_policy_allows_debug() {
    let root = DevRoot::generate().unwrap();
    let a = sim_td_under(&root, [9; 48], true);
    let c = cert::issue(&a).unwrap();
    let strict = Verifier::new(sim_td_policy(&root, [9; 48], ""), None, Clock::System);
    let e = strict.verify_cert(&c.cert_der).unwrap_err();
    assert!(matches!(e, Rejection::Debug { .. }), "{e}");
    let lenient = Verifier::new(
        sim_td_policy(&root, [9; 48], r#","allow_debug":true"#),
        None,
        Clock::System,
    );
    assert!(lenient.verify_cert(&c.cert_der).unwrap().quote.debug);
}

#[test]
fn a_simulated_td_is_not_admitted_by_an_sgx_entry_of_the_same_root() {
    let root = DevRoot::generate().unwrap();
    let a = sim_td_under(&root, [9; 48], false);
    let c = cert::issue(&a).unwrap();
    let p = Policy::parse(
        format!(
            r#"{{"verify_mr_enclave":"on","verify_mr_signer":"off","verify_isv_prod_id":"off","verify_isv_svn":"off",
                "sgx_mrs":[{{"mr_enclave":"{}","mode":"simulated"}}],"allow_simulated":true,"simulated_roots":["{}"]}}"#,
            "09".repeat(32),
            hex::encode(root.fingerprint())
        )
        .as_bytes(),
        "p",
    )
    .unwrap();
    let e = Verifier::new(p, None, Clock::System)
        .verify_cert(&c.cert_der)
        .unwrap_err();
    assert!(
        matches!(&e, Rejection::Identity(m) if m.contains("tdx_mrs is empty")),
        "{e}"
    );
}

#[test]
fn a_simulated_sgx_platform_does_not_quote_a_td() {
    let root = DevRoot::generate().unwrap();
    let td = sim_td_under(&root, [9; 48], false);
    let sgx = vfl_attest::devpki::SimPlatform::new(&root, &SimPlatformOptions::fresh(Clock::System.now())).unwrap();
    assert!(matches!(sgx.quote(td.identity(), &[0; 64]), Err(AttestError::Pki(_))));
}

/// The quote a TD gets back from the quoting service passes through the
/// host, which could change the identity in it: `"self"` is bound only to
/// an identity dcap-qvl verified. A quote not signed under Intel's root
/// (here: the development PKI's, standing in for a host's forgery) is
/// refused as our own hardware evidence.
#[test]
fn our_own_hardware_quote_is_verified_before_self_is_bound() {
    let a = sim_td([9; 48], false);
    let mut c = cert::issue(&a).unwrap();
    // Simulated evidence is what it says (nothing protects it anyway).
    let own = vfl_attest::verify::verified_own_identity(&c, None, Clock::System, std::time::Duration::ZERO).unwrap();
    assert_eq!(own, c.identity);
    // As hardware evidence: no collateral is an error, and a quote that does
    // not chain to Intel's root is refused.
    c.mode = Mode::Tdx;
    let e = vfl_attest::verify::verified_own_identity(&c, None, Clock::System, std::time::Duration::ZERO).unwrap_err();
    assert!(matches!(e, Rejection::NoCollateral(_)), "{e}");
    let (_, intel) = sample("tdx_quote");
    let file = a.platform().collateral().clone();
    struct Fixed(dcap_qvl::QuoteCollateralV3);
    impl vfl_attest::collateral::CollateralProvider for Fixed {
        fn collateral_for(&self, _: &[u8]) -> Result<dcap_qvl::QuoteCollateralV3, String> {
            Ok(self.0.clone())
        }
        fn describe(&self) -> String {
            "fixed".into()
        }
    }
    for coll in [file, intel] {
        let e =
            vfl_attest::verify::verified_own_identity(&c, Some(&Fixed(coll)), Clock::System, std::time::Duration::ZERO)
                .unwrap_err();
        assert!(
            matches!(e, Rejection::Quote(_) | Rejection::CollateralExpired { .. }),
            "{e}"
        );
    }
}

#[test]
fn a_tdx_quote_in_the_legacy_sgx_extension_is_refused() {
    let root = DevRoot::generate().unwrap();
    let a = sim_td_under(&root, [9; 48], false);
    let key = cert::new_key().unwrap();
    let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
    let ev = cert::CertEvidence {
        legacy_quote: Some(a.quote(&cert::legacy_report_data(&spki)).unwrap()),
        tcg: None,
        sim: a.sim_evidence(),
    };
    let der = cert::build_cert(&key, &ev).unwrap();
    let e = Verifier::new(sim_td_policy(&root, [9; 48], ""), None, Clock::System)
        .verify_cert(&der)
        .unwrap_err();
    assert!(
        matches!(&e, Rejection::Evidence(m) if m.contains("legacy extension")),
        "{e}"
    );
}

// ---- configfs-tsm ----

/// A fake configfs-tsm tree whose entry for this process is already
/// populated as the kernel would: provider, generation and an outblob.
fn fake_tsm(name: &str, provider: &str, outblob: &[u8]) -> PathBuf {
    let root = std::env::temp_dir().join(format!("vfl-tsm-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let entry = root.join(format!("vfl-{}", std::process::id()));
    std::fs::create_dir_all(&entry).unwrap();
    std::fs::write(entry.join("provider"), provider).unwrap();
    std::fs::write(entry.join("generation"), "1\n").unwrap();
    std::fs::write(entry.join("outblob"), outblob).unwrap();
    root
}

#[test]
fn configfs_tsm_writes_the_report_data_and_reads_the_quote() {
    let sim = sim_td([4; 48], false);
    let rd = [0x5c; 64];
    let root = fake_tsm("ok", "tdx_guest\n", &sim.quote(&rd).unwrap());
    let a = TdxAttester::open(&root).unwrap();
    assert_eq!(a.mode(), Mode::Tdx);
    let q = a.quote(&rd).unwrap();
    assert_eq!(std::fs::read(a.entry().join("inblob")).unwrap(), rd);
    let Identity::Tdx(id) = QuoteView::parse(&q).unwrap().identity().clone() else {
        panic!("not a TD quote")
    };
    assert_eq!(id.mr_td, [4; 48]);
    drop(a);
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn configfs_tsm_refuses_a_quote_without_our_report_data() {
    let sim = sim_td([4; 48], false);
    let root = fake_tsm("other-data", "tdx_guest", &sim.quote(&[1; 64]).unwrap());
    let e = TdxAttester::open(&root).unwrap().quote(&[2; 64]).unwrap_err();
    assert!(
        matches!(&e, AttestError::Evidence(m) if m.contains("does not carry the report data")),
        "{e}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn configfs_tsm_refuses_an_sgx_quote() {
    let root_key = DevRoot::generate().unwrap();
    let sgx = SimAttester::new(
        &root_key,
        &vfl_attest::SimIdentity {
            mr_enclave: [1; 32],
            mr_signer: None,
            isv_prod_id: 1,
            isv_svn: 1,
            debug: false,
        },
        &SimPlatformOptions::fresh(Clock::System.now()),
    )
    .unwrap();
    let root = fake_tsm("sgx", "tdx_guest", &sgx.quote(&[1; 64]).unwrap());
    let e = TdxAttester::open(&root).unwrap().quote(&[1; 64]).unwrap_err();
    assert!(
        matches!(&e, AttestError::Evidence(m) if m.contains("not a TDX quote")),
        "{e}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn configfs_tsm_missing_is_not_a_td() {
    let e = TdxAttester::open(Path::new("/nonexistent/tsm/report")).err().unwrap();
    assert!(
        matches!(&e, AttestError::NotInTd { why, .. } if why.contains("does not exist")),
        "{e}"
    );
}

#[test]
fn configfs_tsm_of_another_provider_is_not_a_td() {
    let root = fake_tsm("sev", "sev_guest\n", b"");
    let e = TdxAttester::open(&root).err().unwrap();
    assert!(
        matches!(&e, AttestError::NotInTd { why, .. } if why.contains("\"sev_guest\"")),
        "{e}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn configfs_tsm_entry_without_provider_is_not_a_td() {
    let root = std::env::temp_dir().join(format!("vfl-tsm-bare-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let e = TdxAttester::open(&root).err().unwrap();
    assert!(
        matches!(&e, AttestError::NotInTd { why, .. } if why.contains("no provider")),
        "{e}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn configfs_tsm_written_by_another_process_meanwhile_is_busy() {
    let sim = sim_td([4; 48], false);
    let rd = [0x33; 64];
    let root = fake_tsm("busy", "tdx_guest", &sim.quote(&rd).unwrap());
    let a = TdxAttester::open(&root).unwrap();
    // Another writer changes the entry all the time: `generation` is a FIFO
    // whose "kernel" thread answers every read with a new, larger number
    // (a read that overlaps two answers sees both), so the two readings
    // around each outblob read always differ.
    let generation = a.entry().join("generation");
    std::fs::remove_file(&generation).unwrap();
    let status = std::process::Command::new("mkfifo").arg(&generation).status().unwrap();
    assert!(status.success());
    // Not joined: it waits for the next reader until the test process ends
    // (or its FIFO is gone).
    std::thread::spawn(move || {
        for n in 2u64.. {
            let Ok(mut w) = std::fs::OpenOptions::new().write(true).open(&generation) else {
                return;
            };
            let _ = std::io::Write::write_all(&mut w, format!("{n}\n").as_bytes());
        }
    });
    let e = a.quote(&rd).unwrap_err();
    assert!(
        matches!(&e, AttestError::TsmBusy { why, .. } if why.contains("3 times")),
        "{e}"
    );
    drop(a);
    std::fs::remove_dir_all(&root).unwrap();
}
