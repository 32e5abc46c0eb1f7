//! The recorder's web UI (`--ui`): its pages and asciinema-player, embedded at build
//! time (`web/build.rs`), and browser sessions.
//!
//! A viewer signs in once with their Kubernetes token (`POST /ui/login`, the token in
//! the `Authorization` header, never in a URL or a body a log could keep); from then
//! on the cookie `__Host-kubetape` stands for it. The cookie is HttpOnly, Secure,
//! SameSite=Strict and expires after [`SESSION_LIFETIME`]. The token stays in this
//! process's memory only and is checked again (TokenReview, briefly cached) on every
//! request, so a revoked token ends the browser session too.
//!
//! The pages hold no recording data: every recording, event and view comes from the
//! JSON API, which requires a reader certificate, a token or a live session. They are
//! served with a Content-Security-Policy that allows the recorder's own scripts and
//! styles only (and WebAssembly, which the player's terminal emulator is).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ring::rand::{SecureRandom, SystemRandom};

use super::viewers::sha256;
use crate::net::sync::lock;
use crate::wire::http::Headers;

pub const COOKIE: &str = "__Host-kubetape";
/// How long a browser session lasts, however active.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(8 * 3600);
/// Browser sessions at once; past this (expired ones pruned first) a sign-in ends the
/// oldest session, so a full table never locks viewers out.
const MAX_SESSIONS: usize = 10_000;
/// Browser sessions of one user at once; a further sign-in ends their oldest. One
/// token signing in over and over cannot fill the table.
const MAX_SESSIONS_EACH: usize = 8;
/// Bytes of randomness in a session's cookie.
const SESSION_ID_BYTES: usize = 32;

/// Same origin only, and nothing inline: a recording's text is data the recorded user
/// wrote, so the page must never run or style what it shows.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; img-src 'self' data:; font-src 'self'; \
     connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The headers every recorder response carries: recording data is never cached, never
/// sniffed into another type, never framed, and links never leak the page's address.
pub fn security_headers(h: &mut Headers) {
    h.push("Cache-Control", "no-store");
    h.push("Cross-Origin-Resource-Policy", "same-origin");
    h.push("X-Content-Type-Options", "nosniff");
    h.push("Referrer-Policy", "no-referrer");
    h.push("X-Frame-Options", "DENY");
}

pub struct Asset {
    pub content_type: &'static str,
    pub body: &'static [u8],
}

/// The page, its script and style, and the player.
pub fn asset(path: &str) -> Option<Asset> {
    let (content_type, body): (&str, &[u8]) = match path {
        "/" | "/ui" | "/ui/" => ("text/html; charset=utf-8", include_bytes!("web/index.html")),
        "/ui/app.js" => ("text/javascript; charset=utf-8", include_bytes!("web/app.js")),
        "/ui/app.css" => ("text/css; charset=utf-8", include_bytes!("web/app.css")),
        "/ui/player.js" => ("text/javascript; charset=utf-8", include_bytes!(concat!(env!("OUT_DIR"), "/asciinema-player.min.js"))),
        "/ui/player.css" => ("text/css; charset=utf-8", include_bytes!(concat!(env!("OUT_DIR"), "/asciinema-player.css"))),
        _ => return None,
    };
    Some(Asset { content_type, body })
}

/// The `Set-Cookie` value that opens a browser session.
pub fn set_cookie(id: &str) -> String {
    format!("{COOKIE}={id}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}", SESSION_LIFETIME.as_secs())
}

/// The `Set-Cookie` value that ends one.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// The session cookie's value, if the request carries exactly one; `Err` for more
/// than one (which no browser sends for a `__Host-` cookie).
pub fn session_cookie(headers: &Headers) -> Result<Option<&str>, ()> {
    let mut found = None;
    for value in headers.get_all("cookie") {
        let Ok(value) = std::str::from_utf8(value) else { continue };
        for pair in value.split(';') {
            if let Some((name, v)) = pair.trim().split_once('=') {
                if name == COOKIE {
                    if found.is_some() {
                        return Err(());
                    }
                    found = Some(v);
                }
            }
        }
    }
    Ok(found)
}

