//! Who the client is behind a proxy: the one place that decides whether a peer is a trusted
//! proxy, reads `X-Forwarded-For` / `-Proto` / `-Host` from it, and turns a client address
//! into the key its rate buckets and connection cap are counted under.
//!
//! Proxies write `X-Forwarded-For` hops as `ip`, `ip:port` (Azure Application Gateway) or
//! `[v6]:port`; all parse. An IPv4 client seen as `::ffff:a.b.c.d` is that IPv4 client. An
//! IPv6 client can use every address of its /64 (or larger) block, so it is counted by
//! `client_ipv6_prefix` bits of its address, not by the address.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use http::{HeaderMap, HeaderValue};

use crate::config::IpNet;

/// Whether `peer` is one of `trusted_proxies`.
pub fn is_trusted(proxies: &[IpNet], peer: SocketAddr) -> bool {
    let ip = canonical(peer.ip());
    proxies.iter().any(|net| net.contains(ip))
}

/// The caller's address: the socket peer, or, when the peer is a trusted proxy, the
/// right-most `X-Forwarded-For` hop that is not itself a trusted proxy (hops further left
/// were written by the client and prove nothing). Always in canonical form.
pub fn client_ip(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer_ip = canonical(peer.ip());
    if !trusted.iter().any(|net| net.contains(peer_ip)) {
        return peer_ip;
    }
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .rev()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.rsplit(','));
    for hop in hops {
        let Some(ip) = parse_hop(hop) else {
            // A malformed hop: stop believing the chain at this point.
            break;
        };
        if !trusted.iter().any(|net| net.contains(ip)) {
            return ip;
        }
    }
    peer_ip
}

/// One `X-Forwarded-For` hop: `ip`, `ip:port`, `[v6]` or `[v6]:port`, canonical.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Some(bracketed) = hop.strip_prefix('[') {
        let (v6, rest) = bracketed.split_once(']')?;
        if !(rest.is_empty() || is_port(rest.strip_prefix(':')?)) {
            return None;
        }
        return v6.parse::<Ipv6Addr>().ok().map(|ip| canonical(ip.into()));
    }
    // `a.b.c.d:port`: one colon (a bare IPv6 address has parsed above).
    let (v4, port) = hop.rsplit_once(':')?;
    if !is_port(port) {
        return None;
    }
    v4.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

fn is_port(text: &str) -> bool {
    !text.is_empty() && text.len() <= 5 && text.parse::<u16>().is_ok()
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) as the IPv4 address it is.
pub fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// What a client's rate buckets and connection cap are keyed by: an IPv4 address, or the
/// first `ipv6_prefix` bits of an IPv6 one (the rest zero).
pub fn client_key(ip: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match canonical(ip) {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let bits = u32::from(ipv6_prefix.min(128));
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

/// The first value of a forwarded header (`x-forwarded-proto`, `x-forwarded-host`), only
/// from a trusted proxy.
pub fn trusted_header(
    proxies: &[IpNet],
    peer: SocketAddr,
    headers: &HeaderMap,
    name: &str,
) -> Option<String> {
    if !is_trusted(proxies, peer) {
        return None;
    }
    let value = headers.get(name)?.to_str().ok()?;
    let first = value.split(',').next()?.trim();
    (!first.is_empty()).then(|| first.to_owned())
}

/// The peer's address as the `x-forwarded-for` value upstream requests carry.
pub fn forwarded_for_value(peer: SocketAddr) -> HeaderValue {
    HeaderValue::from_str(&canonical(peer.ip()).to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn hops_parse_with_and_without_ports() {
        for (hop, expected) in [
            ("203.0.113.9", Some("203.0.113.9")),
            (" 203.0.113.9:4711 ", Some("203.0.113.9")),
            ("2001:db8::1", Some("2001:db8::1")),
            ("[2001:db8::1]", Some("2001:db8::1")),
            ("[2001:db8::1]:443", Some("2001:db8::1")),
            ("::ffff:203.0.113.9", Some("203.0.113.9")),
            ("[::ffff:203.0.113.9]:80", Some("203.0.113.9")),
            ("203.0.113.9:", None),
            ("203.0.113.9:99999", None),
            ("203.0.113.9:80:80", None),
            ("[2001:db8::1]443", None),
            ("[2001:db8::1", None),
            ("[203.0.113.9]:80", None),
            ("unknown", None),
            ("", None),
        ] {
            assert_eq!(parse_hop(hop), expected.map(ip), "{hop:?}");
        }
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxy: SocketAddr = "10.0.0.5:443".parse().unwrap();
        let trusted = [IpNet::parse("10.0.0.0/8").unwrap()];
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("1.1.1.1, 203.0.113.9:5000, 10.0.0.7"),
        );
        assert_eq!(
            client_ip(proxy, &headers, &trusted),
            ip("203.0.113.9"),
            "the right-most untrusted hop; the client-written 1.1.1.1 is ignored"
        );
        let stranger: SocketAddr = "198.51.100.1:5000".parse().unwrap();
        assert_eq!(client_ip(stranger, &headers, &trusted), stranger.ip());
        headers.insert("x-forwarded-for", HeaderValue::from_static("not-an-ip"));
        assert_eq!(client_ip(proxy, &headers, &trusted), proxy.ip());
        // A proxy reached over IPv6 as a mapped IPv4 address is still the trusted proxy.
        let mapped: SocketAddr = "[::ffff:10.0.0.5]:443".parse().unwrap();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("[2001:db8::7]:1"),
        );
        assert_eq!(client_ip(mapped, &headers, &trusted), ip("2001:db8::7"));
        let mapped_stranger: SocketAddr = "[::ffff:198.51.100.1]:5000".parse().unwrap();
        assert_eq!(
            client_ip(mapped_stranger, &headers, &trusted),
            ip("198.51.100.1")
        );
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_prefix() {
        assert_eq!(client_key(ip("203.0.113.9"), 64), ip("203.0.113.9"));
        assert_eq!(client_key(ip("::ffff:203.0.113.9"), 64), ip("203.0.113.9"));
        assert_eq!(
            client_key(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), 64),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            client_key(ip("2001:db8:1:2:aaaa::1"), 48),
            ip("2001:db8:1::")
        );
        assert_eq!(client_key(ip("2001:db8::1"), 128), ip("2001:db8::1"));
        assert_eq!(client_key(ip("2001:db8::1"), 0), ip("::"));
    }

    #[test]
    fn forwarded_for_is_the_peer_ip_without_its_port() {
        for (peer, expected) in [
            ("192.0.2.7:50123", "192.0.2.7"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("[::ffff:192.0.2.7]:443", "192.0.2.7"),
        ] {
            assert_eq!(forwarded_for_value(peer.parse().unwrap()), expected);
        }
    }
}
