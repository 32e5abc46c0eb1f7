//! Real S3-compatible servers for the tests, on free loopback ports: `moto_server`
//! (AWS-like semantics, any credentials), read back over plain HTTP, never through
//! the recorder.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{eventually, free_port, port_alive, TempDir};

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