/// Whether a state-changing request comes from the UI's own origin. Browsers send
/// `Origin` with every POST; a request without one is not a browser's, and SameSite
/// already keeps cookies from cross-site requests.
pub fn same_origin(headers: &Headers) -> bool {
    match (headers.get_str("origin"), headers.get_str("host")) {
        (None, _) => true,
        (Some(origin), Some(host)) => origin.strip_prefix("https://") == Some(host),
        (Some(_), None) => false,
    }
}

/// Whether a request made with the session cookie comes from the UI's own pages (or
/// the address bar): `Sec-Fetch-Site` says so in every browser that sends it; a
/// request without it is not a current browser's, and SameSite covers older ones.
pub fn from_the_ui(headers: &Headers) -> bool {
    headers.get_str("sec-fetch-site").is_none_or(|site| site == "same-origin" || site == "none")
}

struct Session {
    token: String,
    /// Who the cluster said the token is (name and uid).
    owner: String,
    opened: Instant,
}

/// Browser sessions, by the SHA-256 of their cookie's value (the map holds no cookie).
pub struct Sessions {
    open: Mutex<HashMap<[u8; 32], Session>>,
    random: SystemRandom,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions { open: Mutex::new(HashMap::new()), random: SystemRandom::new() }
    }
}

impl Sessions {
    /// A new session for `token`, which the cluster accepted as `owner`: its cookie
    /// value. The owner's oldest session ends past [`MAX_SESSIONS_EACH`], the oldest of
    /// all past [`MAX_SESSIONS`].
    pub fn open(&self, token: &str, owner: &str) -> Result<String, String> {
        let mut bytes = [0u8; SESSION_ID_BYTES];
        self.random.fill(&mut bytes).map_err(|_| "the system gave no random bytes".to_string())?;
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut open = lock(&self.open);
        let oldest =
            |open: &HashMap<[u8; 32], Session>, of: Option<&str>| open.iter().filter(|(_, s)| of.is_none_or(|o| s.owner == o)).min_by_key(|(_, s)| s.opened).map(|(k, _)| *k);
        if open.values().filter(|s| s.owner == owner).count() >= MAX_SESSIONS_EACH {
            if let Some(k) = oldest(&open, Some(owner)) {
                open.remove(&k);
            }
        }
        if open.len() >= MAX_SESSIONS {
            open.retain(|_, s| s.opened.elapsed() < SESSION_LIFETIME);
            if let Some(k) = oldest(&open, None).filter(|_| open.len() >= MAX_SESSIONS) {
                open.remove(&k);
            }
        }
        open.insert(sha256(&id), Session { token: token.to_string(), owner: owner.to_string(), opened: Instant::now() });
        Ok(id)
    }

    /// The token a live session stands for.
    pub fn token(&self, id: &str) -> Option<String> {
        let mut open = lock(&self.open);
        let k = sha256(id);
        match open.get(&k) {
            Some(s) if s.opened.elapsed() < SESSION_LIFETIME => Some(s.token.clone()),
            Some(_) => {
                open.remove(&k);
                None
            }
            None => None,
        }
    }

