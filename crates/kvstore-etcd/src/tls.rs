//! TLS options for the etcd connection (feature `tls`).

use etcd_client::{Certificate, Identity, TlsOptions};

use crate::config::TlsConfig;

/// tonic's TLS settings from ours.
pub(crate) fn client_tls(config: &TlsConfig) -> TlsOptions {
    let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(&config.ca_pem));
    if let (Some(cert), Some(key)) = (&config.client_cert_pem, &config.client_key_pem) {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    if let Some(domain) = &config.domain {
        tls = tls.domain_name(domain);
    }
    tls
}
