//! Filesystem storage for recordings: per session `<root>/<YYYY-MM-DD>/<id>.cast` and
//! a metadata sidecar `<id>.json`.
//!
//! fsync policy: cast bytes are appended, then `fdatasync`ed before the recorder
//! acknowledges them (one sync per batch of frames: group commit). Sidecars are
//! replaced atomically (write a temporary file, fsync it, rename, fsync the
//! directory). After a crash, `open` finds sidecars still saying `recording`, cuts
//! the cast file back to its last whole line (every acknowledged byte is a whole
//! line, so none is lost) and marks them `interrupted`. File names come from session
//! ids, which `record::protocol::valid_id` restricts to `[A-Za-z0-9-]`; namespace and pod
//! names never reach a path.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::error::{Context, Result};
use crate::record::protocol::{valid_id, SessionMeta, Status};
use crate::storage::{Cast, Recordings};

pub struct FsStore {
    root: PathBuf,
}

/// A recording being written.
pub struct SessionFile {
    pub meta: SessionMeta,
    file: File,
    dir: PathBuf,
    written: u64,
    /// Where the last whole line appended ends, and where it ended at the last sync:
    /// what readers may see of a session still being written.
    line_end: u64,
    synced_lines: u64,
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn write_meta(dir: &Path, meta: &SessionMeta) -> io::Result<()> {
    let tmp = dir.join(format!(".{}.json.tmp", meta.id));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(meta).map_err(io::Error::other)?)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(format!("{}.json", meta.id)))?;
    sync_dir(dir)
}

impl FsStore {
    /// Opens (creating) the store and recovers recordings a crash left unfinished.
    pub fn open(root: &Path) -> Result<FsStore> {
        fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        let store = FsStore { root: root.to_path_buf() };
        for (meta, dir) in store.scan()? {
            if meta.status == Status::Recording {
                store.recover(meta, &dir).with_context(|| format!("recovering {}", dir.display()))?;
            }
        }
        Ok(store)
    }

    /// Opens an existing store to read only: no recovery, so it is safe beside a
    /// running recorder (its live sessions stay `recording`).
    pub fn open_read_only(root: &Path) -> FsStore {
        FsStore { root: root.to_path_buf() }
    }

    fn recover(&self, mut meta: SessionMeta, dir: &Path) -> Result<()> {
        let cast = dir.join(format!("{}.cast", meta.id));
        let data = fs::read(&cast).unwrap_or_default();
        let keep = crate::storage::whole_lines(&data);
        if keep < data.len() {
            let f = OpenOptions::new().write(true).open(&cast)?;
            f.set_len(keep as u64)?;
            f.sync_all()?;
        }
        meta.status = Status::Interrupted;
        meta.bytes = keep as u64;
        meta.reason = Some("the recorder stopped while this session was recording".into());
        write_meta(dir, &meta)?;
        log::warn!("recording interrupted id={} bytes={keep}", meta.id);
        Ok(())
    }

    /// Every sidecar, with its directory.
    fn scan(&self) -> Result<Vec<(SessionMeta, PathBuf)>> {
        let mut out = Vec::new();
        for day in fs::read_dir(&self.root).with_context(|| format!("reading {}", self.root.display()))? {
            let day = day?.path();
            if !day.is_dir() {
                continue;
            }
            for entry in fs::read_dir(&day)? {
                let p = entry?.path();
                if p.extension().and_then(|e| e.to_str()) != Some("json") {
                    continue;
                }
                match fs::read(&p).ok().and_then(|b| serde_json::from_slice::<SessionMeta>(&b).ok()) {
                    Some(meta) => out.push((meta, day.clone())),
                    None => log::warn!("unreadable recording sidecar path={}", p.display()),
                }
            }
        }
        Ok(out)
    }

    /// Every recording's metadata, newest first.
    pub fn list(&self) -> Result<Vec<SessionMeta>> {
        let mut all: Vec<SessionMeta> = self.scan()?.into_iter().map(|(m, _)| m).collect();
        all.sort_by(|a, b| b.id.cmp(&a.id));
        Ok(all)
    }

