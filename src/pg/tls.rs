//! TLS to the server through rustls with the ring provider, the same
//! rustls ureq builds. What is verified follows libpq's PGSSLMODE:
//! `require` without a CA file checks nothing, a CA file (or verify-ca)
//! checks the chain, verify-full also the host name.

use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, InconsistentKeys, SignatureScheme,
};

use super::error::PgError;
use super::params::{ConnParams, SslMode};
use super::transport::Stream;
use super::v1_certs;
use super::x509;

/// Runs the TLS handshake over `tcp` (after the server said 'S' to our
/// SSLRequest) and returns the encrypted stream.
pub fn handshake(
    mut tcp: TcpStream,
    host: &str,
    params: &ConnParams,
    target: &str,
) -> Result<Stream, PgError> {
    let fail = |problem: String| PgError::Tls {
        target: target.to_string(),
        problem,
    };
    let config = client_config(params).map_err(&fail)?;
    let name = ServerName::try_from(host.to_string())
        .map_err(|_| fail(format!("\"{host}\" is not a valid TLS server name")))?;
    let mut conn =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| fail(e.to_string()))?;
    // Finish the handshake here so a refused certificate is reported as a
    // TLS problem, not as a failure of the first protocol message.
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut tcp) {
            let kind = e.kind();
            if matches!(
                kind,
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) {
                return Err(PgError::Timeout {
                    target: target.to_string(),
                });
            }
            let check = if params.ssl_mode == SslMode::VerifyFull {
                "; check PGSSLROOTCERT, and that PGHOST is a name the certificate is for"
            } else {
                "; check PGSSLROOTCERT and PGSSLMODE"
            };
            return Err(fail(format!("{e}{check}")));
        }
    }
    Ok(Stream::Tls(Box::new(rustls::StreamOwned::new(conn, tcp))))
}

fn client_config(params: &ConnParams) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match &params.ssl_root_cert {
        Some(path) => {
            let certs = load_certs(path)?;
            let mut roots = rustls::RootCertStore::empty();
            let (added, _ignored) = roots.add_parsable_certificates(certs.iter().cloned());
            if added == 0 {
                return Err(format!("root certificate file {} holds no usable certificate", path.display()));
            }
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| format!("the CA certificates in {} cannot be used: {e}", path.display()))?;
            Arc::new(CaVerifier {
                webpki,
                algorithms: provider.signature_verification_algorithms,
                pinned: certs,
                check_name: params.ssl_mode == SslMode::VerifyFull,
            })
        }
        None if matches!(params.ssl_mode, SslMode::VerifyCa | SslMode::VerifyFull) => {
            return Err(
                "PGSSLMODE verify-ca and verify-full need the CA certificate: set PGSSLROOTCERT or put it in ~/.postgresql/root.crt"
                    .into(),
            )
        }
        None => Arc::new(NoVerify(provider.clone())),
    };
    let signing = provider.clone();
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    // libpq sends a client certificate only when its file exists.
    match params.ssl_cert.as_deref().filter(|p| p.exists()) {
        Some(cert_path) => {
            let certs = CertificateDer::pem_file_iter(cert_path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    format!(
                        "client certificate {} cannot be read: {e}",
                        cert_path.display()
                    )
                })?;
            let key_path = params
                .ssl_key
                .as_deref()
                .ok_or("a client certificate is set but no key: set PGSSLKEY")?;
            let key = PrivateKeyDer::from_pem_file(key_path)
                .map_err(|e| format!("client key {} cannot be read: {e}", key_path.display()))?;
            let certified = client_cert(certs, key, &signing).map_err(|e| {
                format!(
                    "client certificate {} cannot be used with key {}: {e}",
                    cert_path.display(),
                    key_path.display()
                )
            })?;
            Ok(builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(certified))))
        }
        None => Ok(builder.with_no_client_auth()),
    }
}

