//! The simulated cluster's object store: JSON objects keyed by resource, namespace
//! and name, a resource version counter, label and field selectors, and watches fed
//! through bounded channels (a watcher that falls behind is dropped, as the API
//! server drops a slow watch, and the client re-lists).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde_json::{json, Value};

/// Events buffered per watcher before it counts as too slow.
const WATCH_BUFFER: usize = 1024;
/// Recent events kept so a watch can resume from a list's resourceVersion.
const HISTORY: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    pub resource: String,
    /// Empty for cluster-scoped resources.
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Debug)]
pub struct Event {
    pub kind: &'static str,
    pub key: Key,
    pub object: Value,
    pub rv: u64,
}

struct Watcher {
    resource: String,
    namespace: Option<String>,
    tx: Sender<Event>,
}

#[derive(Default)]
struct Inner {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Event>,
    watchers: Vec<Watcher>,
}

#[derive(Default)]
pub struct Store {
    inner: Mutex<Inner>,
}

pub use crate::wire::time::{now_rfc3339, parse_rfc3339};

#[derive(Debug, PartialEq, Eq)]
pub enum StoreError {
    NotFound,
    AlreadyExists,
    Conflict,
}

impl Inner {
    fn publish(&mut self, kind: &'static str, key: Key, object: Value) {
        let event = Event { kind, key, object, rv: self.rv };
        self.watchers.retain(|w| {
            if w.resource != event.key.resource || w.namespace.as_ref().is_some_and(|ns| *ns != event.key.namespace) {
                return true;
            }
            match w.tx.try_send(event.clone()) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    log::warn!("watch dropped: consumer too slow resource={}", w.resource);
                    false
                }
                Err(TrySendError::Disconnected(_)) => false,
            }
        });
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(event);
    }

    fn stamp(&mut self, obj: &mut Value) {
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
    }
}

impl Store {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    pub fn get(&self, key: &Key) -> Option<Value> {
        self.lock().objects.get(key).cloned()
    }

    pub fn list(&self, resource: &str, namespace: Option<&str>) -> (Vec<Value>, u64) {
        let inner = self.lock();
        let items = inner.objects.iter().filter(|(k, _)| k.resource == resource && namespace.is_none_or(|ns| k.namespace == ns)).map(|(_, v)| v.clone()).collect();
        (items, inner.rv)
    }

    /// Stores a new object, filling uid, creation time and resource version.
    pub fn create(&self, key: Key, mut obj: Value) -> Result<Value, StoreError> {
        let mut inner = self.lock();
        if inner.objects.contains_key(&key) {
            return Err(StoreError::AlreadyExists);
        }
        obj["metadata"]["uid"] = json!(new_uid());
        obj["metadata"]["creationTimestamp"] = json!(now_rfc3339());
        inner.stamp(&mut obj);
        inner.objects.insert(key.clone(), obj.clone());
        inner.publish("ADDED", key, obj.clone());
        Ok(obj)
    }

    /// Changes a stored object with `f`; `Conflict` if `expected_rv` is stale.
    pub fn update(&self, key: &Key, expected_rv: Option<&str>, f: impl FnOnce(&mut Value)) -> Result<Value, StoreError> {
        let mut inner = self.lock();
        let mut obj = inner.objects.get(key).cloned().ok_or(StoreError::NotFound)?;
        if let Some(rv) = expected_rv {
            if obj["metadata"]["resourceVersion"].as_str() != Some(rv) {
                return Err(StoreError::Conflict);
            }
        }
        f(&mut obj);
        if inner.objects.get(key) == Some(&obj) {
            return Ok(obj); // no-op updates do not bump the version, as in Kubernetes
        }
        inner.stamp(&mut obj);
        inner.objects.insert(key.clone(), obj.clone());
        inner.publish("MODIFIED", key.clone(), obj.clone());
        Ok(obj)
    }

    pub fn delete(&self, key: &Key) -> Result<Value, StoreError> {
        let mut inner = self.lock();
        let mut obj = inner.objects.remove(key).ok_or(StoreError::NotFound)?;
        inner.stamp(&mut obj);
        inner.publish("DELETED", key.clone(), obj.clone());
        Ok(obj)
    }

