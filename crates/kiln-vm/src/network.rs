//! The guest's network: one typed description, [`Network`], from which the
//! runner writes QEMU's only `-nic` argument.
//!
//! A guest that kiln starts reaches nothing by default. [`Network::Isolated`]
//! is QEMU's user network with `restrict=on` and IPv6 off: the guest gets
//! an address by DHCP and nothing else, neither the host (10.0.2.2) nor
//! the outside world nor DNS, except what is forwarded explicitly: a port
//! of the host's loopback into the guest ([`HostForward`], `hostfwd`), or
//! an address and port of the guest's subnet out to a service that
//! listens on the host's loopback ([`GuestForward`], `guestfwd`, through
//! `socat`, which QEMU starts once per guest connection; QEMU's chardev
//! form of `guestfwd` would serve a single connection in all).
//! [`Network::Open`] is the user network without restriction, for a person
//! at the console: the guest reaches whatever the host reaches.
//! An isolated NIC may carry a fixed [`Mac`] (QEMU otherwise gives
//! 52:54:00:12:34:56), so that a metadata service can describe the
//! guest's interface as the guest sees it.
//! Non-goals: TAP, bridges, more than one NIC, UDP forwards.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use crate::error::{Result, VmError};

/// The program QEMU runs for each connection to a [`GuestForward`].
pub const SOCAT: &str = "socat";

/// QEMU's user network gives out this many DHCP leases, from
/// [`Subnet::guest`] on (libslirp's `NB_BOOTP_CLIENTS`).
const DHCP_LEASES: u32 = 16;

/// An IPv4 subnet for QEMU's user network (its `net=` option).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    addr: Ipv4Addr,
    prefix: u8,
}

impl Subnet {
    /// QEMU's default, 10.0.2.0/24: the host (gateway) is 10.0.2.2, DNS
    /// 10.0.2.3, the guest 10.0.2.15.
    pub const DEFAULT: Subnet = Subnet {
        addr: Ipv4Addr::new(10, 0, 2, 0),
        prefix: 24,
    };

    /// 169.254.0.0/16, the link-local subnet in which clouds put their
    /// metadata services (169.254.169.254): the host is 169.254.2.2, DNS
    /// 169.254.2.3, the guest 169.254.2.15 (see [`Subnet::host`]).
    pub const LINK_LOCAL: Subnet = Subnet {
        addr: Ipv4Addr::new(169, 254, 0, 0),
        prefix: 16,
    };

    /// A subnet of at least 256 addresses (prefix 1 to 24, so that QEMU's
    /// gateway, DNS and DHCP addresses fit), given by its network address.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Subnet> {
        if !(1..=24).contains(&prefix) {
            return Err(VmError::Config(format!(
                "subnet {addr}/{prefix}: the prefix must be 1 to 24, so that QEMU's gateway, DNS and DHCP addresses fit"
            )));
        }
        let subnet = Subnet { addr, prefix };
        if u32::from(addr) & !subnet.mask() != 0 {
            return Err(VmError::Config(format!(
                "subnet {addr}/{prefix}: host bits are set; did you mean {}/{prefix}?",
                Ipv4Addr::from(u32::from(addr) & subnet.mask())
            )));
        }
        Ok(subnet)
    }

    fn mask(&self) -> u32 {
        u32::MAX << (32 - u32::from(self.prefix))
    }

    /// Whether `ip` lies in the subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr)
    }

    /// QEMU's address for the role that 10.0.2.`offset` plays in its
    /// default subnet: the subnet's network address with the host bits of
    /// 0.0.2.`offset` (QEMU's `net/slirp.c`). So 10.0.2.2 is the gateway of
    /// 10.0.2.0/24 and 10.0.0.0/8 alike, 169.254.2.2 that of
    /// 169.254.0.0/16 (not 169.254.0.2), 192.168.76.2 that of
    /// 192.168.76.0/24.
    fn qemu_addr(&self, offset: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | ((0x0200 | offset) & !self.mask()))
    }

    /// The host as the guest sees it (QEMU's gateway, x.x.2.2 in any
    /// subnet of /22 or larger, the 2nd address in a smaller one).
    pub fn host(&self) -> Ipv4Addr {
        self.qemu_addr(2)
    }

    /// QEMU's DNS server as the guest sees it (beside the gateway).
    pub fn dns(&self) -> Ipv4Addr {
        self.qemu_addr(3)
    }

    /// The address QEMU's DHCP server gives the first (here: the only)
    /// guest, the start of its DHCP range: 10.0.2.15, 169.254.2.15.
    pub fn guest(&self) -> Ipv4Addr {
        self.qemu_addr(15)
    }

    /// The netmask, e.g. 255.255.0.0.
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.mask())
    }

    /// What QEMU itself answers on at `ip`, if anything: a guest forward
    /// there would be shadowed or would shadow it.
    fn reserved(&self, ip: Ipv4Addr) -> Option<&'static str> {
        let ip = u32::from(ip);
        let dhcp = u32::from(self.guest());
        if ip == u32::from(self.addr) {
            Some("the network address")
        } else if ip == u32::from(self.host()) {
            Some("QEMU's gateway (the host)")
        } else if ip == u32::from(self.dns()) {
            Some("QEMU's DNS server")
        } else if (dhcp..dhcp + DHCP_LEASES).contains(&ip) {
            Some("in QEMU's DHCP range (the guest's own address)")
        } else if ip == u32::from(self.addr) | !self.mask() {
            Some("the broadcast address")
        } else {
            None
        }
    }
}

