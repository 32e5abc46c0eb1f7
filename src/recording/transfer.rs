//! File transfers in exec sessions: which commands are a `kubectl cp` (kubectl 1.27
//! to 1.33 run `tar cf - PATH` to download, `tar -xmf - [-C DIR]` to upload, and
//! `sh -c "tar cf - PATH | tail -c+N"` when a download is retried: those exactly), and the observer
//! that lists the archive's files as the session's tap parses the stream: stdout for
//! a download, stdin for an upload. Of stdin only names and sizes are kept; it never
//! reaches the recording. No I/O.

use std::sync::{Arc, Mutex};

use crate::net::sync::lock;
use crate::record::event::FileTransfer;
use crate::recording::tap::Observer;
use crate::recording::tar::TarScan;
use crate::wire::channel;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The pod's tar comes back on stdout.
    Download,
    /// The client's tar goes in on stdin.
    Upload,
}

/// A command that is a file transfer: its direction and the paths in the pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transfer {
    pub direction: Direction,
    /// Download: what tar archives (joined to `-C`); upload: where it extracts.
    pub paths: Vec<String>,
}

/// The transfer `argv` makes, if it is exactly what kubectl cp runs. Any other tar
/// (options that change what is extracted, `-i`, scripts that do more) is no
/// recognised transfer: a listing of it could say what the pod did not get. The
/// session is recorded all the same; only the FileTransfer event is not made.
pub fn recognise(argv: &[String]) -> Option<Transfer> {
    let args: Vec<&str> = argv.iter().map(String::as_str).collect();
    let download = |path: &str| Some(Transfer { direction: Direction::Download, paths: vec![path.to_string()] });
    let upload = |dir: &str| Some(Transfer { direction: Direction::Upload, paths: vec![dir.to_string()] });
    match args.as_slice() {
        ["tar", "cf", "-", path] => download(path),
        ["tar", "-xmf", "-"] => upload("."),
        ["tar", "-xmf", "-", "-C", dir] => upload(dir),
        // A retried download; kubectl formats the pipeline with a plain %s, unquoted.
        ["sh", "-c", script] => match script.split(' ').collect::<Vec<_>>().as_slice() {
            ["tar", "cf", "-", path, "|", "tail", offset] if offset.strip_prefix("-c+").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())) => download(path),
            _ => None,
        },
        _ => None,
    }
}

/// A transfer being watched: the observer for the session's tap, and what it found.
pub struct Watch {
    pub transfer: Transfer,
    scan: Arc<Mutex<TarScan>>,
}

struct TarObserver {
    channel: u8,
    scan: Arc<Mutex<TarScan>>,
}

impl Observer for TarObserver {
    fn observe(&mut self, channel: u8, data: &[u8]) {
        if channel == self.channel {
            lock(&self.scan).feed(data);
        }
    }
}

impl Watch {
    pub fn new(transfer: Transfer) -> Watch {
        Watch { transfer, scan: Arc::default() }
    }

    /// Whether the archive flows client to server (so the client's tap observes it).
    pub fn from_client(&self) -> bool {
        self.transfer.direction == Direction::Upload
    }

    /// The observer for the tap on the archive's direction.
    pub fn observer(&self) -> Box<dyn Observer> {
        let channel = if self.from_client() { channel::STDIN } else { channel::STDOUT };
        Box::new(TarObserver { channel, scan: self.scan.clone() })
    }

    /// The event's record once the session has ended. An archive whose end was not
    /// seen is truncated, whatever the cause: the command failed or was cut short, or
    /// the tap stopped reading (a fail-open recording that failed stops its taps).
    pub fn report(&self, exit_code: Option<i32>) -> FileTransfer {
        let scan = lock(&self.scan);
        let l = scan.listing();
        FileTransfer {
            direction: match self.transfer.direction {
                Direction::Download => "download",
                Direction::Upload => "upload",
            }
            .into(),
            paths: self.transfer.paths.clone(),
            files: l.files.clone(),
            file_count: l.count,
            total_bytes: l.bytes,
            truncated: l.truncated || !l.ended,
            exit_code,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recording::tar::{encode_entry, END};

    fn argv(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn the_commands_kubectl_cp_runs() {
        let down = |p: &[&str]| Some(Transfer { direction: Direction::Download, paths: p.iter().map(|s| s.to_string()).collect() });
        let up = |d: &str| Some(Transfer { direction: Direction::Upload, paths: vec![d.into()] });
        let cases: &[(&str, Option<Transfer>)] = &[
            ("tar cf - /tmp/data", down(&["/tmp/data"])),
            ("tar cf - data", down(&["data"])),
            ("tar -xmf - -C /tmp/dest", up("/tmp/dest")),
            ("tar -xmf -", up(".")),
            // Forms kubectl does not send, some of which extract what a listing would
            // not show (-i reads past the end; --transform renames): not transfers.
            ("tar -xmf - -i -C /tmp", None),
            ("tar --transform s/a/b/ -xmf - -C /tmp", None),
            ("tar xf -", None),
            ("/bin/tar cf - data", None),
            ("tar cf /tmp/out.tar data", None),
            ("tar cf - a b", None),
            ("tar tf -", None),
            ("tar", None),
            ("ls -la", None),
        ];
        for (cmd, want) in cases {
            assert_eq!(&recognise(&argv(cmd)), want, "{cmd}");
        }
        let retry = vec!["sh".to_string(), "-c".into(), "tar cf - /tmp/data | tail -c+1025".into()];
        assert_eq!(recognise(&retry), down(&["/tmp/data"]));
        for script in ["echo hi", "tar -xmf - -C /tmp; cat >/root/.ssh/authorized_keys", "tar cf - a | tail -c+1 ; rm -rf /", "tar cf - a | tail -c+"] {
            assert_eq!(recognise(&["sh".to_string(), "-c".into(), script.into()]), None, "{script}");
        }
    }

    #[test]
    fn the_observer_lists_only_its_channel() {
        let w = Watch::new(Transfer { direction: Direction::Upload, paths: vec!["/d".into()] });
        let mut o = w.observer();
        let tar = [encode_entry("a", b"12345", b'0'), encode_entry("b", &[0; 700], b'0'), END.to_vec()].concat();
        o.observe(channel::STDOUT, b"not the archive");
        for piece in tar.chunks(100) {
            o.observe(channel::STDIN, piece);
        }
        let r = w.report(Some(0));
        assert_eq!(r.files.iter().map(|f| (f.name.as_str(), f.size)).collect::<Vec<_>>(), vec![("a", 5), ("b", 700)]);
        assert_eq!((r.direction.as_str(), r.file_count, r.total_bytes, r.truncated, r.exit_code), ("upload", 2, 705, false, Some(0)));
        let cut = Watch::new(Transfer { direction: Direction::Download, paths: vec![] });
        cut.observer().observe(channel::STDOUT, &encode_entry("c", b"x", b'0'));
        assert!(cut.report(None).truncated, "the archive's end was not seen");
    }
}
