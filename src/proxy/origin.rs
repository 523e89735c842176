//! Who sent a request: the connection's source address, or, when that is a configured trusted
//! proxy (a load balancer, an ingress), the address it says it forwarded for in
//! `X-Forwarded-For`. Only the trusted ones are believed: the header is read from the right, past
//! the trusted proxies, and the first other address is the client. Anyone else's header is
//! ignored, as it would be a claim the sender makes about itself.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;

use crate::config::Network;

/// The request's origin: `peer`, unless it is a trusted proxy that says whom it forwarded for.
pub fn origin(peer: SocketAddr, headers: &HeaderMap, trusted: &[Network]) -> SocketAddr {
    if trusted.is_empty() || !trusted.iter().any(|net| net.contains(peer.ip())) {
        return peer;
    }
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for hop in forwarded.iter().rev() {
        let Ok(ip) = hop.parse::<IpAddr>() else {
            // Not an address: nothing to its left can be believed either.
            return peer;
        };
        if !trusted.iter().any(|net| net.contains(ip)) {
            return SocketAddr::new(ip.to_canonical(), 0);
        }
    }
    peer
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in values {
            map.append("x-forwarded-for", value.parse().expect("value"));
        }
        map
    }

    #[test]
    fn only_trusted_proxies_are_believed_read_from_the_right() {
        let trusted = [Network::parse("10.0.0.0/8").expect("cidr")];
        let balancer: SocketAddr = "10.0.0.5:4000".parse().expect("addr");
        let stranger: SocketAddr = "192.0.2.7:4000".parse().expect("addr");
        // Behind the balancer: the first address right of the trusted ones.
        let spoofed = headers(&["6.6.6.6, 198.51.100.9, 10.0.0.9"]);
        assert_eq!(
            origin(balancer, &spoofed, &trusted).ip().to_string(),
            "198.51.100.9"
        );
        assert_eq!(
            origin(balancer, &headers(&["6.6.6.6", "198.51.100.9"]), &trusted)
                .ip()
                .to_string(),
            "198.51.100.9"
        );
        // Anyone else's claim is ignored; a malformed hop stops the walk.
        assert_eq!(origin(stranger, &spoofed, &trusted), stranger);
        assert_eq!(
            origin(balancer, &headers(&["x, 10.0.0.9"]), &trusted),
            balancer
        );
        assert_eq!(origin(balancer, &HeaderMap::new(), &trusted), balancer);
        assert_eq!(origin(balancer, &spoofed, &[]), balancer);
    }
}
