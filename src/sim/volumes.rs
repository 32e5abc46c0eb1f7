//! A pod's volumes as the kubelet makes them, and the bind mounts that put them at
//! each container's `mountPath`.
//!
//! What a volume holds is decided by pure functions: the files of a `secret`,
//! `configMap`, `downwardAPI` or `projected` volume (`MakePayload`,
//! `downwardapi.CollectData` and the projected plugin's `collectData` in Kubernetes
//! 1.20: every key, or just `items`, with `defaultMode` or the item's `mode`); an
//! `emptyDir` is a directory of the pod; a `persistentVolumeClaim` is a directory per
//! claim under the data directory, kept across pods (there is no provisioner).
//! [`write_files`] does the file I/O: each changed file is written beside its place
//! and renamed over it, so a reader sees the old content or the new, never half.
//!
//! ```text
//!   DATA/.kubelet/pods/UID/volumes/NAME/...   secret, configMap, projected, emptyDir
//!   DATA/.kubelet/claims/NS/CLAIM/...         persistentVolumeClaim
//! ```

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use serde_json::Value;

use crate::sim::expand::expand;
use crate::sim::podrefs::{self, field_ref, object_data, Kind, Objects};
use crate::sim::process::BindMount;

/// `defaultMode` when the spec gives none (the API server defaults it to this too).
const DEFAULT_MODE: u32 = 0o644;
/// A projected token's lifetime when the spec gives none (the API server's default).
const DEFAULT_TOKEN_SECONDS: u64 = 3600;

/// A file of a volume: its bytes and permission bits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileData {
    pub data: Vec<u8>,
    pub mode: u32,
}

/// Relative path → file.
pub type Files = BTreeMap<String, FileData>;

/// What backs a volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A directory of the pod, empty at first, removed with the pod.
    EmptyDir,
    /// The claim's directory, kept across pods.
    Claim { name: String, read_only: bool },
    /// Files written from API objects and the pod's fields, refreshed while it runs.
    Files(Files),
}

impl Source {
    /// Secret, ConfigMap, downward API and projected volumes are mounted read-only
    /// whatever the mount says, as the kubelet has since 1.10.
    pub fn always_read_only(&self) -> bool {
        matches!(self, Source::Files(_))
    }
}

/// A relative path that stays inside its volume: not absolute, no `..`.
pub fn check_relative(path: &str) -> Result<(), String> {
    let p = Path::new(path);
    if path.is_empty() || p.is_absolute() || p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(format!("invalid path {path:?}: must be relative and may not contain '..'"));
    }
    Ok(())
}

fn mode_of(v: &Value, default: u32) -> u32 {
    v["mode"].as_u64().and_then(|m| u32::try_from(m).ok()).unwrap_or(default) & 0o7777
}

fn default_mode(v: &Value) -> u32 {
    v["defaultMode"].as_u64().and_then(|m| u32::try_from(m).ok()).unwrap_or(DEFAULT_MODE) & 0o7777
}

/// The files of a Secret or ConfigMap source (`MakePayload`): every key, or `items`.
fn payload(kind: Kind, src: &Value, mode: u32, objects: &mut dyn Objects, out: &mut Files) -> Result<(), String> {
    let name = src["name"].as_str().unwrap_or_default();
    let optional = src["optional"].as_bool().unwrap_or(false);
    let data = match objects.get(kind, name)? {
        Some(obj) => object_data(kind, &obj, false)?,
        None if optional => BTreeMap::new(),
        None => return Err(podrefs::not_found(kind, name)),
    };
    let items = src["items"].as_array().filter(|i| !i.is_empty());
    match items {
        None => {
            for (k, v) in data {
                out.insert(k, FileData { data: v, mode });
            }
        }
        Some(items) => {
            for item in items {
                let key = item["key"].as_str().unwrap_or_default();
                let path = item["path"].as_str().unwrap_or_default();
                check_relative(path)?;
                match data.get(key) {
                    Some(v) => {
                        out.insert(path.to_string(), FileData { data: v.clone(), mode: mode_of(item, mode) });
                    }
                    None if optional => {}
                    // The kubelet's two wordings.
                    None if kind == Kind::Secret => return Err(format!("references non-existent secret key: {key}")),
                    None => return Err(format!("configmap references non-existent config key: {key}")),
                }
            }
        }
    }
    Ok(())
}

