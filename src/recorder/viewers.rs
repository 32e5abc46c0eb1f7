//! Viewers who hold a Kubernetes bearer token rather than a reader certificate (what
//! `kubectl create token` gives, or an OIDC token the cluster accepts). The token is
//! checked by TokenReview; each recording is then authorised by SubjectAccessReview
//! for verb `get` on the virtual resource `recordings.kubetape.dev` in the
//! recording's namespace, so who may watch which namespace's sessions is ordinary
//! RBAC (a Role granting `get` on `recordings` in group `kubetape.dev`).
//!
//! Answers are kept for [`CACHE_FOR`]: a list of many recordings asks once per
//! namespace, and a revoked binding or token stops working within that time. The API
//! server being unreachable is an error (503), never a grant. Tokens are not logged.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::kube::rest::Rest;
use crate::net::sync::lock;

/// The virtual resource a viewer needs `get` on, in the recording's namespace.
pub const GROUP: &str = "kubetape.dev";
pub const RESOURCE: &str = "recordings";
pub const VERB: &str = "get";
/// How long a TokenReview or SubjectAccessReview answer is reused.
const CACHE_FOR: Duration = Duration::from_secs(10);
/// Answers kept at once; past this the cache starts over (a flood of made-up tokens
/// must not grow it without bound).
const CACHE_MAX: usize = 4096;
/// A bearer token longer than this is refused unasked.
const MAX_TOKEN: usize = 16 * 1024;
/// TokenReviews in flight at once; more are answered 503 unasked, so callers with
/// made-up tokens cannot have the recorder flood the API server.
const MAX_REVIEWS_IN_FLIGHT: usize = 8;

/// Who a token belongs to, as the API server said.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Viewer {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    /// The user's extra attributes, which a SubjectAccessReview must carry too
    /// (scopes, for instance, may narrow what the user may do).
    pub extra: Vec<(String, Vec<String>)>,
}

/// The TokenReview for `token`.
pub fn token_review(token: &str) -> Value {
    json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}})
}

/// The viewer a TokenReview's answer names, when it authenticated the token.
pub fn viewer_from(review: &Value) -> Option<Viewer> {
    let s = &review["status"];
    if s["authenticated"] != json!(true) {
        return None;
    }
    let u = &s["user"];
    let name = u["username"].as_str().filter(|n| !n.is_empty())?.to_string();
    let strings = |v: &Value| v.as_array().map(|a| a.iter().filter_map(Value::as_str).map(String::from).collect::<Vec<_>>()).unwrap_or_default();
    let mut extra: Vec<(String, Vec<String>)> = u["extra"].as_object().map(|m| m.iter().map(|(k, v)| (k.clone(), strings(v))).collect()).unwrap_or_default();
    extra.sort();
    Some(Viewer { name, uid: u["uid"].as_str().unwrap_or_default().to_string(), groups: strings(&u["groups"]), extra })
}

/// The SubjectAccessReview asking whether `viewer` may watch recordings of `namespace`
/// (`""`: of requests to cluster-scoped resources, asked cluster-wide).
pub fn access_review(viewer: &Viewer, namespace: &str) -> Value {
    let extra: serde_json::Map<String, Value> = viewer.extra.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": {
        "user": viewer.name, "uid": viewer.uid, "groups": viewer.groups, "extra": extra,
        "resourceAttributes": {"verb": VERB, "group": GROUP, "resource": RESOURCE, "namespace": namespace}}})
}

/// Whether a SubjectAccessReview's answer allows: `allowed` true and not `denied`.
pub fn allowed(review: &Value) -> bool {
    review["status"]["allowed"] == json!(true) && review["status"]["denied"] != json!(true)
}

/// The SHA-256 of a secret (a token, a session cookie): what caches and maps keep
/// instead of it.
pub(super) fn sha256(secret: &str) -> [u8; 32] {
    let mut k = [0u8; 32];
    k.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, secret.as_bytes()).as_ref());
    k
}

/// The token of an `Authorization: Bearer` value.
pub fn bearer(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && token.len() <= MAX_TOKEN && token.bytes().all(|b| b.is_ascii_graphic())).then_some(token)
}

