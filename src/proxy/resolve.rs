//! Name resolution for upstream connections: `upstream.resolve` connects a host name to a given
//! address (curl's `--resolve`), everything else asks the system resolver. TLS still checks the
//! certificate against the host name, so an override changes where bytes go, never whom they
//! are for.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use tower_service::Service;

#[derive(Clone)]
pub struct Resolve {
    overrides: Arc<[(String, SocketAddr)]>,
    system: GaiResolver,
}

impl Resolve {
    /// `overrides`: lower-case host names and the address each connects to.
    pub fn new(overrides: &[(String, SocketAddr)]) -> Self {
        Self {
            overrides: overrides.into(),
            system: GaiResolver::new(),
        }
    }
}

type Addresses = std::vec::IntoIter<SocketAddr>;

impl Service<Name> for Resolve {
    type Response = Addresses;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Addresses>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let host = name.as_str();
        if let Some((_, address)) = self
            .overrides
            .iter()
            .find(|(overridden, _)| overridden.eq_ignore_ascii_case(host))
        {
            let address = *address;
            return Box::pin(async move { Ok(vec![address].into_iter()) });
        }
        let lookup = self.system.call(name);
        Box::pin(async move { Ok(lookup.await?.collect::<Vec<_>>().into_iter()) })
    }
}
