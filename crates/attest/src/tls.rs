//! rustls configurations for mutual RA-TLS. Both verifiers run the whole
//! [`Verifier`] during the handshake; the handshake signature is checked by
//! rustls' own helpers against the very certificate whose key the quote binds.

use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError, ServerConfig};
use sha2::{Digest, Sha256};

use crate::AttestError;
use crate::cert::RaTlsCert;
use crate::verify::{PeerReport, Rejection, Verifier};

/// A readable account of a failed TLS handshake: our own [`Rejection`] of the
/// peer when that is the cause, or what the peer's alert says about us.
pub fn describe_error(err: &(dyn std::error::Error + 'static)) -> String {
    // io::Error hides its payload from source(); find_rustls looks inside.
    match find_rustls(err) {
        Some(r) => describe_rustls(r),
        None => err.to_string(),
    }
}

/// What a failed handshake means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// We refused attested evidence: the peer's quote verified and our
    /// policy said no ([`Rejection::is_verdict`]). The reason names why.
    Refused(String),
    /// Anything else: the connection ended, garbage, no certificate, no or
    /// malformed evidence, missing collateral. It may come from anyone.
    Unauthenticated(String),
}

/// Classifies a failed handshake (see [`HandshakeFailure`]).
pub fn classify(err: &(dyn std::error::Error + 'static)) -> HandshakeFailure {
    let reason = describe_error(err);
    match find_rustls(err) {
        Some(rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))))
            if inner.downcast_ref::<Rejection>().is_some_and(Rejection::is_verdict) =>
        {
            HandshakeFailure::Refused(reason)
        }
        _ => HandshakeFailure::Unauthenticated(reason),
    }
}

fn find_rustls<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(r) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(r);
        }
        cur = e.source();
    }
    None
}

fn describe_rustls(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
            match inner.downcast_ref::<Rejection>() {
                Some(r) => format!("peer rejected: {r}"),
                None => format!("peer rejected: {inner}"),
            }
        }
        rustls::Error::InvalidCertificate(CertificateError::BadSignature) => {
            "peer rejected: its handshake signature does not verify with its certificate's key".into()
        }
        rustls::Error::AlertReceived(alert) => format!(
            "the peer refused the connection (TLS alert {alert:?}): it did not accept our attestation evidence; its log says why"
        ),
        other => other.to_string(),
    }
}

/// The server name clients use (RA-TLS certificates do not name hosts).
pub const SERVER_NAME: &str = "RATLS";

/// The ring crypto provider (never aws-lc: it needs cmake).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A verifier usable on both sides of the handshake. It remembers the last
/// verified peers by certificate hash so the transport can log who it talks to.
pub struct RaTlsVerifier {
    verifier: Arc<Verifier>,
    algorithms: WebPkiSupportedAlgorithms,
    verified: Mutex<Vec<([u8; 32], PeerReport)>>,
    /// Verdicts on genuine evidence, held back until the peer has proved
    /// with its handshake signature that it holds the certificate's key: a
    /// replayed certificate must not pass for a refused peer.
    pending: Mutex<Vec<([u8; 32], Rejection)>>,
    /// Peers verified so far (a dialler tells by it whether the other side
    /// was attested before a connection broke).
    count: std::sync::atomic::AtomicU64,
}

/// How many reports and held-back verdicts are remembered.
const REMEMBERED: usize = 64;

impl std::fmt::Debug for RaTlsVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RaTlsVerifier")
    }
}

