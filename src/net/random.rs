//! Random bytes from the kernel (getrandom(2)), for ids and names.

/// Fills `buf`; falls back to clock-derived bytes only if the kernel refuses, which
/// is fine for ids (uniqueness, not secrecy) and the only use here.
pub fn fill(buf: &mut [u8]) {
    // SAFETY: getrandom writes at most buf.len() bytes into buf.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != buf.len() as isize {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (t >> ((i % 16) * 8)) as u8 ^ i as u8;
        }
    }
}

/// A random (version 4) UUID.
pub fn uuid() -> String {
    let mut b = [0u8; 16];
    fill(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut s = String::with_capacity(36);
    for (i, x) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        push_hex(&mut s, *x);
    }
    s
}

fn push_hex(s: &mut String, x: u8) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    s.push(DIGITS[usize::from(x >> 4)] as char);
    s.push(DIGITS[usize::from(x & 15)] as char);
}

/// `n` random lowercase hex characters.
pub fn hex(n: usize) -> String {
    let mut b = vec![0u8; n.div_ceil(2)];
    fill(&mut b);
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        push_hex(&mut s, x);
    }
    s.truncate(n);
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn uuid_and_hex_shapes() {
        let u = super::uuid();
        let parts: Vec<&str> = u.split('-').collect();
        assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), [8, 4, 4, 4, 12]);
        assert!(u.chars().all(|c| c == '-' || c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_eq!(&parts[2][..1], "4", "version 4");
        assert!(matches!(&parts[3][..1], "8" | "9" | "a" | "b"), "RFC 4122 variant");
        assert_ne!(u, super::uuid());
        assert_eq!(super::hex(7).len(), 7);
    }
}
