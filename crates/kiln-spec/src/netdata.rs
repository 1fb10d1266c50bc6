//! The shape of an OpenStack `network_data.json`, as cloud-init's
//! ConfigDrive datasource reads it: `links` (interfaces, matched to NICs by
//! MAC address), `networks` (addresses on a link: static IPv4/IPv6 with
//! their routes, or DHCP) and `services` (DNS servers). Checked here so a
//! broken document is a spec error before any build work, not a node that
//! boots with no network. Keys this module does not know (MTU, VLANs,
//! bonds) pass through untouched.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use serde_json::{Map, Value};

use crate::rules::Problem;

/// Network types cloud-init's converter accepts.
const NETWORK_TYPES: &[&str] = &[
    "ipv4",
    "ipv6",
    "ipv4_dhcp",
    "ipv6_dhcp",
    "ipv6_slaac",
    "ipv6_dhcpv6-stateful",
    "ipv6_dhcpv6-stateless",
];

/// Link types that are a NIC of their own, found by MAC address.
const PHYSICAL_LINK_TYPES: &[&str] = &[
    "phy",
    "ethernet",
    "ovs",
    "bridge",
    "hw_veb",
    "vif",
    "tap",
    "vhostuser",
    "dvs",
    "hyperv",
];

/// The problems of a network_data document, each with the JSON path of
/// the value at fault (e.g. `networks[0].ip_address`).
pub(crate) fn check(doc: &Map<String, Value>) -> Vec<(String, Problem)> {
    let mut out = Vec::new();
    let mut links = BTreeSet::new();
    for key in doc.keys() {
        if !["links", "networks", "services"].contains(&key.as_str()) {
            out.push((
                key.clone(),
                Problem::new(format!("unknown key `{key}`"))
                    .help("network_data has `links`, `networks` and `services`"),
            ));
        }
    }
    for (i, link) in list(doc, "links", &mut out).iter().enumerate() {
        let at = format!("links[{i}]");
        let Some(link) = object(link, &at, &mut out) else {
            continue;
        };
        if let Some(id) = string(link, &at, "id", &mut out) {
            if !links.insert(id.to_owned()) {
                out.push((
                    format!("{at}.id"),
                    Problem::new(format!("link id `{id}` is used twice")),
                ));
            }
        }
        let kind = string(link, &at, "type", &mut out).unwrap_or_default();
        match link.get("ethernet_mac_address") {
            Some(Value::String(mac)) if !is_mac(mac) => out.push((
                format!("{at}.ethernet_mac_address"),
                Problem::new(format!("`{mac}` is not a MAC address"))
                    .help("write six hex pairs, e.g. \"52:54:00:12:34:56\""),
            )),
            Some(Value::String(_)) => {}
            Some(_) => out.push((format!("{at}.ethernet_mac_address"), Problem::new("is not a string"))),
            None if PHYSICAL_LINK_TYPES.contains(&kind) => out.push((
                at.clone(),
                Problem::new(format!("link of type `{kind}` has no `ethernet_mac_address`"))
                    .help("cloud-init finds the NIC by its MAC address; add it"),
            )),
            None => {}
        }
    }
    for (i, net) in list(doc, "networks", &mut out).iter().enumerate() {
        let at = format!("networks[{i}]");
        let Some(net) = object(net, &at, &mut out) else {
            continue;
        };
        string(net, &at, "id", &mut out);
        if let Some(link) = string(net, &at, "link", &mut out) {
            if !links.contains(link) {
                let known = links.iter().map(|l| format!("`{l}`")).collect::<Vec<_>>().join(", ");
                out.push((
                    format!("{at}.link"),
                    Problem::new(format!("names no link: `{link}` is not among `links`")).help(if known.is_empty() {
                        "add the link to `links`".to_owned()
                    } else {
                        format!("the links are {known}")
                    }),
                ));
            }
        }
        let Some(kind) = string(net, &at, "type", &mut out) else {
            continue;
        };
        if !NETWORK_TYPES.contains(&kind) {
            out.push((
                format!("{at}.type"),
                Problem::new(format!("unknown network type `{kind}`"))
                    .help(format!("use one of {}", NETWORK_TYPES.join(", "))),
            ));
            continue;
        }
        if kind != "ipv4" && kind != "ipv6" {
            continue;
        }
        let v4 = kind == "ipv4";
        if let Some(ip) = string(net, &at, "ip_address", &mut out) {
            address(ip, v4, &format!("{at}.ip_address"), &mut out);
        }
        if let Some(Value::String(mask)) = net.get("netmask") {
            netmask(mask, v4, &format!("{at}.netmask"), &mut out);
        } else if v4 {
            if net.contains_key("netmask") {
                out.push((format!("{at}.netmask"), Problem::new("is not a string")));
            } else {
                out.push((
                    at.clone(),
                    Problem::new("a static ipv4 network has no `netmask`")
                        .help("add e.g. \"netmask\": \"255.255.255.0\""),
                ));
            }
        }
        if let Some(Value::String(gw)) = net.get("gateway") {
            address(gw, v4, &format!("{at}.gateway"), &mut out);
        }
        for (j, route) in list(net, "routes", &mut out).iter().enumerate() {
            let at = format!("{at}.routes[{j}]");
            let Some(route) = object(route, &at, &mut out) else {
                continue;
            };
            for key in ["network", "gateway"] {
                if let Some(ip) = string(route, &at, key, &mut out) {
                    address(ip, v4, &format!("{at}.{key}"), &mut out);
                }
            }
            if let Some(mask) = string(route, &at, "netmask", &mut out) {
                netmask(mask, v4, &format!("{at}.netmask"), &mut out);
            }
        }
    }
    for (i, service) in list(doc, "services", &mut out).iter().enumerate() {
        let at = format!("services[{i}]");
        let Some(service) = object(service, &at, &mut out) else {
            continue;
        };
        if string(service, &at, "type", &mut out) == Some("dns") {
            if let Some(ip) = string(service, &at, "address", &mut out) {
                if ip.parse::<IpAddr>().is_err() {
                    out.push((
                        format!("{at}.address"),
                        Problem::new(format!("`{ip}` is not an IP address")),
                    ));
                }
            }
        }
    }
    out
}

