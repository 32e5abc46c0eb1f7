//! Bringing one object to what the builders want: create it when missing, leave it
//! when it already holds everything wanted, otherwise write the wanted fields over
//! what the API server keeps (defaults, `clusterIP`, status), refusing to take over
//! an object another owner controls.

use serde_json::{json, Value};

use super::quantity;
use crate::kube::rest::{CallError, Rest};

/// The digest of what was last applied, so a field removed from the spec is noticed
/// even though the live object still holds everything now wanted.
const APPLIED: &str = "kubetape.dev/applied";

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Applied {
    Created,
    Updated,
    Unchanged,
    /// Being replaced: a field the API server will not change in place did change,
    /// so the old object is deleted and the new one made when it is gone.
    Replacing,
}

#[derive(Debug)]
pub enum ApplyError {
    /// The object exists and its controller is someone else.
    NotOurs(String),
    Api(CallError),
}

impl std::fmt::Display for ApplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApplyError::NotOurs(m) => f.write_str(m),
            ApplyError::Api(e) => e.fmt(f),
        }
    }
}

impl From<CallError> for ApplyError {
    fn from(e: CallError) -> Self {
        ApplyError::Api(e)
    }
}

/// `/api/v1/namespaces/NS/services` and the like, for the kinds the operator owns.
pub fn collection(kind: &str, namespace: &str) -> String {
    if kind == "ClusterRoleBinding" {
        return VIEWERS_BINDINGS.into();
    }
    let (prefix, plural) = match kind {
        "StatefulSet" => ("/apis/apps/v1", "statefulsets"),
        "Service" => ("/api/v1", "services"),
        "ServiceAccount" => ("/api/v1", "serviceaccounts"),
        "Secret" => ("/api/v1", "secrets"),
        "ConfigMap" => ("/api/v1", "configmaps"),
        "Event" => ("/api/v1", "events"),
        _ => ("/api/v1", "unknown"),
    };
    format!("{prefix}/namespaces/{namespace}/{plural}")
}

pub const VIEWERS_BINDINGS: &str = "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings";

/// Applies `want` (a whole object with kind, namespace and name).
pub fn apply(rest: &Rest, mut want: Value) -> Result<Applied, ApplyError> {
    let kind = want["kind"].as_str().unwrap_or_default().to_string();
    let (ns, name) = (want["metadata"]["namespace"].as_str().unwrap_or_default().to_string(), want["metadata"]["name"].as_str().unwrap_or_default().to_string());
    let digest = super::build::digest(&[&super::build::canonical(&want).to_string()]);
    want["metadata"]["annotations"][APPLIED] = json!(digest);
    let coll = collection(&kind, &ns);
    let path = format!("{coll}/{name}");
    let Some(live) = rest.get(&path)? else {
        rest.create(&coll, &want)?;
        return Ok(Applied::Created);
    };
    if let Some(theirs) = foreign_controller(&live, &want) {
        return Err(ApplyError::NotOurs(format!("{kind} {ns}/{name} exists and is controlled by {theirs}; delete or rename it")));
    }
    if live["metadata"]["annotations"][APPLIED] == json!(digest) && contains(&live, &want) {
        return Ok(Applied::Unchanged);
    }
    if !live["metadata"]["deletionTimestamp"].is_null() {
        // Made again once the garbage collector has let it go (a create before
        // then is a conflict).
        return Ok(Applied::Replacing);
    }
    if kind == "StatefulSet" && !same_immutable(&live, &want) {
        // Its pods are orphaned, not deleted: the next StatefulSet adopts them (same
        // selector) and rolls them one by one.
        log::info!("recorder object replacing ns={ns} object={kind} {name}: its claim template changed, which the API server will not update in place");
        match rest.delete(&path, "Orphan") {
            Err(e) if e.code() != Some(404) => return Err(e.into()),
            _ => return Ok(Applied::Replacing),
        }
    }
    if kind == "StatefulSet" {
        // They hold what is wanted (`same_immutable`): sent back as stored, since
        // any difference, even `1Gi` for `1024Mi`, is an update the server refuses.
        match live["spec"].get("volumeClaimTemplates") {
            Some(claims) => want["spec"]["volumeClaimTemplates"] = claims.clone(),
            None => drop(want["spec"].as_object_mut().and_then(|s| s.remove("volumeClaimTemplates"))),
        }
    }
    let mut next = live.clone();
    overlay(&mut next, &want, &kind);
    rest.replace(&path, &next)?;
    Ok(Applied::Updated)
}