/// The client certificate and its key. rustls's `with_client_auth_cert`
/// would refuse an X.509 v1 certificate: its key check parses the
/// certificate with webpki, which reads only v3. PostgreSQL (OpenSSL)
/// accepts v1 client certificates, and its documented recipe
/// (`openssl x509 -req` without extensions, OpenSSL 3.0) makes them, so
/// only a key that provably does not match the certificate is refused
/// here; the server judges the certificate itself, as with libpq.
fn client_cert(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, rustls::Error> {
    if certs.is_empty() {
        return Err(rustls::Error::NoCertificatesPresented);
    }
    let key = provider.key_provider.load_private_key(key)?;
    let certified = CertifiedKey::new(certs, key);
    match certified.keys_match() {
        Err(e @ rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => Err(e),
        _ => Ok(certified),
    }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            format!(
                "root certificate file {} cannot be read: {e}",
                path.display()
            )
        })
}

/// sslmode=require without a CA file: encryption without authentication,
/// as libpq. The handshake signatures are still checked.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A CA file is given: the chain must lead to it, and for verify-full the
/// name must match. A server certificate that is itself in the file is
/// trusted as is, within its validity dates: PostgreSQL's documented
/// self-signed setup uses one certificate (with CA:TRUE) as both, which
/// webpki alone refuses. A v1 server certificate, which webpki cannot
/// read, has its chain followed by [`v1_certs`].
#[derive(Debug)]
struct CaVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    algorithms: WebPkiSupportedAlgorithms,
    pinned: Vec<CertificateDer<'static>>,
    check_name: bool,
}

impl ServerCertVerifier for CaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let now_time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(now.as_secs());
        let v1 = v1_certs::is_v1(end_entity);
        if self
            .pinned
            .iter()
            .any(|c| c.as_ref() == end_entity.as_ref())
        {
            // Trusted as is, but only within its dates, as libpq checks.
            v1_certs::check_dates(end_entity, now_time)?;
        } else if v1 {
            v1_certs::verify_chain(
                end_entity,
                intermediates,
                &self.pinned,
                &self.algorithms,
                now_time,
            )?;
        } else {
            // webpki checks the chain before the name, so a name error
            // means the chain was good: enough for verify-ca, and for
            // verify-full when the Common Name matches where libpq reads it.
            return match self.webpki.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ) {
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                )) if !self.check_name || common_name_matches(end_entity, server_name) => {
                    Ok(ServerCertVerified::assertion())
                }
                other => other,
            };
        }
        if self.check_name {
            // A v1 certificate has no extensions: only its Common Name.
            if v1 {
                if !common_name_matches(end_entity, server_name) {
                    return Err(CertificateError::NotValidForName.into());
                }
            } else {
                let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
                if let Err(e) = rustls::client::verify_server_name(&parsed, server_name) {
                    if !common_name_matches(end_entity, server_name) {
                        return Err(e);
                    }
                }
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The server's TLS 1.2 handshake signature, by its certificate's key.
fn tls12_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    algorithms: &WebPkiSupportedAlgorithms,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    if v1_certs::is_v1(cert) {
        return v1_certs::verify_tls12_signature(message, cert, dss, algorithms);
    }
    rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
}

/// The server's TLS 1.3 handshake signature, by its certificate's key.
fn tls13_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    algorithms: &WebPkiSupportedAlgorithms,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    if v1_certs::is_v1(cert) {
        return v1_certs::verify_tls13_signature(message, cert, dss, algorithms);
    }
    rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
}

/// libpq's `verify-full` for a certificate without a DNS or IP
/// subjectAltName (rustls reads only those): the host must match the
/// subject's Common Name, ignoring case; a leading `*.` stands for the
/// host's whole first label.
fn common_name_matches(end_entity: &CertificateDer<'_>, server_name: &ServerName<'_>) -> bool {
    let Some(names) = x509::subject_names(end_entity.as_ref()) else {
        return false;
    };
    let host = server_name.to_str();
    !names.alt_names
        && names
            .common_names
            .iter()
            .any(|cn| name_matches(cn.as_bytes(), host.as_bytes()))
}