/// The files of a downward API source (`downwardapi.CollectData`).
fn downward(pod: &Value, items: &Value, mode: u32, out: &mut Files) -> Result<(), String> {
    for item in items.as_array().into_iter().flatten() {
        let path = item["path"].as_str().unwrap_or_default();
        check_relative(path)?;
        let data = if item["fieldRef"].is_object() {
            field_ref(pod, item["fieldRef"]["fieldPath"].as_str().unwrap_or_default(), None)?
        } else {
            return Err(format!("downwardAPI item {path:?}: only fieldRef is supported by kubetape sim (resources are ignored)"));
        };
        out.insert(path.to_string(), FileData { data: data.into_bytes(), mode: mode_of(item, mode) });
    }
    Ok(())
}

/// What the volume `vol` of `pod` holds. An `Err` is why it cannot be set up now (a
/// missing Secret, say); the kubelet retries such a volume on later syncs.
pub fn source(pod: &Value, vol: &Value, objects: &mut dyn Objects) -> Result<Source, String> {
    let name = vol["name"].as_str().unwrap_or_default();
    let failed = |e: String| format!("MountVolume.SetUp failed for volume \"{name}\" : {e}");
    if vol["emptyDir"].is_object() {
        return Ok(Source::EmptyDir);
    }
    if let Some(pvc) = vol["persistentVolumeClaim"].as_object() {
        let claim = pvc.get("claimName").and_then(Value::as_str).unwrap_or_default();
        check_relative(claim).map_err(failed)?;
        return Ok(Source::Claim { name: claim.to_string(), read_only: pvc.get("readOnly").and_then(Value::as_bool).unwrap_or(false) });
    }
    let mut files = Files::new();
    if vol["secret"].is_object() {
        let s = &vol["secret"];
        // A secret volume names its Secret `secretName`.
        let src = serde_json::json!({"name": s["secretName"], "items": s["items"], "optional": s["optional"]});
        payload(Kind::Secret, &src, default_mode(s), objects, &mut files).map_err(failed)?;
    } else if vol["configMap"].is_object() {
        let c = &vol["configMap"];
        payload(Kind::ConfigMap, c, default_mode(c), objects, &mut files).map_err(failed)?;
    } else if vol["downwardAPI"].is_object() {
        let d = &vol["downwardAPI"];
        downward(pod, &d["items"], default_mode(d), &mut files).map_err(failed)?;
    } else if vol["projected"].is_object() {
        let p = &vol["projected"];
        let mode = default_mode(p);
        for s in p["sources"].as_array().into_iter().flatten() {
            if s["secret"].is_object() {
                payload(Kind::Secret, &s["secret"], mode, objects, &mut files).map_err(failed)?;
            } else if s["configMap"].is_object() {
                payload(Kind::ConfigMap, &s["configMap"], mode, objects, &mut files).map_err(failed)?;
            } else if s["downwardAPI"].is_object() {
                downward(pod, &s["downwardAPI"]["items"], mode, &mut files).map_err(failed)?;
            } else if s["serviceAccountToken"].is_object() {
                let t = &s["serviceAccountToken"];
                let path = t["path"].as_str().unwrap_or_default();
                check_relative(path).map_err(failed)?;
                let audience = t["audience"].as_str().filter(|a| !a.is_empty());
                let seconds = t["expirationSeconds"].as_u64().unwrap_or(DEFAULT_TOKEN_SECONDS);
                let token = objects.token(audience, seconds).map_err(failed)?;
                files.insert(path.to_string(), FileData { data: token.into_bytes(), mode });
            }
        }
    } else {
        let kind = vol.as_object().and_then(|o| o.keys().find(|k| *k != "name").cloned()).unwrap_or_default();
        return Err(failed(format!("volume type {kind:?} is not supported by kubetape sim")));
    }
    Ok(Source::Files(files))
}

