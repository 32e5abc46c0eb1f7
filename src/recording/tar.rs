//! The names and sizes in a tar stream, read incrementally as it passes (a `kubectl
//! cp`'s archive on stdout or stdin), keeping nothing of the files' contents. No I/O.
//!
//! Entries are read as GNU tar and Go's `archive/tar` (kubectl's) read them: ustar
//! and old-style headers, the POSIX `prefix` field, GNU long names and link names
//! (`L`, `K`), pax extended headers (`x`: `path`, `size`; `g` skipped). Links,
//! devices, directories and FIFOs (`1`–`6`) carry no data whatever their size field
//! says; every other type is extracted as a file, so it is listed as one. Where the
//! two readers differ (a long name and a pax path that disagree, bytes after the
//! archive's end that `tar -i` would extract) the listing is marked truncated rather
//! than trusted. What is kept is bounded ([`MAX_ENTRIES`], [`MAX_NAME`],
//! [`MAX_META`], [`MAX_NAMES_BYTES`]); a header whose checksum does not hold ends the
//! scan, marked truncated, and nothing a peer sends can make it panic.

pub use crate::record::event::FileEntry;

/// Entries kept per archive; later ones are counted, not listed (a cp of a whole
/// tree can hold millions, an event should stay small).
pub const MAX_ENTRIES: usize = 1000;
/// Bytes kept of one name (Linux's `PATH_MAX`); longer names are cut on a character
/// boundary.
pub const MAX_NAME: usize = 4096;
/// Of a GNU long name or pax header, only this much is read (the rest is skipped,
/// and the listing marked truncated).
pub const MAX_META: usize = 64 * 1024;
/// All listed names together, so an event stays far below the event stream's buffer
/// (names of control bytes grow sixfold as JSON).
pub const MAX_NAMES_BYTES: usize = 256 * 1024;

const BLOCK: usize = 512;

/// What the scan has seen so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    /// The first [`MAX_ENTRIES`] regular files, in archive order.
    pub files: Vec<FileEntry>,
    /// Regular files seen, listed or not, and their bytes.
    pub count: u64,
    pub bytes: u64,
    /// The archive's end (a zero block) was seen.
    pub ended: bool,
    /// Something was cut or could not be read: entries over the cap, a long name, a
    /// header that is not one.
    pub truncated: bool,
}

