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
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// `n` random lowercase hex characters.
pub fn hex(n: usize) -> String {
    let mut b = vec![0u8; n.div_ceil(2)];
    fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect::<String>()[..n].to_string()
}
