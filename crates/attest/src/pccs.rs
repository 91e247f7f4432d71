//! Collateral from a PCCS (or Intel's PCS), API v4, cached in memory and on
//! disk, refreshed in the background.
//!
//! Collateral is self-authenticating: the CRLs, TCB info and QE identity are
//! signed by certificates that chain to Intel's root, and dcap-qvl checks
//! those signatures and their dates. The HTTPS connection to the PCCS is
//! therefore about availability, not trust; it is still verified (public
//! roots, or the PCCS's own CA given with `--pccs-ca`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::AttestError;
use crate::collateral::CollateralProvider;
use crate::freshness::{Freshness, marks_of_collateral};

/// How long one collateral fetch (four requests) may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Which collateral set a quote needs: its TEE (SGX and TDX have their own
/// TCB info and QE identity), its platform's FMSPC and PCK CA.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CollateralKey {
    /// `sgx` or `tdx`.
    pub tee: &'static str,
    /// 12 upper-case hex digits.
    pub fmspc: String,
    /// `processor` or `platform`.
    pub ca: &'static str,
}

impl CollateralKey {
    /// Read the TEE from a quote's header and FMSPC and CA type from the
    /// PCK certificate inside it.
    pub fn of_quote(quote: &[u8]) -> Result<Self, String> {
        crate::guard::no_panic(
            || "the quote's PCK certificate could not be read".into(),
            || Self::read(quote),
        )
    }

    fn read(quote: &[u8]) -> Result<Self, String> {
        let q = dcap_qvl::quote::Quote::parse(quote).map_err(|e| format!("quote: {e:#}"))?;
        let tee = if q.report.is_sgx() { "sgx" } else { "tdx" };
        let chain = dcap_qvl::intel::extract_cert_chain(&q).map_err(|e| format!("PCK chain: {e:#}"))?;
        let leaf = chain.first().ok_or("the quote carries no PCK certificate")?;
        let ext = dcap_qvl::intel::parse_pck_extension(leaf).map_err(|e| format!("PCK certificate: {e:#}"))?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf).map_err(|e| format!("PCK certificate: {e}"))?;
        let issuer = cert.issuer().to_string();
        let ca = if issuer.contains("Platform") {
            "platform"
        } else {
            "processor"
        };
        Ok(Self {
            tee,
            fmspc: hex::encode_upper(ext.fmspc),
            ca,
        })
    }

    /// The platform family the freshness marks are kept for (SGX families
    /// keep their names from before TDX).
    pub fn family(&self) -> String {
        match self.tee {
            "sgx" => format!("{}-{}", self.fmspc, self.ca),
            tee => format!("{tee}-{}-{}", self.fmspc, self.ca),
        }
    }

    fn file_name(&self) -> String {
        format!("{}-{}-{}.json", self.tee, self.fmspc, self.ca)
    }
}

/// A fetched response: body and headers (lower-case names).
pub struct HttpResponse {
    pub body: Vec<u8>,
    pub headers: HashMap<String, String>,
}

/// GET over HTTP(S); pluggable for tests.
pub type HttpGet = Arc<dyn Fn(&str) -> Result<HttpResponse, String> + Send + Sync>;

/// An HTTPS client with a global timeout; `ca_pem` adds a private CA (a PCCS's
/// self-signed certificate) instead of the public roots.
pub fn http_client(ca_pem: Option<&[u8]>) -> Result<HttpGet, AttestError> {
    let mut tls = ureq::tls::TlsConfig::builder();
    if let Some(pem) = ca_pem {
        let cert =
            ureq::tls::Certificate::from_pem(pem).map_err(|e| AttestError::Collateral(format!("PCCS CA: {e}")))?;
        tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&[cert]));
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(FETCH_TIMEOUT))
        .tls_config(tls.build())
        .build()
        .into();
    Ok(Arc::new(move |url: &str| {
        let mut resp = agent.get(url).call().map_err(|e| format!("GET {url}: {e}"))?;
        let headers = resp
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_ascii_lowercase(), v.to_str().ok()?.to_string())))
            .collect();
        let body = resp
            .body_mut()
            .with_config()
            .limit(8 << 20)
            .read_to_vec()
            .map_err(|e| format!("GET {url}: body: {e}"))?;
        Ok(HttpResponse { body, headers })
    }))
}