/// The array under `key` (empty when absent).
fn list<'v>(doc: &'v Map<String, Value>, key: &str, out: &mut Vec<(String, Problem)>) -> &'v [Value] {
    match doc.get(key) {
        None => &[],
        Some(Value::Array(items)) => items,
        Some(_) => {
            out.push((key.to_owned(), Problem::new("is not a list")));
            &[]
        }
    }
}

fn object<'v>(v: &'v Value, at: &str, out: &mut Vec<(String, Problem)>) -> Option<&'v Map<String, Value>> {
    let object = v.as_object();
    if object.is_none() {
        out.push((at.to_owned(), Problem::new("is not a table")));
    }
    object
}

/// The required string under `key`.
fn string<'v>(obj: &'v Map<String, Value>, at: &str, key: &str, out: &mut Vec<(String, Problem)>) -> Option<&'v str> {
    match obj.get(key) {
        Some(Value::String(s)) => Some(s),
        Some(_) => {
            out.push((format!("{at}.{key}"), Problem::new("is not a string")));
            None
        }
        None => {
            out.push((at.to_owned(), Problem::new(format!("has no `{key}`"))));
            None
        }
    }
}

fn address(ip: &str, v4: bool, at: &str, out: &mut Vec<(String, Problem)>) {
    let family_ok = match ip.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => v4,
        Ok(IpAddr::V6(_)) => !v4,
        Err(_) => {
            out.push((at.to_owned(), Problem::new(format!("`{ip}` is not an IP address"))));
            return;
        }
    };
    if !family_ok {
        let family = if v4 { "ipv4" } else { "ipv6" };
        out.push((
            at.to_owned(),
            Problem::new(format!(
                "`{ip}` is not an {family} address, and the network is {family}"
            )),
        ));
    }
}