/// Where a pod's volumes live on this host.
#[derive(Clone, Debug)]
pub struct Layout {
    /// `DATA/.kubelet/pods/UID`
    pub pod: PathBuf,
    /// `DATA/.kubelet/claims/NS`
    pub claims: PathBuf,
}

impl Layout {
    pub fn new(data_dir: &Path, ns: &str, uid: &str) -> Layout {
        // A namespace is a DNS label and a uid is a UUID: neither climbs out.
        let root = data_dir.join(".kubelet");
        Layout { pod: root.join("pods").join(uid), claims: root.join("claims").join(ns) }
    }

    /// The directory a volume is mounted from.
    pub fn dir(&self, name: &str, source: &Source) -> PathBuf {
        match source {
            Source::Claim { name: claim, .. } => self.claims.join(claim),
            _ => self.pod.join("volumes").join(name),
        }
    }
}

/// Makes `dir` hold `files`: a file whose bytes or mode differ is written to a
/// temporary name beside it and renamed over it; regular files not in `files` are
/// removed (directories are left: one may be another mount's mount point). Returns
/// whether anything changed.
pub fn write_files(dir: &Path, files: &Files) -> io::Result<bool> {
    std::fs::create_dir_all(dir)?;
    let mut changed = false;
    for (rel, f) in files {
        check_relative(rel).map_err(io::Error::other)?;
        let path = dir.join(rel);
        let same = std::fs::symlink_metadata(&path)
            .ok()
            .filter(|m| m.is_file() && m.permissions().mode() & 0o7777 == f.mode)
            .and_then(|_| std::fs::read(&path).ok())
            .is_some_and(|d| d == f.data);
        if same {
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = path.with_file_name(format!(".{file_name}.kubetape-tmp"));
        {
            let mut out = std::fs::File::create(&tmp)?;
            out.write_all(&f.data)?;
            out.set_permissions(std::fs::Permissions::from_mode(f.mode))?;
            out.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        changed = true;
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(entry.path());
                continue;
            }
            let rel = entry.path().strip_prefix(dir).map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
            if !files.contains_key(&rel) {
                std::fs::remove_file(entry.path())?;
                changed = true;
            }
        }
    }
    Ok(changed)
}