#[derive(Deserialize)]
struct Signed<'a> {
    #[serde(rename = "tcbInfo", alias = "enclaveIdentity", borrow)]
    body: &'a RawValue,
    signature: String,
}

fn header(r: &HttpResponse, names: &[&str], url: &str) -> Result<String, String> {
    let v = names
        .iter()
        .find_map(|n| r.headers.get(&n.to_ascii_lowercase()))
        .ok_or_else(|| format!("{url}: response lacks the {} header", names[0]))?;
    percent_decode(v).ok_or_else(|| format!("{url}: {} header is not valid percent-encoding", names[0]))
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Fetch the collateral for `key` from the PCCS at `base` (e.g.
/// `https://pccs.example:8081`, with or without `/sgx/certification/v4`).
/// The CRLs come from the SGX API; TCB info and QE identity from the API of
/// the key's TEE (`/tdx/certification/v4/tcb` and `.../qe/identity` for TDX).
pub fn fetch(get: &HttpGet, base: &str, key: &CollateralKey) -> Result<dcap_qvl::QuoteCollateralV3, String> {
    let base = base.trim_end_matches('/').trim_end_matches("/sgx/certification/v4");
    let api = format!("{base}/sgx/certification/v4");
    let tee_api = format!("{base}/{}/certification/v4", key.tee);
    let url = format!("{api}/pckcrl?ca={}&encoding=der", key.ca);
    let r = get(&url)?;
    let pck_crl_issuer_chain = header(&r, &["SGX-PCK-CRL-Issuer-Chain"], &url)?;
    let pck_crl = r.body;

    let url = format!("{tee_api}/tcb?fmspc={}", key.fmspc);
    let r = get(&url)?;
    let tcb_info_issuer_chain = header(&r, &["TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain"], &url)?;
    let text = String::from_utf8(r.body).map_err(|_| format!("{url}: body is not UTF-8"))?;
    let tcb: Signed<'_> = serde_json::from_str(&text).map_err(|e| format!("{url}: not a signed TCB info: {e}"))?;

    let url = format!("{tee_api}/qe/identity");
    let r = get(&url)?;
    let qe_identity_issuer_chain = header(&r, &["SGX-Enclave-Identity-Issuer-Chain"], &url)?;
    let text_qe = String::from_utf8(r.body).map_err(|_| format!("{url}: body is not UTF-8"))?;
    let qe: Signed<'_> =
        serde_json::from_str(&text_qe).map_err(|e| format!("{url}: not a signed enclave identity: {e}"))?;

    // A PCCS serves the root CA CRL hex-encoded.
    let url = format!("{api}/rootcacrl");
    let r = get(&url)?;
    let root_ca_crl = match std::str::from_utf8(&r.body)
        .ok()
        .and_then(|s| hex::decode(s.trim()).ok())
    {
        Some(der) => der,
        None => r.body,
    };
    let sig = |s: &str, what: &str| hex::decode(s).map_err(|_| format!("{what} signature is not hex"));
    Ok(dcap_qvl::QuoteCollateralV3 {
        pck_crl_issuer_chain,
        root_ca_crl,
        pck_crl,
        tcb_info_issuer_chain,
        // The signature covers these exact bytes, so keep them raw.
        tcb_info: tcb.body.get().to_string(),
        tcb_info_signature: sig(&tcb.signature, "TCB info")?,
        qe_identity_issuer_chain,
        qe_identity: qe.body.get().to_string(),
        qe_identity_signature: sig(&qe.signature, "QE identity")?,
        pck_certificate_chain: None,
    })
}

struct Entry {
    collateral: dcap_qvl::QuoteCollateralV3,
    /// When it was fetched; `None` for entries read from the disk cache
    /// (due for a refresh at once).
    fetched: Option<Instant>,
    /// When a verification last asked for it: entries nobody asked for in
    /// [`UNUSED_AFTER`] are dropped, not refreshed forever.
    used: Instant,
}

/// SHA-256 of Intel's SGX Root CA certificate (DER), the root dcap-qvl pins:
/// a quote's PCK chain must end in it before anything is fetched for the
/// FMSPC its PCK certificate names.
pub const INTEL_ROOT_SHA256: &str = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3";

/// How long a failed fetch is not retried for the same platform.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(60);

/// Entries no verification asked for in this long are dropped.
pub const UNUSED_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

/// Checks that a quote's PCK certificate chain is Intel's: each certificate
/// signed by the next, the last one Intel's pinned root, all valid at `now`
/// (unix seconds). Only then is its FMSPC worth a request to the PCCS
/// (revocation is checked with the full collateral afterwards).
pub fn verify_pck_chain(quote: &[u8], now: u64) -> Result<(), String> {
    crate::guard::no_panic(
        || "the quote's PCK chain could not be read".into(),
        || check_pck_chain(quote, now),
    )
}

fn check_pck_chain(quote: &[u8], now: u64) -> Result<(), String> {
    use sha2::{Digest, Sha256};
    let q = dcap_qvl::quote::Quote::parse(quote).map_err(|e| format!("quote: {e:#}"))?;
    let ders = dcap_qvl::intel::extract_cert_chain(&q).map_err(|e| format!("PCK chain: {e:#}"))?;
    let certs = ders
        .iter()
        .map(|d| {
            x509_parser::parse_x509_certificate(d)
                .map(|(_, c)| c)
                .map_err(|e| format!("PCK chain: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let root = ders.last().ok_or("the quote carries no PCK chain")?;
    if hex::encode(Sha256::digest(root)) != INTEL_ROOT_SHA256 {
        return Err("the PCK chain does not end in Intel's SGX root certificate".into());
    }
    let at = x509_parser::time::ASN1Time::from_timestamp(i64::try_from(now).unwrap_or(i64::MAX))
        .map_err(|e| format!("time: {e}"))?;
    for (i, c) in certs.iter().enumerate() {
        if !c.validity().is_valid_at(at) {
            return Err(format!("PCK chain certificate {i} is not valid at {now} (unix time)"));
        }
        let issuer = certs.get(i + 1).unwrap_or(c);
        c.verify_signature(Some(issuer.public_key()))
            .map_err(|e| format!("PCK chain certificate {i} is not signed by the next one: {e}"))?;
    }
    Ok(())
}

/// Collateral from a PCCS: memory cache, then the disk cache, then a fetch
/// (bounded by [`FETCH_TIMEOUT`]); a background thread refetches every known
/// entry each `refresh` interval.
pub struct PccsCollateral {
    base: String,
    cache_dir: PathBuf,
    get: HttpGet,
    entries: Mutex<HashMap<CollateralKey, Entry>>,
    refresh: Duration,
    /// The verifier's high-water marks (of verified collateral only).
    freshness: OnceLock<Arc<Freshness>>,
    /// Fetches in progress, and recent failures (until when not retried).
    fetching: Mutex<HashMap<CollateralKey, Option<Instant>>>,
    /// The time PCK chains are checked at (tests pin it).
    clock: OnceLock<crate::verify::Clock>,
    /// Ourselves, for the background fetches.
    this: OnceLock<std::sync::Weak<Self>>,
}

impl PccsCollateral {
    /// Set up, loading whatever the disk cache holds.
    pub fn new(base: &str, cache_dir: &Path, get: HttpGet, refresh: Duration) -> Result<Arc<Self>, AttestError> {
        std::fs::create_dir_all(cache_dir).map_err(|source| AttestError::Io {
            path: cache_dir.display().to_string(),
            source,
        })?;
        let p = Arc::new(Self {
            base: base.to_string(),
            cache_dir: cache_dir.to_path_buf(),
            get,
            entries: Mutex::new(HashMap::new()),
            refresh,
            freshness: OnceLock::new(),
            fetching: Mutex::new(HashMap::new()),
            clock: OnceLock::new(),
            this: OnceLock::new(),
        });
        let _ = p.this.set(Arc::downgrade(&p));
        p.load_disk_cache();
        Ok(p)
    }

    fn load_disk_cache(&self) {
        let Ok(dir) = std::fs::read_dir(&self.cache_dir) else {
            return;
        };
        for f in dir.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            let Some((tee, stem)) = name.strip_suffix(".json").and_then(|s| s.split_once('-')) else {
                continue;
            };
            let tee = match tee {
                "sgx" => "sgx",
                "tdx" => "tdx",
                _ => continue,
            };
            let Some((fmspc, ca)) = stem.split_once('-') else {
                continue;
            };
            let ca = match ca {
                "processor" => "processor",
                "platform" => "platform",
                _ => continue,
            };
            match std::fs::read(f.path())
                .map_err(|e| e.to_string())
                .and_then(|b| crate::collateral::parse(&b))
            {
                Ok(c) => {
                    let key = CollateralKey {
                        tee,
                        fmspc: fmspc.to_string(),
                        ca,
                    };
                    self.lock().insert(
                        key,
                        Entry {
                            collateral: c,
                            fetched: None,
                            used: Instant::now(),
                        },
                    );
                }
                Err(e) => {
                    tracing::warn!(file = %f.path().display(), error = %e, "ignoring unreadable collateral cache file")
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CollateralKey, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks an entry as just refreshed (the fetch kept the cached copy).
    fn touch(&self, key: &CollateralKey) {
        if let Some(e) = self.lock().get_mut(key) {
            e.fetched = Some(Instant::now());
        }
    }

    /// Compares fetched collateral with the verifier's high-water marks
    /// (numbers of collateral that verified), never with unverified copies:
    /// a bogus cached copy with huge numbers must not lock out honest ones.
    pub fn set_freshness(&self, f: Arc<Freshness>) {
        let _ = self.freshness.set(f);
    }

    /// The time PCK chains are checked at (default: the system clock).
    pub fn set_clock(&self, c: crate::verify::Clock) {
        let _ = self.clock.set(c);
    }

    /// Fetch `key` now and store it in memory and (atomically) on disk,
    /// unless it is older than collateral this party has already verified
    /// (a PCCS must not roll collateral back): then the cached copy stays.
    pub fn refresh_key(&self, key: &CollateralKey) -> Result<dcap_qvl::QuoteCollateralV3, String> {
        let c = fetch(&self.get, &self.base, key)?;
        let seen = self.freshness.get().and_then(|f| f.marks(&key.family()));
        if let (Some(seen), Ok(new)) = (seen, marks_of_collateral(&c))
            && let Some((what, got, seen)) = new.first_older_than(&seen)
        {
            tracing::warn!(fmspc = %key.fmspc, what, fetched = got, seen, pccs = %self.base,
                "the PCCS served older collateral than this party has verified; keeping the cached copy");
            self.touch(key);
            let cached = self.lock().get(key).map(|e| e.collateral.clone());
            return cached.ok_or_else(|| {
                format!("the PCCS serves collateral older than already verified ({what} {got} < {seen})")
            });
        }
        let path = self.cache_dir.join(key.file_name());
        let json = serde_json::to_vec_pretty(&c).map_err(|e| e.to_string())?;
        if let Err(e) = crate::write_private(&path, &json) {
            tracing::warn!(%e, "cannot write the collateral cache");
        }
        self.lock().insert(
            key.clone(),
            Entry {
                collateral: c.clone(),
                fetched: Some(Instant::now()),
                used: Instant::now(),
            },
        );
        tracing::info!(fmspc = %key.fmspc, ca = key.ca, pccs = %self.base, "collateral fetched");
        Ok(c)
    }

    /// Keys held now.
    pub fn keys(&self) -> Vec<CollateralKey> {
        let mut k: Vec<_> = self.lock().keys().cloned().collect();
        k.sort();
        k
    }

    /// Start the background refresher (a plain thread; ends with the process).
    /// It refreshes the entries verifications used lately and drops those
    /// nobody asked for in [`UNUSED_AFTER`].
    pub fn spawn_refresher(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let period = self.refresh;
        let _ = std::thread::Builder::new().name("pccs-refresh".into()).spawn(move || {
            loop {
                let Some(p) = weak.upgrade() else { return };
                p.lock().retain(|_, e| e.used.elapsed() < UNUSED_AFTER);
                let due: Vec<CollateralKey> = p
                    .lock()
                    .iter()
                    .filter(|(_, e)| e.fetched.is_none_or(|t| t.elapsed() >= period))
                    .map(|(k, _)| k.clone())
                    .collect();
                for key in due {
                    if let Err(e) = p.refresh_key(&key) {
                        tracing::warn!(fmspc = %key.fmspc, error = %e, "collateral refresh failed; keeping the cached copy");
                    }
                }
                drop(p);
                std::thread::sleep(period.min(Duration::from_secs(60)));
            }
        });
    }
}

impl PccsCollateral {
    /// Starts a background fetch of `key` unless one runs or one failed
    /// within [`NEGATIVE_TTL`]; says which (`Err`). `Ok` when a fetch that
    /// just finished has it already.
    fn fetch_in_background(&self, key: &CollateralKey) -> Result<String, Box<dcap_qvl::QuoteCollateralV3>> {
        {
            let mut f = self.fetching.lock().unwrap_or_else(|p| p.into_inner());
            // A fetch stores its result before it leaves this map: checked
            // under the map's lock, a miss here is a real miss.
            if let Some(e) = self.lock().get_mut(key) {
                e.used = Instant::now();
                return Err(Box::new(e.collateral.clone()));
            }
            match f.get(key) {
                Some(None) => {
                    return Ok(format!(
                        "collateral for FMSPC {} is being fetched from {}; retry",
                        key.fmspc, self.base
                    ));
                }
                Some(Some(until)) if Instant::now() < *until => {
                    return Ok(format!(
                        "fetching collateral for FMSPC {} from {} failed lately; not retried for {} s",
                        key.fmspc,
                        self.base,
                        NEGATIVE_TTL.as_secs()
                    ));
                }
                _ => {}
            }
            f.insert(key.clone(), None);
        }
        let (Some(this), k) = (self.this.get().and_then(|w| w.upgrade()), key.clone()) else {
            return Ok("the collateral cache is shutting down".into());
        };
        let spawned = std::thread::Builder::new().name("pccs-fetch".into()).spawn(move || {
            let outcome = this.refresh_key(&k);
            let mut f = this.fetching.lock().unwrap_or_else(|p| p.into_inner());
            match outcome {
                Ok(_) => {
                    f.remove(&k);
                }
                Err(e) => {
                    tracing::warn!(fmspc = %k.fmspc, error = %e, "fetching collateral failed");
                    f.insert(k, Some(Instant::now() + NEGATIVE_TTL));
                }
            }
        });
        if spawned.is_err() {
            self.fetching.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
            return Ok("cannot start a collateral fetch".into());
        }
        Ok(format!(
            "no cached collateral for FMSPC {}: fetching it from {}; retry",
            key.fmspc, self.base
        ))
    }

    /// Collateral for `quote`, waiting up to `wait` for a fetch (the
    /// command-line tools; a handshake never waits).
    pub fn collateral_waiting(&self, quote: &[u8], wait: Duration) -> Result<dcap_qvl::QuoteCollateralV3, String> {
        let start = Instant::now();
        loop {
            match self.collateral_for(quote) {
                Ok(c) => return Ok(c),
                Err(e) if start.elapsed() >= wait || e.contains("failed lately") || !e.contains("fetch") => {
                    return Err(e);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

impl CollateralProvider for PccsCollateral {
    /// From the cache; on a miss, never waits: checks that the quote's PCK
    /// chain is Intel's (nothing is fetched for a platform anyone could
    /// invent), starts a single background fetch and answers "retry".
    fn collateral_for(&self, quote: &[u8]) -> Result<dcap_qvl::QuoteCollateralV3, String> {
        let key = CollateralKey::of_quote(quote)?;
        if let Some(e) = self.lock().get_mut(&key) {
            e.used = Instant::now();
            return Ok(e.collateral.clone());
        }
        let now = self.clock.get().copied().unwrap_or(crate::verify::Clock::System).now();
        verify_pck_chain(quote, now).map_err(|e| format!("{e}; no collateral is fetched for it"))?;
        self.fetch_in_background(&key).map_or_else(|c| Ok(*c), Err)
    }

    fn collateral_waiting(&self, quote: &[u8], wait: Duration) -> Result<dcap_qvl::QuoteCollateralV3, String> {
        PccsCollateral::collateral_waiting(self, quote, wait)
    }

    fn describe(&self) -> String {
        format!("PCCS {} (cache {})", self.base, self.cache_dir.display())
    }
}
