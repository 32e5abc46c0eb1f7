//! Build script: embeds asciinema-player, the web UI's player, into the binary. npm
//! fetches the version `package-lock.json` pins (its integrity checked) into a cache
//! outside the tree, once per lock; nothing of it is committed, and the recorder
//! serves it itself, so an air-gapped recorder needs nothing from outside.
//!
//! `KUBETAPE_WEB_PLAYER=DIR` takes the player's `dist/bundle` from DIR instead.
//! Whichever it came from, what is embedded must match `player.sha256`: a cache or a
//! directory someone altered cannot put other scripts into the recorder's pages.

use std::path::{Path, PathBuf};
use std::process::Command;

const WEB: &str = "src/recorder/web";
/// What the UI serves, from the package's `dist/bundle`.
const PLAYER_FILES: [&str; 2] = ["asciinema-player.min.js", "asciinema-player.css"];
const BUNDLE: &str = "node_modules/asciinema-player/dist/bundle";

fn main() {
    for f in ["package.json", "package-lock.json", "player.sha256"] {
        println!("cargo:rerun-if-changed={WEB}/{f}");
    }
    println!("cargo:rerun-if-env-changed=KUBETAPE_WEB_PLAYER");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let bundle = match std::env::var_os("KUBETAPE_WEB_PLAYER") {
        Some(dir) => PathBuf::from(dir),
        None => installed(&out).unwrap_or_else(|e| fail(&e)),
    };
    for f in PLAYER_FILES {
        if let Err(e) = std::fs::copy(bundle.join(f), out.join(f)) {
            fail(&format!("{}: {e}", bundle.join(f).display()));
        }
    }
    let sums = std::fs::canonicalize(Path::new(WEB).join("player.sha256")).unwrap_or_else(|e| fail(&format!("{WEB}/player.sha256: {e}")));
    let checked = Command::new("sha256sum").arg("--check").arg("--quiet").arg(&sums).current_dir(&out).status();
    match checked {
        Ok(s) if s.success() => {}
        Ok(_) => fail(&format!("the files from {} do not match {WEB}/player.sha256", bundle.display())),
        Err(e) => fail(&format!("running sha256sum (coreutils): {e}")),
    }
}

fn fail(why: &str) -> ! {
    panic!(
        "the recorder's web UI embeds asciinema-player from npm, and it could not be had: {why}\n\
         Install Node.js and npm (Debian: apt-get install npm) and build again, \
         or set KUBETAPE_WEB_PLAYER to a directory holding {PLAYER_FILES:?}."
    )
}

/// FNV-1a: names the cache directory after the lock it was installed from.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// The player's `dist/bundle`, installed by `npm ci` into the cache when it is not there.
fn installed(out: &Path) -> Result<PathBuf, String> {
    let read = |f: &str| std::fs::read(Path::new(WEB).join(f)).map_err(|e| format!("{WEB}/{f}: {e}"));
    let (manifest, lock) = (read("package.json")?, read("package-lock.json")?);
    let cache = match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".cache/kubetape"),
        None => out.to_path_buf(),
    };
    let dir = cache.join(format!("web-player-{:016x}", fnv1a(&[manifest.as_slice(), &lock].concat())));
    if PLAYER_FILES.iter().all(|f| dir.join(BUNDLE).join(f).is_file()) {
        return Ok(dir.join(BUNDLE));
    }
    // Installed beside, then moved into place: an interrupted install is never taken
    // for a whole one.
    let staging = cache.join(format!("web-player-staging-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|e| format!("{}: {e}", staging.display()))?;
    std::fs::write(staging.join("package.json"), &manifest).map_err(|e| e.to_string())?;
    std::fs::write(staging.join("package-lock.json"), &lock).map_err(|e| e.to_string())?;
    let status = Command::new("npm")
        .args(["ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&staging)
        .status()
        .map_err(|e| format!("running npm: {e}"))?;
    if !status.success() {
        return Err(format!("npm ci in {} failed ({status})", staging.display()));
    }
    if std::fs::rename(&staging, &dir).is_err() {
        // Another build got there first.
        let _ = std::fs::remove_dir_all(&staging);
    }
    Ok(dir.join(BUNDLE))
}