    /// Every recording's metadata and cast file path (the uploader's view).
    pub fn sessions(&self) -> Result<Vec<(SessionMeta, PathBuf)>> {
        Ok(self
            .scan()?
            .into_iter()
            .map(|(m, d)| {
                let cast = d.join(format!("{}.cast", m.id));
                (m, cast)
            })
            .collect())
    }

    /// A recording's metadata and cast file path.
    pub fn get(&self, id: &str) -> Result<Option<(SessionMeta, PathBuf)>> {
        if !valid_id(id) {
            return Ok(None);
        }
        // One look per day directory, not a read of every sidecar: a store of 10,000
        // recordings answers in microseconds, not seconds.
        for day in fs::read_dir(&self.root).with_context(|| format!("reading {}", self.root.display()))? {
            let day = day?.path();
            let sidecar = day.join(format!("{id}.json"));
            let bytes = match fs::read(&sidecar) {
                Ok(b) => b,
                Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => continue,
                Err(e) => return Err(e).with_context(|| format!("reading {}", sidecar.display())),
            };
            // As the listing does: an unreadable sidecar, or one whose id is not its
            // name, is not this recording.
            match serde_json::from_slice::<SessionMeta>(&bytes) {
                Ok(meta) if meta.id == id => return Ok(Some((meta, day.join(format!("{id}.cast"))))),
                Ok(_) => {}
                Err(_) => log::warn!("unreadable recording sidecar path={}", sidecar.display()),
            }
        }
        Ok(None)
    }

    /// Drops an ended recording once it is safely elsewhere (the bucket). The sidecar
    /// goes first: a cast left behind by a crash between is never listed.
    pub fn remove(&self, cast: &Path) -> io::Result<()> {
        fs::remove_file(cast.with_extension("json"))?;
        fs::remove_file(cast)
    }

    /// Drops recording `id`, if the store has it.
    pub fn remove_by_id(&self, id: &str) -> io::Result<()> {
        match self.get(id).map_err(io::Error::other)? {
            Some((_, cast)) => self.remove(&cast),
            None => Ok(()),
        }
    }

    /// Bytes the store's files take (its own subfolders included), as the spool bound
    /// counts them.
    pub fn bytes(&self) -> u64 {
        fn walk(dir: &Path, depth: u32) -> u64 {
            let Ok(entries) = fs::read_dir(dir) else { return 0 };
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() && depth > 0 => walk(&e.path(), depth - 1),
                    Ok(m) if m.is_file() => m.len(),
                    _ => 0,
                })
                .sum()
        }
        walk(&self.root, 1)
    }

    /// Starts a recording with its first bytes (the header line, or what a session
    /// continuing here had elsewhere), durably written.
    pub fn create(&self, meta: SessionMeta, header_line: &[u8]) -> Result<SessionFile> {
        if !valid_id(&meta.id) {
            crate::bail!("session id {:?}: expected [A-Za-z0-9-], at most 64 characters", meta.id);
        }
        let day = meta.started.get(..10).filter(|d| d.bytes().all(|b| b.is_ascii_digit() || b == b'-')).unwrap_or("undated");
        let dir = self.root.join(day);
        fs::create_dir_all(&dir)?;
        let cast = dir.join(format!("{}.cast", meta.id));
        let file = OpenOptions::new().write(true).create_new(true).open(&cast).with_context(|| format!("creating {}", cast.display()))?;
        write_meta(&dir, &meta)?;
        let mut s = SessionFile { meta, file, dir, written: 0, line_end: 0, synced_lines: 0 };
        s.append(header_line)?;
        s.sync()?;
        Ok(s)
    }
}

impl Recordings for FsStore {
    fn list(&self) -> Result<Vec<SessionMeta>> {
        FsStore::list(self)
    }

    fn meta(&self, id: &str) -> Result<Option<SessionMeta>> {
        Ok(self.get(id)?.map(|(m, _)| m))
    }

