//! X.509 v1 server certificates, checked by walden because webpki reads
//! only v3: OpenSSL 3.0's `openssl x509 -req` without an extension file
//! (PostgreSQL's documented recipe for a CA-signed server certificate,
//! with or without an intermediate) makes v1 certificates, and libpq
//! accepts them. The chain is followed from the server's certificate
//! through the intermediates it sent to a certificate in the CA file, each
//! signature checked with rustls's algorithms; an intermediate must be a
//! CA allowed to sign certificates. The handshake signature is checked
//! against the certificate's key.

use std::time::SystemTime;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, SubjectPublicKeyInfoDer};
use rustls::{CertificateError, DigitallySignedStruct, PeerMisbehaved};

use super::x509::{self, DateProblem, Parsed};

/// The most intermediates followed between the server's certificate and
/// the CA file.
const MAX_INTERMEDIATES: u64 = 8;

/// Whether `der` is a v1 certificate (which webpki cannot read).
pub fn is_v1(der: &[u8]) -> bool {
    x509::parse(der).is_some_and(|c| c.version == 0)
}

/// The certificate's validity at `now`.
pub fn check_dates(der: &[u8], now: SystemTime) -> Result<(), CertificateError> {
    x509::check_dates(der, now).map_err(|problem| match problem {
        DateProblem::NotValidYet => CertificateError::NotValidYet,
        DateProblem::Expired => CertificateError::Expired,
        DateProblem::Unreadable => CertificateError::BadEncoding,
    })
}

/// Whether the server's certificate `leaf` leads, through `intermediates`,
/// to a certificate in `anchors` (the CA file), every certificate on the
/// way within its dates.
pub fn verify_chain(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    anchors: &[CertificateDer<'_>],
    algorithms: &WebPkiSupportedAlgorithms,
    now: SystemTime,
) -> Result<(), CertificateError> {
    check_dates(leaf, now)?;
    let mut child = x509::parse(leaf).ok_or(CertificateError::BadEncoding)?;
    for below in 0..=MAX_INTERMEDIATES {
        if let Some(anchor) = anchors
            .iter()
            .find(|a| signer_of(&child, a, algorithms).is_some())
        {
            return check_dates(anchor, now);
        }
        let Some((der, issuer)) = intermediates
            .iter()
            .find_map(|i| signer_of(&child, i, algorithms).map(|parsed| (i, parsed)))
        else {
            return Err(CertificateError::UnknownIssuer);
        };
        let rights = x509::issuer_rights(issuer.extensions).ok_or(CertificateError::BadEncoding)?;
        if rights.unknown_critical {
            return Err(CertificateError::UnhandledCriticalExtension);
        }
        if issuer.version != 2
            || !rights.ca
            || !rights.signs_certificates
            || rights.path_len.is_some_and(|limit| below > limit)
        {
            return Err(CertificateError::InvalidPurpose);
        }
        check_dates(der, now)?;
        child = issuer;
    }
    Err(CertificateError::UnknownIssuer)
}

/// `issuer`, read, if it is the one that signed `child`.
fn signer_of<'c>(
    child: &Parsed<'_>,
    issuer: &'c CertificateDer<'_>,
    algorithms: &WebPkiSupportedAlgorithms,
) -> Option<Parsed<'c>> {
    let parsed = x509::parse(issuer)?;
    (parsed.subject == child.issuer && signed_by(child, &parsed, algorithms)).then_some(parsed)
}

/// Whether `issuer`'s key made `child`'s signature.
fn signed_by(
    child: &Parsed<'_>,
    issuer: &Parsed<'_>,
    algorithms: &WebPkiSupportedAlgorithms,
) -> bool {
    algorithms.all.iter().any(|alg| {
        alg.signature_alg_id().as_ref() == child.signature_algorithm
            && alg.public_key_alg_id().as_ref() == issuer.key_algorithm
            && alg
                .verify_signature(issuer.public_key, child.tbs, child.signature)
                .is_ok()
    })
}

/// The TLS 1.3 handshake's signature by the key of the (v1) certificate
/// `cert`.
pub fn verify_tls13_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    algorithms: &WebPkiSupportedAlgorithms,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    let parsed = x509::parse(cert).ok_or(CertificateError::BadEncoding)?;
    let spki = SubjectPublicKeyInfoDer::from(parsed.spki);
    rustls::crypto::verify_tls13_signature_with_raw_key(message, &spki, dss, algorithms)
}

