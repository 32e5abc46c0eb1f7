//! Who watched which recording, and when: watching is itself recorded. Every read of
//! a recording's terminal output (the cast, a follow, the UI's live view) first
//! appends a line to `views.jsonl` in the storage directory and syncs it; when that
//! cannot be written, the read is refused, so nobody watches unrecorded.
//! `GET /v1/recordings/{id}/views` lists a recording's views for those who may watch it.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::net::sync::lock;

const FILE: &str = "views.jsonl";
/// The newest views a recording's list shows.
pub const MAX_LISTED: usize = 1000;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct View {
    pub at: String,
    pub recording: String,
    /// The viewer's Kubernetes user name, or `certificate:CN` for a reader certificate.
    pub by: String,
    /// `cast`, `follow` or `live`.
    pub how: String,
    pub source_address: String,
}

pub struct Views {
    path: PathBuf,
    file: Mutex<File>,
}

impl Views {
    pub fn open(dir: &Path) -> std::io::Result<Views> {
        let path = dir.join(FILE);
        let mut file = OpenOptions::new().create(true).append(true).read(true).open(&path)?;
        // A line a crash cut short is ended, so the next view starts a line of its own.
        let len = file.metadata()?.len();
        let mut last = [0u8; 1];
        if len > 0 && std::os::unix::fs::FileExt::read_at(&file, &mut last, len - 1)? == 1 && last[0] != b'\n' {
            file.write_all(b"\n")?;
        }
        Ok(Views { path, file: Mutex::new(file) })
    }

    /// Appends `view`, durably.
    pub fn note(&self, view: &View) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(view)?;
        line.push(b'\n');
        let mut f = lock(&self.file);
        f.write_all(&line)?;
        f.sync_data()
    }

    /// The views of recording `id`, newest first, at most [`MAX_LISTED`].
    pub fn of(&self, id: &str) -> std::io::Result<Vec<View>> {
        let mut views = Vec::new();
        for line in BufReader::new(File::open(&self.path)?).split(b'\n') {
            // A line cut short by a crash is skipped, not fatal.
            if let Ok(v) = serde_json::from_slice::<View>(&line?) {
                if v.recording == id {
                    views.push(v);
                }
            }
        }
        views.reverse();
        views.truncate(MAX_LISTED);
        Ok(views)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(recording: &str, by: &str) -> View {
        View { at: "2026-12-02T00:00:00.000Z".into(), recording: recording.into(), by: by.into(), how: "cast".into(), source_address: "127.0.0.1:1".into() }
    }

    #[test]
    fn views_are_listed_per_recording_newest_first() {
        let dir = std::env::temp_dir().join(format!("kubetape-views-{}", crate::net::random::hex(6)));
        std::fs::create_dir_all(&dir).unwrap();
        let views = Views::open(&dir).unwrap();
        views.note(&view("a", "alice")).unwrap();
        views.note(&view("b", "bob")).unwrap();
        views.note(&view("a", "certificate:auditor")).unwrap();
        // A torn last line, as a crash mid-write leaves.
        lock(&views.file).write_all(b"{\"at\":\"2026").unwrap();
        let by: Vec<String> = views.of("a").unwrap().into_iter().map(|v| v.by).collect();
        assert_eq!(by, ["certificate:auditor", "alice"]);
        let reopened = Views::open(&dir).unwrap();
        reopened.note(&view("b", "carol")).unwrap();
        let by: Vec<String> = reopened.of("b").unwrap().into_iter().map(|v| v.by).collect();
        assert_eq!(by, ["carol", "bob"], "kept across a restart, the torn line ended first");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
