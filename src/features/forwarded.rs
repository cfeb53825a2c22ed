//! Trusted forwarding headers: who the client is when the daemon sits behind a load balancer or
//! an ingress (`[server] trusted-proxies`).
//!
//! Invariants: `X-Forwarded-For` and `Forwarded` are read only when the TCP peer is in the
//! trusted list; from any other peer they are ignored and the peer is the client. The chain is
//! walked from the right (the hop nearest the daemon), skipping trusted hops, so a client cannot
//! claim an address by writing the header itself: the first untrusted hop is the client (what
//! nginx's `real_ip_recursive` does). An entry that is not an address (`unknown`, an obfuscated
//! `_name`, garbage) stops the walk at the last hop known. The result only names the client in the
//! access log and in hints; it never grants anything: the proxy's own `/health` and `/metrics`
//! still judge the TCP peer, and the `Host`/`Origin` rules apply to the request as sent
//! (`X-Forwarded-Host` is never honoured).

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use toml::Spanned;

use crate::configkit::{ConfigError, Source};

/// One `trusted-proxies` entry: an address with a prefix length (`10.0.0.0/8`, `::1/128`; a bare
/// address means the one host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `addr[/prefix]`; host bits must be zero, so `10.1.2.3/8` (likely a typo) is refused.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("`{text}` is not an IP address or network (e.g. \"10.0.0.0/8\")"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{text}`: the prefix length must be 0 to {max}"))?,
        };
        let cidr = Cidr { network, prefix };
        if cidr.masked(network) != Some(bits(network)) {
            return Err(format!("`{text}` has bits set past its /{prefix} prefix"));
        }
        Ok(cidr)
    }

    /// True when `ip` is inside this network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.masked(ip.to_canonical()) == Some(bits(self.network))
    }

    /// `ip`'s bits under this network's mask, or `None` for the other address family.
    fn masked(&self, ip: IpAddr) -> Option<u128> {
        let width = match (self.network, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) => 32,
            (IpAddr::V6(_), IpAddr::V6(_)) => 128,
            _ => return None,
        };
        let host_bits = width - u32::from(self.prefix);
        let mask = if host_bits >= 128 { 0 } else { u128::MAX << host_bits };
        Some(bits(ip) & mask)
    }
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(ip) => u128::from(u32::from(ip)),
        IpAddr::V6(ip) => u128::from(ip),
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// `[server] trusted-proxies`: the peers whose forwarding headers are believed. Empty (the
/// default): no forwarding header is ever believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    /// Validates the raw list, naming the line of a bad entry.
    pub(crate) fn from_raw(
        raw: Option<&Spanned<Vec<Spanned<String>>>>,
        source: &Source<'_>,
    ) -> Result<TrustedProxies, ConfigError> {
        let mut list = Vec::new();
        for entry in raw.map(Spanned::get_ref).into_iter().flatten() {
            let cidr = Cidr::parse(entry.get_ref()).map_err(|message| {
                source
                    .error(entry.span(), "server.trusted-proxies", message)
                    .with_help("list the load balancers' addresses, e.g. [\"10.0.0.0/8\"] or [\"127.0.0.1\"]")
            })?;
            list.push(cidr);
        }
        Ok(TrustedProxies(list))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|cidr| cidr.contains(ip))
    }

    /// The client's address: the TCP peer's, or, when the peer is a trusted proxy, the first
    /// untrusted hop of its forwarding chain (`Forwarded` if present, else `X-Forwarded-For`).
    pub fn client(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.ip().to_canonical();
        // The common case (no list, or a direct client) reads no header at all.
        if self.is_empty() || !self.contains(peer) {
            return peer;
        }
        let hops = if headers.contains_key(http::header::FORWARDED) {
            chain(headers, http::header::FORWARDED.as_str(), forwarded_for)
        } else {
            chain(headers, "x-forwarded-for", |entry| Some(entry.trim()))
        };
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Some(ip) = hop else { break };
            client = *ip;
            if !self.contains(client) {
                break;
            }
        }
        client
    }
}

/// The hops of every `name` header, in order (header lines, then comma-separated entries); `None`
/// for an entry that is not an address.
fn chain(headers: &HeaderMap, name: &str, entry: impl Fn(&str) -> Option<&str>) -> Vec<Option<IpAddr>> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|value| value.to_str().unwrap_or("\u{0}").split(','))
        .map(|part| entry(part).and_then(parse_node))
        .collect()
}

