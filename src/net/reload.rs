//! A value built from files that may be replaced while the process runs: TLS
//! material from a Kubernetes Secret volume, which the kubelet renews in place (it
//! writes a new directory, then renames the `..data` symlink the visible files point
//! through). A process that kept the first copy would serve an expired certificate a
//! year later, and restarting it would end open sessions.
//!
//! [`Reloading`] builds its value when created (errors are startup errors); then
//! [`Reloading::get`] reads the files again at most every [`RELOAD_CHECK`] and
//! rebuilds when their bytes changed. Files that do not build (a half-written copy, a
//! key that does not match its certificate) leave the previous value in use, with one
//! warning per change rather than per check. No thread of its own: the check is made
//! by whoever asks for the value, and a process nobody asks has no use for a fresh one.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::net::sync::lock;

/// The files are read again at most this often: a renewal is seen within seconds,
/// and a busy server does not read them for every connection.
pub const RELOAD_CHECK: Duration = Duration::from_secs(5);

/// The contents of the files a value is built from.
pub struct Files<'a> {
    paths: &'a [PathBuf],
    data: &'a [Vec<u8>],
}

impl Files<'_> {
    /// The bytes of `path`, which must be one of the files the value was created with.
    pub fn get(&self, path: &Path) -> Result<&[u8]> {
        let found = self.paths.iter().position(|p| p == path).and_then(|i| self.data.get(i));
        found.map(Vec::as_slice).ok_or_else(|| Error::new(format!("{} is not among the files read", path.display())))
    }
}

