//! CIDR blocks and address ranges, for `ipBlock` peers.
//!
//! Both families are kept in one type: an IPv4 address is its 32-bit value in
//! a `u128`, tagged with its family, so ranges of the two families never mix.

use std::fmt;
use std::net::IpAddr;

/// Address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// Bits in an address of this family.
    pub fn bits(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }
}

/// An address as (family, value).
pub fn split(ip: IpAddr) -> (Family, u128) {
    match ip {
        // An IPv4-mapped IPv6 address is IPv4 traffic seen through a v6 socket; the
        // packet on the wire is IPv6, so it stays IPv6 here.
        IpAddr::V4(a) => (Family::V4, u32::from(a) as u128),
        IpAddr::V6(a) => (Family::V6, u128::from(a)),
    }
}

/// A CIDR block with host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    /// Address family.
    pub family: Family,
    /// Network address (host bits zero).
    pub addr: u128,
    /// Prefix length.
    pub len: u8,
}

/// Why a CIDR string was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// No `/` in the text.
    #[error("invalid CIDR {0:?}: missing prefix length (for example 10.0.0.0/24)")]
    NoPrefix(String),
    /// The address part is not an IP address.
    #[error("invalid CIDR {0:?}: not an IP address")]
    BadAddress(String),
    /// The prefix length is not a number or too large.
    #[error("invalid CIDR {0:?}: prefix length must be 0-{1}")]
    BadPrefix(String, u8),
}

impl Cidr {
    /// Parses `a.b.c.d/n` or `x::y/n`. Host bits may be set (the API server
    /// accepts them) and are cleared.
    pub fn parse(s: &str) -> Result<Cidr, CidrError> {
        let (a, l) = s.split_once('/').ok_or_else(|| CidrError::NoPrefix(s.to_string()))?;
        let ip: IpAddr =
            a.parse().ok().or_else(|| parse_sloppy(a)).ok_or_else(|| CidrError::BadAddress(s.to_string()))?;
        let (family, addr) = split(ip);
        let len: u8 = l
            .parse()
            .ok()
            .filter(|n| *n <= family.bits() && !l.starts_with('+'))
            .ok_or_else(|| CidrError::BadPrefix(s.to_string(), family.bits()))?;
        // `::ffff:192.0.2.0/120` is the IPv4 block 192.0.2.0/24, as Go's
        // parser (and so the API server) reads it.
        if let (IpAddr::V6(v6), true) = (ip, len >= 96) {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return Ok(Cidr::new(Family::V4, u32::from(v4) as u128, len - 96));
            }
        }
        Ok(Cidr::new(family, addr, len))
    }

    /// A block from parts, clearing host bits.
    pub fn new(family: Family, addr: u128, len: u8) -> Cidr {
        let c = Cidr { family, addr, len };
        Cidr { addr: addr & c.mask(), ..c }
    }

    /// The block holding exactly one address.
    pub fn host(ip: IpAddr) -> Cidr {
        let (family, addr) = split(ip);
        Cidr::new(family, addr, family.bits())
    }

    fn mask(&self) -> u128 {
        let bits = self.family.bits();
        let host = bits - self.len;
        let all: u128 = if bits == 128 { u128::MAX } else { (1u128 << bits) - 1 };
        if host == 128 {
            0
        } else {
            all & !((1u128 << host) - 1)
        }
    }

    /// First address.
    pub fn first(&self) -> u128 {
        self.addr
    }

    /// Last address (inclusive).
    pub fn last(&self) -> u128 {
        let bits = self.family.bits();
        let host = bits - self.len;
        if host == 128 {
            u128::MAX
        } else {
            self.addr | ((1u128 << host) - 1)
        }
    }

    /// Does the block contain this address?
    pub fn contains(&self, family: Family, addr: u128) -> bool {
        family == self.family && addr >= self.first() && addr <= self.last()
    }

    /// Is `other` a strict subset of this block (same family, longer prefix, inside)?
    pub fn strictly_contains(&self, other: &Cidr) -> bool {
        other.family == self.family && other.len > self.len && self.contains(other.family, other.addr)
    }
}

/// An address with leading zeros in IPv4 octets (`010.0.0.0`, `10.0.0.0001`,
/// also inside an IPv6 address such as `::ffff:010.0.0.1`), octets read as
/// decimal. The API server accepts these (`netutils.ParseCIDRSloppy`, Go's
/// pre-1.17 parser: any number of digits, value at most 255) unless the
/// StrictIPCIDRValidation feature gate is on, so objects in clusters may
/// contain them.
fn parse_sloppy(a: &str) -> Option<IpAddr> {
    if let Some((head, tail)) = a.rsplit_once(':') {
        // IPv6: groups of more than four hex digits whose value fits 16 bits
        // (`fd00:00000::`, as Go's old parser reads them), and an embedded
        // dotted quad with leading zeros: normalise, parse again.
        let group = |g: &str| -> Option<String> {
            if g.is_empty() || g.len() <= 4 {
                return Some(g.to_string());
            }
            let v = u32::from_str_radix(g, 16).ok().filter(|v| *v <= 0xffff)?;
            Some(format!("{v:x}"))
        };
        let head: Vec<String> = head.split(':').map(group).collect::<Option<_>>()?;
        let tail = match parse_v4_sloppy(tail) {
            Some(v4) if tail.contains('.') => v4.to_string(),
            _ if tail.contains('.') => return None,
            _ => group(tail)?,
        };
        return format!("{}:{tail}", head.join(":")).parse().ok();
    }
    parse_v4_sloppy(a).map(IpAddr::V4)
}