/// The `for=` node of one `Forwarded` element (RFC 7239 §4), if it has one.
fn forwarded_for(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        key.trim().eq_ignore_ascii_case("for").then(|| value.trim())
    })
}

/// An address from a forwarding header: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`,
/// `[2001:db8::1]:4711`, optionally in double quotes.
fn parse_node(text: &str) -> Option<IpAddr> {
    let text = text.trim().trim_matches('"');
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Some(rest) = text.strip_prefix('[') {
        let (ip, _) = rest.split_once(']')?;
        return ip.parse::<IpAddr>().ok().map(|ip| ip.to_canonical());
    }
    text.parse::<SocketAddr>().ok().map(|addr| addr.ip().to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(list: &[&str]) -> TrustedProxies {
        TrustedProxies(list.iter().map(|c| Cidr::parse(c).unwrap()).collect())
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    fn peer(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 40000)
    }

    #[test]
    fn networks() {
        let lan = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(lan.contains("10.9.8.7".parse().unwrap()));
        assert!(lan.contains("::ffff:10.1.1.1".parse().unwrap()));
        assert!(!lan.contains("11.0.0.1".parse().unwrap()));
        assert!(!lan.contains("::1".parse().unwrap()));
        let one = Cidr::parse("127.0.0.1").unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("203.0.113.1".parse().unwrap())
        );
        assert!(Cidr::parse("fd00::/8").unwrap().contains("fd12::1".parse().unwrap()));
        assert!(Cidr::parse("::/0").unwrap().contains("2001:db8::1".parse().unwrap()));
        for bad in ["10.1.2.3/8", "10.0.0.0/33", "nope", "10.0.0.0/", "fd00::/129"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn headers_from_an_untrusted_peer_are_ignored() {
        let list = trusted(&["10.0.0.0/8"]);
        let h = headers(&[("x-forwarded-for", "203.0.113.9"), ("forwarded", "for=198.51.100.1")]);
        assert_eq!(
            list.client(peer("192.0.2.1"), &h),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            TrustedProxies::default().client(peer("10.0.0.1"), &h),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn the_first_untrusted_hop_from_the_right_is_the_client() {
        let list = trusted(&["10.0.0.0/8"]);
        // The client wrote a fake first entry; the balancer appended the real one.
        let h = headers(&[("x-forwarded-for", "1.2.3.4, 203.0.113.9, 10.0.0.7")]);
        assert_eq!(
            list.client(peer("10.0.0.1"), &h),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        // Several header lines are one list.
        let h = headers(&[("x-forwarded-for", "1.2.3.4"), ("x-forwarded-for", "203.0.113.9")]);
        assert_eq!(
            list.client(peer("10.0.0.1"), &h),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        // Every hop trusted: the leftmost.
        let h = headers(&[("x-forwarded-for", "10.1.1.1, 10.2.2.2")]);
        assert_eq!(list.client(peer("10.0.0.1"), &h), "10.1.1.1".parse::<IpAddr>().unwrap());
        // Garbage stops the walk at the last known hop.
        let h = headers(&[("x-forwarded-for", "203.0.113.9, garbage")]);
        assert_eq!(list.client(peer("10.0.0.1"), &h), "10.0.0.1".parse::<IpAddr>().unwrap());
        // No header: the peer.
        assert_eq!(
            list.client(peer("10.0.0.1"), &HeaderMap::new()),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn forwarded_wins_over_x_forwarded_for() {
        let list = trusted(&["10.0.0.0/8", "::1"]);
        let h = headers(&[
            ("forwarded", "for=\"[2001:db8::7]:4711\";proto=https, for=10.0.0.9"),
            ("x-forwarded-for", "198.51.100.1"),
        ]);
        assert_eq!(list.client(peer("::1"), &h), "2001:db8::7".parse::<IpAddr>().unwrap());
        let h = headers(&[("forwarded", "for=192.0.2.60:8080;by=203.0.113.43")]);
        assert_eq!(
            list.client(peer("10.0.0.1"), &h),
            "192.0.2.60".parse::<IpAddr>().unwrap()
        );
        let h = headers(&[("forwarded", "for=unknown")]);
        assert_eq!(list.client(peer("10.0.0.1"), &h), "10.0.0.1".parse::<IpAddr>().unwrap());
    }
}
