//! The proxy's policy file: recorders and grants (DESIGN.md, "Identity and policy"),
//! the pure decision of what a caller may do, and a watcher that reloads the file
//! when it changes and keeps the old policy when the new one is bad.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::thread;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use crate::error::{Context, Result};
use crate::kube::auth::UserInfo;

/// How often the policy file is checked for changes.
const RELOAD_POLL: Duration = Duration::from_secs(1);

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub recorders: Vec<RecorderSpec>,
    #[serde(default)]
    pub grants: Vec<Grant>,
    /// What API events keep of each request, in the spirit of audit policy levels.
    #[serde(default)]
    pub events: EventPolicy,
}

/// How much of a request its API event keeps.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
pub enum Level {
    /// No event at all.
    None,
    /// Who, what, when, and the response status (the default).
    #[default]
    Metadata,
    /// Metadata and the request body, up to `maxBodyBytes`.
    Request,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EventPolicy {
    #[serde(default)]
    pub rules: Vec<EventRule>,
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
}

fn default_max_body() -> usize {
    16 * 1024
}

impl Default for EventPolicy {
    fn default() -> Self {
        EventPolicy { rules: Vec::new(), max_body_bytes: default_max_body() }
    }
}

/// The first rule matching a request decides its level. Empty lists match anything;
/// resources may name a subresource as `pods/exec`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EventRule {
    pub level: Level,
    #[serde(default)]
    pub resources: Vec<String>,
    #[serde(default)]
    pub verbs: Vec<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
}