fn name_matches(pattern: &[u8], host: &[u8]) -> bool {
    if pattern.contains(&0) {
        return false;
    }
    match pattern.strip_prefix(b"*") {
        Some(tail) if tail.len() > 1 && tail[0] == b'.' => {
            let Some(first_label) = host.len().checked_sub(tail.len()).filter(|&n| n > 0) else {
                return false;
            };
            host[first_label..].eq_ignore_ascii_case(tail) && !host[..first_label].contains(&b'.')
        }
        _ => pattern.eq_ignore_ascii_case(host),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &[u8] = include_bytes!("testdata/client-v1.crt");
    const V3: &[u8] = include_bytes!("testdata/client-v3.crt");
    const KEY: &[u8] = include_bytes!("testdata/client.key");
    const OTHER_KEY: &[u8] = include_bytes!("testdata/other.key");

    fn certs(pem: &[u8]) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(pem)
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn key(pem: &[u8]) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(pem).unwrap()
    }

    #[test]
    fn common_names_are_read_where_libpq_reads_them() {
        let names = |pem: &[u8]| x509::subject_names(certs(pem)[0].as_ref()).unwrap();
        // No extensions at all (v1, and v3 without any): the CN counts.
        for pem in [V1, V3] {
            let n = names(pem);
            assert_eq!(n.common_names, ["carol"]);
            assert!(!n.alt_names);
        }
        // A DNS or IP alternative name: the CN is ignored.
        let san = names(include_bytes!("testdata/server-san.crt"));
        assert_eq!(san.common_names, ["db.example.com"]);
        assert!(san.alt_names);
        // Only an e-mail alternative name (critical): the CN counts.
        let email = certs(include_bytes!("testdata/server-email-san.crt"));
        let n = x509::subject_names(email[0].as_ref()).unwrap();
        assert_eq!(n.common_names, ["*.example.com"]);
        assert!(!n.alt_names);
        let host = |h: &'static str| ServerName::try_from(h).unwrap();
        assert!(common_name_matches(&email[0], &host("db.example.com")));
        assert!(!common_name_matches(&email[0], &host("example.com")));
        assert!(x509::subject_names(&V1[..20]).is_none());
    }

    #[test]
    fn names_match_as_in_libpq() {
        assert!(name_matches(b"DB.example.com", b"db.EXAMPLE.com"));
        assert!(!name_matches(b"db.example.com", b"db.example.co"));
        assert!(name_matches(b"*.example.com", b"db.example.com"));
        // The wildcard is one whole first label, never more or none.
        assert!(!name_matches(b"*.example.com", b"a.db.example.com"));
        assert!(!name_matches(b"*.example.com", b".example.com"));
        assert!(!name_matches(b"*.example.com", b"example.com"));
        assert!(!name_matches(b"*.", b"x."));
        assert!(!name_matches(b"db\0.example.com", b"db\0.example.com"));
        assert!(name_matches(b"127.0.0.1", b"127.0.0.1"));
    }

    #[test]
    fn v1_client_certificates_are_sent() {
        let provider = rustls::crypto::ring::default_provider();
        // rustls's own path refuses the v1 certificate (why client_cert
        // exists); should that change, client_cert can go.
        let refused = ClientConfig::builder_with_provider(Arc::new(provider.clone()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(Arc::new(provider.clone()))))
            .with_client_auth_cert(certs(V1), key(KEY));
        assert!(refused.is_err());
        assert!(client_cert(certs(V1), key(KEY), &provider).is_ok());
        assert!(client_cert(certs(V3), key(KEY), &provider).is_ok());
        let mismatch = client_cert(certs(V3), key(OTHER_KEY), &provider).unwrap_err();
        assert_eq!(
            mismatch,
            rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)
        );
        assert!(client_cert(Vec::new(), key(KEY), &provider).is_err());
    }
}