impl Default for Subnet {
    fn default() -> Self {
        Subnet::DEFAULT
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Subnet {
    type Err = VmError;

    /// `ADDR/PREFIX`, e.g. `169.254.0.0/16`.
    fn from_str(s: &str) -> Result<Subnet> {
        let bad = || VmError::Config(format!("{s:?} is not a subnet like 169.254.0.0/16"));
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        Subnet::new(addr.parse().map_err(|_| bad())?, prefix.parse().map_err(|_| bad())?)
    }
}

/// The hardware address of the guest's network card.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mac([u8; 6]);

impl Mac {
    /// A unicast address (the lowest bit of the first byte clear); QEMU
    /// refuses a multicast one.
    pub fn new(bytes: [u8; 6]) -> Result<Mac> {
        if bytes[0] & 1 != 0 {
            return Err(VmError::Config(format!(
                "{} is a multicast address; a network card needs a unicast one",
                Mac(bytes)
            )));
        }
        Ok(Mac(bytes))
    }

    pub fn bytes(&self) -> [u8; 6] {
        self.0
    }
}

impl fmt::Display for Mac {
    /// Lower-case hex bytes with colons, as QEMU, Linux and EC2 write it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// A TCP port on the host's loopback forwarded into the guest
/// (`hostfwd=tcp:127.0.0.1:HOST-:GUEST`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostForward {
    pub host_port: u16,
    pub guest_port: u16,
}

/// A TCP address of the guest's subnet whose connections QEMU hands to a
/// server on the host's loopback (`guestfwd=tcp:ADDR:PORT-cmd:socat - TCP:127.0.0.1:HOST`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestForward {
    /// What the guest connects to.
    pub addr: Ipv4Addr,
    pub port: u16,
    /// Where on 127.0.0.1 the service listens.
    pub host_port: u16,
}

/// QEMU's user network with `restrict=on`: nothing but the forwards. Built
/// through its methods, which refuse a guest forward that QEMU could not
/// set up (outside the subnet) or that would collide with QEMU's own
/// addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Isolated {
    subnet: Subnet,
    mac: Option<Mac>,
    host_forwards: Vec<HostForward>,
    guest_forwards: Vec<GuestForward>,
}

impl Isolated {
    /// The default subnet (10.0.2.0/24), no forwards.
    pub fn new() -> Self {
        Isolated::default()
    }

    /// Another subnet, e.g. 169.254.0.0/16 for a metadata service at
    /// 169.254.169.254. Set it before adding guest forwards.
    pub fn in_subnet(subnet: Subnet) -> Self {
        Isolated {
            subnet,
            ..Isolated::default()
        }
    }

    /// Gives the network card this address instead of QEMU's default.
    pub fn mac(mut self, mac: Mac) -> Self {
        self.mac = Some(mac);
        self
    }