/// Where the next byte falls.
enum At {
    Header,
    /// An entry's data (and padding): skipped.
    Skip(u64),
    /// A GNU long name or pax header's data, collected (up to [`MAX_META`]) for the
    /// next header; then its padding.
    Meta {
        kind: Meta,
        left: u64,
        pad: u64,
    },
    /// After the end of the archive, or a header that is not one: nothing more is read.
    Done,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Meta {
    LongName,
    /// A long link name: read past, nothing of it is kept.
    LongLink,
    Pax,
    /// A global pax header: read past.
    Global,
}

#[derive(Default)]
pub struct TarScan {
    at: Option<At>,
    block: Vec<u8>,
    meta: Vec<u8>,
    /// From a long name and a pax header, for the next entry.
    next_long_name: Option<String>,
    next_pax_path: Option<String>,
    next_size: Option<u64>,
    /// Bytes of the names listed so far.
    names_bytes: usize,
    listing: Listing,
}

impl TarScan {
    /// Reads the next piece of the stream, split anywhere.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match self.at.take().unwrap_or(At::Header) {
                At::Done => {
                    // Zeros pad an archive to its record size; anything else after its
                    // end is what `tar -i` would go on to extract.
                    if self.listing.ended && data.iter().any(|b| *b != 0) {
                        self.listing.truncated = true;
                    }
                    self.at = Some(At::Done);
                    return;
                }
                At::Skip(left) => {
                    let n = left.min(data.len() as u64);
                    data = &data[n as usize..];
                    self.at = Some(if n == left { At::Header } else { At::Skip(left - n) });
                }
                At::Meta { kind, left, pad } => {
                    let n = left.min(data.len() as u64) as usize;
                    let room = MAX_META.saturating_sub(self.meta.len()).min(n);
                    self.meta.extend_from_slice(&data[..room]);
                    data = &data[n..];
                    let left = left - n as u64;
                    self.at = Some(if left > 0 {
                        At::Meta { kind, left, pad }
                    } else {
                        self.end_meta(kind);
                        At::Skip(pad)
                    });
                }
                At::Header => {
                    let take = (BLOCK - self.block.len()).min(data.len());
                    self.block.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if self.block.len() < BLOCK {
                        self.at = Some(At::Header);
                        continue;
                    }
                    let block = std::mem::take(&mut self.block);
                    self.at = Some(self.header(&block));
                }
            }
        }
    }

    /// What the scan has seen so far.
    pub fn listing(&self) -> &Listing {
        &self.listing
    }

    fn header(&mut self, h: &[u8]) -> At {
        if h.iter().all(|b| *b == 0) {
            self.listing.ended = true;
            return At::Done;
        }
        if !checksum_holds(h) {
            self.listing.truncated = true;
            return At::Done;
        }
        let Some(own_size) = number(&h[124..136]) else {
            self.listing.truncated = true;
            return At::Done;
        };
        let meta = match h[156] {
            b'L' => Some(Meta::LongName),
            b'K' => Some(Meta::LongLink),
            b'x' => Some(Meta::Pax),
            b'g' => Some(Meta::Global),
            _ => None,
        };
        if let Some(kind) = meta {
            // Metadata headers have their own size; a pending pax size is the file's.
            self.meta.clear();
            if own_size > MAX_META as u64 && kind != Meta::Global {
                self.listing.truncated = true;
            }
            return At::Meta { kind, left: own_size, pad: padded(own_size) - own_size };
        }
        let size = self.next_size.take().unwrap_or(own_size);
        let name = match (self.next_long_name.take(), self.next_pax_path.take()) {
            (Some(long), Some(pax)) if long != pax => {
                // GNU tar takes the pax path, Go the long name: neither can be trusted.
                self.listing.truncated = true;
                pax
            }
            (_, Some(pax)) => pax,
            (Some(long), None) => long,
            (None, None) => header_name(h),
        };
        match h[156] {
            // Links, devices, directories, FIFOs: no data follows, whatever the size
            // field says, and no file is written.
            b'1'..=b'6' => At::Header,
            // Regular files, and every type a reader does not know: extracted as files.
            _ => {
                self.add(name, size);
                At::Skip(padded(size))
            }
        }
    }

    fn end_meta(&mut self, kind: Meta) {
        let data = std::mem::take(&mut self.meta);
        match kind {
            Meta::LongName => {
                let end = data.iter().position(|b| *b == 0).unwrap_or(data.len());
                self.next_long_name = Some(String::from_utf8_lossy(&data[..end]).into_owned());
            }
            Meta::Pax => {
                for (key, value) in pax_records(&data) {
                    match key {
                        b"path" => self.next_pax_path = Some(String::from_utf8_lossy(value).into_owned()),
                        b"size" => self.next_size = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()),
                        // Sparse files name and size themselves elsewhere: not followed.
                        k if k.starts_with(b"GNU.sparse.") => self.listing.truncated = true,
                        _ => {}
                    }
                }
            }
            Meta::LongLink | Meta::Global => {}
        }
    }

    fn add(&mut self, mut name: String, size: u64) {
        let l = &mut self.listing;
        l.count += 1;
        l.bytes = l.bytes.saturating_add(size);
        if l.files.len() >= MAX_ENTRIES || self.names_bytes >= MAX_NAMES_BYTES {
            l.truncated = true;
            return;
        }
        if name.len() > MAX_NAME {
            let mut cut = MAX_NAME;
            while !name.is_char_boundary(cut) {
                cut -= 1;
            }
            name.truncate(cut);
            l.truncated = true;
        }
        self.names_bytes += name.len();
        l.files.push(FileEntry { name, size });
    }
}

/// `size` rounded up to whole blocks.
fn padded(size: u64) -> u64 {
    size.div_ceil(BLOCK as u64).saturating_mul(BLOCK as u64)
}

/// A header's own name: `prefix/name` in POSIX ustar, `name` otherwise (GNU tar uses
/// the prefix field's bytes for times).
fn header_name(h: &[u8]) -> String {
    let name = cstr(&h[..100]);
    let prefix = if &h[257..263] == b"ustar\0" { cstr(&h[345..500]) } else { &[] };
    let full = if prefix.is_empty() { name.to_vec() } else { [prefix, b"/", name].concat() };
    String::from_utf8_lossy(&full).into_owned()
}

fn cstr(field: &[u8]) -> &[u8] {
    &field[..field.iter().position(|b| *b == 0).unwrap_or(field.len())]
}

/// A numeric field: octal ASCII (space or NUL padded), or GNU's base-256 when the
/// first byte's high bit is set (sizes of 8 GiB and more).
fn number(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(*b))?;
        }
        return Some(v);
    }
    let text = std::str::from_utf8(field).ok()?.trim_matches(|c: char| c == ' ' || c == '\0');
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

