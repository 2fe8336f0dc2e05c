//! TLS for the listeners: rustls with the aws-lc-rs provider, ALPN `h2` and `http/1.1`.

use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::{Tls, TlsSource, TlsVersion};

pub fn acceptor(tls: &Tls) -> Result<TlsAcceptor, String> {
    served(tls).map(|s| s.acceptor)
}

/// A TLS setup ready to serve: the acceptor and when its certificate expires.
#[derive(Clone)]
pub struct Served {
    pub acceptor: TlsAcceptor,
    /// The leaf certificate's `notAfter`, Unix seconds (for the expiry metric).
    pub not_after: Option<i64>,
}

pub fn served(tls: &Tls) -> Result<Served, String> {
    let (chain, key) = match &tls.source {
        TlsSource::Files { chain, key, .. } => (chain.clone(), key.clone_key()),
        TlsSource::SelfSigned(names) => self_signed(names)?,
    };
    let not_after = chain.first().and_then(|leaf| {
        x509_parser::parse_x509_certificate(leaf)
            .ok()
            .map(|(_, cert)| cert.validity().not_after.timestamp())
    });
    let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| format!("server.tls: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("server.tls: certificate and key are not a usable pair: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Served {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        not_after,
    })
}

/// A throwaway certificate for development; it lives only in memory.
fn self_signed(
    names: &[String],
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let certified = rcgen::generate_simple_self_signed(names.to_vec())
        .map_err(|e| format!("server.tls.self_signed: cannot generate a certificate: {e}"))?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    Ok((vec![certified.cert.der().clone()], key))
}