    pub fn host_forward(mut self, forward: HostForward) -> Self {
        self.host_forwards.push(forward);
        self
    }

    /// Adds `forward`, if its address is one of the subnet's that QEMU
    /// leaves free and no other guest forward has its address and port.
    pub fn guest_forward(mut self, forward: GuestForward) -> Result<Self> {
        let at = format!("guest forward {}:{}", forward.addr, forward.port);
        if !self.subnet.contains(forward.addr) {
            return Err(VmError::Config(format!(
                "{at}: the address is outside the guest's subnet {}",
                self.subnet
            )));
        }
        if let Some(what) = self.subnet.reserved(forward.addr) {
            return Err(VmError::Config(format!(
                "{at}: the address is {what} in {}",
                self.subnet
            )));
        }
        if self
            .guest_forwards
            .iter()
            .any(|g| (g.addr, g.port) == (forward.addr, forward.port))
        {
            return Err(VmError::Config(format!("{at}: forwarded twice")));
        }
        self.guest_forwards.push(forward);
        Ok(self)
    }

    pub fn subnet(&self) -> Subnet {
        self.subnet
    }

    /// The card's address, when set.
    pub fn nic_mac(&self) -> Option<Mac> {
        self.mac
    }

    pub fn host_forwards(&self) -> &[HostForward] {
        &self.host_forwards
    }

    pub fn guest_forwards(&self) -> &[GuestForward] {
        &self.guest_forwards
    }
}

/// The guest's network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    /// No network card at all.
    None,
    /// One virtio NIC on QEMU's restricted user network: only the forwards.
    Isolated(Isolated),
    /// One virtio NIC on QEMU's user network, unrestricted: the guest
    /// reaches whatever the host reaches (through the host's own network,
    /// as the host's user), DNS included.
    Open,
}

impl Default for Network {
    /// Isolated, without forwards.
    fn default() -> Self {
        Network::Isolated(Isolated::new())
    }
}

impl Network {
    /// `none`, `isolated` or `open`.
    pub fn kind(&self) -> &'static str {
        match self {
            Network::None => "none",
            Network::Isolated(_) => "isolated",
            Network::Open => "open",
        }
    }

    /// Whether QEMU needs [`SOCAT`] for this network.
    pub fn needs_socat(&self) -> bool {
        matches!(self, Network::Isolated(i) if !i.guest_forwards.is_empty())
    }

    /// The `-nic` option and its value.
    pub(crate) fn qemu_args(&self) -> [String; 2] {
        let nic = match self {
            Network::None => "none".to_owned(),
            Network::Open => "user,model=virtio-net-pci".to_owned(),
            Network::Isolated(i) => {
                let mut nic = String::from("user,model=virtio-net-pci,restrict=on,ipv6=off");
                if let Some(mac) = i.mac {
                    nic.push_str(&format!(",mac={mac}"));
                }
                if i.subnet != Subnet::DEFAULT {
                    nic.push_str(&format!(",net={}", i.subnet));
                }
                for f in &i.host_forwards {
                    nic.push_str(&format!(",hostfwd=tcp:127.0.0.1:{}-:{}", f.host_port, f.guest_port));
                }
                for g in &i.guest_forwards {
                    // No commas inside: QEMU's option syntax would split there.
                    nic.push_str(&format!(
                        ",guestfwd=tcp:{}:{}-cmd:{SOCAT} - TCP:127.0.0.1:{}",
                        g.addr, g.port, g.host_port
                    ));
                }
                nic
            }
        };
        ["-nic".to_owned(), nic]
    }
}