type Build<T> = Box<dyn Fn(&Files<'_>) -> Result<T> + Send + Sync>;

/// What the files held when last read: their bytes, or why they could not be read.
type Seen = std::result::Result<Vec<Vec<u8>>, String>;

/// A value rebuilt when the files it was built from change.
pub struct Reloading<T> {
    /// What the files are, for the logs ("proxy certificates").
    what: String,
    paths: Vec<PathBuf>,
    build: Build<T>,
    every: Duration,
    state: Mutex<State<T>>,
}

struct State<T> {
    value: Arc<T>,
    generation: u64,
    /// The bytes `value` was built from.
    built_from: Arc<Vec<Vec<u8>>>,
    /// When a check last started; one check at a time, the others use `value`.
    checked: Instant,
    /// The last contents that did not build, already warned about.
    rejected: Option<Arc<Seen>>,
}

fn read_all(paths: &[PathBuf]) -> Result<Vec<Vec<u8>>> {
    paths.iter().map(|p| crate::net::file::read_config(p)).collect()
}

impl<T> Reloading<T> {
    /// Reads `paths` and builds the value from them now; `build` is called again with
    /// their new contents whenever they change.
    pub fn new(what: &str, paths: Vec<PathBuf>, build: impl Fn(&Files<'_>) -> Result<T> + Send + Sync + 'static) -> Result<Reloading<T>> {
        Self::checking_every(what, paths, build, RELOAD_CHECK)
    }

    /// [`Reloading::new`], checking the files at most every `every` (tests need not wait).
    fn checking_every(what: &str, paths: Vec<PathBuf>, build: impl Fn(&Files<'_>) -> Result<T> + Send + Sync + 'static, every: Duration) -> Result<Reloading<T>> {
        let data = read_all(&paths)?;
        let value = build(&Files { paths: &paths, data: &data })?;
        let state = State { value: Arc::new(value), generation: 0, built_from: Arc::new(data), checked: Instant::now(), rejected: None };
        Ok(Reloading { what: what.to_string(), paths, build: Box::new(build), every, state: Mutex::new(state) })
    }

    /// The value built from the files as they are now (as of at most [`RELOAD_CHECK`] ago).
    pub fn get(&self) -> Arc<T> {
        self.current().0
    }

    /// Moves on each successful reload, for whoever keeps something derived from the value.
    pub fn generation(&self) -> u64 {
        self.current().1
    }

    /// The value and its generation, taken together.
    pub fn current(&self) -> (Arc<T>, u64) {
        self.check_if_due();
        let s = lock(&self.state);
        (s.value.clone(), s.generation)
    }

    /// Reads the files when the last check is old enough, and rebuilds if they
    /// changed. The lock is not held while reading or building, so connections
    /// arriving meanwhile get the current value without waiting.
    fn check_if_due(&self) {
        let (built_from, rejected) = {
            let mut s = lock(&self.state);
            if s.checked.elapsed() < self.every {
                return;
            }
            s.checked = Instant::now();
            (s.built_from.clone(), s.rejected.clone())
        };
        let seen: Seen = read_all(&self.paths).map_err(|e| e.to_string());
        if seen.as_ref().is_ok_and(|data| *data == *built_from) {
            // Unchanged, or back to what is in use: a later bad change warns again.
            if rejected.is_some() {
                lock(&self.state).rejected = None;
            }
            return;
        }
        if rejected.as_deref() == Some(&seen) {
            return;
        }
        let built = match seen {
            Ok(data) => match (self.build)(&Files { paths: &self.paths, data: &data }) {
                Ok(value) => Ok((value, data)),
                Err(e) => Err((e.to_string(), Ok(data))),
            },
            Err(e) => Err((e.clone(), Err(e))),
        };
        let mut s = lock(&self.state);
        match built {
            Ok((value, data)) => {
                if *s.built_from == data {
                    return; // a concurrent check got there first
                }
                let changed = self.changed(&s.built_from, &data);
                s.value = Arc::new(value);
                s.generation += 1;
                s.built_from = Arc::new(data);
                s.rejected = None;
                log::info!("{} reloaded generation={} changed={changed}", self.what, s.generation);
            }
            Err((why, seen)) => {
                if s.rejected.as_deref() != Some(&seen) {
                    // The error names the files and what is wrong with them, never their bytes.
                    let changed = seen.as_ref().map(|data| self.changed(&s.built_from, data)).unwrap_or_else(|_| "-".into());
                    log::warn!("{} not reloaded, keeping the previous ones changed={changed} error={why}", self.what);
                    s.rejected = Some(Arc::new(seen));
                }
            }
        }
    }

    /// The files whose bytes differ between `old` and `new`, comma-separated.
    fn changed(&self, old: &[Vec<u8>], new: &[Vec<u8>]) -> String {
        let names: Vec<String> = self.paths.iter().zip(old.iter().zip(new)).filter(|(_, (a, b))| a != b).map(|(p, _)| p.display().to_string()).collect();
        names.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::pki::{Ca, Pem};
    use crate::net::tls;
    use std::os::unix::fs::symlink;

    struct Dir(PathBuf);

    impl Dir {
        fn new() -> Dir {
            let d = std::env::temp_dir().join(format!("kubetape-reload-{}", crate::net::random::hex(8)));
            std::fs::create_dir_all(&d).unwrap();
            Dir(d)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A serving config and the leaf certificate it serves, built as the proxy does.
    struct Served {
        leaf: Vec<u8>,
        _config: Arc<rustls::ServerConfig>,
    }

    fn serving(dir: &Path, every: Duration) -> Reloading<Served> {
        crate::net::tls::install_provider();
        let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        let build = {
            let (cert, key) = (cert.clone(), key.clone());
            move |f: &Files<'_>| {
                let chain = tls::certs_from_pem(f.get(&cert)?, "cert")?;
                let leaf = chain[0].to_vec();
                Ok(Served { leaf, _config: tls::server_config(chain, tls::key_from_pem(f.get(&key)?, "key")?, None)? })
            }
        };
        Reloading::checking_every("test certificates", vec![cert, key], build, every).unwrap()
    }

    fn issue(ca: &Ca) -> Pem {
        ca.server("kubetape-proxy", &["127.0.0.1"]).unwrap()
    }

    fn leaf_of(pem: &Pem) -> Vec<u8> {
        tls::certs_from_pem(pem.cert.as_bytes(), "cert").unwrap()[0].to_vec()
    }

    fn write(dir: &Path, pem: &Pem) {
        std::fs::write(dir.join("tls.crt"), &pem.cert).unwrap();
        std::fs::write(dir.join("tls.key"), &pem.key).unwrap();
    }

    /// Calls `get` until `check` holds of its value, or panics at the deadline.
    fn until<T>(r: &Reloading<T>, what: &str, check: impl Fn(&T, u64) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (v, generation) = r.current();
            if check(&v, generation) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: not within 10 s (generation {generation})");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_changed_file_is_picked_up_and_the_generation_moves() {
        let dir = Dir::new();
        let ca = Ca::new("reload-test").unwrap();
        let (first, second) = (issue(&ca), issue(&ca));
        write(&dir.0, &first);
        let r = serving(&dir.0, Duration::ZERO);
        assert_eq!((r.get().leaf.clone(), r.generation()), (leaf_of(&first), 0));
        write(&dir.0, &second);
        until(&r, "the new certificate", |v, _| v.leaf == leaf_of(&second));
        assert_eq!(r.generation(), 1, "one reload for one change");
        // Unchanged files rebuild nothing.
        for _ in 0..3 {
            assert_eq!(r.generation(), 1);
        }
    }

    #[test]
    fn files_are_read_again_only_after_the_interval() {
        let dir = Dir::new();
        let ca = Ca::new("reload-test").unwrap();
        let (first, second) = (issue(&ca), issue(&ca));
        write(&dir.0, &first);
        let r = serving(&dir.0, Duration::from_secs(3600));
        write(&dir.0, &second);
        assert_eq!((r.get().leaf.clone(), r.generation()), (leaf_of(&first), 0), "not read again within the interval");
    }

    #[test]
    fn a_change_that_does_not_build_keeps_the_previous_value() {
        let dir = Dir::new();
        let ca = Ca::new("reload-test").unwrap();
        let (first, other, good) = (issue(&ca), issue(&ca), issue(&ca));
        write(&dir.0, &first);
        let r = serving(&dir.0, Duration::ZERO);
        // A key that does not match the certificate, then a half-written certificate.
        std::fs::write(dir.0.join("tls.key"), &other.key).unwrap();
        for _ in 0..3 {
            assert_eq!((r.get().leaf.clone(), r.generation()), (leaf_of(&first), 0), "a mismatched key is not taken");
        }
        let rejected = lock(&r.state).rejected.clone();
        assert!(matches!(rejected.as_deref(), Some(Ok(_))), "the bad change is remembered, so it is warned about once");
        std::fs::write(dir.0.join("tls.crt"), &good.cert[..good.cert.len() / 2]).unwrap();
        std::fs::write(dir.0.join("tls.key"), &good.key).unwrap();
        assert_eq!((r.get().leaf.clone(), r.generation()), (leaf_of(&first), 0), "a half-written certificate is not taken");
        // A missing file (read error) neither.
        std::fs::remove_file(dir.0.join("tls.crt")).unwrap();
        assert_eq!((r.get().leaf.clone(), r.generation()), (leaf_of(&first), 0), "a missing certificate is not taken");
        // Once the files are whole again, they are taken.
        write(&dir.0, &good);
        until(&r, "the good certificate", |v, g| v.leaf == leaf_of(&good) && g == 1);
        assert!(lock(&r.state).rejected.is_none());
    }

    /// Lays out `pem` as the kubelet does a Secret volume: the files in a directory of
    /// their own, `..data` a symlink to it, and the visible names symlinks through `..data`.
    fn kubelet_write(volume: &Path, stamp: &str, pem: &Pem) {
        let dir = volume.join(format!("..{stamp}"));
        std::fs::create_dir_all(&dir).unwrap();
        write(&dir, pem);
        let tmp = volume.join("..data_tmp");
        symlink(format!("..{stamp}"), &tmp).unwrap();
        // rename(2) swaps the symlink atomically: a reader sees the old set or the new.
        std::fs::rename(&tmp, volume.join("..data")).unwrap();
        for name in ["tls.crt", "tls.key"] {
            if std::fs::symlink_metadata(volume.join(name)).is_err() {
                symlink(format!("..data/{name}"), volume.join(name)).unwrap();
            }
        }
    }

    #[test]
    fn an_atomic_kubelet_swap_is_picked_up() {
        let volume = Dir::new();
        let (old_ca, new_ca) = (Ca::new("reload-old").unwrap(), Ca::new("reload-new").unwrap());
        let (first, renewed) = (issue(&old_ca), issue(&new_ca));
        kubelet_write(&volume.0, "2025_01_01_00_00_00.1", &first);
        let r = serving(&volume.0, Duration::ZERO);
        assert_eq!(r.get().leaf, leaf_of(&first));
        kubelet_write(&volume.0, "2026_01_01_00_00_00.2", &renewed);
        std::fs::remove_dir_all(volume.0.join("..2025_01_01_00_00_00.1")).unwrap();
        until(&r, "the renewed certificate", |v, g| v.leaf == leaf_of(&renewed) && g == 1);
    }
}
