//! Pod addresses for kubelet mode's `--pod-cidr`: each pod gets a free address of
//! the range (never the network or broadcast address), added to `lo` as a /32 with
//! iproute2's `ip` and removed when the pod is gone. All pods share the simulator's
//! network namespace, so a pod reaches another at its address as on a flat pod
//! network. Since this changes `lo`, it is refused in the host's initial network
//! namespace: a test runs the simulator in a namespace of its own (`unshare -n`).
//! The CIDR parsing and the allocator are pure; [`check_private_netns`], [`add`] and
//! [`remove`] do I/O.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::process::Command;

use crate::error::{Error, Result};

/// At least two usable addresses: /31 and /32 leave none once the network and
/// broadcast addresses are set aside.
const MAX_PREFIX: u8 = 30;

/// An IPv4 range, `10.244.0.0/24`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: u32,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr> {
        let (addr, prefix) = s.split_once('/').ok_or_else(|| Error::new(format!("{s:?}: expected an IPv4 CIDR such as 10.244.0.0/24")))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| Error::new(format!("{s:?}: expected an IPv4 CIDR such as 10.244.0.0/24")))?;
        let prefix: u8 = prefix.parse().map_err(|_| Error::new(format!("{s:?}: bad prefix length {prefix:?}")))?;
        if !(1..=MAX_PREFIX).contains(&prefix) {
            crate::bail!("{s:?}: expected a prefix length from 1 to {MAX_PREFIX}, found {prefix}");
        }
        let mask = u32::MAX << (32 - prefix);
        let network = u32::from(addr);
        if network & !mask != 0 {
            crate::bail!("{s:?}: host bits are set (the network is {}/{prefix})", Ipv4Addr::from(network & mask));
        }
        if addr.is_loopback() || addr.is_unspecified() || addr.is_link_local() {
            // The API server's Endpoints refuse these for pods.
            crate::bail!("{s:?}: loopback, link-local and unspecified ranges are refused for pods");
        }
        Ok(Cidr { network, prefix })
    }

    fn size(&self) -> u64 {
        1u64 << (32 - self.prefix)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - self.prefix);
        u32::from(ip) & mask == self.network
    }

    /// Neither the network nor the broadcast address.
    fn usable(&self, ip: Ipv4Addr) -> bool {
        let offset = u64::from(u32::from(ip).wrapping_sub(self.network));
        self.contains(ip) && offset != 0 && offset != self.size() - 1
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.network), self.prefix)
    }
}

/// Which pod (by uid) holds which address.
#[derive(Debug)]
pub struct Allocator {
    cidr: Cidr,
    held: BTreeMap<Ipv4Addr, String>,
}

impl Allocator {
    pub fn new(cidr: Cidr) -> Allocator {
        Allocator { cidr, held: BTreeMap::new() }
    }

    /// The pod's address: the one it holds, else `preferred` (the address its status
    /// names, after a restart of the simulator) if usable and free, else the lowest
    /// free one. `None` when the range is full.
    pub fn allocate(&mut self, uid: &str, preferred: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
        if let Some((ip, _)) = self.held.iter().find(|(_, u)| *u == uid) {
            return Some(*ip);
        }
        let pick = preferred
            .filter(|ip| self.cidr.usable(*ip) && !self.held.contains_key(ip))
            .or_else(|| (1..self.cidr.size() - 1).map(|o| Ipv4Addr::from(self.cidr.network + o as u32)).find(|ip| !self.held.contains_key(ip)))?;
        self.held.insert(pick, uid.to_string());
        Some(pick)
    }

    /// Frees the pod's address; returns it.
    pub fn release(&mut self, uid: &str) -> Option<Ipv4Addr> {
        let ip = self.held.iter().find(|(_, u)| *u == uid).map(|(ip, _)| *ip)?;
        self.held.remove(&ip);
        Some(ip)
    }

    pub fn held(&self) -> Vec<Ipv4Addr> {
        self.held.keys().copied().collect()
    }
}

/// Where the host's network namespace is read from: pid 1's, or where that is
/// protected (pid 1 of some VMs and sandboxes), kthreadd's (pid 2), which like every
/// kernel thread runs in the initial namespace.
const HOST_NETNS: [&str; 2] = ["/proc/1/ns/net", "/proc/2/ns/net"];

