//! Split-point helper shared by every framed parser's tests: the same stream fed
//! whole, split at every byte boundary, one byte at a time, and at seeded random points.

/// Calls `check` with `stream` cut into pieces in every way the tests care about.
pub fn for_each_split(stream: &[u8], mut check: impl FnMut(&[&[u8]])) {
    check(&[stream]);
    // Every byte boundary, for streams small enough that this stays quick.
    let step = (stream.len() / 2000).max(1);
    for at in (0..=stream.len()).step_by(step) {
        check(&[&stream[..at], &stream[at..]]);
    }
    if stream.len() <= 100_000 {
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        check(&bytes);
    }
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..20 {
        let mut pieces = Vec::new();
        let mut at = 0;
        while at < stream.len() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = 1 + (seed % 97) as usize;
            let end = (at + len).min(stream.len());
            pieces.push(&stream[at..end]);
            at = end;
        }
        check(&pieces);
    }
}
