//! rustls configurations: the client side every outbound connection shares, and the server side
//! of the proxy's own TLS listeners.

mod client;
mod server;

pub use client::{client_config, pinned_client_config};
pub use server::{ListenerCertificate, load_certificate, server_config};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("upstream.ca_file {path}: {problem}")]
    CaFile { path: String, problem: String },
    /// `key` names the configuration key, e.g. `listen.tls.key_file`.
    #[error("{key} {path}: {problem}")]
    File {
        key: String,
        path: String,
        problem: String,
    },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}
