//! Pure header rewriting between client and upstream: what the API server sees of a
//! request and what the client sees of a response. Identity is decided here, once:
//! in `auth` mode nothing the client sent can name a user, a group or a credential.

use crate::kube::auth::UserInfo;
use crate::record::event::Impersonated;
use crate::wire::http::{BodyLength, Headers, RequestHead, ResponseHead};

/// Hop-by-hop fields (RFC 9110 section 7.6.1) never forwarded as they are.
const HOP_BY_HOP: &[&str] = &["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "proxy-authorization", "proxy-authenticate"];

/// Client fields that could assert an identity upstream, removed in `auth` mode.
/// `_` counts as `-`: Go keeps `Impersonate_User` apart, but a CGI-style layer
/// between the proxy and the API server may not.
fn is_identity_field(name: &str) -> bool {
    // Compared in place: this runs for every header of every request.
    let same = |a: u8, b: u8| a.eq_ignore_ascii_case(&b) || (a == b'_' && b == b'-');
    let is = |want: &str| name.len() == want.len() && name.bytes().zip(want.bytes()).all(|(a, b)| same(a, b));
    let starts = |want: &str| name.len() > want.len() && name.bytes().zip(want.bytes()).all(|(a, b)| same(a, b));
    is("authorization") || starts("impersonate-") || is("x-remote-user") || is("x-remote-group") || starts("x-remote-extra-")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The proxy authenticates callers and impersonates them with its own credentials.
    Auth,
    /// The proxy passes client credentials through and only records.
    NoAuth,
}

/// Fields that say where a message ends; the proxy writes its own from its framing
/// decision and never copies these, so no peer can make the next hop frame a body
/// differently.
const FRAMING: &[&str] = &["content-length", "transfer-encoding"];

/// Removes hop-by-hop fields, framing fields and any field the `Connection` header names.
fn strip_hop_by_hop(headers: &mut Headers) {
    let named: Vec<String> = headers.tokens("connection").map(str::to_string).collect();
    let listed = |list: &[&str], n: &str| list.iter().any(|x| x.eq_ignore_ascii_case(n));
    headers.retain(|h| !listed(HOP_BY_HOP, &h.name) && !listed(FRAMING, &h.name) && !named.iter().any(|x| x.eq_ignore_ascii_case(&h.name)));
}

/// Refuses a `Connection` header that names a field the proxy decides itself: framing,
/// `Host`, identity, or `Upgrade` on a request that does not upgrade. Dropping such a
/// field as hop-by-hop would let a client change what the next hop reads.
pub fn check_connection(head: &RequestHead) -> Result<(), String> {
    if head.headers.get_all("connection").any(|v| !v.is_ascii()) {
        return Err("the Connection header must be ASCII tokens".into());
    }
    for t in head.headers.tokens("connection") {
        let is = |n: &str| t.eq_ignore_ascii_case(n);
        let decided_here =
            FRAMING.iter().any(|f| is(f)) || is("host") || is_identity_field(t) || is("audit-id") || is("x-forwarded-for") || (is("upgrade") && head.upgrade().is_none());
        if decided_here {
            return Err(format!("the Connection header may not name {t:?}"));
        }
    }
    Ok(())
}

/// The framing fields for a body sent as `framing`.
fn push_framing(headers: &mut Headers, framing: BodyLength) {
    match framing {
        BodyLength::Length(n) => headers.push("Content-Length", n.to_string()),
        BodyLength::Chunked => headers.push("Transfer-Encoding", "chunked"),
        BodyLength::Empty | BodyLength::UntilClose => {}
    }
}

/// What identity to present upstream in `auth` mode.
pub struct Impersonation<'a> {
    pub user: &'a UserInfo,
    /// The caller's groups plus those their grants add, without duplicates.
    pub groups: Vec<String>,
}

impl Impersonation<'_> {
    /// The fields that ask the API server to act as this identity.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut h = vec![("Impersonate-User", self.user.name.clone())];
        if !self.user.uid.is_empty() {
            h.push(("Impersonate-Uid", self.user.uid.clone()));
        }
        h.extend(self.groups.iter().map(|g| ("Impersonate-Group", g.clone())));
        h
    }

    /// As the recording header and the API event state it.
    pub fn record(&self) -> Impersonated {
        Impersonated { user: self.user.name.clone(), uid: self.user.uid.clone(), groups: self.groups.clone() }
    }
}

/// Whether the client asked to impersonate someone (`kubectl --as`): in `auth` mode
/// the proxy decides the identity and drops the request, and tells the client so.
pub fn asks_to_impersonate(head: &RequestHead) -> bool {
    head.headers.0.iter().any(|h| h.name.get(..12).is_some_and(|p| p.eq_ignore_ascii_case("impersonate-")))
}

/// The `Warning` a client asking to impersonate gets (kubectl prints it on stderr).
pub const IMPERSONATION_IGNORED: &str = "299 - \"kubetape: --as and --as-group are not honoured through this proxy; the request ran as you\"";

