//! Real S3-compatible servers for the tests, on free loopback ports: `moto_server`
//! (AWS-like semantics, any credentials), read back over plain HTTP, and `s3s-fs`
//! (verifies every SigV4 signature), read back from the plain files it keeps under
//! `DATA_DIR/bucket/key`; never through the recorder. Also the recorder command lines
//! the S3 tests share.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{eventually, free_port, port_alive, Demo, TempDir};

/// The bucket the tests store recordings in.
pub const BUCKET: &str = "kubetape-recordings";

/// Environment variables for a child.
pub type Env<'a> = &'a [(&'a str, &'a str)];

/// `moto_server` on a loopback port, killed on drop.
pub struct Moto {
    child: Child,
    pub port: u16,
    _dir: TempDir,
}

impl Moto {
    pub fn start() -> Moto {
        Moto::start_on(free_port())
    }

    /// A fresh moto (its state is in memory: no bucket) on `port`.
    pub fn start_on(port: u16) -> Moto {
        let dir = TempDir::new("moto");
        let on_path = Command::new("sh").args(["-c", "command -v moto_server"]).output().is_ok_and(|o| o.status.success());
        let mut c = if on_path {
            Command::new("moto_server")
        } else {
            let mut c = Command::new("python3");
            c.args(["-m", "moto.server"]);
            c
        };
        let log = dir.0.join("moto.log");
        let child = c
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("moto log"))
            .spawn()
            .expect("starting moto_server");
        let mut moto = Moto { child, port, _dir: dir };
        eventually(Duration::from_secs(30), || {
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!("moto_server exited ({status}): install it with `pip install 'moto[server]'` (scripts/test does): {}", std::fs::read_to_string(&log).unwrap_or_default());
            }
            if port_alive(port) {
                Ok(())
            } else {
                Err(format!("moto_server not listening on {port}"))
            }
        });
        moto
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// One plain HTTP/1.0 request (no chunked answers); status and body. moto refuses
    /// anonymous reads of objects but checks no signature, so any SigV4-shaped
    /// `Authorization` is enough.
    pub fn request(&self, method: &str, path: &str) -> (u16, Vec<u8>) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connecting to moto");
        let auth = "AWS4-HMAC-SHA256 Credential=test-key/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0";
        s.write_all(format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{}\r\nAuthorization: {auth}\r\nContent-Length: 0\r\n\r\n", self.port).as_bytes())
            .expect("request to moto");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).expect("response from moto");
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head");
        let head = String::from_utf8_lossy(&raw[..split]);
        let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("a status code");
        (status, raw[split + 4..].to_vec())
    }

    pub fn create_bucket(&self, name: &str) {
        let (status, body) = self.request("PUT", &format!("/{name}"));
        assert_eq!(status, 200, "creating bucket {name}: {}", String::from_utf8_lossy(&body));
    }

    /// Every key under `prefix` (ListObjectsV2, one page: tests store few).
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let (status, body) = self.request("GET", &format!("/{BUCKET}?list-type=2&prefix={prefix}"));
        assert_eq!(status, 200, "listing: {}", String::from_utf8_lossy(&body));
        String::from_utf8_lossy(&body).split("<Key>").skip(1).filter_map(|r| r.split("</Key>").next()).map(String::from).collect()
    }

    pub fn object(&self, key: &str) -> Option<Vec<u8>> {
        let (status, body) = self.request("GET", &format!("/{BUCKET}/{key}"));
        (status == 200).then_some(body)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How to install `s3s-fs` where [`S3sFs`] looks for it (TESTING.md: 0.14.1 is the
/// last version these machines' rustc builds); scripts/test runs it when missing.
pub const S3S_FS_INSTALL: &str = "cargo install s3s-fs --version 0.14.1 --features binary --locked --root ~/.cache/kubetape/s3s-fs";
/// s3s-fs is ready in milliseconds; this only bounds a broken start.
const S3S_FS_START: Duration = Duration::from_secs(20);

/// The `s3s-fs` binary: scripts/test's cache, else PATH; panics saying how to install it.
pub fn s3s_fs_binary() -> PathBuf {
    let cached = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/kubetape/s3s-fs/bin/s3s-fs"));
    if let Some(p) = cached.filter(|p| p.is_file()) {
        return p;
    }
    let found = Command::new("sh").args(["-c", "command -v s3s-fs"]).output().ok().filter(|o| o.status.success());
    match found.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => panic!("s3s-fs is not installed (neither ~/.cache/kubetape/s3s-fs/bin/s3s-fs nor on PATH): run scripts/test, which installs it, or `{S3S_FS_INSTALL}`"),
    }
}

/// `s3s-fs` on a loopback port with one access key and secret, killed on drop. It
/// checks every request's SigV4 signature, and keeps each object as the plain file
/// `DATA_DIR/bucket/key` (written aside, then renamed into place: a file there is a
/// whole object), which is how the tests read the bucket back. Its own bookkeeping
/// (metadata, multipart parts, temporary files) sits beside the buckets, in DATA_DIR.
pub struct S3sFs {
    child: Child,
    pub port: u16,
    /// DATA_DIR: one directory per bucket.
    pub data: PathBuf,
    log: PathBuf,
    _dir: TempDir,
}

impl S3sFs {
    pub fn start(access_key: &str, secret_key: &str) -> S3sFs {
        let dir = TempDir::new("s3s-fs");
        let data = dir.0.join("data");
        std::fs::create_dir_all(&data).expect("s3s-fs data dir");
        let log = dir.0.join("s3s-fs.log");
        let port = free_port();
        let child = Command::new(s3s_fs_binary())
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--access-key", access_key, "--secret-key", secret_key])
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.0.join("s3s-fs.out")).expect("s3s-fs stdout"))
            .stderr(std::fs::File::create(&log).expect("s3s-fs log"))
            .spawn()
            .expect("starting s3s-fs");
        let mut server = S3sFs { child, port, data, log, _dir: dir };
        eventually(S3S_FS_START, || {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("s3s-fs exited ({status}): {}", server.log());
            }
            if port_alive(port) {
                Ok(())
            } else {
                Err(format!("s3s-fs not listening on {port}: {}", server.log()))
            }
        });
        server
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// s3s-fs's CreateBucket is `mkdir DATA_DIR/bucket`, and a bucket is any directory
    /// there (HeadBucket and ListObjectsV2 check it exists), so the test makes it so.
    pub fn create_bucket(&self, name: &str) {
        std::fs::create_dir(self.data.join(name)).expect("creating the bucket directory");
    }

    /// Every key under `prefix` in [`BUCKET`], sorted: the files under its directory
    /// (deleting an object leaves its empty parent directories behind).
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        fn walk(dir: &Path, rel: &str, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).map(|d| d.flatten().collect::<Vec<_>>()).unwrap_or_default() {
                let name = format!("{rel}{}", e.file_name().to_string_lossy());
                match e.file_type() {
                    Ok(t) if t.is_dir() => walk(&e.path(), &format!("{name}/"), out),
                    Ok(t) if t.is_file() => out.push(name),
                    _ => {}
                }
            }
        }
        let mut keys = Vec::new();
        walk(&self.data.join(BUCKET), "", &mut keys);
        keys.retain(|k| k.starts_with(prefix));
        keys.sort();
        keys
    }

    /// The bytes of object `key` in [`BUCKET`], if it is there.
    pub fn object(&self, key: &str) -> Option<Vec<u8>> {
        std::fs::read(self.data.join(BUCKET).join(key)).ok()
    }

    /// The ETag s3s-fs keeps for object `key` in [`BUCKET`], from its internal info
    /// file `DATA_DIR/.bucket-B.object-K.internal.json` (B and K in unpadded URL-safe
    /// base64). A multipart upload's ends in `-N`, N its number of parts.
    pub fn e_tag(&self, key: &str) -> Option<String> {
        let b64 = |s: &str| kubetape::wire::base64::encode(s.as_bytes()).trim_end_matches('=').replace('+', "-").replace('/', "_");
        let info = std::fs::read(self.data.join(format!(".bucket-{}.object-{}.internal.json", b64(BUCKET), b64(key)))).ok()?;
        let info: serde_json::Value = serde_json::from_slice(&info).ok()?;
        info["e_tag"].as_str().map(String::from)
    }
}

