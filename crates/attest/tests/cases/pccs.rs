//! Collateral from a PCCS (API v4): a local stand-in server serves the
//! pieces of Intel's sample collateral the way a PCCS does.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vfl_attest::collateral::{CollateralProvider, FileCollateral};
use vfl_attest::freshness::{Freshness, marks_of_collateral};
use vfl_attest::pccs::{self, CollateralKey, PccsCollateral};
use vfl_attest::verify::{Root, verify_quote};

const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const SAMPLE_TIME: u64 = 1_750_377_600;

fn sample() -> (Vec<u8>, dcap_qvl::QuoteCollateralV3) {
    let quote = std::fs::read(format!("{FIX}/dcap-qvl/sgx_quote")).unwrap();
    let c = FileCollateral::load(Path::new(&format!("{FIX}/dcap-qvl/sgx_quote_collateral.json"))).unwrap();
    (quote, c.collateral().clone())
}

fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Serves `c` as a PCCS on 127.0.0.1 (TCB info and QE identity under the
/// API of `tee`, "sgx" or "tdx"); returns the base URL and the request log.
fn fake_pccs(c: dcap_qvl::QuoteCollateralV3) -> (String, Arc<Mutex<Vec<String>>>) {
    fake_pccs_for("sgx", c)
}

fn fake_pccs_for(tee: &'static str, c: dcap_qvl::QuoteCollateralV3) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = log.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut line = String::new();
            let mut r = BufReader::new(s.try_clone().unwrap());
            if r.read_line(&mut line).is_err() {
                continue;
            }
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).is_err() || h == "\r\n" || h.is_empty() {
                    break;
                }
            }
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            seen.lock().unwrap().push(path.clone());
            let (status, header, body): (&str, Option<(&str, String)>, Vec<u8>) =
                if path.starts_with("/sgx/certification/v4/pckcrl?ca=") {
                    (
                        "200 OK",
                        Some(("SGX-PCK-CRL-Issuer-Chain", pct(&c.pck_crl_issuer_chain))),
                        c.pck_crl.clone(),
                    )
                } else if path.starts_with(&format!("/{tee}/certification/v4/tcb?fmspc=")) {
                    let body = format!(
                        r#"{{"tcbInfo":{},"signature":"{}"}}"#,
                        c.tcb_info,
                        hex::encode(&c.tcb_info_signature)
                    );
                    (
                        "200 OK",
                        Some(("TCB-Info-Issuer-Chain", pct(&c.tcb_info_issuer_chain))),
                        body.into_bytes(),
                    )
                } else if path == format!("/{tee}/certification/v4/qe/identity") {
                    let body = format!(
                        r#"{{"enclaveIdentity":{},"signature":"{}"}}"#,
                        c.qe_identity,
                        hex::encode(&c.qe_identity_signature)
                    );
                    (
                        "200 OK",
                        Some(("SGX-Enclave-Identity-Issuer-Chain", pct(&c.qe_identity_issuer_chain))),
                        body.into_bytes(),
                    )
                } else if path == "/sgx/certification/v4/rootcacrl" {
                    ("200 OK", None, hex::encode(&c.root_ca_crl).into_bytes())
                } else {
                    ("404 Not Found", None, b"no such resource".to_vec())
                };
            let mut head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            if let Some((k, v)) = header {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("\r\n");
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&body);
        }
    });
    (base, log)
}