/// How one request is forwarded.
pub struct Forwarding<'a> {
    pub mode: Mode,
    pub impersonate: Option<&'a Impersonation<'a>>,
    /// The proxy's own `Authorization` towards the API server, if it uses a token.
    pub upstream_auth: Option<&'a str>,
    pub upstream_host: &'a str,
    pub client_ip: &'a str,
    pub audit_id: &'a str,
}

/// Builds the request the API server receives.
pub fn upstream_request(client: &RequestHead, framing: BodyLength, f: &Forwarding<'_>) -> RequestHead {
    let Forwarding { mode, impersonate, upstream_auth, upstream_host, client_ip, audit_id } = *f;
    let mut head = RequestHead { method: client.method.clone(), target: client.target.clone(), headers: client.headers.clone() };
    let upgrade = client.upgrade().map(str::to_string);
    strip_hop_by_hop(&mut head.headers);
    let forwarded_for = head.headers.get_str("x-forwarded-for").map(|v| format!("{v}, {client_ip}"));
    head.headers.remove("x-forwarded-for");
    head.headers.remove("host");
    if mode == Mode::Auth {
        head.headers.retain(|h| !is_identity_field(&h.name));
        if let Some(auth) = upstream_auth {
            head.headers.push("Authorization", auth);
        }
        for (name, value) in impersonate.map(Impersonation::headers).unwrap_or_default() {
            head.headers.push(name, value);
        }
    }
    head.headers.0.insert(0, crate::wire::http::Header { name: "Host".into(), value: upstream_host.as_bytes().to_vec() });
    head.headers.push("X-Forwarded-For", forwarded_for.unwrap_or_else(|| client_ip.to_string()));
    // The API server logs this id in its audit events; ours carry the same, and no
    // client can choose it.
    head.headers.set("Audit-ID", audit_id);
    push_framing(&mut head.headers, framing);
    if let Some(proto) = upgrade {
        head.headers.push("Connection", "Upgrade");
        head.headers.push("Upgrade", proto);
    }
    head
}

