//! What the proxy tells its operators: Prometheus metrics, the audit line per request, and the
//! log format and writer both go through. Imports nothing of the request path; the request path
//! reports here.

pub mod audit;
pub mod log_format;
pub mod log_writer;
pub mod metrics;
