//! The TLS client of a bus's connections: rustls on ring, trusting only the bus's CA when `ca_file` is
//! given (pinned: the system's CAs are then not used), the system's CAs otherwise; presenting its client
//! certificate when it has one.

use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::config::BusConfig;

pub fn client_config(bus: &BusConfig) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    match bus.tls.ca_pem.as_deref() {
        Some(ca) => {
            for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                let cert = cert.map_err(|err| format!("ca_file: {err}"))?;
                roots.add(cert).map_err(|err| format!("ca_file: {err}"))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(
                    "no ca_file, and no CA certificate in the system's store to trust the broker with"
                        .into(),
                );
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| err.to_string())?
        .with_root_certificates(roots);
    let config = match (&bus.tls.cert_pem, &bus.tls.key_pem) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|err| format!("cert_file: {err}"))?;
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
                .map_err(|_| "key_file: no private key in it".to_string())?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|err| format!("cert_file and key_file: {err}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}