/// Builds the response head the client receives, for a body re-framed as `framing`.
pub fn client_response(upstream: &ResponseHead, framing: BodyLength, close: bool) -> ResponseHead {
    let mut head = upstream.clone();
    let upgrade = (upstream.status == 101).then(|| upstream.headers.get("upgrade").map(<[u8]>::to_vec)).flatten();
    strip_hop_by_hop(&mut head.headers);
    push_framing(&mut head.headers, framing);
    // An empty body keeps its stated length (0, or a HEAD response's), as a number.
    if framing == BodyLength::Empty {
        if let Some(n) = upstream.headers.get_str("content-length").and_then(|v| v.trim().parse::<u64>().ok()) {
            head.headers.push("Content-Length", n.to_string());
        }
    }
    if let Some(proto) = upgrade {
        head.headers.push("Connection", "Upgrade");
        head.headers.push("Upgrade", proto);
    } else if close {
        head.headers.push("Connection", "close");
    }
    head
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::auth::AuthMethod;

    fn alice() -> UserInfo {
        UserInfo { name: "alice".into(), uid: String::new(), groups: vec!["sre".into()], method: AuthMethod::ClientCert }
    }

    fn spoofing_request() -> RequestHead {
        let mut h = RequestHead::new("POST", "/api/v1/namespaces/default/pods/web-0/exec?command=sh");
        for (n, v) in [
            ("Host", "proxy:8443"),
            ("Authorization", "Bearer stolen"),
            ("impersonate-user", "admin"),
            ("Impersonate-Group", "system:masters"),
            ("Impersonate-Extra-scopes", "x"),
            ("Impersonate-Uid", "0"),
            ("X-Remote-User", "admin"),
            ("Impersonate_User", "admin"),
            ("X_Remote_Group", "system:masters"),
            ("Connection", "Upgrade, X-Secret"),
            ("X-Secret", "hop"),
            ("Upgrade", "SPDY/3.1"),
            ("X-Stream-Protocol-Version", "v4.channel.k8s.io"),
            ("X-Forwarded-For", "10.0.0.9"),
            ("Audit-ID", "chosen-by-client"),
        ] {
            h.headers.push(n, v);
        }
        h
    }

    #[test]
    fn auth_mode_replaces_every_identity_field() {
        let user = alice();
        let imp = Impersonation { user: &user, groups: vec!["sre".into(), "system:masters".into()] };
        let f = Forwarding { mode: Mode::Auth, impersonate: Some(&imp), upstream_auth: Some("Bearer proxy"), upstream_host: "api:6443", client_ip: "192.0.2.1", audit_id: "id-1" };
        let out = upstream_request(&spoofing_request(), BodyLength::Empty, &f);
        let h = &out.headers;
        assert_eq!(h.get_all("authorization").collect::<Vec<_>>(), vec![&b"Bearer proxy"[..]]);
        assert_eq!(h.get_all("impersonate-user").collect::<Vec<_>>(), vec![&b"alice"[..]]);
        assert_eq!(h.get_all("impersonate-group").collect::<Vec<_>>(), vec![&b"sre"[..], &b"system:masters"[..]]);
        for gone in ["impersonate-extra-scopes", "impersonate-uid", "x-remote-user", "x-secret", "impersonate_user", "x_remote_group"] {
            assert_eq!(h.get(gone), None, "{gone}");
        }
        assert_eq!(h.get_str("host"), Some("api:6443"));
        assert_eq!(h.get_str("x-forwarded-for"), Some("10.0.0.9, 192.0.2.1"));
        assert_eq!(h.get_all("audit-id").collect::<Vec<_>>(), vec![&b"id-1"[..]]);
        assert_eq!(out.upgrade(), Some("SPDY/3.1"));
        assert_eq!(h.get_str("x-stream-protocol-version"), Some("v4.channel.k8s.io"));
    }

    #[test]
    fn auth_mode_without_upstream_token_sends_none() {
        let user = alice();
        let imp = Impersonation { user: &user, groups: vec![] };
        let f = Forwarding { mode: Mode::Auth, impersonate: Some(&imp), upstream_auth: None, upstream_host: "api", client_ip: "1.2.3.4", audit_id: "id-2" };
        let out = upstream_request(&spoofing_request(), BodyLength::Empty, &f);
        assert_eq!(out.headers.get("authorization"), None);
        assert_eq!(out.headers.get("impersonate-group"), None);
    }

    #[test]
    fn noauth_mode_passes_credentials_through() {
        let f = Forwarding { mode: Mode::NoAuth, impersonate: None, upstream_auth: None, upstream_host: "api", client_ip: "1.2.3.4", audit_id: "id-3" };
        let out = upstream_request(&spoofing_request(), BodyLength::Chunked, &f);
        assert_eq!(out.headers.get_str("authorization"), Some("Bearer stolen"));
        assert_eq!(out.headers.get_str("impersonate-user"), Some("admin"));
        assert_eq!(out.headers.get_str("transfer-encoding"), Some("chunked"));
        assert_eq!(out.headers.get("x-secret"), None);
    }

    #[test]
    fn framing_is_written_from_the_decision_never_copied() {
        let user = alice();
        let imp = Impersonation { user: &user, groups: vec!["sre".into()] };
        let f = Forwarding { mode: Mode::Auth, impersonate: Some(&imp), upstream_auth: None, upstream_host: "api", client_ip: "1.2.3.4", audit_id: "id" };
        let mut h = RequestHead::new("POST", "/api/v1/namespaces");
        h.headers.push("Content-Length", "007");
        h.headers.push("Connection", "keep-alive");
        let out = upstream_request(&h, BodyLength::Length(7), &f);
        assert_eq!(out.headers.get_all("content-length").collect::<Vec<_>>(), vec![&b"7"[..]]);
        assert_eq!(out.headers.get("transfer-encoding"), None);
        let out = upstream_request(&h, BodyLength::Chunked, &f);
        assert_eq!(out.headers.get("content-length"), None);
        assert_eq!(out.headers.get_str("transfer-encoding"), Some("chunked"));
    }

    #[test]
    fn connection_may_not_name_what_the_proxy_decides() {
        let with = |conn: &str, upgrade: Option<&str>| {
            let mut h = RequestHead::new("POST", "/api/v1/namespaces");
            h.headers.push("Connection", conn);
            if let Some(u) = upgrade {
                h.headers.push("Upgrade", u);
            }
            check_connection(&h)
        };
        for bad in [
            "Content-Length",
            "keep-alive, content-length",
            "transfer-encoding",
            "Host",
            "Authorization",
            "impersonate-user",
            "Impersonate-Group",
            "x-remote-user",
            "x-remote-extra-scopes",
            "audit-id",
            "upgrade",
        ] {
            assert!(with(bad, None).is_err(), "{bad}");
        }
        for good in ["keep-alive", "close", "Upgrade", "x-custom"] {
            assert_eq!(with(good, Some("SPDY/3.1")), Ok(()), "{good}");
        }
    }

    #[test]
    fn response_reframing() {
        let mut up = ResponseHead::new(200);
        up.headers.push("Transfer-Encoding", "chunked");
        up.headers.push("Connection", "keep-alive");
        up.headers.push("Content-Type", "application/json");
        let out = client_response(&up, BodyLength::Chunked, true);
        assert_eq!(out.headers.get_str("transfer-encoding"), Some("chunked"));
        assert_eq!(out.headers.get_str("connection"), Some("close"));
        assert_eq!(out.headers.count("transfer-encoding"), 1);
        let mut sw = ResponseHead::new(101);
        sw.headers.push("Connection", "Upgrade");
        sw.headers.push("Upgrade", "websocket");
        sw.headers.push("Sec-WebSocket-Protocol", "v5.channel.k8s.io");
        let out = client_response(&sw, BodyLength::Empty, false);
        assert_eq!(out.headers.get_str("upgrade"), Some("websocket"));
        assert_eq!(out.headers.get_str("sec-websocket-protocol"), Some("v5.channel.k8s.io"));
    }
}
