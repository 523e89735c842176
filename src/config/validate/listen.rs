use super::Validator;
use crate::config::raw::{RawAdmin, RawListen};
use crate::config::{Admin, ConfigError, Listen};

impl Validator<'_> {
    pub(super) fn listen(&self, raw: RawListen) -> Result<Listen, ConfigError> {
        let address = self.socket_address("listen.address", &raw.address)?;
        if raw.max_header_bytes < 8 * 1024 {
            return Err(self.error(
                "listen.max_header_bytes",
                "must be at least 8192 (git and Azure DevOps send long URLs and headers)",
            ));
        }
        if raw.max_connections == 0 {
            return Err(self.error("listen.max_connections", "must be at least 1"));
        }
        if raw.header_read_timeout.0.is_zero() {
            return Err(self.error("listen.header_read_timeout", "must be above zero"));
        }
        Ok(Listen {
            address,
            header_read_timeout: raw.header_read_timeout.0,
            max_header_bytes: raw.max_header_bytes,
            max_connections: raw.max_connections,
            shutdown_grace_period: raw.shutdown_grace_period.0,
            workers: match raw.workers {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                n => n,
            },
        })
    }

    pub(super) fn admin(&self, raw: RawAdmin, listen: &Listen) -> Result<Admin, ConfigError> {
        let address = self.socket_address("admin.address", &raw.address)?;
        if address == listen.address && address.port() != 0 {
            return Err(self.error(
                "admin.address",
                "must differ from listen.address: metrics and health have their own listener",
            ));
        }
        Ok(Admin { address })
    }
}
