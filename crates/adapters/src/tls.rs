//! The process's rustls crypto provider. ring is the only one compiled in (the Temporal SDK's
//! tonic needs it; see `rustls` in the workspace Cargo.toml). reqwest 0.13 (and object_store's
//! S3 client through it) is built without its aws-lc-rs default, so it takes the process-wide
//! provider when a client is built, and panics if there is none: install it before building one.

/// Installs ring as the process-wide rustls provider; later calls do nothing.
pub fn install_crypto_provider() {
    // Err means a provider is already installed: ring is the only one in the tree, so it is ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    #[test]
    fn installing_twice_keeps_ring() {
        super::install_crypto_provider();
        super::install_crypto_provider();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }
}