/// Refuses to go on in the host's initial network namespace: it compares the inode
/// of this process's network namespace with that of pid 1 (or pid 2, see
/// [`HOST_NETNS`]). Where pid 1 itself runs in a namespace of its own, such as a
/// container's, that namespace counts as the host's. Where neither can be read, a
/// namespace whose only interface is `lo` is taken as one made for the test (a
/// host's has its network interfaces).
pub fn check_private_netns() -> Result<()> {
    let ino = |p: &str| std::fs::metadata(p).map(|m| m.ino());
    let ours = ino("/proc/self/ns/net").map_err(|e| Error::new(format!("reading /proc/self/ns/net: {e}")))?;
    let refuse = "--pod-cidr adds pod addresses to lo, so it is refused in the host's network namespace; run the simulator in a namespace of its own (unshare -n, as root)";
    match HOST_NETNS.iter().find_map(|p| ino(p).ok()) {
        Some(h) if h == ours => crate::bail!("{refuse}"),
        Some(_) => {}
        None => {
            // /proc/self/net is this namespace's view (/sys/class/net is the mounter's).
            let dev = std::fs::read_to_string("/proc/self/net/dev").map_err(|e| {
                Error::new(format!("--pod-cidr: cannot read {} nor /proc/self/net/dev ({e}) to tell whether this is the host's network namespace", HOST_NETNS.join(" or ")))
            })?;
            let names: Vec<String> = dev.lines().skip(2).filter_map(|l| l.split_once(':').map(|(n, _)| n.trim().to_string())).collect();
            if names.iter().any(|n| n != "lo") {
                crate::bail!("{refuse} (this one has {})", names.join(", "));
            }
        }
    }
    if let Err(e) = Command::new("ip").arg("-V").output() {
        crate::bail!("--pod-cidr: running ip: {e} (install the iproute2 package)");
    }
    Ok(())
}

fn ip_addr(verb: &str, ip: Ipv4Addr) -> Result<std::process::Output> {
    Command::new("ip")
        .args(["addr", verb, &format!("{ip}/32"), "dev", "lo"])
        .output()
        .map_err(|e| Error::new(format!("running ip addr {verb} {ip}/32 dev lo: {e} (install the iproute2 package)")))
}

/// Adds `ip/32` to `lo`; an address already there is fine.
pub fn add(ip: Ipv4Addr) -> Result<()> {
    let out = ip_addr("add", ip)?;
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && !err.contains("File exists") {
        crate::bail!("ip addr add {ip}/32 dev lo: {}", err.trim());
    }
    Ok(())
}

/// Removes `ip/32` from `lo`; an address already gone is fine.
pub fn remove(ip: Ipv4Addr) -> Result<()> {
    let out = ip_addr("del", ip)?;
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && !err.contains("Cannot assign requested address") {
        crate::bail!("ip addr del {ip}/32 dev lo: {}", err.trim());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        assert_eq!(Cidr::parse("10.244.0.0/24").unwrap().to_string(), "10.244.0.0/24");
        for (bad, why) in [
            ("10.244.0.0", "expected an IPv4 CIDR"),
            ("fd00::/64", "expected an IPv4 CIDR"),
            ("10.244.0.1/24", "host bits are set (the network is 10.244.0.0/24)"),
            ("10.244.0.0/31", "expected a prefix length from 1 to 30, found 31"),
            ("10.244.0.0/x", "bad prefix length"),
            ("127.0.0.0/8", "loopback"),
            ("169.254.0.0/16", "link-local"),
        ] {
            let e = Cidr::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn allocation() {
        let mut a = Allocator::new(Cidr::parse("10.244.0.0/30").unwrap());
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(a.allocate("a", None), Some(ip("10.244.0.1")), "never the network address");
        assert_eq!(a.allocate("a", None), Some(ip("10.244.0.1")), "a pod keeps its address");
        assert_eq!(a.allocate("b", Some(ip("10.244.0.3"))), Some(ip("10.244.0.2")), "never the broadcast address");
        assert_eq!(a.allocate("c", None), None, "full");
        assert_eq!(a.release("a"), Some(ip("10.244.0.1")));
        assert_eq!(a.release("a"), None);
        assert_eq!(a.allocate("c", Some(ip("10.9.9.9"))), Some(ip("10.244.0.1")), "a preferred address outside the range is not taken");
        let mut b = Allocator::new(Cidr::parse("10.244.0.0/24").unwrap());
        assert_eq!(b.allocate("x", Some(ip("10.244.0.77"))), Some(ip("10.244.0.77")), "the address a pod had");
        assert_eq!(b.allocate("y", Some(ip("10.244.0.77"))), Some(ip("10.244.0.1")), "taken: the lowest free one");
        assert_eq!(b.held(), vec![ip("10.244.0.1"), ip("10.244.0.77")]);
    }
}