impl RaTlsVerifier {
    pub fn new(verifier: Arc<Verifier>) -> Arc<Self> {
        Arc::new(Self {
            verifier,
            algorithms: provider().signature_verification_algorithms,
            verified: Mutex::new(Vec::new()),
            pending: Mutex::new(Vec::new()),
            count: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// How many peers this verifier has accepted so far.
    pub fn verified_count(&self) -> u64 {
        self.count.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// The report of a peer certificate verified during a handshake.
    pub fn report_for(&self, cert_der: &[u8]) -> Option<PeerReport> {
        let h: [u8; 32] = Sha256::digest(cert_der).into();
        let seen = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        seen.iter().find(|(k, _)| *k == h).map(|(_, r)| r.clone())
    }

    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<(), rustls::Error> {
        let result = if intermediates.is_empty() {
            self.verifier.verify_cert(end_entity.as_ref())
        } else {
            Err(Rejection::ChainLength(1 + intermediates.len()))
        };
        match result {
            Ok(report) => {
                tracing::debug!(peer = %report, "RA-TLS peer verified");
                self.count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                let h: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
                let mut seen = self.verified.lock().unwrap_or_else(|p| p.into_inner());
                if seen.len() >= REMEMBERED {
                    seen.remove(0);
                }
                seen.push((h, report));
                Ok(())
            }
            // A verdict counts only once the peer proves it holds the key
            // (its handshake signature, checked next): until then it is held.
            Err(rejection) if rejection.is_verdict() => {
                let h: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
                let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                if pending.len() >= REMEMBERED {
                    pending.remove(0);
                }
                pending.push((h, rejection));
                Ok(())
            }
            Err(rejection) => {
                tracing::debug!(reason = %rejection, "RA-TLS peer rejected");
                Err(rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(
                    Arc::new(rejection),
                ))))
            }
        }
    }

    /// The handshake signature, then a held-back verdict on the same
    /// certificate: a peer that holds the key and was refused gets the
    /// refusal; one that does not hold it fails as a bad signature.
    fn signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let valid = rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)?;
        let h: [u8; 32] = Sha256::digest(cert.as_ref()).into();
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = pending.iter().position(|(k, _)| *k == h) {
            let (_, rejection) = pending.remove(i);
            tracing::debug!(reason = %rejection, "RA-TLS peer rejected");
            return Err(rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(
                Arc::new(rejection),
            ))));
        }
        Ok(valid)
    }
}

impl ServerCertVerifier for RaTlsVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, intermediates)
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Both ends speak TLS 1.3 only (PROTOCOL_VERSIONS): never reached.
        let _ = (message, cert, dss);
        Err(rustls::Error::General(
            "TLS 1.2 is not used between enclave-vfl parties".into(),
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for RaTlsVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity, intermediates)
            .map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Both ends speak TLS 1.3 only (PROTOCOL_VERSIONS): never reached.
        let _ = (message, cert, dss);
        Err(rustls::Error::General(
            "TLS 1.2 is not used between enclave-vfl parties".into(),
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Certificate chain and signing key, without checking that they match
/// (tests build mismatched ones; [`identity`] checks).
pub fn certified_key(chain: Vec<Vec<u8>>, key_pkcs8: &[u8]) -> Result<Arc<CertifiedKey>, AttestError> {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pkcs8.to_vec()));
    let signer = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| AttestError::Tls(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(
        chain.into_iter().map(CertificateDer::from).collect(),
        signer,
    )))
}

/// Our certificate and key, checked to belong together.
pub fn identity(cert: &RaTlsCert) -> Result<Arc<CertifiedKey>, AttestError> {
    let ck = certified_key(vec![cert.cert_der.clone()], &cert.key_der)?;
    ck.keys_match()
        .map_err(|e| AttestError::Tls(format!("certificate and key do not match: {e}")))?;
    Ok(ck)
}

/// TLS 1.3 only: both ends are enclave-vfl, so nothing older is needed.
pub const PROTOCOL_VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// Server side: present `ours`, require and verify the client's certificate.
pub fn server_config(ours: Arc<CertifiedKey>, verifier: Arc<RaTlsVerifier>) -> Result<ServerConfig, AttestError> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(|e| AttestError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(ours)));
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    // No session resumption: every connection presents and verifies evidence
    // afresh (a resumed session would skip the peer's quote, its collateral
    // dates and the current policy).
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    Ok(cfg)
}

/// Client side: present `ours`, verify the server's certificate.
pub fn client_config(ours: Arc<CertifiedKey>, verifier: Arc<RaTlsVerifier>) -> Result<ClientConfig, AttestError> {
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(|e| AttestError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(ours)));
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(cfg)
}