/// An address as the API server reads it in a field that accepts the
/// legacy forms (`status.podIPs`): `parse_sloppy` when strict parsing fails.
pub fn parse_ip_sloppy(a: &str) -> Option<IpAddr> {
    a.parse().ok().or_else(|| parse_sloppy(a))
}

fn parse_v4_sloppy(a: &str) -> Option<std::net::Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = a.split('.');
    for o in &mut octets {
        let p = parts.next()?;
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let digits = p.trim_start_matches('0');
        *o = if digits.is_empty() {
            0
        } else if digits.len() > 3 {
            return None;
        } else {
            digits.parse().ok()?
        };
    }
    parts.next().is_none().then_some(std::net::Ipv4Addr::from(octets))
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.family {
            Family::V4 => write!(f, "{}/{}", std::net::Ipv4Addr::from(self.addr as u32), self.len),
            Family::V6 => write!(f, "{}/{}", std::net::Ipv6Addr::from(self.addr), self.len),
        }
    }
}

/// An `ipBlock`: addresses in `cidr` and in none of `except`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpBlock {
    /// The block.
    pub cidr: Cidr,
    /// Holes in it, each a strict subset of `cidr`.
    pub except: Vec<Cidr>,
}

impl IpBlock {
    /// Does the ipBlock match this address?
    pub fn contains(&self, family: Family, addr: u128) -> bool {
        self.cidr.contains(family, addr) && !self.except.iter().any(|e| e.contains(family, addr))
    }
}

impl fmt::Display for IpBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.cidr)?;
        if !self.except.is_empty() {
            f.write_str(" except ")?;
            for (i, e) in self.except.iter().enumerate() {
                if i > 0 {
                    f.write_str(",")?;
                }
                write!(f, "{e}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_contain() {
        let c = Cidr::parse("10.0.1.7/24").unwrap();
        assert_eq!(c.to_string(), "10.0.1.0/24");
        let (f, a) = split("10.0.1.255".parse().unwrap());
        assert!(c.contains(f, a));
        let (f, a) = split("10.0.2.0".parse().unwrap());
        assert!(!c.contains(f, a));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert_eq!(all.last(), u32::MAX as u128);
        let all6 = Cidr::parse("::/0").unwrap();
        assert_eq!(all6.last(), u128::MAX);
        let (f, a) = split("fd00::1".parse().unwrap());
        assert!(all6.contains(f, a));
        assert!(!all.contains(f, a), "families never mix");
        assert_eq!(Cidr::parse("fd00::1/128").unwrap().first(), a);
    }

    #[test]
    fn rejects() {
        assert!(matches!(Cidr::parse("10.0.0.0"), Err(CidrError::NoPrefix(_))));
        assert!(matches!(Cidr::parse("10.0.0/8"), Err(CidrError::BadAddress(_))));
        assert!(matches!(Cidr::parse("10.0.0.256/8"), Err(CidrError::BadAddress(_))));
        assert!(matches!(Cidr::parse("10.0.0.1.2/8"), Err(CidrError::BadAddress(_))));
        assert_eq!(Cidr::parse("10.0.0.0001/32").unwrap().to_string(), "10.0.0.1/32");
        // IPv4-mapped with a prefix of 96 or more: the IPv4 block, as Go reads it.
        assert_eq!(Cidr::parse("::ffff:010.0.0.1/128").unwrap().to_string(), "10.0.0.1/32");
        assert_eq!(Cidr::parse("::ffff:10.0.0.0/104").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(Cidr::parse("::ffff:0:0/64").unwrap().to_string(), "::/64");
        // Zero-padded IPv6 groups whose value fits 16 bits.
        assert_eq!(Cidr::parse("fd00:00000::/64").unwrap().to_string(), "fd00::/64");
        assert_eq!(Cidr::parse("fd00::000ff/128").unwrap().to_string(), "fd00::ff/128");
        assert!(matches!(Cidr::parse("fd00:10000::/64"), Err(CidrError::BadAddress(_))));
        assert!(matches!(Cidr::parse("fd00::1.2.3/64"), Err(CidrError::BadAddress(_))));
        assert_eq!(Cidr::parse("010.001.0.0/16").unwrap().to_string(), "10.1.0.0/16");
        assert!(matches!(Cidr::parse("10.0.0.0/33"), Err(CidrError::BadPrefix(..))));
        assert!(matches!(Cidr::parse("::/129"), Err(CidrError::BadPrefix(..))));
        assert!(matches!(Cidr::parse("10.0.0.0/x"), Err(CidrError::BadPrefix(..))));
    }

    #[test]
    fn except_subset() {
        let c = Cidr::parse("10.0.0.0/16").unwrap();
        assert!(c.strictly_contains(&Cidr::parse("10.0.5.0/24").unwrap()));
        assert!(!c.strictly_contains(&Cidr::parse("10.0.0.0/16").unwrap()));
        assert!(!c.strictly_contains(&Cidr::parse("10.1.0.0/24").unwrap()));
        assert!(!c.strictly_contains(&Cidr::parse("::/64").unwrap()));
        let b = IpBlock { cidr: c, except: vec![Cidr::parse("10.0.5.0/24").unwrap()] };
        let (f, a) = split("10.0.5.9".parse().unwrap());
        assert!(!b.contains(f, a));
        let (f, a) = split("10.0.6.9".parse().unwrap());
        assert!(b.contains(f, a));
    }
}