    fn open(&self, id: &str) -> Result<Option<(SessionMeta, Cast)>> {
        let Some((meta, path)) = self.get(id)? else { return Ok(None) };
        let file = File::open(&path).with_context(|| format!("opening {id:?}"))?;
        Ok(Some((meta, Cast::File(file))))
    }
}

impl SessionFile {
    pub fn append(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all(data)?;
        if let Some(i) = data.iter().rposition(|b| *b == b'\n') {
            self.line_end = self.written + i as u64 + 1;
        }
        self.written += data.len() as u64;
        Ok(())
    }

    /// Makes everything appended durable; returns the durable byte count.
    pub fn sync(&mut self) -> io::Result<u64> {
        self.file.sync_data()?;
        self.meta.bytes = self.written;
        self.synced_lines = self.line_end;
        Ok(self.written)
    }

    /// The day folder it is in (the bucket keys use the same).
    pub fn day(&self) -> String {
        self.dir.file_name().map(|d| d.to_string_lossy().into_owned()).unwrap_or_default()
    }

    /// The durable bytes up to the end of the last whole line (a frame may end
    /// mid-line; a reader is never shown half a line).
    pub fn durable_lines(&self) -> u64 {
        self.synced_lines
    }

    /// Records how the session ended.
    pub fn finish(&mut self, status: Status, exit_code: Option<i32>, reason: Option<String>, ended: String) -> io::Result<()> {
        self.sync()?;
        self.meta.status = status;
        self.meta.exit_code = exit_code;
        self.meta.reason = reason;
        self.meta.ended = Some(ended);
        write_meta(&self.dir, &self.meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta(id: &str) -> SessionMeta {
        SessionMeta {
            id: id.into(),
            status: Status::Recording,
            bytes: 0,
            exit_code: None,
            reason: None,
            started: "2026-11-25T22:00:00Z".into(),
            ended: None,
            writer: "proxy".into(),
            session: json!({"namespace": "../../etc", "pod": "../passwd", "user": {"name": "alice"}}),
            recorder: None,
        }
    }

    #[test]
    fn write_finish_list_and_recover() {
        let dir = std::env::temp_dir().join(format!("kubetape-fs-{}", crate::net::random::hex(8)));
        let store = FsStore::open(&dir).unwrap();
        let mut done = store.create(meta("a1"), b"{\"version\":2}\n").unwrap();
        done.append(b"[0.1, \"o\", \"hi\"]\n").unwrap();
        done.finish(Status::Complete, Some(0), None, "2026-11-25T22:00:01Z".into()).unwrap();
        let mut crashed = store.create(meta("b2"), b"{\"version\":2}\n").unwrap();
        assert_eq!(crashed.durable_lines(), 14);
        crashed.append(b"[0.1, \"o\", \"acked\"]\n[0.15, \"o\"").unwrap();
        assert_eq!(crashed.durable_lines(), 14, "nothing new is durable before the sync");
        crashed.sync().unwrap();
        assert_eq!(crashed.durable_lines(), 34, "only whole lines");
        crashed.append(b", \"x\"]\n").unwrap();
        crashed.sync().unwrap();
        crashed.append(b"[0.2, \"o\", \"half").unwrap(); // a crash mid-write
        drop(crashed);
        assert!(store.create(meta("../x"), b"").is_err());

        let reopened = FsStore::open(&dir).unwrap();
        let list = reopened.list().unwrap();
        assert_eq!(list.iter().map(|m| (m.id.as_str(), m.status)).collect::<Vec<_>>(), vec![("b2", Status::Interrupted), ("a1", Status::Complete)]);
        let (m, cast) = reopened.get("b2").unwrap().unwrap();
        assert_eq!(fs::read_to_string(&cast).unwrap(), "{\"version\":2}\n[0.1, \"o\", \"acked\"]\n[0.15, \"o\", \"x\"]\n");
        assert_eq!(m.bytes, fs::metadata(&cast).unwrap().len());
        // Hostile names in the header never shape a path.
        assert!(cast.starts_with(&dir));
        assert!(reopened.get("../b2").unwrap().is_none());
        let _ = fs::remove_dir_all(&dir);
    }
}
