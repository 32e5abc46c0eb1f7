//! `kubetape play`: prints a recording's output, or recovers one stream's exact bytes
//! (`--raw stdout` turns a recorded `kubectl cp` download back into its tar).

use std::io::Write;

use serde_json::Value;

use crate::args::{Args, Flag};
use crate::error::{Context, Result};
use crate::wire::asciicast::{self, STDERR, STDOUT};

pub const FLAGS: &[Flag] = &[
    Flag { name: "file", default: None, help: "the .cast file, required" },
    Flag { name: "raw", default: None, help: "stdout or stderr: write that stream's exact bytes instead of the session's text" },
];

pub fn run(args: &Args) -> Result<()> {
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
        let ev: Value = serde_json::from_str(line).with_context(|| format!("--file {}: line {}", path.display(), i + 1))?;
        match (ev[1].as_str(), ev[2].as_str()) {
            (Some("o" | "e"), Some(text)) => out.write_all(text.as_bytes())?,
            (Some("m"), Some(mark)) if mark.starts_with("exit:") => writeln!(out, "\r\n[kubetape: {mark}]")?,
            _ => {}
        }
    }
    Ok(())
}
