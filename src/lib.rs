//! `ado-auth-proxy`: an authenticating reverse proxy for Azure DevOps.
//!
//! Tools send their requests (with a PAT, a client key or nothing) to the proxy; the proxy removes
//! whatever credential they sent, attaches a cached Entra ID access token of a service principal
//! and forwards the request to Azure DevOps, streaming both ways.
//!
//! The life of a request, top to bottom in [`proxy::Proxy::handle`]:
//!
//! ```text
//! server (accept, worker, hyper) ─► proxy::target ─► proxy::authenticate ─► policy (path, rules)
//!   ─► token cache (current bearer) ─► proxy::headers ─► proxy::upstream (pool) ─► Azure DevOps
//!   ◄─ proxy::body (streamed back; the exchange record writes the audit line and metrics once)
//! ```
//!
//! Layers, each importing only those below it:
//!
//! - [`app`]: the composition root; [`server`]: listeners, workers, drain, admin endpoints;
//!   [`check`]: the `check` command, [`doctor`] its `--rules`; [`suggest`]: `rules suggest`,
//!   allow rules from audit lines.
//! - [`proxy`]: the request stages, in the order above.
//! - [`token`]: token caches, their refreshers and one source per credential kind; [`feeds`]:
//!   the GUIDs of the feeds rules name, learned with a token.
//! - [`egress`]: the way out, direct or through the corporate proxy's `CONNECT` tunnel.
//! - [`config`], [`policy`], [`telemetry`], [`error`], [`secret`], [`keys`], [`tls`]: the
//!   vocabulary everything else is written in.

pub mod app;
pub mod check;
pub mod config;
pub mod doctor;
pub mod egress;
pub mod error;
pub mod feeds;
pub mod issuers;
pub mod keys;
pub mod policy;
pub mod proxy;
pub mod reload;
pub mod secret;
pub mod server;
pub mod suggest;
pub mod telemetry;
pub mod timer;
pub mod tls;
pub mod token;

pub use app::{App, StartError};
pub use proxy::snapshot::OPEN_CLIENT;
