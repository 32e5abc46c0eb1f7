//! Admission: whether a request may go on, decided from its head and what the proxy
//! knows of the caller, before anything is sent anywhere. Pure (no sockets, no
//! shared state; its one side effect is the no-grant log line), so every refusal is
//! tested here without a connection: framing, `Connection`, `Expect`, the path, then
//! who the caller is, their grants and whom they impersonate.

use crate::kube::auth::{self, TokenFile, UserInfo};
use crate::kube::request_info::{request_info, RequestInfo};
use crate::wire::http::{self, BodyLength, RequestHead};

use super::policy::{Grants, Policy};
use super::respond::Refusal;
use super::rewrite::{self, Impersonation, Mode};

/// What admission judges a request against.
pub struct Gate<'a, 'p> {
    /// The connection's number, for the log line of a refusal.
    pub conn: u64,
    pub mode: Mode,
    /// The user a verified client certificate names.
    pub cert_user: Option<&'a UserInfo>,
    pub tokens: Option<&'a TokenFile>,
    pub policy: &'p Policy,
    /// The proxy is shutting down (`/readyz` says so).
    pub stopping: bool,
}

/// A request that may go on.
pub struct Admitted<'a> {
    pub framing: BodyLength,
    /// The client asked to close the connection after this response.
    pub client_close: bool,
    /// The decoded path: what the API server routes, and what the request is classified on.
    pub path: String,
    pub info: RequestInfo,
    pub route: Route<'a>,
}

pub enum Route<'a> {
    /// Answered by the proxy itself (health checks), before any identity is asked for.
    Local(LocalReply),
    Upstream(Caller<'a>),
}

/// The proxy's own answer to a request.
#[derive(Debug, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u16,
    pub body: &'static str,
}

/// Who a forwarded request comes from, and what the policy grants them.
pub struct Caller<'a> {
    pub user: Option<&'a UserInfo>,
    pub grants: Option<Grants>,
    /// Whom to present upstream (auth mode only).
    pub impersonation: Option<Impersonation<'a>>,
}

impl Caller<'_> {
    /// The caller's name in log lines.
    pub fn who(&self) -> &str {
        self.user.map(|u| u.name.as_str()).unwrap_or("-")
    }
}

/// Admits or refuses the request `head`, rewriting its target into the canonical
/// encoding of the path it was classified on.
pub fn admit<'a>(head: &mut RequestHead, gate: &Gate<'a, '_>) -> Result<Admitted<'a>, Refusal> {
    let framing = http::request_body(head).map_err(|e| Refusal::BadRequest(e.to_string()))?;
    rewrite::check_connection(head).map_err(Refusal::BadRequest)?;
    // Go's server answers any other expectation 417; so does the proxy, rather
    // than forward what the API server would refuse after reading part of it.
    if let Some(e) = head.headers.get("expect").filter(|e| !e.eq_ignore_ascii_case(b"100-continue")) {
        return Err(Refusal::ExpectationFailed(String::from_utf8_lossy(e).into_owned()));
    }
    // Classified on the path the API server will route (Go decodes it first), and
    // forwarded in that path's canonical encoding, so what was classified is what
    // is routed.
    let path = http::decode_path(head.path()).map_err(|e| Refusal::BadRequest(e.to_string()))?;
    head.target = match head.query() {
        "" => http::encode_path(&path),
        q => format!("{}?{q}", http::encode_path(&path)),
    };
    let info = request_info(&head.method, &path, head.query());
    let client_close = head.headers.has_token("connection", "close");
    let route = match local_endpoint(head, gate.stopping) {
        Some(reply) => Route::Local(reply),
        None => Route::Upstream(identify(head, gate)?),
    };
    Ok(Admitted { framing, client_close, path, info, route })
}

/// The caller, their grants and whom they impersonate; in auth mode a caller with no
/// identity or no grant is refused (in noauth mode the API server judges).
fn identify<'a>(head: &RequestHead, gate: &Gate<'a, '_>) -> Result<Caller<'a>, Refusal> {
    let user = authenticate(head, gate);
    let grants = gate.policy.grants_for(user);
    let impersonation = match (gate.mode, user, &grants) {
        (Mode::Auth, None, _) => return Err(Refusal::Unauthenticated),
        (Mode::Auth, Some(u), None) => {
            log::info!("request refused conn={} user={} reason=no-grant", gate.conn, u.name);
            return Err(Refusal::Forbidden(format!("user {:?} matches no grant in the kubetape policy", u.name)));
        }
        (Mode::Auth, Some(u), Some(g)) => {
            let mut groups = u.groups.clone();
            for extra in &g.groups {
                if !groups.contains(extra) {
                    groups.push(extra.clone());
                }
            }
            Some(Impersonation { user: u, groups })
        }
        (Mode::NoAuth, _, _) => None,
    };
    Ok(Caller { user, grants, impersonation })
}

