//! Where recordings are kept. The filesystem store ([`fs`]) is where sessions are
//! written and acknowledged (with `--s3-bucket` it is the spool); the S3 store ([`s3`])
//! holds what the uploader copied there. The recorder's API reads through
//! [`Recordings`], asking the spool first and then the bucket, so a recorder answers
//! for recordings another one wrote.

pub mod events;
pub mod fs;
pub mod s3;

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::error::Result;
use crate::record::event::ApiEvent;
use crate::record::protocol::SessionMeta;
use events::EventLog;
use s3::S3Store;

/// How many of `data`'s bytes are whole lines: up to and with its last newline. What
/// was acknowledged always is; a crash or a reader may leave a torn line after it.
pub fn whole_lines(data: &[u8]) -> usize {
    data.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1)
}

/// A recording's cast bytes as a store hands them out: an open spool file (which may
/// still grow) or an object fetched whole.
pub enum Cast {
    File(File),
    Fetched(Vec<u8>),
}

impl Cast {
    /// Reads at `at` into `buf`, as `pread(2)`; 0 at the end.
    pub fn read_at(&self, buf: &mut [u8], at: u64) -> io::Result<usize> {
        match self {
            Cast::File(f) => f.read_at(buf, at),
            Cast::Fetched(data) => {
                let start = usize::try_from(at).unwrap_or(usize::MAX).min(data.len());
                let n = buf.len().min(data.len() - start);
                buf[..n].copy_from_slice(&data[start..start + n]);
                Ok(n)
            }
        }
    }

    /// All of it.
    pub fn into_bytes(self) -> io::Result<Vec<u8>> {
        match self {
            Cast::File(mut f) => {
                let mut v = Vec::new();
                io::Read::read_to_end(&mut f, &mut v)?;
                Ok(v)
            }
            Cast::Fetched(data) => Ok(data),
        }
    }

    /// Bytes there now.
    pub fn size(&self) -> io::Result<u64> {
        match self {
            Cast::File(f) => Ok(f.metadata()?.len()),
            Cast::Fetched(data) => Ok(data.len() as u64),
        }
    }
}

/// What the recorder's API reads recordings through.
pub trait Recordings {
    /// Every recording's metadata (any order).
    fn list(&self) -> Result<Vec<SessionMeta>>;
    /// One recording's metadata.
    fn meta(&self, id: &str) -> Result<Option<SessionMeta>>;
    /// One recording's metadata and cast bytes.
    fn open(&self, id: &str) -> Result<Option<(SessionMeta, Cast)>>;
}

/// Stores asked in order: the first that knows a recording answers for it (the spool
/// before the bucket: it holds what is newest, running sessions too).
pub struct Layered<'a>(pub Vec<&'a dyn Recordings>);

impl Recordings for Layered<'_> {
    /// Newest first, each id once.
    fn list(&self) -> Result<Vec<SessionMeta>> {
        let mut by_id = BTreeMap::new();
        for store in &self.0 {
            for m in store.list()? {
                by_id.entry(m.id.clone()).or_insert(m);
            }
        }
        Ok(by_id.into_values().rev().collect())
    }

    fn meta(&self, id: &str) -> Result<Option<SessionMeta>> {
        for store in &self.0 {
            if let Some(m) = store.meta(id)? {
                return Ok(Some(m));
            }
        }
        Ok(None)
    }

    fn open(&self, id: &str) -> Result<Option<(SessionMeta, Cast)>> {
        for store in &self.0 {
            if let Some(found) = store.open(id)? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }
}

/// API events matching `keep`, newest first, at most `limit`: from the spool's segments
/// and the bucket's (every recorder's), a segment in both read from the spool.
pub fn query_events(log: &EventLog, bucket: Option<&S3Store>, keep: impl Fn(&ApiEvent) -> bool, limit: usize) -> Result<Vec<ApiEvent>> {
    let mut names: BTreeMap<String, bool> = BTreeMap::new();
    if let Some(b) = bucket {
        names.extend(b.event_segments()?.into_iter().map(|n| (n, false)));
    }
    names.extend(log.segment_names()?.into_iter().map(|n| (n, true)));
    let mut out = Vec::new();
    for (name, local) in names.into_iter().rev() {
        if out.len() >= limit {
            break;
        }
        let text = match (local, bucket) {
            (true, _) => std::fs::read(log.segment_path(&name)).unwrap_or_default(),
            (false, Some(b)) => b.event_segment(&name)?,
            (false, None) => continue,
        };
        events::collect_newest_first(&text, &keep, limit, &mut out);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetched_casts_read_like_files() {
        let c = Cast::Fetched(b"hello".to_vec());
        let mut buf = [0u8; 3];
        assert_eq!((c.read_at(&mut buf, 3).unwrap(), &buf[..2]), (2, &b"lo"[..]));
        assert_eq!(c.read_at(&mut buf, 9).unwrap(), 0);
        assert_eq!(c.size().unwrap(), 5);
    }
}
