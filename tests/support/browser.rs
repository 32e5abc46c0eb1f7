//! A real browser for tests: headless Debian Chromium driven by ChromeDriver over the
//! W3C WebDriver protocol (JSON over HTTP on loopback, spoken here directly).
//! `scripts/test` installs both (`apt-get install chromium chromium-driver`); a test
//! that needs them fails, saying so, when they are missing.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use super::{eventually, free_port, TempDir};

const CHROMIUM: [&str; 2] = ["/usr/lib/chromium/chromium", "/usr/bin/chromium"];
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long the page may take to reach a state a test waits for.
pub const PAGE_WAIT: Duration = Duration::from_secs(30);

pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    /// Where screenshots go.
    pub shots: PathBuf,
    _profile: TempDir,
}

impl Browser {
    /// A new headless Chromium at 1280×800 that accepts the test PKI's certificates.
    pub fn start(shots: &Path) -> Browser {
        let chromium = CHROMIUM
            .iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or_else(|| panic!("Chromium is not installed ({CHROMIUM:?}); install it with: apt-get install chromium chromium-driver (scripts/test does)"));
        assert!(Path::new(CHROMEDRIVER).exists(), "ChromeDriver is not installed ({CHROMEDRIVER}); install it with: apt-get install chromium-driver (scripts/test does)");
        std::fs::create_dir_all(shots).expect("screenshot directory");
        let port = free_port();
        let profile = TempDir::new("chromium");
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(profile.0.join("chromedriver.log")).expect("driver log"))
            .spawn()
            .expect("starting chromedriver");
        let mut b = Browser { driver, port, session: String::new(), shots: shots.to_path_buf(), _profile: profile };
        eventually(PAGE_WAIT, || b.request("GET", "/status", None).map(|_| ()));
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            // The recorder's certificate is from the demo's own CA, on loopback.
            "acceptInsecureCerts": true,
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {"binary": chromium, "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,800",
                format!("--user-data-dir={}", b._profile.0.join("profile").display()),
            ]},
        }}});
        let created = b.request("POST", "/session", Some(caps)).unwrap_or_else(|e| panic!("starting Chromium: {e}"));
        b.session = created["sessionId"].as_str().expect("a session id").to_string();
        b
    }

    /// One WebDriver command: its `value`, or the error it answered.
    fn request(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(120))).map_err(|e| e.to_string())?;
        let head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
        s.write_all(head.as_bytes()).and_then(|()| s.write_all(body.as_bytes())).map_err(|e| e.to_string())?;
        // ChromeDriver keeps the connection open: read the head, then Content-Length bytes.
        let mut answer = Vec::new();
        let mut buf = [0u8; 64 * 1024];
        let (head, body) = loop {
            let n = s.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("connection closed before a whole response".into());
            }
            answer.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&answer);
            let Some((head, body)) = text.split_once("\r\n\r\n") else { continue };
            let length = head.lines().find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")).and_then(|(_, v)| v.trim().parse::<usize>().ok()));
            if length.is_some_and(|len| body.len() >= len) {
                break (head.to_string(), body.to_string());
            }
        };
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if head.starts_with("HTTP/1.1 200") {
            Ok(v["value"].clone())
        } else {
            Err(format!("{method} {path}: {}", v["value"]))
        }
    }

    fn command(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        self.request(method, &path, body).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn go(&self, url: &str) {
        self.command("POST", "/url", Some(json!({"url": url})));
    }

    pub fn script(&self, js: &str, args: Value) -> Value {
        self.command("POST", "/execute/sync", Some(json!({"script": js, "args": args})))
    }

    /// Runs `js`, whose last argument is the callback it calls with its answer.
    pub fn async_script(&self, js: &str, args: Value) -> Value {
        self.command("POST", "/execute/async", Some(json!({"script": js, "args": args})))
    }

    /// The visible text of the first element `css` selects (`""` when none does).
    pub fn text(&self, css: &str) -> String {
        self.script("const e = document.querySelector(arguments[0]); return e ? e.innerText : '';", json!([css])).as_str().unwrap_or_default().to_string()
    }

    /// Waits until the text of `css` satisfies `ok`; returns it.
    pub fn wait_text(&self, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        eventually(PAGE_WAIT, || {
            let t = self.text(css);
            if ok(&t) {
                Ok(t)
            } else {
                Err(format!("{what}: {css} shows {t:?}"))
            }
        })
    }

    fn element(&self, css: &str) -> Value {
        let found = eventually(PAGE_WAIT, || self.request("POST", &format!("/session/{}/element", self.session), Some(json!({"using": "css selector", "value": css}))));
        let id = found.as_object().and_then(|o| o.values().next()).cloned().expect("an element reference");
        id
    }

    /// Clicks the first element `css` selects, once there is one.
    pub fn click(&self, css: &str) {
        let id = self.element(css);
        let id = id.as_str().expect("element id");
        self.command("POST", &format!("/element/{id}/click"), Some(json!({})));
    }

    /// Types `text` into the first element `css` selects, as keystrokes.
    pub fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css);
        let id = id.as_str().expect("element id");
        self.command("POST", &format!("/element/{id}/clear"), Some(json!({})));
        self.command("POST", &format!("/element/{id}/value"), Some(json!({"text": text})));
    }

    /// Presses keys (WebDriver key codes, e.g. "\u{E007}" for Enter) on the focused element.
    pub fn keys(&self, keys: &str) {
        let actions: Vec<Value> = keys.chars().flat_map(|c| [json!({"type": "keyDown", "value": c.to_string()}), json!({"type": "keyUp", "value": c.to_string()})]).collect();
        self.command("POST", "/actions", Some(json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]})));
    }

    pub fn cookies(&self) -> Vec<Value> {
        self.command("GET", "/cookie", None).as_array().cloned().unwrap_or_default()
    }

    pub fn delete_cookies(&self) {
        self.command("DELETE", "/cookie", None);
    }

    pub fn set_size(&self, width: u32, height: u32) {
        self.command("POST", "/window/rect", Some(json!({"width": width, "height": height})));
    }

    /// What the page wrote to the console (and the browser's own messages about it,
    /// Content-Security-Policy refusals among them) since the last call.
    pub fn console(&self) -> Vec<String> {
        let logs = self.command("POST", "/se/log", Some(json!({"type": "browser"})));
        logs.as_array().map(|a| a.iter().map(|l| format!("{} {}", l["level"].as_str().unwrap_or(""), l["message"].as_str().unwrap_or(""))).collect()).unwrap_or_default()
    }

    /// Saves a PNG of the viewport as `<shots>/<name>.png`; returns its path.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let b64 = self.command("GET", "/screenshot", None);
        let png = kubetape::wire::base64::decode(b64.as_str().expect("base64 PNG")).expect("decoding the screenshot");
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("writing the screenshot");
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.request("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