/// Answers with when they were had, bounded.
struct Cache<K, V> {
    entries: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: std::hash::Hash + Eq, V: Clone> Cache<K, V> {
    fn new() -> Self {
        Cache { entries: Mutex::new(HashMap::new()) }
    }

    fn get(&self, k: &K) -> Option<V> {
        let mut e = lock(&self.entries);
        match e.get(k) {
            Some((at, v)) if at.elapsed() < CACHE_FOR => Some(v.clone()),
            Some(_) => {
                e.remove(k);
                None
            }
            None => None,
        }
    }

    fn put(&self, k: K, v: V) {
        let mut e = lock(&self.entries);
        if e.len() >= CACHE_MAX {
            e.retain(|_, (at, _)| at.elapsed() < CACHE_FOR);
            if e.len() >= CACHE_MAX {
                e.clear();
            }
        }
        e.insert(k, (Instant::now(), v));
    }
}

/// Whose recordings a request may read.
pub enum Access {
    /// A reader certificate (its CN): all of them.
    Reader(String),
    /// A viewer's token: those of the namespaces RBAC lets them watch. The token is
    /// kept for the request only, to ask again during a long one (a follow).
    Viewer(Viewer, String),
}

impl Access {
    /// Whether the recordings of `namespace` may be read; an error when the cluster
    /// could not be asked (never taken as a yes).
    pub fn may_view(&self, viewers: Option<&Viewers>, namespace: &str) -> Result<bool, String> {
        match (self, viewers) {
            (Access::Reader(_), _) => Ok(true),
            (Access::Viewer(v, _), Some(viewers)) => viewers.may_view(v, namespace),
            (Access::Viewer(..), None) => Ok(false),
        }
    }

    /// Who this is, as the record of views names them.
    pub fn who(&self) -> super::views::By {
        let (kind, name, uid) = match self {
            Access::Reader(cn) => ("certificate", cn, ""),
            Access::Viewer(v, _) => ("user", &v.name, v.uid.as_str()),
        };
        super::views::By { kind: kind.into(), name: name.clone(), uid: uid.into() }
    }

    /// [`Access::may_view`] asked again later in a request: the token must still be
    /// accepted, as the same user, and the namespace still allowed. An unanswered
    /// question is a no here: the request is already under way.
    pub fn still_may_view(&self, viewers: Option<&Viewers>, namespace: &str) -> bool {
        match (self, viewers) {
            (Access::Reader(_), _) => true,
            (Access::Viewer(v, token), Some(viewers)) => viewers.authenticate(token).is_ok_and(|now| now.as_ref() == Some(v)) && viewers.may_view(v, namespace).unwrap_or(false),
            (Access::Viewer(..), None) => false,
        }
    }
}

/// TokenReview and SubjectAccessReview against the cluster (`--viewers-from-cluster`).
pub struct Viewers {
    rest: Rest,
    /// By the token's SHA-256: the cache never holds a token.
    tokens: Cache<[u8; 32], Option<Viewer>>,
    access: Cache<(Viewer, String), bool>,
    reviews_in_flight: std::sync::atomic::AtomicUsize,
}

/// Gives back a TokenReview's place when it is done.
struct InFlight<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl Viewers {
    pub fn new(rest: Rest) -> Viewers {
        Viewers { rest, tokens: Cache::new(), access: Cache::new(), reviews_in_flight: Default::default() }
    }

    /// Who `token` belongs to; `Ok(None)` when the API server does not accept it.
    pub fn authenticate(&self, token: &str) -> Result<Option<Viewer>, String> {
        let key = sha256(token);
        if let Some(v) = self.tokens.get(&key) {
            return Ok(v);
        }
        let _place = self.review_place()?;
        let answer = self.rest.create("/apis/authentication.k8s.io/v1/tokenreviews", &token_review(token)).map_err(|e| format!("TokenReview: {e}"))?;
        let viewer = viewer_from(&answer);
        self.tokens.put(key, viewer.clone());
        Ok(viewer)
    }