/// A dotted IPv4 mask with contiguous ones, or for IPv6 a mask address or
/// a prefix length.
fn netmask(mask: &str, v4: bool, at: &str, out: &mut Vec<(String, Problem)>) {
    let ok = if v4 {
        mask.parse::<Ipv4Addr>().is_ok_and(|m| {
            let bits = u32::from(m);
            bits.leading_ones() + bits.trailing_zeros() == 32
        })
    } else {
        mask.parse::<std::net::Ipv6Addr>().is_ok() || mask.parse::<u8>().is_ok_and(|p| p <= 128)
    };
    if !ok {
        out.push((
            at.to_owned(),
            Problem::new(format!("`{mask}` is not a netmask")).help(if v4 {
                "write a dotted mask such as \"255.255.255.0\""
            } else {
                "write a mask address such as \"ffff:ffff:ffff:ffff::\""
            }),
        ));
    }
}

fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(json: &str) -> Vec<String> {
        let doc: Value = serde_json::from_str(json).unwrap();
        check(doc.as_object().unwrap())
            .into_iter()
            .map(|(at, p)| format!("{at}: {}", p.why))
            .collect()
    }

    const GOOD: &str = r#"{
      "links": [{"id": "eth0", "type": "phy", "ethernet_mac_address": "52:54:00:12:34:56", "mtu": 1500}],
      "networks": [
        {"id": "net0", "type": "ipv4", "link": "eth0", "ip_address": "10.0.2.50", "netmask": "255.255.255.0",
         "routes": [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "10.0.2.2"}]},
        {"id": "net1", "type": "ipv6_dhcp", "link": "eth0"}
      ],
      "services": [{"type": "dns", "address": "10.0.2.3"}]
    }"#;

    #[test]
    fn accepts_a_static_network_with_routes_and_dns() {
        assert_eq!(problems(GOOD), Vec::<String>::new());
    }

    #[test]
    fn names_each_fault_by_its_path() {
        let bad = GOOD
            .replace(
                "\"link\": \"eth0\", \"ip_address\"",
                "\"link\": \"eth9\", \"ip_address\"",
            )
            .replace("10.0.2.50", "10.0.2.500")
            .replace("\"netmask\": \"255.255.255.0\"", "\"netmask\": \"255.0.255.0\"")
            .replace("52:54:00:12:34:56", "52:54:00")
            .replace("\"address\": \"10.0.2.3\"", "\"address\": \"dns.example\"");
        assert_eq!(
            problems(&bad),
            [
                "links[0].ethernet_mac_address: `52:54:00` is not a MAC address",
                "networks[0].link: names no link: `eth9` is not among `links`",
                "networks[0].ip_address: `10.0.2.500` is not an IP address",
                "networks[0].netmask: `255.0.255.0` is not a netmask",
                "services[0].address: `dns.example` is not an IP address",
            ]
        );
    }

    #[test]
    fn missing_keys_and_wrong_families() {
        let p = problems(
            r#"{"links": [{"id": "eth0", "type": "phy"}],
                "networks": [{"id": "n", "type": "ipv4", "link": "eth0", "ip_address": "fe80::1"},
                             {"id": "m", "type": "ipv5", "link": "eth0"}],
                "route": []}"#,
        );
        assert_eq!(
            p,
            [
                "route: unknown key `route`",
                "links[0]: link of type `phy` has no `ethernet_mac_address`",
                "networks[0].ip_address: `fe80::1` is not an ipv4 address, and the network is ipv4",
                "networks[0]: a static ipv4 network has no `netmask`",
                "networks[1].type: unknown network type `ipv5`",
            ]
        );
    }
}