/// The TLS 1.2 handshake's signature by the key of the (v1) certificate
/// `cert`: an algorithm of the signature's scheme for the key's type.
pub fn verify_tls12_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    algorithms: &WebPkiSupportedAlgorithms,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    let key = x509::parse(cert).ok_or(CertificateError::BadEncoding)?;
    let candidates = algorithms
        .mapping
        .iter()
        .find(|(scheme, _)| *scheme == dss.scheme)
        .map(|(_, algs)| *algs)
        .ok_or(PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme)?;
    let alg = candidates
        .iter()
        .find(|alg| alg.public_key_alg_id().as_ref() == key.key_algorithm)
        .ok_or(CertificateError::BadSignature)?;
    alg.verify_signature(key.public_key, message, dss.signature())
        .map(|()| HandshakeSignatureValid::assertion())
        .map_err(|_| CertificateError::BadSignature.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;
    use std::time::Duration;

    fn cert(pem: &[u8]) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem).unwrap()
    }

    fn algorithms() -> WebPkiSupportedAlgorithms {
        rustls::crypto::ring::default_provider().signature_verification_algorithms
    }

    /// A time within every test certificate's dates (made in 2026 for a
    /// hundred years).
    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn chain(
        leaf: &[u8],
        intermediates: &[&[u8]],
        anchors: &[&[u8]],
    ) -> Result<(), CertificateError> {
        let intermediates: Vec<_> = intermediates.iter().map(|p| cert(p)).collect();
        let anchors: Vec<_> = anchors.iter().map(|p| cert(p)).collect();
        verify_chain(&cert(leaf), &intermediates, &anchors, &algorithms(), now())
    }

    const ROOT: &[u8] = include_bytes!("testdata/v1-root.crt");
    const OTHER_ROOT: &[u8] = include_bytes!("testdata/v1-other-root.crt");
    const INTERMEDIATE: &[u8] = include_bytes!("testdata/v1-intermediate.crt");
    const NOT_A_CA: &[u8] = include_bytes!("testdata/v1-not-a-ca.crt");
    const LEAF: &[u8] = include_bytes!("testdata/v1-leaf.crt");
    const LEAF_BY_INTERMEDIATE: &[u8] = include_bytes!("testdata/v1-leaf-by-intermediate.crt");
    const LEAF_BY_NOT_A_CA: &[u8] = include_bytes!("testdata/v1-leaf-by-not-a-ca.crt");

    #[test]
    fn v1_certificates_are_told_from_v3() {
        assert!(is_v1(&cert(LEAF)));
        assert!(is_v1(&cert(LEAF_BY_INTERMEDIATE)));
        assert!(!is_v1(&cert(ROOT)));
        assert!(!is_v1(&cert(INTERMEDIATE)));
        assert!(!is_v1(b"not a certificate"));
    }

    #[test]
    fn a_v1_certificate_signed_by_the_ca_file_is_accepted() {
        // An RSA key signed with the CA's EC key.
        assert_eq!(chain(LEAF, &[], &[ROOT]), Ok(()));
        // The CA file may hold other certificates too, in any order.
        assert_eq!(chain(LEAF, &[], &[OTHER_ROOT, ROOT]), Ok(()));
    }

    #[test]
    fn a_v1_certificate_signed_by_an_intermediate_is_accepted() {
        assert_eq!(
            chain(LEAF_BY_INTERMEDIATE, &[INTERMEDIATE], &[ROOT]),
            Ok(())
        );
        // The intermediate missing: nothing leads to the CA file.
        assert_eq!(
            chain(LEAF_BY_INTERMEDIATE, &[], &[ROOT]),
            Err(CertificateError::UnknownIssuer)
        );
    }

    #[test]
    fn other_cas_and_non_ca_issuers_are_refused() {
        assert_eq!(
            chain(LEAF, &[], &[OTHER_ROOT]),
            Err(CertificateError::UnknownIssuer)
        );
        assert_eq!(
            chain(LEAF_BY_INTERMEDIATE, &[INTERMEDIATE], &[OTHER_ROOT]),
            Err(CertificateError::UnknownIssuer)
        );
        // Signed by a certificate the CA signed, but one that is no CA.
        assert_eq!(
            chain(LEAF_BY_NOT_A_CA, &[NOT_A_CA], &[ROOT]),
            Err(CertificateError::InvalidPurpose)
        );
        // A server cannot make its own certificate a CA's.
        assert_eq!(
            chain(LEAF, &[LEAF], &[OTHER_ROOT]),
            Err(CertificateError::UnknownIssuer)
        );
    }

    #[test]
    fn a_changed_certificate_is_refused() {
        let anchors = [cert(ROOT)];
        let der = cert(LEAF);
        let check = |bytes: Vec<u8>| {
            verify_chain(
                &CertificateDer::from(bytes),
                &[],
                &anchors,
                &algorithms(),
                now(),
            )
        };
        // Another name in the signed part.
        let mut renamed = der.as_ref().to_vec();
        let at = renamed.windows(9).position(|w| w == b"localhost").unwrap();
        renamed[at] = b'L';
        assert_eq!(check(renamed), Err(CertificateError::UnknownIssuer));
        // A bit of the signature.
        let mut resigned = der.as_ref().to_vec();
        let last = resigned.len() - 1;
        resigned[last] ^= 1;
        assert_eq!(check(resigned), Err(CertificateError::UnknownIssuer));
    }

    #[test]
    fn dates_are_checked_on_the_whole_chain() {
        let before = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let after = SystemTime::UNIX_EPOCH + Duration::from_secs(10_000_000_000);
        let anchors = [cert(ROOT)];
        let leaf = cert(LEAF);
        assert_eq!(
            verify_chain(&leaf, &[], &anchors, &algorithms(), before),
            Err(CertificateError::NotValidYet)
        );
        assert_eq!(
            verify_chain(&leaf, &[], &anchors, &algorithms(), after),
            Err(CertificateError::Expired)
        );
    }

    #[test]
    fn issuer_rights_are_read_from_the_extensions() {
        let rights = |pem: &[u8]| {
            let der = cert(pem);
            let parsed = x509::parse(&der).unwrap();
            x509::issuer_rights(parsed.extensions).unwrap()
        };
        let ca = rights(INTERMEDIATE);
        assert!(
            ca.ca && ca.signs_certificates && !ca.unknown_critical,
            "{ca:?}"
        );
        assert_eq!(ca.path_len, None);
        let not_ca = rights(NOT_A_CA);
        assert!(!not_ca.ca && !not_ca.unknown_critical, "{not_ca:?}");
        // No extensions at all: nothing granted beyond key use.
        assert_eq!(
            rights(LEAF),
            x509::IssuerRights {
                signs_certificates: true,
                ..Default::default()
            }
        );
    }
}
