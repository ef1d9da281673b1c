//! TLS for QUIC. The coordinator presents a certificate signed by its own CA; clients trust only that CA,
//! pinned either by its PEM file or by the sha256 fingerprint of its DER encoding. Addresses come from
//! gossip, which anyone can write to, so the pin is what makes a connection trustworthy.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use polarizer_shared::protocol::{ALPN, COORDINATOR_SERVER_NAME};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read CA file {path}: {source}")]
    ReadCa {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CA file {path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("CA file {path}: {reason}")]
    BadCertificate { path: PathBuf, reason: String },
    #[error("CA fingerprint {text:?} is not of the form sha256:<64 hex digits>")]
    BadFingerprint { text: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// How a client decides to trust the coordinator.
#[derive(Clone, Debug)]
pub enum CaTrust {
    /// The CA certificate itself (DER), read from `ca.pem`.
    Certificate(CertificateDer<'static>),
    /// The sha256 of the CA certificate's DER encoding: the coordinator must send its CA in the chain.
    Fingerprint([u8; 32]),
}

impl CaTrust {
    pub fn from_pem_file(path: &Path) -> Result<Self, TlsError> {
        let text = std::fs::read(path).map_err(|source| TlsError::ReadCa {
            path: path.to_path_buf(),
            source,
        })?;
        let mut reader = text.as_slice();
        let first = rustls_pki_types::pem::PemObject::pem_reader_iter(&mut reader)
            .next()
            .ok_or_else(|| TlsError::NoCertificate {
                path: path.to_path_buf(),
            })?;
        let certificate: CertificateDer<'static> =
            first.map_err(|err| TlsError::BadCertificate {
                path: path.to_path_buf(),
                reason: err.to_string(),
            })?;
        Ok(CaTrust::Certificate(certificate))
    }

    pub fn from_fingerprint(text: &str) -> Result<Self, TlsError> {
        parse_fingerprint(text).map(CaTrust::Fingerprint)
    }
}

/// `sha256:` followed by the lowercase hex sha256 of a certificate's DER encoding.
pub fn fingerprint(certificate_der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, certificate_der);
    let hex: String = digest
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("sha256:{hex}")
}

pub fn parse_fingerprint(text: &str) -> Result<[u8; 32], TlsError> {
    let bad = || TlsError::BadFingerprint {
        text: text.to_string(),
    };
    let hex = text.strip_prefix("sha256:").ok_or_else(bad)?;
    // Accept the colon-separated form `openssl x509 -fingerprint` prints, too.
    let hex: String = hex.chars().filter(|c| *c != ':').collect();
    if hex.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (index, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[index * 2..index * 2 + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The coordinator's QUIC server configuration. `chain` is the server certificate followed by the CA, so
/// that fingerprint-pinning clients can find the CA in it.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<quinn::ServerConfig, TlsError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|err| TlsError::Config(err.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|err| TlsError::Config(err.to_string()))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|err| TlsError::Config(err.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(crate::transport_config()));
    Ok(config)
}

/// A client configuration that trusts only the pinned CA, for the fixed coordinator server name.
pub fn client_config(trust: &CaTrust) -> Result<quinn::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|err| TlsError::Config(err.to_string()))?;
    let mut tls = match trust {
        CaTrust::Certificate(ca) => {
            let mut roots = RootCertStore::empty();
            roots
                .add(ca.clone())
                .map_err(|err| TlsError::Config(format!("CA certificate: {err}")))?;
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        CaTrust::Fingerprint(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(FingerprintPinnedVerifier {
                pin: *pin,
                provider: provider(),
            }))
            .with_no_client_auth(),
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|err| TlsError::Config(err.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(crate::transport_config()));
    Ok(config)
}

pub fn server_name() -> &'static str {
    COORDINATOR_SERVER_NAME
}

/// Trusts a chain only when one of its certificates has the pinned fingerprint and the server certificate
/// verifies against that certificate as the sole root, with full WebPKI checks (signature, validity, name).
#[derive(Debug)]
struct FingerprintPinnedVerifier {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for FingerprintPinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let pinned = intermediates
            .iter()
            .find(|certificate| {
                ring::digest::digest(&ring::digest::SHA256, certificate).as_ref() == self.pin
            })
            .ok_or_else(|| {
                rustls::Error::General(
                    "no certificate in the coordinator's chain matches the pinned CA fingerprint"
                        .into(),
                )
            })?;
        let mut roots = RootCertStore::empty();
        roots
            .add(pinned.clone().into_owned())
            .map_err(|err| rustls::Error::General(err.to_string()))?;
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|err| rustls::Error::General(err.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            certificate,
            signature,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            certificate,
            signature,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_in_both_common_forms() {
        let der = b"not really a certificate";
        let text = fingerprint(der);
        let parsed = parse_fingerprint(&text).unwrap();
        assert_eq!(
            parsed.as_slice(),
            ring::digest::digest(&ring::digest::SHA256, der).as_ref()
        );
        let colon_form = format!(
            "sha256:{}",
            parsed
                .iter()
                .map(|byte| format!("{byte:02X}"))
                .collect::<Vec<_>>()
                .join(":")
        );
        assert_eq!(parse_fingerprint(&colon_form).unwrap(), parsed);
        assert!(parse_fingerprint("md5:abcd").is_err());
        assert!(parse_fingerprint("sha256:zz").is_err());
    }
}
