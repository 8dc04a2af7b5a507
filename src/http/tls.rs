//! TLS: `--tls-cert FILE --tls-key FILE` serve https and wss on the same listener, with
//! rustls (through tokio-rustls, on the `ring` provider: pure Rust and assembly, nothing to
//! install). Browsers allow getUserMedia only in a secure context, so a presenter on another
//! machine needs this to use a camera at all.
//!
//! The handshake runs on the connection's own task, inside the same idle and write timeouts
//! as the requests that follow (see `conn`), and must finish within the header timeout: a
//! client that opens a connection and stalls the handshake is closed like a slowloris.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the certificate chain in {path}: {error}")]
    Certificates {
        path: PathBuf,
        #[source]
        error: rustls_pki_types::pem::Error,
    },
    #[error("{0} holds no PEM certificate")]
    NoCertificate(PathBuf),
    #[error("cannot read a private key in {path} (PKCS#8, PKCS#1 or SEC1 PEM): {error}")]
    Key {
        path: PathBuf,
        #[source]
        error: rustls_pki_types::pem::Error,
    },
    #[error("the certificate and key do not make a TLS server: {0}")]
    Config(#[from] rustls::Error),
}

/// The certificate chain and key files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Reads the files and builds the acceptor's configuration; every failure names the file.
pub fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certificates = read_certificates(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|error| TlsError::Key {
        path: files.key.clone(),
        error,
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certificates, key)?;
    // Our hyper speaks HTTP/1.1 (WebSocket upgrades need it): say so, so that no client
    // tries h2 on this connection.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let error = |error| TlsError::Certificates {
        path: path.to_path_buf(),
        error,
    };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(error)?;
    if certificates.is_empty() {
        return Err(TlsError::NoCertificate(path.to_path_buf()));
    }
    Ok(certificates)
}