/// Who controls `live`, when it is not the owner `want` names.
fn foreign_controller(live: &Value, want: &Value) -> Option<String> {
    let controller = |v: &Value| v["metadata"]["ownerReferences"].as_array().and_then(|refs| refs.iter().find(|r| r["controller"] == json!(true)).cloned());
    match (controller(live), controller(want)) {
        (Some(l), Some(w)) if l["uid"] != w["uid"] => Some(format!("{} {}", l["kind"].as_str().unwrap_or("?"), l["name"].as_str().unwrap_or("?"))),
        // An object nobody controls, where we want one: someone else made it.
        (None, Some(_)) => Some("nobody (it was not made by this Recorder)".into()),
        _ => None,
    }
}

/// What a StatefulSet cannot change in place.
fn same_immutable(live: &Value, want: &Value) -> bool {
    let claims = |v: &Value| v["spec"]["volumeClaimTemplates"].clone();
    ["serviceName", "podManagementPolicy", "selector"].iter().all(|f| want["spec"][f].is_null() || contains(&live["spec"][f], &want["spec"][f]))
        && contains(&claims(live), &claims(want))
}

/// Whether every field of `want` holds the same value in `live` (fields only `live`
/// has, such as defaults, do not matter). Arrays must match element by element.
pub fn contains(live: &Value, want: &Value) -> bool {
    match (live, want) {
        (Value::Object(l), Value::Object(w)) => w.iter().all(|(k, wv)| {
            l.get(k).is_some_and(|lv| match (k.as_str(), lv, wv) {
                // The API server stores quantities its own way (`1024Mi` as `1Gi`).
                ("requests" | "limits", Value::Object(lq), Value::Object(wq)) => {
                    wq.iter().all(|(name, w)| lq.get(name).is_some_and(|l| l == w || quantity::same(&scalar(l), &scalar(w))))
                }
                _ => contains(lv, wv),
            })
        }),
        (Value::Array(l), Value::Array(w)) => l.len() == w.len() && l.iter().zip(w).all(|(lv, wv)| contains(lv, wv)),
        // The API server writes some integers back as strings (and intstr ports).
        (Value::String(l), Value::Number(w)) | (Value::Number(w), Value::String(l)) => *l == w.to_string(),
        (l, w) => l == w,
    }
}

/// A quantity as text, whether written as a string or a bare number.
fn scalar(v: &Value) -> String {
    v.as_str().map(String::from).unwrap_or_else(|| v.to_string())
}

/// Writes `want` over `live`: maps merge (so the server's fields stay), lists and the
/// parts that are wholly ours (a pod template, a Secret's data) are replaced.
fn overlay(live: &mut Value, want: &Value, kind: &str) {
    let wholly_ours: &[&[&str]] = match kind {
        // Not the claim templates: those cannot change in place, and one that
        // differs replaces the whole StatefulSet (`same_immutable`).
        "StatefulSet" => &[&["spec", "template"]],
        "Secret" | "ConfigMap" => &[&["data"]],
        // An annotation removed from `spec.pod.serviceAccount.annotations` must go.
        "ServiceAccount" => &[&["metadata", "annotations"]],
        _ => &[],
    };
    merge(live, want, &mut Vec::new(), wholly_ours);
}