impl Drop for S3sFs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of one sample on the demo recorder's `/metrics`.
pub fn recorder_metric(demo: &Demo, name: &str) -> u64 {
    recorder_metric_at(demo, demo.listen_port("recorder"), name)
}

/// [`recorder_metric`] of a recorder of the demo's PKI listening on `port`.
pub fn recorder_metric_at(demo: &Demo, port: u16, name: &str) -> u64 {
    let (status, text) = demo.recorder_get_at(port, Some("recorder-reader"), "/metrics");
    assert_eq!(status, 200, "{text}");
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or_else(|| panic!("no metric {name}:\n{text}"))
}

/// A recorder with the demo's PKI on `port`, spooling to `storage`, with `s3` flags
/// and only the AWS credentials in `creds` (none from the test's environment).
pub fn recorder(demo: &Demo, port: u16, storage: &Path, s3: &[&str], creds: Env) -> Command {
    let mut c = Command::new(super::BIN);
    c.args(recorder_args(demo, port, storage)).args(s3).stdin(Stdio::null());
    for v in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SHARED_CREDENTIALS_FILE"] {
        c.env_remove(v);
    }
    // No ~/.aws/credentials of the machine's either.
    c.env("HOME", storage).envs(creds.iter().copied());
    c
}

/// The demo recorder's command line with `--listen` and `--storage-dir` replaced.
pub fn recorder_args(demo: &Demo, port: u16, storage: &Path) -> Vec<String> {
    let cmdline = std::fs::read_to_string(demo.path("recorder.cmdline")).expect("recorder.cmdline");
    let mut args: Vec<String> = cmdline.split_whitespace().skip(1).map(String::from).collect();
    let set = |args: &mut Vec<String>, flag: &str, value: String| {
        let i = args.iter().position(|a| a == flag).expect(flag);
        args[i + 1] = value;
    };
    set(&mut args, "--listen", format!("127.0.0.1:{port}"));
    set(&mut args, "--storage-dir", storage.display().to_string());
    args
}

/// The spool's day folder of a recording (the bucket uses the same).
pub fn day(demo: &Demo, id: &str) -> String {
    demo.cast_path(id).parent().and_then(|d| d.file_name()).map(|d| d.to_string_lossy().into_owned()).expect("a day folder")
}