/// The header checksum: the sum of its bytes with the checksum field as spaces
/// (unsigned, as POSIX says; some old tars summed signed bytes, accepted too).
fn checksum_holds(h: &[u8]) -> bool {
    let Some(want) = number(&h[148..156]) else { return false };
    let field = 148..156;
    let unsigned: u64 = h.iter().enumerate().map(|(i, b)| if field.contains(&i) { 32 } else { u64::from(*b) }).sum();
    let signed: i64 = h.iter().enumerate().map(|(i, b)| if field.contains(&i) { 32 } else { i64::from(*b as i8) }).sum();
    want == unsigned || i64::try_from(want).is_ok_and(|w| w == signed)
}

/// The `key=value` records of a pax header: `"%d %s=%s\n"`, the length counting
/// the whole record. A malformed record ends the list.
fn pax_records(mut data: &[u8]) -> Vec<(&[u8], &[u8])> {
    let mut out = Vec::new();
    while let Some(space) = data.iter().position(|b| *b == b' ') {
        let Some(len) = std::str::from_utf8(&data[..space]).ok().and_then(|l| l.parse::<usize>().ok()) else { break };
        if len <= space + 1 || len > data.len() {
            break;
        }
        let record = &data[space + 1..len];
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        if let Some(eq) = record.iter().position(|b| *b == b'=') {
            out.push((&record[..eq], &record[eq + 1..]));
        }
        data = &data[len..];
    }
    out
}

/// A header block with a valid checksum, for tests and fuzz seeds: GNU magic, or
/// POSIX ustar with `prefix`.
pub fn encode_header(name: &str, size: u64, kind: u8, prefix: Option<&str>) -> Vec<u8> {
    let mut h = vec![0u8; BLOCK];
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name.as_bytes()[..n]);
    h[100..108].copy_from_slice(b"0000644\0");
    h[124..136].copy_from_slice(format!("{:011o}\0", size.min(0o777_7777_7777)).as_bytes());
    h[156] = kind;
    match prefix {
        Some(p) => {
            let p = &p.as_bytes()[..p.len().min(155)];
            h[257..265].copy_from_slice(b"ustar\x0000");
            h[345..345 + p.len()].copy_from_slice(p);
        }
        None => h[257..265].copy_from_slice(b"ustar  \0"),
    }
    seal(&mut h);
    h
}