    fn review_place(&self) -> Result<InFlight<'_>, String> {
        use std::sync::atomic::Ordering;
        let taken = self.reviews_in_flight.fetch_add(1, Ordering::AcqRel);
        let place = InFlight(&self.reviews_in_flight);
        if taken >= MAX_REVIEWS_IN_FLIGHT {
            return Err(format!("{MAX_REVIEWS_IN_FLIGHT} token reviews are in flight already"));
        }
        Ok(place)
    }

    /// Whether `viewer` may watch the recordings of `namespace`.
    pub fn may_view(&self, viewer: &Viewer, namespace: &str) -> Result<bool, String> {
        let key = (viewer.clone(), namespace.to_string());
        if let Some(a) = self.access.get(&key) {
            return Ok(a);
        }
        let answer = self.rest.create("/apis/authorization.k8s.io/v1/subjectaccessreviews", &access_review(viewer, namespace)).map_err(|e| format!("SubjectAccessReview: {e}"))?;
        let ok = allowed(&answer);
        log::debug!("viewer access user={} namespace={namespace:?} allowed={ok}", viewer.name);
        self.access.put(key, ok);
        Ok(ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_review_names_the_viewer_only_when_it_authenticated() {
        let ok = json!({"status": {"authenticated": true, "user": {"username": "system:serviceaccount:team:alice", "uid": "u-1",
            "groups": ["system:serviceaccounts", "system:authenticated"], "extra": {"scopes": ["view"], "a": []}}}});
        let v = viewer_from(&ok).unwrap();
        assert_eq!((v.name.as_str(), v.uid.as_str(), v.groups.len()), ("system:serviceaccount:team:alice", "u-1", 2));
        assert_eq!(v.extra, vec![("a".to_string(), vec![]), ("scopes".to_string(), vec!["view".to_string()])]);
        for refused in [
            json!({"status": {"authenticated": false, "user": {"username": "alice"}}}),
            json!({"status": {"authenticated": "true", "user": {"username": "alice"}}}),
            json!({"status": {"authenticated": true, "user": {"username": ""}}}),
            json!({"status": {"authenticated": true}}),
            json!({"status": {"error": "token expired"}}),
            json!({}),
        ] {
            assert_eq!(viewer_from(&refused), None, "{refused}");
        }
    }

    #[test]
    fn the_access_review_asks_for_the_viewer_as_authenticated_and_the_recordings_namespace() {
        let v = Viewer { name: "alice".into(), uid: "u-1".into(), groups: vec!["team".into()], extra: vec![("scopes".into(), vec!["view".into()])] };
        let r = access_review(&v, "prod");
        assert_eq!(r["spec"]["resourceAttributes"], json!({"verb": "get", "group": "kubetape.dev", "resource": "recordings", "namespace": "prod"}));
        assert_eq!((r["spec"]["user"].clone(), r["spec"]["uid"].clone(), r["spec"]["groups"].clone()), (json!("alice"), json!("u-1"), json!(["team"])));
        assert_eq!(r["spec"]["extra"], json!({"scopes": ["view"]}));
    }

    #[test]
    fn only_an_explicit_allow_allows() {
        assert!(allowed(&json!({"status": {"allowed": true}})));
        for no in [json!({"status": {"allowed": false}}), json!({"status": {"allowed": true, "denied": true}}), json!({"status": {"allowed": "true"}}), json!({})] {
            assert!(!allowed(&no), "{no}");
        }
    }

    #[test]
    fn bearer_takes_one_well_formed_token() {
        assert_eq!(bearer("Bearer abc.def"), Some("abc.def"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        for bad in ["Basic abc", "Bearer", "Bearer ", "Bearer a b", "abc", "Bearer a\u{7f}"] {
            assert_eq!(bearer(bad), None, "{bad:?}");
        }
        assert_eq!(bearer(&format!("Bearer {}", "a".repeat(MAX_TOKEN + 1))), None);
    }

    #[test]
    fn the_cache_forgets_when_full() {
        let c: Cache<usize, bool> = Cache::new();
        for i in 0..CACHE_MAX + 10 {
            c.put(i, true);
        }
        assert!(lock(&c.entries).len() <= CACHE_MAX);
        assert_eq!(c.get(&(CACHE_MAX + 9)), Some(true));
    }
}