    pub fn close(&self, id: &str) {
        lock(&self.open).remove(&sha256(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Headers {
        let mut h = Headers::default();
        for (n, v) in pairs {
            h.push(n, *v);
        }
        h
    }

    #[test]
    fn a_session_stands_for_its_token_until_closed() {
        let s = Sessions::default();
        let (a, b) = (s.open("token-a", "alice").unwrap(), s.open("token-b", "bob").unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), 2 * SESSION_ID_BYTES);
        assert_eq!(s.token(&a).as_deref(), Some("token-a"));
        assert_eq!(s.token(&b).as_deref(), Some("token-b"));
        assert_eq!(s.token("0000"), None, "a made-up cookie stands for nothing");
        assert_eq!(s.token(&a[..a.len() - 1]), None, "nor does part of one");
        s.close(&a);
        assert_eq!(s.token(&a), None);
        assert_eq!(s.token(&b).as_deref(), Some("token-b"));
    }

    #[test]
    fn an_expired_session_is_gone() {
        let s = Sessions::default();
        let id = s.open("t", "alice").unwrap();
        lock(&s.open).values_mut().for_each(|x| x.opened -= SESSION_LIFETIME);
        assert_eq!(s.token(&id), None);
        assert!(lock(&s.open).is_empty(), "and forgotten");
    }

    #[test]
    fn one_user_signing_in_again_and_again_cannot_fill_the_table() {
        let s = Sessions::default();
        let alice = s.open("a", "alice").unwrap();
        let first = s.open("b", "bob").unwrap();
        let bobs: Vec<String> = (0..1000).map(|_| s.open("b", "bob").unwrap()).collect();
        assert_eq!(lock(&s.open).len(), 1 + MAX_SESSIONS_EACH, "bob holds at most {MAX_SESSIONS_EACH}");
        assert_eq!(s.token(&first), None, "bob's oldest went first");
        assert!(bobs[bobs.len() - MAX_SESSIONS_EACH..].iter().all(|b| s.token(b).is_some()));
        assert_eq!(s.token(&alice).as_deref(), Some("a"), "alice kept hers");
        // A full table ends its oldest session rather than refuse a sign-in.
        for i in 0..MAX_SESSIONS {
            s.open("t", &format!("user-{i}")).unwrap();
        }
        assert_eq!(lock(&s.open).len(), MAX_SESSIONS);
        assert_eq!(s.token(&alice), None);
        assert!(s.open("c", "carol").is_ok());
    }

    #[test]
    fn the_cookie_is_strict() {
        let c = set_cookie("abc");
        for part in ["__Host-kubetape=abc", "Path=/", "Secure", "HttpOnly", "SameSite=Strict", "Max-Age=28800"] {
            assert!(c.split("; ").any(|p| p == part), "{part} in {c}");
        }
        assert!(!c.contains("Domain"), "a __Host- cookie has no Domain");
        assert!(clear_cookie().ends_with("Max-Age=0"));
    }

    #[test]
    fn the_session_cookie_is_found_once() {
        assert_eq!(session_cookie(&headers(&[("Cookie", "a=1; __Host-kubetape=xyz; b=2")])), Ok(Some("xyz")));
        assert_eq!(session_cookie(&headers(&[("Cookie", "kubetape=xyz; __Host-kubetapeX=1")])), Ok(None), "only the exact name");
        assert_eq!(session_cookie(&headers(&[("Cookie", "__Host-kubetape=a"), ("Cookie", "__Host-kubetape=b")])), Err(()));
        assert_eq!(session_cookie(&headers(&[("Cookie", "__Host-kubetape=a; __Host-kubetape=b")])), Err(()));
        assert_eq!(session_cookie(&headers(&[])), Ok(None));
    }

    #[test]
    fn posts_from_another_origin_are_refused() {
        assert!(same_origin(&headers(&[("Host", "rec:8444"), ("Origin", "https://rec:8444")])));
        assert!(!same_origin(&headers(&[("Host", "rec:8444"), ("Origin", "https://evil.example")])));
        assert!(!same_origin(&headers(&[("Host", "rec:8444"), ("Origin", "http://rec:8444")])), "not over plain HTTP");
        assert!(!same_origin(&headers(&[("Origin", "https://rec:8444")])));
        assert!(same_origin(&headers(&[("Host", "rec:8444")])), "no Origin: not a browser");
    }

    #[test]
    fn the_cookie_serves_only_the_uis_own_pages() {
        assert!(from_the_ui(&headers(&[("Sec-Fetch-Site", "same-origin")])));
        assert!(from_the_ui(&headers(&[("Sec-Fetch-Site", "none")])), "typed into the address bar");
        assert!(from_the_ui(&headers(&[])));
        for site in ["same-site", "cross-site"] {
            assert!(!from_the_ui(&headers(&[("Sec-Fetch-Site", site)])), "{site}: an <img> on another port of this host");
        }
    }

    #[test]
    fn pages_allow_only_their_own_scripts() {
        let csp = CONTENT_SECURITY_POLICY;
        assert!(csp.starts_with("default-src 'none'"));
        assert!(!csp.contains("unsafe-inline") && !csp.contains("'unsafe-eval'") && !csp.contains("http"), "{csp}");
        for path in ["/", "/ui/app.js", "/ui/app.css", "/ui/player.js", "/ui/player.css"] {
            assert!(asset(path).is_some_and(|a| !a.body.is_empty()), "{path}");
        }
        assert!(asset("/ui/../Cargo.toml").is_none());
    }
}