/// Sets a header's checksum.
fn seal(h: &mut [u8]) {
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

/// An entry: its header, then `data` padded to whole blocks.
pub fn encode_entry(name: &str, data: &[u8], kind: u8) -> Vec<u8> {
    let mut out = encode_header(name, data.len() as u64, kind, None);
    out.extend_from_slice(data);
    out.resize(out.len() + (BLOCK - data.len() % BLOCK) % BLOCK, 0);
    out
}

/// The end of an archive: two zero blocks.
pub const END: [u8; 2 * BLOCK] = [0; 2 * BLOCK];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testutil::for_each_split;

    /// A pax record, its length counting itself.
    fn pax(key: &str, value: &str) -> String {
        let body = format!(" {key}={value}\n");
        let mut len = body.len() + 1;
        while len.to_string().len() + body.len() != len {
            len += 1;
        }
        format!("{len}{body}")
    }

    fn padded(data: &[u8]) -> Vec<u8> {
        let mut d = data.to_vec();
        d.resize(data.len().div_ceil(BLOCK) * BLOCK, 0);
        d
    }

    fn scan(pieces: &[&[u8]]) -> Listing {
        let mut s = TarScan::default();
        for p in pieces {
            s.feed(p);
        }
        s.listing().clone()
    }

    fn file(name: &str, size: u64) -> FileEntry {
        FileEntry { name: name.into(), size }
    }

    #[test]
    fn names_and_sizes_at_any_split() {
        let long = format!("deep/{}/file.txt", "d".repeat(150));
        let pax = [pax("path", "pax/named/file.bin"), pax("size", "700"), pax("mtime", "1.5")].concat();
        let archive = [
            encode_entry("dir/", b"", b'5'),
            encode_entry("dir/a.txt", b"hello", b'0'),
            encode_entry("././@LongLink", format!("{long}\0").as_bytes(), b'L'),
            encode_entry(&long[..100], &[7u8; 1000], b'0'),
            encode_entry("PaxHeaders/x", pax.as_bytes(), b'x'),
            [encode_header("short", 99, b'0', None), padded(&[1u8; 700])].concat(),
            [encode_header("b.bin", 600, b'0', Some("pre/fix")), padded(&[2u8; 600])].concat(),
            encode_entry("link", b"", b'2'),
            END.to_vec(),
        ]
        .concat();
        let want = vec![file("dir/a.txt", 5), file(&long, 1000), file("pax/named/file.bin", 700), file("pre/fix/b.bin", 600)];
        for_each_split(&archive, |pieces| {
            let l = scan(pieces);
            assert_eq!(l.files, want);
            assert_eq!((l.count, l.bytes, l.ended, l.truncated), (4, 2305, true, false));
        });
    }

    #[test]
    fn what_is_kept_is_bounded() {
        let mut archive = Vec::new();
        for i in 0..MAX_ENTRIES + 5 {
            archive.extend(encode_entry(&format!("f{i}"), b"x", b'0'));
        }
        let l = scan(&[&archive, &END]);
        assert_eq!((l.files.len(), l.count, l.truncated, l.ended), (MAX_ENTRIES, MAX_ENTRIES as u64 + 5, true, true));
        let huge = "é".repeat(MAX_NAME);
        let l = scan(&[&encode_entry("././@LongLink", huge.as_bytes(), b'L'), &encode_entry("x", b"", b'0'), &END]);
        assert!(l.truncated && l.files[0].name.len() <= MAX_NAME && l.files[0].name.starts_with('é'), "{:?}", l.files[0].name.len());
        let meta = vec![b'a'; MAX_META + 10];
        let l = scan(&[&encode_entry("././@LongLink", &meta, b'L'), &encode_entry("y", b"", b'0'), &END]);
        assert!(l.truncated && l.files.len() == 1 && l.ended);
    }

    #[test]
    fn garbage_ends_the_scan_without_panicking() {
        let l = scan(&[&encode_entry("a", b"1", b'0'), &[0xffu8; 3000]]);
        assert!(!checksum_holds(&[0xffu8; BLOCK]));
        assert_eq!((l.files, l.truncated, l.ended), (vec![file("a", 1)], true, false));
        let mut bad = encode_header("b", 1, b'0', None);
        bad[124] = b'9';
        seal(&mut bad);
        assert!(scan(&[&bad]).truncated);
        let mut neg = encode_header("c", 0, b'0', None);
        neg[124..136].copy_from_slice(&[0xff; 12]);
        seal(&mut neg);
        assert!(scan(&[&neg]).truncated, "a base-256 size past u64");
        assert_eq!(pax_records(b"99 path=x\n"), vec![]);
        assert_eq!(pax_records(b"1 x"), vec![]);
        assert_eq!(pax_records(b"9 a=b\n"), vec![], "a length past the data");
        let l = scan(&[b"short"]);
        assert_eq!(l, Listing::default(), "an incomplete header is not yet anything");
    }

    #[test]
    fn entries_are_read_as_real_tars_read_them() {
        // A directory's size field hides nothing: a file placed "inside" it is listed.
        let hidden = [encode_header("dir/", 512, b'5', None), encode_entry("hidden.txt", b"secret", b'0'), END.to_vec()].concat();
        assert_eq!(scan(&[&hidden]).files, vec![file("hidden.txt", 6)]);
        // An unknown type is extracted as a file, so it is listed as one.
        assert_eq!(scan(&[&encode_entry("odd", b"abc", b'A'), &END]).files, vec![file("odd", 3)]);
        // A long link name does not drop the pending long name.
        let ln =
            [encode_entry("././@LongLink", b"real_long_name.txt\0", b'L'), encode_entry("././@LongLink", b"target\0", b'K'), encode_entry("innocent.txt", b"x", b'0')].concat();
        assert_eq!(scan(&[&ln, &END]).files, vec![file("real_long_name.txt", 1)]);
        // A pax size is the file's, not the next metadata header's.
        let sized = [encode_entry("PaxHeaders/x", pax("size", "3").as_bytes(), b'x'), encode_entry("././@LongLink", b"named\0", b'L'), encode_entry("n", b"abc", b'0')].concat();
        let l = scan(&[&sized, &END]);
        assert_eq!((l.files, l.truncated), (vec![file("named", 3)], false));
        // Readers that disagree on a name: not trusted.
        let both =
            [encode_entry("PaxHeaders/x", pax("path", "one.txt").as_bytes(), b'x'), encode_entry("././@LongLink", b"two.txt\0", b'L'), encode_entry("f", b"", b'0')].concat();
        assert!(scan(&[&both, &END]).truncated);
        // Bytes after the end, which `tar -i` extracts, and zero padding, which nothing does.
        let tail = [encode_entry("a", b"1", b'0'), END.to_vec(), vec![0; 4096]].concat();
        assert!(!scan(&[&tail]).truncated, "zero padding to the record size");
        assert!(scan(&[&tail, &encode_entry("after-end", b"2", b'0')]).truncated);
    }
}
