//! Header policy between the client, the proxy and the upstream.
//!
//! Hop-by-hop headers belong to one connection and never cross the proxy, in either direction;
//! the client's own credentials stay with the client unless a route forwards them.

use http::{HeaderMap, HeaderName, header};

/// Headers that describe a single connection (RFC 9110 §7.6.1) plus the `Proxy-*` family.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("proxy-connection"),
];

/// The index of `name` in [`HOP_BY_HOP`]: a `match` on the text compares lengths first, so most
/// names are ruled out at once (this runs for every header of every request and response).
fn hop_by_hop_index(name: &str) -> Option<usize> {
    Some(match name {
        "connection" => 0,
        "keep-alive" => 1,
        "te" => 2,
        "trailer" => 3,
        "transfer-encoding" => 4,
        "upgrade" => 5,
        "proxy-authenticate" => 6,
        "proxy-authorization" => 7,
        "proxy-connection" => 8,
        _ => return None,
    })
}

/// Whether `name`, in any case, is one of [`HOP_BY_HOP`] (`Connection` tokens are usually
/// lower-case already: `keep-alive`, `upgrade`).
fn is_hop_by_hop_in_any_case(name: &str) -> bool {
    hop_by_hop_index(name).is_some()
        || name.bytes().any(|b| b.is_ascii_uppercase())
            && HOP_BY_HOP.iter().any(|hop| name.eq_ignore_ascii_case(hop.as_str()))
}

/// Client headers withheld from the upstream unless the route lists them in `forward-headers`.
pub static WITHHELD_FROM_UPSTREAM: [HeaderName; 3] = [header::AUTHORIZATION, header::COOKIE, header::HOST];

/// Removes hop-by-hop headers, including every header named in `Connection`. One pass over the
/// names finds which are present (cheap comparisons); only those are removed, and nothing is
/// allocated unless `Connection` names headers or `Proxy-*` headers are present.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut found = [false; HOP_BY_HOP.len()];
    let mut proxy = false;
    for name in headers.keys() {
        match hop_by_hop_index(name.as_str()) {
            Some(index) => found[index] = true,
            None => proxy |= name.as_str().starts_with("proxy-"),
        }
    }
    // Names in `Connection` that are hop-by-hop anyway (`keep-alive`) cost nothing; only other
    // names are collected and removed. A lone `keep-alive`, what most keep-alive peers send, is
    // recognised without splitting.
    let only_keep_alive = || {
        let mut values = headers.get_all(header::CONNECTION).iter();
        matches!((values.next(), values.next()),
            (Some(value), None) if value.as_bytes().eq_ignore_ascii_case(b"keep-alive"))
    };
    if found[0] && !only_keep_alive() {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .filter(|name| !is_hop_by_hop_in_any_case(name))
            .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
            .collect();
        for name in &named {
            headers.remove(name);
        }
    }
    for (name, present) in HOP_BY_HOP.iter().zip(found) {
        if present {
            headers.remove(name);
        }
    }
    if proxy {
        let proxy_headers: Vec<HeaderName> = headers
            .keys()
            .filter(|name| name.as_str().starts_with("proxy-"))
            .cloned()
            .collect();
        for name in proxy_headers {
            headers.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_names_the_list() {
        for (index, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name.as_str()), Some(index));
        }
        assert_eq!(hop_by_hop_index("x-connection"), None);
    }

    #[test]
    fn strips_connection_named_and_proxy_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, "keep-alive, X-Secret-Hop".parse().unwrap());
        headers.insert("x-secret-hop", "1".parse().unwrap());
        headers.insert("keep-alive", "timeout=5".parse().unwrap());
        headers.insert("proxy-foo", "1".parse().unwrap());
        headers.insert(header::TE, "trailers".parse().unwrap());
        headers.insert("x-keep", "1".parse().unwrap());
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-keep"]);
    }
}