impl EventPolicy {
    /// The level for a request. Secret and TokenRequest bodies are never kept,
    /// whatever the rules say.
    pub fn level(&self, info: &crate::kube::request_info::RequestInfo) -> Level {
        let full = if info.subresource.is_empty() { info.resource.clone() } else { format!("{}/{}", info.resource, info.subresource) };
        let any = |list: &[String], v: &str| list.is_empty() || list.iter().any(|x| x == v || x == "*");
        let level = self
            .rules
            .iter()
            .find(|r| {
                (r.resources.is_empty() || r.resources.iter().any(|x| x == &full || x == &info.resource || x == "*"))
                    && any(&r.verbs, &info.verb)
                    && any(&r.namespaces, &info.namespace)
            })
            .map(|r| r.level)
            .unwrap_or_default();
        let sensitive = info.resource == "secrets" || info.subresource == "token" || info.resource == "tokenrequests";
        if level == Level::Request && sensitive {
            Level::Metadata
        } else {
            level
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RecorderSpec {
    pub name: String,
    pub url: String,
    #[serde(default)]
    pub tags: Vec<String>,
    pub ca_file: Option<PathBuf>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Grant {
    pub src: Vec<String>,
    #[serde(default)]
    pub impersonate: Impersonate,
    #[serde(default)]
    pub recorder: Vec<String>,
    #[serde(default)]
    pub enforce_recorder: bool,
    #[serde(default)]
    pub enable_events: bool,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Impersonate {
    #[serde(default)]
    pub groups: Vec<String>,
}

pub use crate::recording::fail::FailMode;

/// Everything the grants matching one caller add up to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grants {
    /// Extra groups to impersonate, besides the caller's own.
    pub groups: Vec<String>,
    pub recorder_tags: Vec<String>,
    pub fail_mode: FailMode,
    pub events: bool,
}

fn push_unique(list: &mut Vec<String>, items: &[String]) {
    for i in items {
        if !list.contains(i) {
            list.push(i.clone());
        }
    }
}

impl Policy {
    pub fn parse(text: &str) -> Result<Policy> {
        let policy: Policy = serde_json::from_str(text)?;
        for (i, g) in policy.grants.iter().enumerate() {
            if g.src.is_empty() {
                crate::bail!("grants[{i}].src: expected at least one entry");
            }
            for tag in &g.recorder {
                if !policy.recorders.iter().any(|r| r.tags.contains(tag) || &r.name == tag) {
                    log::warn!("policy grant names a recorder tag no recorder has grant={i} tag={tag}");
                }
            }
        }
        Ok(policy)
    }

    pub fn load(path: &Path) -> Result<Policy> {
        let text = crate::net::file::read_config_text(path)?;
        Policy::parse(&text).with_context(|| path.display().to_string())
    }

    /// The union of every grant matching `user`, or `None` when none matches.
    pub fn grants_for(&self, user: Option<&UserInfo>) -> Option<Grants> {
        let matches = |src: &String| match (src.as_str(), user) {
            ("*", _) => true,
            (s, Some(u)) => match s.strip_prefix("group:") {
                Some(g) => u.groups.iter().any(|ug| ug == g),
                None => s == u.name,
            },
            (_, None) => false,
        };
        let mut out: Option<Grants> = None;
        for g in self.grants.iter().filter(|g| g.src.iter().any(matches)) {
            let acc = out.get_or_insert_with(Grants::default);
            push_unique(&mut acc.groups, &g.impersonate.groups);
            push_unique(&mut acc.recorder_tags, &g.recorder);
            if g.enforce_recorder {
                acc.fail_mode = FailMode::Closed;
            }
            acc.events |= g.enable_events;
        }
        out
    }
}

/// The current policy, swapped atomically when the file changes.
pub struct PolicyHandle {
    current: RwLock<Arc<Policy>>,
}

impl PolicyHandle {
    pub fn new(policy: Policy) -> Arc<PolicyHandle> {
        Arc::new(PolicyHandle { current: RwLock::new(Arc::new(policy)) })
    }

    pub fn get(&self) -> Arc<Policy> {
        self.current.read().map(|p| p.clone()).unwrap_or_else(|e| e.into_inner().clone())
    }

    fn set(&self, policy: Policy) {
        match self.current.write() {
            Ok(mut p) => *p = Arc::new(policy),
            Err(e) => *e.into_inner() = Arc::new(policy),
        }
    }

    /// Loads `path` now, then reloads it on change from a background thread.
    pub fn watch(path: PathBuf) -> Result<Arc<PolicyHandle>> {
        let handle = PolicyHandle::new(Policy::load(&path)?);
        let stamp = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
        let mut seen = stamp(&path);
        let h = handle.clone();
        thread::Builder::new().name("policy-reload".into()).spawn(move || loop {
            thread::sleep(RELOAD_POLL);
            let now = stamp(&path);
            if now == seen {
                continue;
            }
            seen = now;
            match Policy::load(&path) {
                Ok(p) => {
                    log::info!("policy reloaded path={} grants={} recorders={}", path.display(), p.grants.len(), p.recorders.len());
                    h.set(p);
                }
                Err(e) => log::warn!("policy not reloaded, keeping the previous one path={} error={e}", path.display()),
            }
        })?;
        Ok(handle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::auth::AuthMethod;

    fn user(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo { name: name.into(), uid: String::new(), groups: groups.iter().map(|g| g.to_string()).collect(), method: AuthMethod::Token }
    }

    const DEMO: &str = r#"{
        "recorders": [{"name": "rec", "url": "https://127.0.0.1:1", "tags": ["tag:recorder"]}],
        "grants": [
            {"src": ["group:sre"], "impersonate": {"groups": ["system:masters"]}, "recorder": ["tag:recorder"], "enableEvents": true},
            {"src": ["bob"], "impersonate": {"groups": ["dev"]}, "recorder": ["tag:recorder"], "enforceRecorder": true},
            {"src": ["*"], "impersonate": {"groups": ["viewers"]}}
        ]
    }"#;

    #[test]
    fn grants_union_per_caller() {
        let p = Policy::parse(DEMO).unwrap();
        let cases: &[(&str, Option<UserInfo>, Grants)] = &[
            (
                "sre member",
                Some(user("alice", &["sre"])),
                Grants { groups: vec!["system:masters".into(), "viewers".into()], recorder_tags: vec!["tag:recorder".into()], fail_mode: FailMode::Open, events: true },
            ),
            (
                "bob is fail-closed",
                Some(user("bob", &["dev"])),
                Grants { groups: vec!["dev".into(), "viewers".into()], recorder_tags: vec!["tag:recorder".into()], fail_mode: FailMode::Closed, events: false },
            ),
            ("anyone", None, Grants { groups: vec!["viewers".into()], ..Grants::default() }),
        ];
        for (name, u, want) in cases {
            assert_eq!(p.grants_for(u.as_ref()).as_ref(), Some(want), "{name}");
        }
    }

    #[test]
    fn no_grant_is_none() {
        let p = Policy::parse(r#"{"grants": [{"src": ["group:sre"]}]}"#).unwrap();
        assert_eq!(p.grants_for(Some(&user("eve", &["group:sre", "sre-x"]))), None);
        assert_eq!(p.grants_for(None), None);
    }

    #[test]
    fn event_levels() {
        use crate::kube::request_info::request_info;
        let p = Policy::parse(
            r#"{"events": {"maxBodyBytes": 10, "rules": [
            {"level": "None", "resources": ["events"]},
            {"level": "Request", "resources": ["configmaps", "secrets", "serviceaccounts/token"], "verbs": ["create", "patch"]},
            {"level": "Request", "resources": ["*"], "namespaces": ["audited"]}
        ]}}"#,
        )
        .unwrap();
        let cases = [
            ("POST", "/api/v1/namespaces/a/configmaps", Level::Request),
            ("GET", "/api/v1/namespaces/a/configmaps", Level::Metadata),
            ("POST", "/api/v1/namespaces/a/secrets", Level::Metadata),
            ("POST", "/api/v1/namespaces/a/serviceaccounts/default/token", Level::Metadata),
            ("GET", "/api/v1/namespaces/a/events", Level::None),
            ("PUT", "/api/v1/namespaces/audited/pods/p", Level::Request),
            ("PUT", "/api/v1/namespaces/audited/secrets/s", Level::Metadata),
        ];
        for (m, path, want) in cases {
            assert_eq!(p.events.level(&request_info(m, path, "")), want, "{m} {path}");
        }
        assert_eq!(p.events.max_body_bytes, 10);
    }

    #[test]
    fn bad_files_are_errors() {
        assert!(Policy::parse(r#"{"grants": [{"src": []}]}"#).is_err());
        let e = Policy::parse(r#"{"grants": [{"src": ["a"], "enforceRecordr": true}]}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `enforceRecordr`"), "{e}");
    }
}
