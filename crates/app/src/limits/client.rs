//! The client address a request is throttled by: the TCP peer (`ConnectInfo`, set by the
//! server for every connection). IPv6 clients are grouped by /64, the block one host usually
//! owns, so rotating addresses within it buys nothing.
//!
//! Behind a reverse proxy the peer is the proxy: every client then shares its bucket.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use axum::extract::ConnectInfo;
use http::Extensions;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr(IpAddr);

impl ClientAddr {
    /// The peer of the request's connection; requests that did not come through a socket
    /// (`Router::oneshot` in tests) share the unspecified address.
    pub fn of(extensions: &Extensions) -> Self {
        let ip = extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |ConnectInfo(peer)| peer.ip());
        Self::from_ip(ip)
    }

    pub fn from_ip(ip: IpAddr) -> Self {
        Self(match ip {
            IpAddr::V4(v4) => IpAddr::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let [a, b, c, d, ..] = v6.segments();
                    IpAddr::V6(Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0))
                }
            },
        })
    }
}

impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_grouped_by_their_64_and_mapped_ipv4_is_ipv4() {
        let ip = |s: &str| ClientAddr::from_ip(s.parse().unwrap_or(IpAddr::V4(Ipv4Addr::BROADCAST)));
        assert_eq!(ip("2001:db8:1:2:aaaa::1"), ip("2001:db8:1:2:bbbb::9"));
        assert_ne!(ip("2001:db8:1:2::1"), ip("2001:db8:1:3::1"));
        assert_eq!(ip("::ffff:192.0.2.7"), ip("192.0.2.7"));
        assert_eq!(ip("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");
        assert_eq!(ClientAddr::of(&Extensions::new()).to_string(), "0.0.0.0");
    }
}
