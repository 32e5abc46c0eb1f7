//! `kubetape play`: prints a recording's output, or recovers one stream's exact bytes
//! (`--raw stdout` turns a recorded `kubectl cp` download back into its tar).
//! `kubetape ls`: lists the recordings in a recorder's storage directory.
//! `kubetape play --recorder URL --id ID [--follow]` fetches (follows) one from a
//! recorder's API instead (`follow`).

mod follow;

use std::io::Write;

use serde_json::Value;

use crate::args::{Args, Flag};
use crate::error::{Context, Result};
use crate::wire::asciicast::{self, STDERR, STDOUT};

pub const FLAGS: &[Flag] = &[
    Flag { name: "file", default: None, help: "the .cast file, required unless --recorder is given" },
    Flag { name: "raw", default: None, help: "stdout or stderr: write that stream's exact bytes instead of the session's text" },
    Flag { name: "recorder", default: None, help: "a recorder's URL (https://HOST:PORT): fetch the recording --id from its API instead of --file" },
    Flag { name: "id", default: None, help: "with --recorder: the session id" },
    Flag { name: "ca", default: None, help: "with --recorder: the CA that signed its serving certificate (PEM)" },
    Flag { name: "cert", default: None, help: "with --recorder: a reader's client certificate (PEM)" },
    Flag { name: "key", default: None, help: "with --recorder: that certificate's key (PEM)" },
    Flag { name: "follow", default: None, help: "with --recorder: print a running session as it is recorded, until it ends" },
];

pub fn run(args: &Args) -> Result<()> {
    if args.opt("recorder").is_some() {
        return follow::run(args, &mut std::io::stdout().lock());
    }
    let path = args.required_path("file")?;
    let cast = std::fs::read_to_string(&path).with_context(|| format!("--file {}", path.display()))?;
    let mut out = std::io::stdout().lock();
    if let Some(stream) = args.opt("raw") {
        let stream = match stream.as_str() {
            "stdout" => STDOUT,
            "stderr" => STDERR,
            other => crate::bail!("--raw: expected stdout or stderr, found {other:?}"),
        };
        let bytes = asciicast::recover_stream(&cast, stream).map_err(|e| crate::error::Error::new(format!("--file {}: {e}", path.display())))?;
        out.write_all(&bytes)?;
        return Ok(());
    }
    for (i, line) in cast.lines().enumerate().skip(1) {
        render_line(&mut out, line).with_context(|| format!("--file {}: line {}", path.display(), i + 1))?;
    }
    Ok(())
}

/// Prints one event line of a cast (any line but the header) as `play` shows it.
fn render_line(out: &mut impl Write, line: &str) -> Result<()> {
    let ev: Value = serde_json::from_str(line)?;
    match (ev[1].as_str(), ev[2].as_str()) {
        (Some("o" | "e"), Some(text)) => out.write_all(text.as_bytes())?,
        (Some("m"), Some(mark)) if mark.starts_with("exit:") => writeln!(out, "\r\n[kubetape: {mark}]")?,
        _ => {}
    }
    Ok(())
}

pub const LS_FLAGS: &[Flag] = &[
    Flag { name: "storage-dir", default: None, help: "the recorder's --storage-dir, required" },
    Flag { name: "user", default: None, help: "only this user's sessions" },
    Flag { name: "namespace", default: None, help: "only sessions in this namespace" },
    Flag { name: "pod", default: None, help: "only sessions in this pod" },
];

/// Lists recordings, newest first: id, start, status, who, where, what.
pub fn ls(args: &Args) -> Result<()> {
    let dir = args.required_path("storage-dir")?;
    if !dir.is_dir() {
        crate::bail!("--storage-dir {}: not a directory", dir.display());
    }
    let store = crate::storage::fs::FsStore::open_read_only(&dir);
    let (user, ns, pod) = (args.opt("user"), args.opt("namespace"), args.opt("pod"));
    let mut out = std::io::stdout().lock();
    writeln!(out, "{:<30} {:<20} {:<11} {:<10} {:<28} COMMAND", "ID", "STARTED", "STATUS", "USER", "NAMESPACE/POD")?;
    for m in store.list().context("--storage-dir")? {
        if user.as_deref().is_some_and(|u| m.user() != u) || ns.as_deref().is_some_and(|n| m.namespace() != n) || pod.as_deref().is_some_and(|p| m.pod() != p) {
            continue;
        }
        let command: Vec<&str> = m.session["command"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        let status = format!("{:?}", m.status).to_lowercase();
        writeln!(out, "{:<30} {:<20} {:<11} {:<10} {:<28} {}", m.id, m.started, status, m.user(), format!("{}/{}", m.namespace(), m.pod()), command.join(" "))?;
    }
    Ok(())
}