/// Who the caller is: a verified client certificate first, then a bearer token,
/// as kube-apiserver's union authenticator orders them.
fn authenticate<'a>(head: &RequestHead, gate: &Gate<'a, '_>) -> Option<&'a UserInfo> {
    if let Some(u) = gate.cert_user {
        return Some(u);
    }
    let token = auth::bearer_token(&head.headers)?;
    gate.tokens?.lookup(token)
}

fn local_endpoint(head: &RequestHead, stopping: bool) -> Option<LocalReply> {
    let reply = |status, body| Some(LocalReply { status, body });
    match (head.method.as_str(), head.path()) {
        ("GET", "/healthz") => reply(200, "ok"),
        ("GET", "/readyz") if stopping => reply(503, "shutting down"),
        ("GET", "/readyz") => reply(200, "ok"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::auth::AuthMethod;
    use crate::proxy::respond;

    const POLICY: &str = r#"{"grants": [
        {"src": ["group:sre"], "impersonate": {"groups": ["system:masters", "sre"]}, "enableEvents": true},
        {"src": ["bob"], "impersonate": {"groups": ["dev"]}}
    ]}"#;
    const TOKENS: &str = "t-bob,bob,2,\"dev\"\nt-eve,eve,3,\"\"\n";

    /// What a case expects: a refusal's status, a local answer's, or a forwarded
    /// request's caller, grant and impersonated groups.
    #[derive(Debug, PartialEq)]
    enum Want {
        Refused(u16),
        Local(u16),
        Upstream { user: Option<&'static str>, granted: bool, impersonated: Option<Vec<&'static str>> },
    }

    fn upstream(user: Option<&'static str>, granted: bool, impersonated: Option<&[&'static str]>) -> Want {
        Want::Upstream { user, granted, impersonated: impersonated.map(<[_]>::to_vec) }
    }

    fn outcome(r: Result<Admitted<'_>, Refusal>) -> Want {
        match r {
            Err(refusal) => Want::Refused(respond::decide(&refusal).0),
            Ok(Admitted { route: Route::Local(reply), .. }) => Want::Local(reply.status),
            Ok(Admitted { route: Route::Upstream(c), .. }) => Want::Upstream {
                user: c.user.map(|u| &*u.name.clone().leak()),
                granted: c.grants.is_some(),
                impersonated: c.impersonation.map(|i| i.groups.iter().map(|g| &*g.clone().leak()).collect()),
            },
        }
    }

    fn head(text: &str) -> RequestHead {
        let raw = format!("{text}\r\n\r\n");
        http::parse_request(raw.as_bytes()).unwrap().unwrap().0
    }

    #[test]
    fn mode_user_grant_and_bad_heads() {
        let policy = Policy::parse(POLICY).unwrap();
        let tokens = TokenFile::parse(TOKENS).unwrap();
        let alice = UserInfo { name: "alice".into(), uid: "1".into(), groups: vec!["sre".into()], method: AuthMethod::ClientCert };
        let get = "GET /api/v1/pods HTTP/1.1\r\nHost: k";
        let as_bob = "GET /api/v1/pods HTTP/1.1\r\nHost: k\r\nAuthorization: Bearer t-bob";
        let as_eve = "GET /api/v1/pods HTTP/1.1\r\nHost: k\r\nAuthorization: Bearer t-eve";
        let as_nobody = "GET /api/v1/pods HTTP/1.1\r\nHost: k\r\nAuthorization: Bearer t-unknown";
        let cases: &[(&str, Mode, Option<&UserInfo>, &str, Want)] = &[
            ("auth, certificate, granted", Mode::Auth, Some(&alice), get, upstream(Some("alice"), true, Some(&["sre", "system:masters"]))),
            ("auth, token, granted", Mode::Auth, None, as_bob, upstream(Some("bob"), true, Some(&["dev"]))),
            ("certificate before token", Mode::Auth, Some(&alice), as_bob, upstream(Some("alice"), true, Some(&["sre", "system:masters"]))),
            ("auth, token, no grant", Mode::Auth, None, as_eve, Want::Refused(403)),
            ("auth, unknown token", Mode::Auth, None, as_nobody, Want::Refused(401)),
            ("auth, no credentials", Mode::Auth, None, get, Want::Refused(401)),
            ("noauth, no credentials", Mode::NoAuth, None, get, upstream(None, false, None)),
            ("noauth, token, no grant", Mode::NoAuth, None, as_eve, upstream(Some("eve"), false, None)),
            ("noauth, certificate, granted", Mode::NoAuth, Some(&alice), get, upstream(Some("alice"), true, None)),
            ("health before identity", Mode::Auth, None, "GET /healthz HTTP/1.1\r\nHost: k", Want::Local(200)),
            ("health on its canonical path", Mode::Auth, None, "GET /%68ealthz HTTP/1.1\r\nHost: k", Want::Local(200)),
            ("health is GET only", Mode::Auth, None, "POST /healthz HTTP/1.1\r\nHost: k\r\nContent-Length: 0", Want::Refused(401)),
            ("bad framing", Mode::Auth, Some(&alice), "POST /api HTTP/1.1\r\nHost: k\r\nContent-Length: 1\r\nContent-Length: 2", Want::Refused(400)),
            ("Connection names a framing field", Mode::Auth, Some(&alice), "GET /api HTTP/1.1\r\nHost: k\r\nConnection: content-length", Want::Refused(400)),
            ("Connection names identity", Mode::NoAuth, None, "GET /api HTTP/1.1\r\nHost: k\r\nConnection: impersonate-user", Want::Refused(400)),
            ("Expect other than 100-continue", Mode::Auth, Some(&alice), "GET /api HTTP/1.1\r\nHost: k\r\nExpect: 200-ok", Want::Refused(417)),
            (
                "Expect 100-continue",
                Mode::Auth,
                Some(&alice),
                "GET /api HTTP/1.1\r\nHost: k\r\nExpect: 100-Continue",
                upstream(Some("alice"), true, Some(&["sre", "system:masters"])),
            ),
            ("bad escape in the path", Mode::Auth, Some(&alice), "GET /api/%zz HTTP/1.1\r\nHost: k", Want::Refused(400)),
            ("bad head before identity", Mode::Auth, None, "GET /api/%zz HTTP/1.1\r\nHost: k", Want::Refused(400)),
        ];
        for (name, mode, cert_user, text, want) in cases {
            let gate = Gate { conn: 1, mode: *mode, cert_user: *cert_user, tokens: Some(&tokens), policy: &policy, stopping: false };
            assert_eq!(&outcome(admit(&mut head(text), &gate)), want, "{name}");
        }
    }

    #[test]
    fn readiness_follows_shutdown() {
        let policy = Policy::default();
        for (stopping, want) in [(false, LocalReply { status: 200, body: "ok" }), (true, LocalReply { status: 503, body: "shutting down" })] {
            let gate = Gate { conn: 1, mode: Mode::Auth, cert_user: None, tokens: None, policy: &policy, stopping };
            match admit(&mut head("GET /readyz HTTP/1.1\r\nHost: k"), &gate).map(|a| a.route) {
                Ok(Route::Local(reply)) => assert_eq!(reply, want, "stopping={stopping}"),
                _ => panic!("stopping={stopping}: not answered locally"),
            }
        }
    }

    #[test]
    fn target_is_the_canonical_path_classified() {
        let policy = Policy::default();
        let gate = Gate { conn: 1, mode: Mode::NoAuth, cert_user: None, tokens: None, policy: &policy, stopping: false };
        let mut h = head("GET /api/v1/namespaces/%64efault/pods%2Fx?watch=1 HTTP/1.1\r\nHost: k\r\nConnection: close");
        let a = admit(&mut h, &gate).unwrap();
        assert_eq!(h.target, "/api/v1/namespaces/default/pods/x?watch=1");
        assert_eq!(a.path, "/api/v1/namespaces/default/pods/x");
        assert_eq!((a.info.namespace.as_str(), a.info.verb.as_str()), ("default", "watch"));
        assert!(a.client_close);
        assert_eq!(a.framing, BodyLength::Empty);
    }
}
