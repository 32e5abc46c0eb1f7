//! Just enough DER (X.690) to read the subject of an X.509 certificate
//! (RFC 5280 section 4.1): Kubernetes takes the user from the subject's CN and the
//! groups from its O attributes. No I/O; the certificate was verified by rustls.
//!
//! ```text
//! Certificate  SEQUENCE { tbsCertificate SEQUENCE {
//!     [0] version OPTIONAL, serial INTEGER, signature SEQUENCE, issuer Name,
//!     validity SEQUENCE, subject Name, ... }, ... }
//! Name         SEQUENCE OF SET OF SEQUENCE { type OID, value string }
//! ```

const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
const OID_O: &[u8] = &[0x55, 0x04, 0x0a];

/// Splits one TLV off the front of `buf`: (tag, contents, rest).
fn tlv(buf: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *buf.first()?;
    let first = *buf.get(1)? as usize;
    let (len, at) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = len << 8 | *buf.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let end = at.checked_add(len)?;
    Some((tag, buf.get(at..end)?, buf.get(end..)?))
}

/// The subject's common name and organizations, or `None` if the DER is malformed.
pub fn subject_cn_and_orgs(cert: &[u8]) -> Option<(String, Vec<String>)> {
    let (_, certificate, _) = tlv(cert)?;
    let (_, tbs, _) = tlv(certificate)?;
    let mut rest = tbs;
    let (tag, _, r) = tlv(rest)?;
    if tag == 0xa0 {
        rest = r; // explicit version
    }
    for _ in 0..4 {
        rest = tlv(rest)?.2; // serial, signature, issuer, validity
    }
    let (_, subject, _) = tlv(rest)?;
    let mut cn = String::new();
    let mut orgs = Vec::new();
    let mut rdns = subject;
    while !rdns.is_empty() {
        let (_, set, r) = tlv(rdns)?;
        rdns = r;
        let mut attrs = set;
        while !attrs.is_empty() {
            let (_, attr, r) = tlv(attrs)?;
            attrs = r;
            let (_, oid, r) = tlv(attr)?;
            let (_, value, _) = tlv(r)?;
            let value = String::from_utf8_lossy(value).into_owned();
            if oid == OID_CN {
                cn = value;
            } else if oid == OID_O {
                orgs.push(value);
            }
        }
    }
    Some((cn, orgs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cn_and_orgs_from_a_real_certificate() {
        let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "alice");
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "sre");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let (cn, orgs) = subject_cn_and_orgs(cert.der()).unwrap();
        assert_eq!(cn, "alice");
        assert_eq!(orgs, vec!["sre"]);
    }

    #[test]
    fn malformed_is_none() {
        for bad in [&b""[..], b"\x30", b"\x30\x85\0\0\0\0\0", b"\x30\x03\x30\x01"] {
            assert_eq!(subject_cn_and_orgs(bad), None);
        }
    }
}
