//! The coordinator's identity on disk: created on first start (the CA, the server certificate, the agent
//! enrollment token and the operator token; every file 0600, the directory 0700), loaded as is afterwards.

use std::path::{Path, PathBuf};

use polarizer_shared::protocol::COORDINATOR_SERVER_NAME;
use polarizer_transport::state_files::{self, StateFileError};
use polarizer_transport::tls;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::data_dir::DataDir;

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error(transparent)]
    StateFile(#[from] StateFileError),
    #[error("cannot generate certificates: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("{path}: {reason}")]
    BadPem { path: PathBuf, reason: String },
    #[error("data directory {dir} is incomplete: {missing} is missing (remove the directory to start afresh, or restore the file)")]
    Incomplete { dir: PathBuf, missing: PathBuf },
}

/// What the running coordinator needs from the data directory.
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub ca_fingerprint: String,
    pub created: bool,
}

/// Creating and loading the data directory's files.
pub trait Prepare {
    /// Creates whatever is missing on first start; on later starts loads what is there.
    fn prepare(&self) -> Result<Identity, DataDirError>;
}

impl Prepare for DataDir {
    /// Creates whatever is missing on first start; on later starts loads what is there. A directory that
    /// has a CA but lost its server key is an error, not a silent new CA that every agent would refuse.
    fn prepare(&self) -> Result<Identity, DataDirError> {
        state_files::ensure_private_dir(&self.root)?;
        let created = !self.ca_certificate().exists();
        if created {
            create_certificates(self)?;
        }
        for path in [
            self.ca_certificate(),
            self.server_certificate(),
            self.server_key(),
        ] {
            if !path.exists() {
                return Err(DataDirError::Incomplete {
                    dir: self.root.clone(),
                    missing: path,
                });
            }
        }
        for token in [self.agent_token(), self.operator_token()] {
            if !token.exists() {
                state_files::write_private(
                    &token,
                    format!("{}\n", state_files::random_secret()).as_bytes(),
                )?;
            }
        }
        let ca = load_certificate(&self.ca_certificate())?;
        let server = load_certificate(&self.server_certificate())?;
        let key = PrivateKeyDer::from_pem_file(self.server_key()).map_err(|err| {
            DataDirError::BadPem {
                path: self.server_key(),
                reason: err.to_string(),
            }
        })?;
        let ca_fingerprint = tls::fingerprint(&ca);
        Ok(Identity {
            chain: vec![server, ca],
            key,
            ca_fingerprint,
            created,
        })
    }
}

fn create_certificates(data_dir: &DataDir) -> Result<(), DataDirError> {
    // A unique CN per CA, so two coordinators' CAs never look alike in logs or trust stores.
    let unique = &state_files::random_secret()[..12];
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("Polarizer CA {unique}"));
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate()?;
    let ca_certificate = ca_params.self_signed(&ca_key)?;

    let mut server_params = CertificateParams::new(vec![COORDINATOR_SERVER_NAME.to_string()])?;
    server_params.distinguished_name.push(
        DnType::CommonName,
        format!("Polarizer coordinator {unique}"),
    );
    server_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate()?;
    let issuer = Issuer::new(ca_params, &ca_key);
    let server_certificate = server_params.signed_by(&server_key, &issuer)?;

    // Keys first: a crash midway leaves no ca.pem, so the next start begins again from scratch.
    state_files::write_private(&data_dir.ca_key(), ca_key.serialize_pem().as_bytes())?;
    state_files::write_private(
        &data_dir.server_key(),
        server_key.serialize_pem().as_bytes(),
    )?;
    state_files::write_private(
        &data_dir.server_certificate(),
        server_certificate.pem().as_bytes(),
    )?;
    state_files::write_private(&data_dir.ca_certificate(), ca_certificate.pem().as_bytes())?;
    Ok(())
}

fn load_certificate(path: &Path) -> Result<CertificateDer<'static>, DataDirError> {
    CertificateDer::from_pem_file(path).map_err(|err| DataDirError::BadPem {
        path: path.to_path_buf(),
        reason: err.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn first_start_creates_private_files_and_later_starts_reuse_them() {
        let temp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(temp.path().join("data"));
        let first = dir.prepare().unwrap();
        assert!(first.created);
        for path in [
            dir.ca_certificate(),
            dir.ca_key(),
            dir.server_certificate(),
            dir.server_key(),
            dir.agent_token(),
            dir.operator_token(),
        ] {
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", path.display());
        }
        let token = std::fs::read_to_string(dir.agent_token()).unwrap();
        let second = dir.prepare().unwrap();
        assert!(!second.created);
        assert_eq!(first.ca_fingerprint, second.ca_fingerprint);
        assert_eq!(token, std::fs::read_to_string(dir.agent_token()).unwrap());
    }

    #[test]
    fn a_lost_server_key_is_an_error_not_a_new_ca() {
        let temp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(temp.path());
        dir.prepare().unwrap();
        std::fs::remove_file(dir.server_key()).unwrap();
        let Err(err) = dir.prepare() else {
            panic!("must refuse")
        };
        assert!(
            err.to_string().contains("server-key.pem is missing"),
            "{err}"
        );
    }
}