/// The bind mounts of `container`: each `volumeMount` from its volume's directory (or
/// a `subPath` in it, `subPathExpr` expanded against `env`) at `mountPath`, read-only
/// when the mount or the volume says so. Parents come before what is mounted inside
/// them.
pub fn container_mounts(container: &Value, volumes: &HashMap<String, (PathBuf, bool)>, env: &dyn Fn(&str) -> Option<String>) -> Result<Vec<BindMount>, String> {
    let mut mounts = Vec::new();
    for m in container["volumeMounts"].as_array().into_iter().flatten() {
        let name = m["name"].as_str().unwrap_or_default();
        let target = m["mountPath"].as_str().unwrap_or_default();
        if !target.starts_with('/') {
            return Err(format!("volumeMount {name:?}: mountPath {target:?} must be absolute"));
        }
        let (dir, volume_ro) = volumes.get(name).ok_or_else(|| format!("volumeMount {name:?}: no volume of that name"))?;
        let sub = match (m["subPath"].as_str().filter(|s| !s.is_empty()), m["subPathExpr"].as_str().filter(|s| !s.is_empty())) {
            (Some(s), _) => Some(s.to_string()),
            (None, Some(e)) => Some(expand(e, env)),
            (None, None) => None,
        };
        let source = match sub {
            Some(s) => {
                check_relative(&s).map_err(|e| format!("volumeMount {name:?}: subPath {e}"))?;
                dir.join(s)
            }
            None => dir.clone(),
        };
        let read_only = m["readOnly"].as_bool().unwrap_or(false) || *volume_ro;
        mounts.push(BindMount { source, target: PathBuf::from(target), read_only });
    }
    mounts.sort_by_key(|b| b.target.components().count());
    Ok(mounts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::podrefs::FixedObjects;
    use serde_json::json;

    fn pod() -> Value {
        json!({"metadata": {"name": "rec-0", "namespace": "kubetape", "uid": "u-2", "labels": {"app": "rec"}}, "spec": {"serviceAccountName": "rec"}})
    }

    fn objects() -> FixedObjects {
        FixedObjects::new(&[
            (Kind::Secret, json!({"metadata": {"name": "tls"}, "data": {"tls.crt": "Y2VydA==", "tls.key": "a2V5"}})),
            (Kind::ConfigMap, json!({"metadata": {"name": "policy"}, "data": {"policy.json": "{}"}, "binaryData": {"blob": "AQI="}})),
            (Kind::ConfigMap, json!({"metadata": {"name": "kube-root-ca.crt"}, "data": {"ca.crt": "CA"}})),
        ])
    }

    fn files(v: &[(&str, &[u8], u32)]) -> Source {
        Source::Files(v.iter().map(|(p, d, m)| (p.to_string(), FileData { data: d.to_vec(), mode: *m })).collect())
    }

    #[test]
    fn volume_contents() {
        let cases: Vec<(&str, Value, Result<Source, &str>)> = vec![
            ("emptyDir", json!({"name": "v", "emptyDir": {}}), Ok(Source::EmptyDir)),
            ("claim", json!({"name": "v", "persistentVolumeClaim": {"claimName": "data-rec-0"}}), Ok(Source::Claim { name: "data-rec-0".into(), read_only: false })),
            ("secret, every key", json!({"name": "v", "secret": {"secretName": "tls"}}), Ok(files(&[("tls.crt", b"cert", 0o644), ("tls.key", b"key", 0o644)]))),
            (
                "secret items and modes",
                json!({"name": "v", "secret": {"secretName": "tls", "defaultMode": 0o400, "items": [{"key": "tls.key", "path": "k/key.pem", "mode": 0o600}, {"key": "tls.crt", "path": "crt"}]}}),
                Ok(files(&[("crt", b"cert", 0o400), ("k/key.pem", b"key", 0o600)])),
            ),
            ("secret missing", json!({"name": "v", "secret": {"secretName": "gone"}}), Err("MountVolume.SetUp failed for volume \"v\" : secrets \"gone\" not found")),
            ("secret missing, optional", json!({"name": "v", "secret": {"secretName": "gone", "optional": true}}), Ok(files(&[]))),
            (
                "secret key missing",
                json!({"name": "v", "secret": {"secretName": "tls", "items": [{"key": "ca.crt", "path": "ca"}]}}),
                Err("MountVolume.SetUp failed for volume \"v\" : references non-existent secret key: ca.crt"),
            ),
            ("configMap with binaryData", json!({"name": "v", "configMap": {"name": "policy"}}), Ok(files(&[("blob", &[1, 2], 0o644), ("policy.json", b"{}", 0o644)]))),
            (
                "configMap key missing",
                json!({"name": "v", "configMap": {"name": "policy", "items": [{"key": "x", "path": "x"}]}}),
                Err("MountVolume.SetUp failed for volume \"v\" : configmap references non-existent config key: x"),
            ),
            (
                "path escapes",
                json!({"name": "v", "configMap": {"name": "policy", "items": [{"key": "policy.json", "path": "../x"}]}}),
                Err("MountVolume.SetUp failed for volume \"v\" : invalid path \"../x\": must be relative and may not contain '..'"),
            ),
            (
                "downwardAPI",
                json!({"name": "v", "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}, {"path": "ns", "fieldRef": {"fieldPath": "metadata.namespace"}, "mode": 0o600}]}}),
                Ok(files(&[("labels", b"app=\"rec\"", 0o644), ("ns", b"kubetape", 0o600)])),
            ),
            (
                "projected service account",
                json!({"name": "v", "projected": {"defaultMode": 0o420, "sources": [
                    {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}}
                ]}}),
                Ok(files(&[("ca.crt", b"CA", 0o420), ("namespace", b"kubetape", 0o420), ("token", b"token-for-test::3607", 0o420)])),
            ),
            (
                "projected token with audience",
                json!({"name": "v", "projected": {"sources": [{"serviceAccountToken": {"path": "t", "audience": "recorder"}}]}}),
                Ok(files(&[("t", b"token-for-test:recorder:3600", 0o644)])),
            ),
            (
                "hostPath",
                json!({"name": "v", "hostPath": {"path": "/etc"}}),
                Err("MountVolume.SetUp failed for volume \"v\" : volume type \"hostPath\" is not supported by kubetape sim"),
            ),
        ];
        for (name, vol, want) in cases {
            assert_eq!(source(&pod(), &vol, &mut objects()), want.map_err(String::from), "{name}");
        }
    }

    #[test]
    fn files_are_written_replaced_and_removed() {
        let dir = std::env::temp_dir().join(format!("kubetape-volumes-{}", crate::net::random::hex(6)));
        let Source::Files(first) = files(&[("a", b"1", 0o644), ("sub/b", b"2", 0o600)]) else { unreachable!() };
        assert!(write_files(&dir, &first).unwrap());
        assert_eq!(std::fs::read(dir.join("sub/b")).unwrap(), b"2");
        assert_eq!(std::fs::metadata(dir.join("sub/b")).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(!write_files(&dir, &first).unwrap(), "nothing changed");
        let a_inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(dir.join("a")).unwrap());
        let Source::Files(second) = files(&[("a", b"1", 0o644), ("c", b"3", 0o644)]) else { unreachable!() };
        assert!(write_files(&dir, &second).unwrap());
        assert!(!dir.join("sub/b").exists() && dir.join("sub").is_dir(), "the file goes, the directory stays");
        assert_eq!(std::fs::read(dir.join("c")).unwrap(), b"3");
        assert_eq!(std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(dir.join("a")).unwrap()), a_inode, "an unchanged file is not rewritten");
        let Source::Files(third) = files(&[("a", b"new", 0o644)]) else { unreachable!() };
        assert!(write_files(&dir, &third).unwrap());
        assert_eq!(std::fs::read(dir.join("a")).unwrap(), b"new");
        let names: Vec<String> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert!(!names.iter().any(|n| n.ends_with(".kubetape-tmp")), "{names:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn mounts_of_a_container() {
        let volumes: HashMap<String, (PathBuf, bool)> =
            [("token".to_string(), (PathBuf::from("/d/token"), true)), ("data".to_string(), (PathBuf::from("/d/data"), false))].into_iter().collect();
        let env = |n: &str| (n == "POD_NAME").then(|| "rec-0".to_string());
        let c = json!({"volumeMounts": [
            {"name": "data", "mountPath": "/var/lib/rec/sub", "subPathExpr": "$(POD_NAME)"},
            {"name": "token", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"},
            {"name": "data", "mountPath": "/var/lib", "readOnly": true},
        ]});
        let got = container_mounts(&c, &volumes, &env).unwrap();
        let want = vec![
            BindMount { source: "/d/data".into(), target: "/var/lib".into(), read_only: true },
            BindMount { source: "/d/data/rec-0".into(), target: "/var/lib/rec/sub".into(), read_only: false },
            BindMount { source: "/d/token".into(), target: "/var/run/secrets/kubernetes.io/serviceaccount".into(), read_only: true },
        ];
        assert_eq!(got, want);
        for (bad, want) in [
            (json!({"volumeMounts": [{"name": "nope", "mountPath": "/x"}]}), "volumeMount \"nope\": no volume of that name"),
            (json!({"volumeMounts": [{"name": "data", "mountPath": "x"}]}), "volumeMount \"data\": mountPath \"x\" must be absolute"),
            (
                json!({"volumeMounts": [{"name": "data", "mountPath": "/x", "subPath": "../../etc"}]}),
                "volumeMount \"data\": subPath invalid path \"../../etc\": must be relative and may not contain '..'",
            ),
        ] {
            assert_eq!(container_mounts(&bad, &volumes, &env), Err(want.to_string()));
        }
    }
}
