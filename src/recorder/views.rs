//! Who watched which recording, and when: watching is itself recorded. Every read of
//! a recording's terminal output (the cast, a follow, the UI's live view, a search
//! hit's text) first appends a line to `views/<id>.jsonl` in the storage directory
//! and syncs it; when that cannot be written, the read is refused, so nobody watches
//! unrecorded. The same viewer reading the same recording the same way from the same
//! address again within [`COALESCE`] is the view already recorded (a player reloading, a search typed
//! word by word), so one viewer cannot grow the record without bound.
//! `GET /v1/recordings/{id}/views` lists a recording's views for those who may watch it.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::net::sync::lock;

const DIR: &str = "views";
/// The newest views a recording's list shows.
pub const MAX_LISTED: usize = 1000;
/// A repeat of a view within this is not written again.
const COALESCE: Duration = Duration::from_secs(60);
/// Recent views remembered for coalescing; past this the memory starts over (more
/// lines are written, none is lost).
const RECENT_MAX: usize = 10_000;

/// Who watched: a Kubernetes user (by token) or a reader certificate, never confused.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct By {
    /// `user` or `certificate`.
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct View {
    pub at: String,
    pub recording: String,
    pub by: By,
    /// `cast`, `follow`, `live` or `search`.
    pub how: String,
    pub source_address: String,
}

pub struct Views {
    dir: PathBuf,
    /// When each (viewer, recording, how, source IP) was last written.
    recent: Mutex<HashMap<(By, String, String, String), Instant>>,
}

impl Views {
    pub fn open(storage: &Path) -> std::io::Result<Views> {
        let dir = storage.join(DIR);
        std::fs::create_dir_all(&dir)?;
        Ok(Views { dir, recent: Mutex::new(HashMap::new()) })
    }

    /// The record of recording `id` (a valid session id: it is a file name).
    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.jsonl"))
    }

    /// Appends `view`, durably, unless it repeats one written within [`COALESCE`].
    pub fn note(&self, view: &View) -> std::io::Result<()> {
        // By the source's IP, not its port: a new connection is not a new viewer.
        let ip = view.source_address.rsplit_once(':').map_or(view.source_address.as_str(), |(ip, _)| ip).to_string();
        let key = (view.by.clone(), view.recording.clone(), view.how.clone(), ip);
        let mut recent = lock(&self.recent);
        if recent.get(&key).is_some_and(|at| at.elapsed() < COALESCE) {
            return Ok(());
        }
        let path = self.path(&view.recording);
        let new = !path.exists();
        let mut f = OpenOptions::new().create(true).append(true).read(true).open(&path)?;
        // A line a crash cut short is ended, so this view starts a line of its own.
        let len = f.metadata()?.len();
        let mut last = [0u8; 1];
        let mut line = Vec::new();
        if len > 0 && std::os::unix::fs::FileExt::read_at(&f, &mut last, len - 1)? == 1 && last[0] != b'\n' {
            line.push(b'\n');
        }
        line.extend(serde_json::to_vec(view)?);
        line.push(b'\n');
        f.write_all(&line)?;
        f.sync_data()?;
        if new {
            File::open(&self.dir)?.sync_all()?;
        }
        if recent.len() >= RECENT_MAX {
            recent.clear();
        }
        recent.insert(key, Instant::now());
        Ok(())
    }

    /// The views of recording `id`, newest first, at most [`MAX_LISTED`].
    pub fn of(&self, id: &str) -> std::io::Result<Vec<View>> {
        let file = match File::open(self.path(id)) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut views = std::collections::VecDeque::new();
        for line in BufReader::new(file).split(b'\n') {
            // A line cut short by a crash is skipped, not fatal.
            if let Ok(v) = serde_json::from_slice::<View>(&line?) {
                if views.len() == MAX_LISTED {
                    views.pop_front();
                }
                views.push_back(v);
            }
        }
        Ok(views.into_iter().rev().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by(kind: &str, name: &str) -> By {
        By { kind: kind.into(), name: name.into(), uid: String::new() }
    }

    fn view(recording: &str, who: By, how: &str) -> View {
        View { at: "2026-12-02T00:00:00.000Z".into(), recording: recording.into(), by: who, how: how.into(), source_address: "127.0.0.1:1".into() }
    }

    #[test]
    fn views_are_listed_per_recording_newest_first_and_repeats_coalesce() {
        let dir = std::env::temp_dir().join(format!("kubetape-views-{}", crate::net::random::hex(6)));
        let views = Views::open(&dir).unwrap();
        views.note(&view("a", by("user", "alice"), "cast")).unwrap();
        views.note(&view("b", by("user", "bob"), "cast")).unwrap();
        views.note(&view("a", by("certificate", "auditor"), "cast")).unwrap();
        views.note(&view("a", by("user", "alice"), "live")).unwrap();
        for _ in 0..100 {
            views.note(&view("a", by("user", "alice"), "cast")).unwrap();
        }
        views.note(&View { source_address: "10.0.0.9:2".into(), ..view("a", by("user", "alice"), "cast") }).unwrap();
        let seen = |v: &Views, id: &str| v.of(id).unwrap().into_iter().map(|v| format!("{}:{} {}", v.by.kind, v.by.name, v.how)).collect::<Vec<_>>();
        assert_eq!(
            seen(&views, "a"),
            ["user:alice cast", "user:alice live", "certificate:auditor cast", "user:alice cast"],
            "a repeat within a minute is the same view, unless from elsewhere"
        );
        assert!(views.of("never-viewed").unwrap().is_empty());
        // A torn last line, as a crash mid-write leaves; then a restart.
        OpenOptions::new().append(true).open(views.path("b")).unwrap().write_all(b"{\"at\":\"2026").unwrap();
        let reopened = Views::open(&dir).unwrap();
        reopened.note(&view("b", by("user", "carol"), "cast")).unwrap();
        assert_eq!(seen(&reopened, "b"), ["user:carol cast", "user:bob cast"], "kept across a restart, the torn line ended first");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_user_named_like_a_certificate_is_not_one() {
        let user = serde_json::to_value(by("user", "certificate:auditor")).unwrap();
        let cert = serde_json::to_value(by("certificate", "auditor")).unwrap();
        assert_ne!(user, cert);
    }
}
