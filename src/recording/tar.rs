//! The names and sizes in a tar stream, read incrementally as it passes (a `kubectl
//! cp`'s archive on stdout or stdin), keeping nothing of the files' contents. No I/O.
//!
//! ustar and old-style headers, the POSIX `prefix` field, GNU long names
//! (`././@LongLink`, type `L`) and pax extended headers (`x`: `path`, `size`) are
//! understood; any other entry type is skipped by its size. What is kept is bounded
//! ([`MAX_ENTRIES`], [`MAX_NAME`], [`MAX_META`]); a header whose checksum does not
//! hold ends the scan, marked truncated, and nothing a peer sends can make it panic.

pub use crate::record::event::FileEntry;

/// Entries kept per archive; later ones are counted, not listed (a cp of a whole
/// tree can hold millions, an event should stay small).
pub const MAX_ENTRIES: usize = 1000;
/// Bytes kept of one name (Linux's `PATH_MAX`); longer names are cut on a character
/// boundary.
pub const MAX_NAME: usize = 4096;
/// A GNU long name or pax header larger than this is skipped, not read: its name is
/// cut and the next entry keeps its own header fields.
pub const MAX_META: usize = 64 * 1024;

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
    Pax,
}

#[derive(Default)]
pub struct TarScan {
    at: Option<At>,
    block: Vec<u8>,
    meta: Vec<u8>,
    /// From a long name or pax header, for the next entry.
    next_name: Option<String>,
    next_size: Option<u64>,
    listing: Listing,
}

impl TarScan {
    /// Reads the next piece of the stream, split anywhere.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match self.at.take().unwrap_or(At::Header) {
                At::Done => {
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
        let Some(size) = self.next_size.take().or_else(|| number(&h[124..136])) else {
            self.listing.truncated = true;
            return At::Done;
        };
        let padded = size.div_ceil(BLOCK as u64).saturating_mul(BLOCK as u64);
        match h[156] {
            b'L' | b'x' => {
                let kind = if h[156] == b'L' { Meta::LongName } else { Meta::Pax };
                self.meta.clear();
                if size > MAX_META as u64 {
                    self.listing.truncated = true;
                }
                At::Meta { kind, left: size, pad: padded - size }
            }
            b'0' | 0 | b'7' => {
                let name = self.next_name.take().unwrap_or_else(|| header_name(h));
                self.add(name, size);
                At::Skip(padded)
            }
            _ => {
                // Directories, links, devices, global pax headers: their own fields
                // are no file, and a pending long name belonged to them.
                self.next_name = None;
                At::Skip(padded)
            }
        }
    }

    fn end_meta(&mut self, kind: Meta) {
        let data = std::mem::take(&mut self.meta);
        match kind {
            Meta::LongName => {
                let end = data.iter().position(|b| *b == 0).unwrap_or(data.len());
                self.next_name = Some(String::from_utf8_lossy(&data[..end]).into_owned());
            }
            Meta::Pax => {
                for (key, value) in pax_records(&data) {
                    match key {
                        b"path" => self.next_name = Some(String::from_utf8_lossy(value).into_owned()),
                        b"size" => self.next_size = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()),
                        _ => {}
                    }
                }
            }
        }
    }

    fn add(&mut self, mut name: String, size: u64) {
        let l = &mut self.listing;
        l.count += 1;
        l.bytes = l.bytes.saturating_add(size);
        if l.files.len() >= MAX_ENTRIES {
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
        l.files.push(FileEntry { name, size });
    }
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
}