impl fmt::Display for Network {
    /// For reports: `none`, `isolated (no forwards)`, `isolated (host
    /// 127.0.0.1:2222 → guest port 22; guest 10.0.2.100:80 → host
    /// 127.0.0.1:8080)`, `open (the guest reaches whatever the host reaches)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Network::None => f.write_str("none"),
            Network::Open => f.write_str("open (the guest reaches whatever the host reaches)"),
            Network::Isolated(i) => {
                let mut parts: Vec<String> = Vec::new();
                if i.subnet != Subnet::DEFAULT {
                    parts.push(format!("subnet {}", i.subnet));
                }
                if let Some(mac) = i.mac {
                    parts.push(format!("MAC {mac}"));
                }
                parts.extend(
                    i.host_forwards
                        .iter()
                        .map(|h| format!("host 127.0.0.1:{} → guest port {}", h.host_port, h.guest_port)),
                );
                parts.extend(
                    i.guest_forwards
                        .iter()
                        .map(|g| format!("guest {}:{} → host 127.0.0.1:{}", g.addr, g.port, g.host_port)),
                );
                if i.host_forwards.is_empty() && i.guest_forwards.is_empty() {
                    parts.push("no forwards".to_owned());
                }
                write!(f, "isolated ({})", parts.join("; "))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn forward(addr: &str, port: u16) -> GuestForward {
        GuestForward {
            addr: ip(addr),
            port,
            host_port: 40000,
        }
    }

    /// Every kind of network, as the `-nic` value and as reported.
    #[test]
    fn nic_arguments_and_descriptions() {
        let metadata = Isolated::in_subnet(Subnet::LINK_LOCAL)
            .mac(Mac::new([0x02, 0xec, 0x20, 0x12, 0x34, 0x56]).unwrap())
            .guest_forward(GuestForward {
                addr: ip("169.254.169.254"),
                port: 80,
                host_port: 41234,
            })
            .unwrap();
        let both = Isolated::new()
            .host_forward(HostForward {
                host_port: 2222,
                guest_port: 22,
            })
            .guest_forward(GuestForward {
                addr: ip("10.0.2.100"),
                port: 80,
                host_port: 8080,
            })
            .unwrap();
        let cases = [
            ("none", Network::None),
            ("open", Network::Open),
            ("default", Network::default()),
            ("metadata", Network::Isolated(metadata)),
            ("both ways", Network::Isolated(both)),
        ];
        let mut out = String::new();
        for (name, net) in &cases {
            let [flag, value] = net.qemu_args();
            out.push_str(&format!(
                "{name}: {net}\n  {flag} {value}\n  socat: {}\n",
                net.needs_socat()
            ));
        }
        insta::assert_snapshot!(out);
    }

    #[test]
    fn guest_forwards_must_lie_in_the_subnet_on_a_free_address() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("10.0.2.0/24", "10.0.2.100", None),
            ("10.0.2.0/24", "10.0.2.4", None),
            ("10.0.2.0/24", "10.0.2.31", None),
            (
                "10.0.2.0/24",
                "169.254.169.254",
                Some("outside the guest's subnet 10.0.2.0/24"),
            ),
            ("10.0.2.0/24", "10.0.3.100", Some("outside")),
            ("10.0.2.0/24", "10.0.2.0", Some("the network address")),
            ("10.0.2.0/24", "10.0.2.2", Some("QEMU's gateway")),
            ("10.0.2.0/24", "10.0.2.3", Some("QEMU's DNS server")),
            ("10.0.2.0/24", "10.0.2.15", Some("DHCP range")),
            ("10.0.2.0/24", "10.0.2.30", Some("DHCP range")),
            ("10.0.2.0/24", "10.0.2.255", Some("the broadcast address")),
            ("169.254.0.0/16", "169.254.169.254", None),
            ("169.254.0.0/16", "169.254.0.2", None),
            ("169.254.0.0/16", "169.254.0.15", None),
            ("169.254.0.0/16", "169.254.0.0", Some("the network address")),
            ("169.254.0.0/16", "169.254.2.2", Some("QEMU's gateway")),
            ("169.254.0.0/16", "169.254.2.3", Some("QEMU's DNS server")),
            ("169.254.0.0/16", "169.254.2.15", Some("DHCP range")),
            ("169.254.0.0/16", "169.254.2.30", Some("DHCP range")),
            ("169.254.0.0/16", "169.254.2.31", None),
            ("10.0.0.0/8", "10.0.2.2", Some("QEMU's gateway")),
            ("10.0.0.0/8", "10.0.0.2", None),
            ("169.254.0.0/16", "169.254.255.255", Some("broadcast")),
            (
                "169.254.0.0/16",
                "10.0.2.100",
                Some("outside the guest's subnet 169.254.0.0/16"),
            ),
        ];
        for &(subnet, addr, want) in cases {
            let got = Isolated::in_subnet(subnet.parse().unwrap()).guest_forward(forward(addr, 80));
            match (want, got) {
                (None, Ok(i)) => assert_eq!(i.guest_forwards(), [forward(addr, 80)]),
                (Some(want), Err(e)) => {
                    let e = e.to_string();
                    assert!(e.contains(want), "{subnet} {addr}: {e}");
                    assert!(e.contains(&format!("guest forward {addr}:80")), "{e}");
                }
                (want, got) => panic!("{subnet} {addr}: wanted {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn a_guest_address_and_port_is_forwarded_once() {
        let i = Isolated::new().guest_forward(forward("10.0.2.100", 80)).unwrap();
        let i = i.guest_forward(forward("10.0.2.100", 81)).unwrap();
        let err = i.guest_forward(forward("10.0.2.100", 80)).unwrap_err();
        assert!(err.to_string().contains("forwarded twice"), "{err}");
    }

    #[test]
    fn subnets_parse_and_refuse_what_qemu_cannot_use() {
        assert_eq!("10.0.2.0/24".parse::<Subnet>().unwrap(), Subnet::DEFAULT);
        assert_eq!(
            "169.254.0.0/16".parse::<Subnet>().unwrap().to_string(),
            "169.254.0.0/16"
        );
        assert_eq!(Subnet::DEFAULT.host(), ip("10.0.2.2"));
        assert_eq!(Subnet::DEFAULT.dns(), ip("10.0.2.3"));
        for (bad, want) in [
            ("10.0.2.0", "not a subnet"),
            ("10.0.2/24", "not a subnet"),
            ("10.0.2.0/x", "not a subnet"),
            ("10.0.2.0/28", "prefix must be 1 to 24"),
            ("10.0.2.0/0", "prefix must be 1 to 24"),
            ("10.0.2.1/24", "did you mean 10.0.2.0/24?"),
        ] {
            let err = bad.parse::<Subnet>().unwrap_err().to_string();
            assert!(err.contains(want), "{bad}: {err}");
        }
    }

    #[test]
    fn the_link_local_subnet_and_its_addresses() {
        assert_eq!(Subnet::LINK_LOCAL, "169.254.0.0/16".parse().unwrap());
        // As QEMU 10.0 gives them, seen from a Debian 12 guest in 169.254.0.0/16.
        assert_eq!(Subnet::LINK_LOCAL.host(), ip("169.254.2.2"));
        assert_eq!(Subnet::LINK_LOCAL.dns(), ip("169.254.2.3"));
        assert_eq!(Subnet::LINK_LOCAL.guest(), ip("169.254.2.15"));
        assert_eq!(Subnet::LINK_LOCAL.netmask(), ip("255.255.0.0"));
        let net = |s: &str| s.parse::<Subnet>().unwrap();
        for (subnet, host, dns, guest) in [
            ("10.0.2.0/24", "10.0.2.2", "10.0.2.3", "10.0.2.15"),
            ("192.168.76.0/24", "192.168.76.2", "192.168.76.3", "192.168.76.15"),
            ("10.0.4.0/23", "10.0.4.2", "10.0.4.3", "10.0.4.15"),
            ("10.0.4.0/22", "10.0.6.2", "10.0.6.3", "10.0.6.15"),
            ("10.0.0.0/8", "10.0.2.2", "10.0.2.3", "10.0.2.15"),
        ] {
            let s = net(subnet);
            assert_eq!(
                (s.host(), s.dns(), s.guest()),
                (ip(host), ip(dns), ip(guest)),
                "{subnet}"
            );
        }
    }

    #[test]
    fn macs_are_unicast_and_written_in_lower_case() {
        let mac = Mac::new([0x0a, 0xEC, 0x20, 0, 0x01, 0xff]).unwrap();
        assert_eq!(mac.to_string(), "0a:ec:20:00:01:ff");
        let err = Mac::new([0x01, 0, 0, 0, 0, 0]).unwrap_err().to_string();
        assert!(err.contains("01:00:00:00:00:00 is a multicast address"), "{err}");
    }
}