fn merge(live: &mut Value, want: &Value, at: &mut Vec<String>, wholly_ours: &[&[&str]]) {
    let ours = wholly_ours.iter().any(|p| p.len() == at.len() && p.iter().zip(at.iter()).all(|(a, b)| a == b));
    match (live, want) {
        (Value::Object(l), Value::Object(w)) if !ours => {
            for (k, wv) in w {
                at.push(k.clone());
                match l.get_mut(k) {
                    Some(lv) => merge(lv, wv, at, wholly_ours),
                    None => {
                        l.insert(k.clone(), wv.clone());
                    }
                }
                at.pop();
            }
        }
        (l, w) => *l = w.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_added_by_the_server_are_not_a_change() {
        let want = json!({"spec": {"ports": [{"port": 8444, "name": "recorder"}], "selector": {"a": "b"}}});
        let live = json!({"spec": {"ports": [{"port": 8444, "name": "recorder", "protocol": "TCP", "targetPort": 8444}], "selector": {"a": "b"}, "clusterIP": "10.96.0.9"}});
        assert!(contains(&live, &want));
        assert!(!contains(&live, &json!({"spec": {"selector": {"a": "c"}}})));
        assert!(!contains(&live, &json!({"spec": {"ports": []}})));
        assert!(contains(&json!({"port": "8444"}), &json!({"port": 8444})));
    }

    #[test]
    fn an_update_keeps_what_the_server_owns_and_replaces_the_template() {
        let mut live = json!({"metadata": {"resourceVersion": "7", "labels": {"x": "1"}},
                              "spec": {"clusterIP": "10.96.0.9", "replicas": 1, "template": {"spec": {"nodeSelector": {"old": "1"}, "dnsPolicy": "ClusterFirst"}}}});
        let want = json!({"metadata": {"labels": {"y": "2"}}, "spec": {"replicas": 3, "template": {"spec": {"containers": []}}}});
        overlay(&mut live, &want, "StatefulSet");
        assert_eq!(live["metadata"]["resourceVersion"], "7");
        assert_eq!(live["metadata"]["labels"], json!({"x": "1", "y": "2"}));
        assert_eq!(live["spec"]["clusterIP"], "10.96.0.9");
        assert_eq!(live["spec"]["replicas"], 3);
        assert_eq!(live["spec"]["template"], json!({"spec": {"containers": []}}), "a removed override must go");
    }

    #[test]
    fn a_service_account_annotation_removed_from_the_spec_goes() {
        let mut live = json!({"metadata": {"name": "r", "annotations": {"iam.example/role": "old", "kubetape.dev/applied": "1"}}, "secrets": [{"name": "t"}]});
        overlay(&mut live, &json!({"metadata": {"name": "r", "annotations": {"kubetape.dev/applied": "2"}}}), "ServiceAccount");
        assert_eq!(live, json!({"metadata": {"name": "r", "annotations": {"kubetape.dev/applied": "2"}}, "secrets": [{"name": "t"}]}));
    }

    #[test]
    fn objects_of_another_owner_are_not_taken_over() {
        let ours = json!({"metadata": {"ownerReferences": [{"controller": true, "uid": "u1", "kind": "Recorder", "name": "a"}]}});
        let theirs = json!({"metadata": {"ownerReferences": [{"controller": true, "uid": "u2", "kind": "Recorder", "name": "b"}]}});
        assert!(foreign_controller(&ours, &ours).is_none());
        assert!(foreign_controller(&theirs, &ours).unwrap().contains("Recorder b"));
        assert!(foreign_controller(&json!({"metadata": {}}), &ours).is_some());
    }

    #[test]
    fn claim_template_changes_need_a_new_stateful_set() {
        let a = json!({"spec": {"serviceName": "r", "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"resources": {"requests": {"storage": "1Gi"}}}}]}});
        let b = json!({"spec": {"serviceName": "r", "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"resources": {"requests": {"storage": "2Gi"}}}}]}});
        assert!(same_immutable(&a, &a));
        assert!(!same_immutable(&a, &b));
        assert!(!same_immutable(&a, &json!({"spec": {"serviceName": "r"}})));
        assert!(!same_immutable(&json!({"spec": {"serviceName": "r"}}), &a));
    }

    #[test]
    fn quantities_are_compared_as_the_api_server_stores_them() {
        // What the API server gives back for a claim of 1024Mi and a container
        // asking for 0.5 CPU and 1024Mi: the same, so nothing is rolled or recreated.
        let want = json!({"spec": {"volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"resources": {"requests": {"storage": "1024Mi"}}}}],
                                   "template": {"spec": {"containers": [{"resources": {"requests": {"cpu": 0.5, "memory": "1024Mi"}, "limits": {"memory": "2Gi"}}}]}}}});
        let live = json!({"spec": {"volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"resources": {"requests": {"storage": "1Gi"}}, "volumeMode": "Filesystem", "storageClassName": "standard"}, "status": {"phase": "Pending"}}],
                                   "template": {"spec": {"containers": [{"resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}}}]}}}});
        assert!(contains(&live, &want) && same_immutable(&live, &want));
        let mut more = want.clone();
        more["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] = json!("3Gi");
        assert!(!contains(&live, &more));
        let mut bigger = want;
        bigger["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] = json!("2Gi");
        assert!(!same_immutable(&live, &bigger));
    }
}