    /// Starts a watch. With `since`, replays the buffered events after it (when the
    /// history still reaches back that far); without, sends ADDED for what exists now.
    pub fn watch(&self, resource: &str, namespace: Option<&str>, since: Option<u64>) -> Receiver<Event> {
        let (tx, rx) = crossbeam_channel::bounded(WATCH_BUFFER);
        let mut inner = self.lock();
        let wanted = |k: &Key| k.resource == resource && namespace.is_none_or(|ns| k.namespace == ns);
        let backlog: Vec<Event> = match since {
            Some(rv) if inner.history.front().is_none_or(|e| e.rv <= rv + 1) => inner.history.iter().filter(|e| e.rv > rv && wanted(&e.key)).cloned().collect(),
            _ => {
                let rv = inner.rv;
                inner.objects.iter().filter(|(k, _)| wanted(k)).map(|(k, v)| Event { kind: "ADDED", key: k.clone(), object: v.clone(), rv }).collect()
            }
        };
        for e in backlog.into_iter().take(WATCH_BUFFER - 1) {
            let _ = tx.try_send(e);
        }
        inner.watchers.push(Watcher { resource: resource.into(), namespace: namespace.map(String::from), tx });
        rx
    }
}

pub use crate::net::random::uuid as new_uid;

/// A name suffix like the API server's generateName: 5 characters without vowels.
pub fn name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut b = [0u8; 5];
    crate::net::random::fill(&mut b);
    b.iter().map(|x| ALPHABET[*x as usize % ALPHABET.len()] as char).collect()
}

/// `key=value,key!=value,key` label selectors and `metadata.name=x` style field
/// selectors; `None` when the selector uses a form this simulator does not support.
pub fn matches_selector(obj: &Value, selector: &str, fields: bool) -> Option<bool> {
    for term in selector.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let (key, want, negate) = if let Some((k, v)) = term.split_once("!=") {
            (k, Some(v), true)
        } else if let Some((k, v)) = term.split_once("==") {
            (k, Some(v), false)
        } else if let Some((k, v)) = term.split_once('=') {
            (k, Some(v), false)
        } else if term.contains(' ') || term.contains('(') {
            return None;
        } else {
            (term, None, false)
        };
        let have = if fields {
            let path = format!("/{}", key.trim().replace('.', "/"));
            obj.pointer(&path).and_then(Value::as_str).map(String::from)
        } else {
            obj["metadata"]["labels"].get(key.trim()).and_then(Value::as_str).map(String::from)
        };
        let ok = match want {
            None => have.is_some(),
            Some(v) => have.as_deref() == Some(v.trim()),
        };
        if ok == negate {
            return Some(false);
        }
    }
    Some(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Key {
        Key { resource: "pods".into(), namespace: "default".into(), name: name.into() }
    }

    #[test]
    fn crud_and_watch() {
        let s = Store::default();
        let rx = s.watch("pods", Some("default"), None);
        let a = s.create(key("a"), json!({"metadata": {"name": "a", "labels": {"run": "a"}}})).unwrap();
        assert_eq!(s.create(key("a"), json!({})).unwrap_err(), StoreError::AlreadyExists);
        let rv = a["metadata"]["resourceVersion"].as_str().unwrap().to_string();
        s.update(&key("a"), Some(&rv), |o| o["status"] = json!({"phase": "Running"})).unwrap();
        assert_eq!(s.update(&key("a"), Some(&rv), |_| {}).unwrap_err(), StoreError::Conflict);
        s.delete(&key("a")).unwrap();
        let kinds: Vec<_> = rx.try_iter().map(|e| e.kind).collect();
        assert_eq!(kinds, vec!["ADDED", "MODIFIED", "DELETED"]);
        let replay: Vec<_> = s.watch("pods", None, Some(1)).try_iter().map(|e| e.kind).collect();
        assert_eq!(replay, vec!["MODIFIED", "DELETED"]);
    }

    #[test]
    fn selectors() {
        let o = json!({"metadata": {"name": "web-0", "labels": {"app": "web"}}});
        let cases = [
            ("app=web", false, Some(true)),
            ("app!=web", false, Some(false)),
            ("app", false, Some(true)),
            ("tier", false, Some(false)),
            ("metadata.name=web-0", true, Some(true)),
            ("metadata.name=x", true, Some(false)),
            ("app in (a,b)", false, None),
        ];
        for (sel, fields, want) in cases {
            assert_eq!(matches_selector(&o, sel, fields), want, "{sel}");
        }
    }
}
