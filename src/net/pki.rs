//! Certificates for the demo, the tests and the operator: a CA that issues server
//! certificates and Kubernetes client certificates (CN = user, O = groups). The
//! operator keeps its CA in a Secret and restores it from there ([`Ca::restore`]).

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType};

use crate::error::{Error, Result};

/// A certificate and its private key, both PEM.
pub struct Pem {
    pub cert: String,
    pub key: String,
}

pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub cert_pem: String,
    pub key_pem: String,
}

/// A CA is good for ten years; what it issues for one (the operator reissues a
/// certificate well before it expires).
const CA_DAYS: u64 = 3650;
pub const LEAF_DAYS: u64 = 365;

/// Valid from yesterday (clocks differ) for `days` (whole days, UTC).
fn set_validity(params: &mut CertificateParams, days: u64) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let ymd = |secs: u64| {
        let day = crate::wire::time::rfc3339(secs);
        let num = |r: std::ops::Range<usize>| day.get(r).and_then(|x| x.parse::<i32>().ok()).unwrap_or(1);
        rcgen::date_time_ymd(num(0..4), num(5..7) as u8, num(8..10) as u8)
    };
    params.not_before = ymd(now.saturating_sub(86_400));
    params.not_after = ymd(now + days * 86_400);
}

fn rc(e: rcgen::Error) -> Error {
    Error::new(format!("generating certificate: {e}"))
}

impl Ca {
    pub fn new(name: &str) -> Result<Ca> {
        let mut params = Self::params(name)?;
        set_validity(&mut params, CA_DAYS);
        let key = KeyPair::generate().map_err(rc)?;
        let cert = params.self_signed(&key).map_err(rc)?;
        Ok(Ca { cert_pem: cert.pem(), key_pem: key.serialize_pem(), issuer: Issuer::new(params, key) })
    }

    /// The CA `new(name)` made, from its certificate and key. What it issues names
    /// the same subject and key identifier (derived from the key), so it chains.
    pub fn restore(name: &str, cert_pem: &str, key_pem: &str) -> Result<Ca> {
        let key = KeyPair::from_pem(key_pem).map_err(rc)?;
        Ok(Ca { cert_pem: cert_pem.to_string(), key_pem: key_pem.to_string(), issuer: Issuer::new(Self::params(name)?, key) })
    }

    fn params(name: &str) -> Result<CertificateParams> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rc)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        Ok(params)
    }

    /// A server certificate for `hosts` (DNS names or IP addresses).
    pub fn server(&self, cn: &str, hosts: &[&str]) -> Result<Pem> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rc)?;
        params.distinguished_name.push(DnType::CommonName, cn);
        for h in hosts {
            params.subject_alt_names.push(match h.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*h).try_into().map_err(rc)?),
            });
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// A client certificate for Kubernetes user `user` in `groups`.
    pub fn client(&self, user: &str, groups: &[&str]) -> Result<Pem> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rc)?;
        params.distinguished_name.push(DnType::CommonName, user);
        for g in groups {
            params.distinguished_name.push(DnType::OrganizationName, *g);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    fn issue(&self, mut params: CertificateParams) -> Result<Pem> {
        set_validity(&mut params, LEAF_DAYS);
        let key = KeyPair::generate().map_err(rc)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(rc)?;
        Ok(Pem { cert: cert.pem(), key: key.serialize_pem() })
    }
}