fn temp(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("vfl-pccs-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn quote_names_its_fmspc_and_ca() {
    let (quote, c) = sample();
    let key = CollateralKey::of_quote(&quote).unwrap();
    let tcb: serde_json::Value = serde_json::from_str(&c.tcb_info).unwrap();
    assert_eq!(key.fmspc, tcb["fmspc"].as_str().unwrap());
    assert_eq!(key.ca, "processor");
}

#[test]
fn fetched_collateral_equals_the_published_pieces_and_verifies_the_quote() {
    let (quote, c) = sample();
    let (base, log) = fake_pccs(c.clone());
    let get = pccs::http_client(None).unwrap();
    let key = CollateralKey::of_quote(&quote).unwrap();
    let fetched = pccs::fetch(&get, &base, &key).unwrap();
    assert_eq!(fetched, c);
    assert!(
        log.lock()
            .unwrap()
            .iter()
            .any(|p| p == &format!("/sgx/certification/v4/tcb?fmspc={}", key.fmspc))
    );
    let r = verify_quote(&quote, &fetched, &Root::Intel, SAMPLE_TIME).unwrap();
    assert_eq!(r.tcb_status, "ConfigurationAndSWHardeningNeeded");
}

#[test]
fn tdx_collateral_comes_from_the_tdx_api_and_is_cached_under_its_own_name() {
    let quote = std::fs::read(format!("{FIX}/dcap-qvl/tdx_quote")).unwrap();
    let c = FileCollateral::load(Path::new(&format!("{FIX}/dcap-qvl/tdx_quote_collateral.json")))
        .unwrap()
        .collateral()
        .clone();
    let key = CollateralKey::of_quote(&quote).unwrap();
    assert_eq!(key.tee, "tdx");
    assert!(key.family().starts_with("tdx-"), "{}", key.family());
    let (base, log) = fake_pccs_for("tdx", c.clone());
    let dir = temp("tdx");
    let p = provider(&base, &dir);
    assert_eq!(p.collateral_waiting(&quote, Duration::from_secs(10)).unwrap(), c);
    let paths = log.lock().unwrap().clone();
    assert!(
        paths.contains(&format!("/tdx/certification/v4/tcb?fmspc={}", key.fmspc)),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"/tdx/certification/v4/qe/identity".to_string()),
        "{paths:?}"
    );
    assert!(dir.join(format!("tdx-{}-{}.json", key.fmspc, key.ca)).exists());
    // A new process with the PCCS unreachable still has the disk cache.
    let offline = provider("http://127.0.0.1:9", &dir);
    assert_eq!(offline.collateral_for(&quote).unwrap(), c);
    let r = verify_quote(&quote, &c, &Root::Intel, SAMPLE_TIME).unwrap();
    assert_eq!(r.tcb_status, "UpToDate");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A provider at the sample's time.
fn provider(base: &str, dir: &Path) -> Arc<PccsCollateral> {
    let p = PccsCollateral::new(base, dir, pccs::http_client(None).unwrap(), Duration::from_secs(3600)).unwrap();
    p.set_clock(vfl_attest::Clock::Fixed(SAMPLE_TIME));
    p
}

#[test]
fn provider_fetches_on_a_miss_in_the_background_caches_on_disk_and_serves_from_the_cache_later() {
    let (quote, c) = sample();
    let (base, log) = fake_pccs(c.clone());
    let dir = temp("cache");
    let p = provider(&base, &dir);
    // A handshake never waits: the miss starts a fetch and says "retry".
    let e = p.collateral_for(&quote).unwrap_err();
    assert!(e.contains("fetching it from") && e.contains("retry"), "{e}");
    assert_eq!(p.collateral_waiting(&quote, Duration::from_secs(10)).unwrap(), c);
    let requests = log.lock().unwrap().len();
    assert_eq!(requests, 4);
    assert_eq!(p.collateral_for(&quote).unwrap(), c);
    assert_eq!(log.lock().unwrap().len(), requests, "a cached entry was fetched again");
    // A new process with the PCCS unreachable still has the disk cache.
    let offline = provider("http://127.0.0.1:9", &dir);
    assert_eq!(offline.collateral_for(&quote).unwrap(), c);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn concurrent_misses_make_one_fetch() {
    let (quote, c) = sample();
    let (base, log) = fake_pccs(c.clone());
    let dir = temp("single");
    let p = provider(&base, &dir);
    for _ in 0..20 {
        let _ = p.collateral_for(&quote);
    }
    assert_eq!(p.collateral_waiting(&quote, Duration::from_secs(10)).unwrap(), c);
    assert_eq!(log.lock().unwrap().len(), 4, "{:?}", log.lock().unwrap());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unreachable_pccs_without_cache_is_a_clear_error_and_is_not_asked_again_at_once() {
    let (quote, _) = sample();
    let dir = temp("unreachable");
    let p = provider("http://127.0.0.1:9", &dir);
    let e = p.collateral_waiting(&quote, Duration::from_secs(15)).unwrap_err();
    assert!(e.contains("failed lately"), "{e}");
    let e = p.collateral_for(&quote).unwrap_err();
    assert!(e.contains("failed lately") && e.contains("not retried"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A certificate with a quote whose PCK chain anyone could make (here: the
/// development PKI's) and a random FMSPC never makes the PCCS asked.
#[test]
fn a_quote_whose_pck_chain_is_not_intels_causes_no_request() {
    let (_, c) = sample();
    let (base, log) = fake_pccs(c);
    let dir = temp("fake");
    let p = provider(&base, &dir);
    let root = vfl_attest::devpki::DevRoot::generate().unwrap();
    let platform =
        vfl_attest::devpki::SimPlatform::new(&root, &vfl_attest::devpki::SimPlatformOptions::fresh(SAMPLE_TIME))
            .unwrap();
    let id = vfl_attest::sgx::EnclaveIdentity {
        mr_enclave: [1; 32],
        mr_signer: [2; 32],
        isv_prod_id: 1,
        isv_svn: 1,
        attributes: vfl_attest::sgx::PRODUCTION_ATTRIBUTES,
    };
    let fake = platform.quote(&vfl_attest::Identity::Sgx(id), &[0; 64]).unwrap();
    for _ in 0..5 {
        let e = p.collateral_for(&fake).unwrap_err();
        assert!(
            e.contains("does not end in Intel's SGX root") && e.contains("no collateral is fetched"),
            "{e}"
        );
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(log.lock().unwrap().is_empty(), "{:?}", log.lock().unwrap());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_pccs_without_the_issuer_chain_header_is_a_clear_error() {
    let (quote, mut c) = sample();
    c.pck_crl_issuer_chain.clear();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).is_err() || h == "\r\n" || h.is_empty() {
                    break;
                }
            }
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        }
    });
    let e = pccs::fetch(
        &pccs::http_client(None).unwrap(),
        &base,
        &CollateralKey::of_quote(&quote).unwrap(),
    )
    .unwrap_err();
    assert!(e.contains("lacks the SGX-PCK-CRL-Issuer-Chain header"), "{e}");
}

/// Writes `c` as the disk cache entry of `quote`'s platform.
fn plant(dir: &Path, quote: &[u8], c: &dcap_qvl::QuoteCollateralV3) {
    std::fs::create_dir_all(dir).unwrap();
    let key = CollateralKey::of_quote(quote).unwrap();
    std::fs::write(
        dir.join(format!("sgx-{}-{}.json", key.fmspc, key.ca)),
        serde_json::to_vec(c).unwrap(),
    )
    .unwrap();
}

/// `c` with its TCB info's evaluation number raised by `by` (its signature
/// no longer verifies; only the numbers matter here).
fn bumped(c: &dcap_qvl::QuoteCollateralV3, by: u64) -> dcap_qvl::QuoteCollateralV3 {
    let mut out = c.clone();
    let mut tcb: serde_json::Value = serde_json::from_str(&c.tcb_info).unwrap();
    let n = tcb["tcbEvaluationDataNumber"].as_u64().unwrap();
    tcb["tcbEvaluationDataNumber"] = (n + by).into();
    out.tcb_info = tcb.to_string();
    out
}

#[test]
fn a_pccs_serving_older_collateral_than_verified_does_not_replace_the_cached_copy() {
    let (quote, c) = sample();
    let (base, _) = fake_pccs(c.clone());
    let dir = temp("older");
    let newer = bumped(&c, 1);
    plant(&dir, &quote, &newer);
    let key = CollateralKey::of_quote(&quote).unwrap();
    let p = provider(&base, &dir);
    // This party has verified collateral as new as the cached copy.
    let fresh = Arc::new(Freshness::in_memory());
    fresh.record(&key.family(), &marks_of_collateral(&newer).unwrap());
    p.set_freshness(fresh);
    assert_eq!(p.refresh_key(&key).unwrap(), newer);
    assert_eq!(p.collateral_for(&quote).unwrap(), newer);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unverified_cached_copy_with_huge_numbers_does_not_lock_out_honest_collateral() {
    let (quote, c) = sample();
    let (base, _) = fake_pccs(c.clone());
    let dir = temp("bogus");
    // Planted by the host: numbers far above anything real, never verified.
    plant(&dir, &quote, &bumped(&c, 1_000_000));
    let key = CollateralKey::of_quote(&quote).unwrap();
    let p = provider(&base, &dir);
    p.set_freshness(Arc::new(Freshness::in_memory()));
    assert_eq!(p.refresh_key(&key).unwrap(), c);
    assert_eq!(p.collateral_for(&quote).unwrap(), c);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_refresh_interval_longer_than_the_uptime_does_not_panic() {
    let (quote, c) = sample();
    let dir = temp("uptime");
    std::fs::create_dir_all(&dir).unwrap();
    let key = CollateralKey::of_quote(&quote).unwrap();
    std::fs::write(
        dir.join(format!("sgx-{}-{}.json", key.fmspc, key.ca)),
        serde_json::to_vec(&c).unwrap(),
    )
    .unwrap();
    let p = PccsCollateral::new(
        "http://127.0.0.1:9",
        &dir,
        pccs::http_client(None).unwrap(),
        Duration::MAX / 2,
    )
    .unwrap();
    assert_eq!(p.collateral_for(&quote).unwrap(), c);
    let _ = std::fs::remove_dir_all(&dir);
}
