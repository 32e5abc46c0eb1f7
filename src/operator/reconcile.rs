//! One pass over one Recorder: check it, bring what it owns to what the builders
//! want, and write its status (only when it changed). Failures become a condition
//! and a Warning Event (once per new failure, not once per pass).

use serde_json::{json, Value};

use super::apply::{self, Applied, ApplyError};
use super::build::{self, Recorder};
use super::certs;
use super::spec::{GROUP, VERSION};
use crate::kube::rest::Rest;
use crate::net::pki::{Ca, Pem};
use crate::wire::time::now_rfc3339;

/// What the operator itself is told (flags).
pub struct Settings {
    /// For a Recorder that names no image: the operator's own.
    pub default_image: String,
}

/// A Recorder's condition, before it is written.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub ready: bool,
    pub reason: &'static str,
    pub message: String,
}

/// Reasons worth a Warning Event (the others are a Recorder on its way).
const WARNINGS: &[&str] = &["Invalid", "ProvisioningFailed", "StorageUnavailable"];

pub fn recorder_path(ns: &str, name: &str) -> String {
    format!("/apis/{GROUP}/{VERSION}/namespaces/{ns}/recorders/{name}")
}

pub fn reconcile(rest: &Rest, ca: &Ca, settings: &Settings, obj: &Value) {
    let rec = match Recorder::from_object(obj) {
        Ok(r) => r,
        Err(e) => {
            log::warn!("recorder unreadable error={e}");
            return;
        }
    };
    // Being deleted: the garbage collector is removing what it owns (first, under
    // foreground deletion); making it again would keep the Recorder forever.
    if !obj["metadata"]["deletionTimestamp"].is_null() {
        return;
    }
    let problems = rec.spec.problems(&rec.name);
    let outcome = if problems.is_empty() { provision(rest, ca, settings, &rec).map_err(|e| ("ProvisioningFailed", e)) } else { Err(("Invalid", problems.join("; "))) };
    // Replicas that run go on being endpoints whatever the spec now says.
    // What the status is judged by; when it cannot be read, the status stays as it
    // is this pass (empty endpoints would send the proxies' sessions nowhere).
    let read = rest
        .get(&format!("{}/{}", apply::collection("StatefulSet", &rec.namespace), rec.name))
        .map_err(|e| format!("statefulset: {e}"))
        .and_then(|sts| Ok((sts, list_pods(rest, &rec)?)));
    let (sts, pods) = match read {
        Ok(r) => r,
        Err(e) => {
            log::warn!("recorder status not judged ns={} name={} error={e}", rec.namespace, rec.name);
            return;
        }
    };
    let pods = replicas(pods, sts.as_ref(), &obj["status"]);
    let condition = match outcome {
        // No StatefulSet to judge readiness by until its replacement is made.
        Ok(replacing) => readiness(&rec, sts.as_ref().filter(|_| !replacing), &pods),
        Err((reason, message)) => Condition { ready: false, reason, message },
    };
    let status = status(&rec, &condition, sts.as_ref(), &pods, obj["status"].get("conditions"));
    if canonical_status(&obj["status"]) == canonical_status(&status) {
        return;
    }
    let was = obj["status"]["conditions"].as_array().and_then(|c| c.iter().find(|c| c["type"] == "Ready")).map(|c| c["reason"].clone());
    if WARNINGS.contains(&condition.reason) && was != Some(json!(condition.reason)) {
        event(rest, &rec, condition.reason, &condition.message);
    }
    log::info!("recorder status ns={} name={} ready={} reason={} message={}", rec.namespace, rec.name, condition.ready, condition.reason, condition.message);
    let mut next = obj.clone();
    next["status"] = status;
    if let Err(e) = rest.replace(&format!("{}/status", recorder_path(&rec.namespace, &rec.name)), &next) {
        // A conflict means the object moved on; the next pass reads it again.
        log::debug!("recorder status not written ns={} name={} error={e}", rec.namespace, rec.name);
    }
}

/// Applies everything the Recorder owns; gives back whether its StatefulSet is
/// being replaced.
fn provision(rest: &Rest, ca: &Ca, settings: &Settings, rec: &Recorder) -> Result<bool, String> {
    let fail = |what: &str, e: ApplyError| format!("{what}: {e}");
    let serving = rec.certificate_names();
    let cert = certificate(rest, ca, rec, &rec.tls_secret(), &serving, || certs::serving(ca, &serving))?;
    let reader = rec.reader_cn();
    certificate(rest, ca, rec, &rec.reader_secret(), std::slice::from_ref(&reader), || ca.client(&reader, &[]))?;
    let config = build::config_map(rec);
    let hash = build::digest(&[&config["data"].to_string(), &cert]);
    let mut objects = vec![config, build::service_account(rec)];
    objects.extend(build::services(rec));
    let image = rec.spec.image.clone().unwrap_or_else(|| settings.default_image.clone());
    objects.push(build::stateful_set(rec, &image, &hash));
    if rec.spec.enable_ui {
        objects.push(build::viewers_binding(rec));
    }
    let mut replacing = false;
    for obj in objects {
        let what = format!("{} {}", obj["kind"].as_str().unwrap_or("?"), obj["metadata"]["name"].as_str().unwrap_or("?"));
        match apply::apply(rest, obj).map_err(|e| fail(&what, e))? {
            Applied::Unchanged => {}
            Applied::Replacing => replacing = true,
            done => log::info!("recorder object {done:?} ns={} recorder={} object={what}", rec.namespace, rec.name),
        }
    }
    Ok(replacing)
}

/// The certificate in Secret `secret`, issued by `make` when missing or no longer
/// good for `names`; gives back the certificate (base64, as in the Secret).
fn certificate(rest: &Rest, ca: &Ca, rec: &Recorder, secret: &str, names: &[String], make: impl Fn() -> crate::error::Result<Pem>) -> Result<String, String> {
    let path = format!("{}/{secret}", apply::collection("Secret", &rec.namespace));
    let live = rest.get(&path).map_err(|e| format!("secret {secret}: {e}"))?;
    // Only a Secret this Recorder controls is reused: one someone else made under the
    // same name is refused by `apply` below, not served.
    let ours = |s: &Value| s["metadata"]["ownerReferences"].as_array().is_some_and(|r| r.iter().any(|o| o["uid"] == json!(rec.uid) && o["controller"] == json!(true)));
    if let Some(s) = live.as_ref().filter(|s| ours(s) && certs::still_good(Some(s), names, ca)) {
        return Ok(s["data"]["tls.crt"].as_str().unwrap_or_default().to_string());
    }
    let pem = make().map_err(|e| e.to_string())?;
    apply::apply(rest, build::tls_secret(rec, secret, &pem.cert, &pem.key, &ca.cert_pem, certs::issued_for(names))).map_err(|e| format!("secret {secret}: {e}"))?;
    log::info!("recorder certificate issued ns={} recorder={} secret={secret}", rec.namespace, rec.name);
    Ok(build::b64(&pem.cert))
}

fn list_pods(rest: &Rest, rec: &Recorder) -> Result<Vec<Value>, String> {
    let selector = format!("app.kubernetes.io/name%3Dkubetape-recorder%2Capp.kubernetes.io/instance%3D{}", rec.name);
    match rest.get(&format!("/api/v1/namespaces/{}/pods?labelSelector={selector}", rec.namespace)) {
        Ok(list) => Ok(list.and_then(|l| l["items"].as_array().cloned()).unwrap_or_default()),
        Err(e) => Err(format!("pods: {e}")),
    }
}

/// The pods that are this Recorder's replicas: those its StatefulSet controls, not
/// merely any pod carrying its labels (anyone who may create pods in the namespace
/// could otherwise make themselves an endpoint). While the StatefulSet is replaced,
/// its orphaned pods stay endpoints if they were before.
pub fn replicas(pods: Vec<Value>, sts: Option<&Value>, old_status: &Value) -> Vec<Value> {
    let sts_uid = sts.map(|s| s["metadata"]["uid"].clone()).filter(|u| u.is_string());
    let controller = |p: &Value| p["metadata"]["ownerReferences"].as_array().and_then(|r| r.iter().find(|o| o["controller"] == json!(true)).map(|o| o["uid"].clone()));
    let was_endpoint = |p: &Value| old_status["endpoints"].as_array().is_some_and(|e| e.iter().any(|e| e["name"] == p["metadata"]["name"]));
    pods.into_iter()
        .filter(|p| match controller(p) {
            Some(uid) => Some(&uid) == sts_uid.as_ref(),
            None => was_endpoint(p),
        })
        .collect()
}

fn pod_ready(pod: &Value) -> bool {
    pod["metadata"]["deletionTimestamp"].is_null()
        && pod["status"]["conditions"].as_array().is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
        && pod["status"]["podIP"].as_str().is_some_and(|ip| !ip.is_empty())
}

/// Ready when every wanted replica is ready and runs the current revision.
pub fn readiness(rec: &Recorder, sts: Option<&Value>, pods: &[Value]) -> Condition {
    let want = rec.spec.replicas();
    let ready = pods.iter().filter(|p| pod_ready(p)).count() as i64;
    let st = sts.map(|s| &s["status"]);
    let current = st.is_some_and(|s| s["updateRevision"].is_null() || s["updateRevision"] == s["currentRevision"] || s["updatedReplicas"].as_i64() == Some(want));
    let observed = sts.is_some_and(|s| s["status"]["observedGeneration"].as_i64() >= s["metadata"]["generation"].as_i64());
    if want == 0 {
        return Condition { ready: false, reason: "ScaledToZero", message: "spec.replicas is 0: nothing records".into() };
    }
    if ready >= want && current && observed {
        return Condition { ready: true, reason: "Ready", message: format!("{ready} of {want} replicas ready") };
    }
    // A replica that runs and is not ready is one whose storage is not reachable: the
    // recorder's readiness is exactly that (`/readyz` answers 503 naming the setting).
    let running_unready = pods.iter().any(|p| p["status"]["phase"] == "Running" && !pod_ready(p) && p["metadata"]["deletionTimestamp"].is_null());
    if running_unready && rec.spec.storage.s3.is_some() && ready == 0 {
        return Condition {
            ready: false,
            reason: "StorageUnavailable",
            message: format!("0 of {want} replicas ready: the bucket is not reachable with spec.storage.s3 (see the recorder's /readyz or its log)"),
        };
    }
    Condition { ready: false, reason: "Provisioning", message: format!("{ready} of {want} replicas ready") }
}

/// The status the Recorder should show. `lastTransitionTime` moves only when the
/// condition's status does.
pub fn status(rec: &Recorder, c: &Condition, sts: Option<&Value>, pods: &[Value], old: Option<&Value>) -> Value {
    let flag = if c.ready { "True" } else { "False" };
    let old_ready = old.and_then(Value::as_array).and_then(|l| l.iter().find(|x| x["type"] == "Ready"));
    let since = match old_ready {
        Some(o) if o["status"] == flag => o["lastTransitionTime"].clone(),
        _ => json!(now_rfc3339()),
    };
    let tags = rec.spec.tags();
    let mut endpoints: Vec<Value> = pods
        .iter()
        .filter(|p| pod_ready(p))
        .filter_map(|p| {
            let name = p["metadata"]["name"].as_str()?;
            let ip = p["status"]["podIP"].as_str()?;
            let address = if ip.contains(':') { format!("[{ip}]:{}", build::RECORDER_PORT) } else { format!("{ip}:{}", build::RECORDER_PORT) };
            Some(json!({"name": name, "address": address, "serverName": rec.server_name(name), "tags": tags}))
        })
        .collect();
    endpoints.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    json!({
        "observedGeneration": rec.generation,
        "replicas": sts.and_then(|s| s["status"]["replicas"].as_i64()).unwrap_or(0),
        "readyReplicas": endpoints.len(),
        "storage": rec.spec.storage_kind(),
        "conditions": [{"type": "Ready", "status": flag, "reason": c.reason, "message": c.message, "lastTransitionTime": since, "observedGeneration": rec.generation}],
        "endpoints": endpoints,
    })
}

/// A status without its timestamps, to compare.
fn canonical_status(s: &Value) -> Value {
    let mut s = build::canonical(s);
    if let Some(conds) = s["conditions"].as_array_mut() {
        for c in conds {
            if let Some(o) = c.as_object_mut() {
                o.remove("lastTransitionTime");
            }
        }
    }
    s
}

fn event(rest: &Rest, rec: &Recorder, reason: &str, message: &str) {
    let now = now_rfc3339();
    let ev = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": format!("{}.", rec.name), "namespace": rec.namespace},
        "involvedObject": {"apiVersion": format!("{GROUP}/{VERSION}"), "kind": "Recorder", "name": rec.name, "namespace": rec.namespace, "uid": rec.uid},
        "reason": reason, "message": message, "type": "Warning", "count": 1,
        "firstTimestamp": now, "lastTimestamp": now, "source": {"component": "kubetape-operator"},
    });
    if let Err(e) = rest.create(&apply::collection("Event", &rec.namespace), &ev) {
        log::debug!("event not written ns={} recorder={} error={e}", rec.namespace, rec.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(spec: Value) -> Recorder {
        Recorder::from_object(&json!({"metadata": {"name": "main", "namespace": "ns", "uid": "u", "generation": 2}, "spec": spec})).unwrap()
    }

    fn pod(name: &str, ip: &str, ready: bool) -> Value {
        json!({"metadata": {"name": name, "ownerReferences": [{"kind": "StatefulSet", "uid": "sts-1", "controller": true}]},
               "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}})
    }

    #[test]
    fn only_pods_the_stateful_set_controls_are_replicas() {
        let sts = json!({"metadata": {"uid": "sts-1"}});
        let mut impostor = pod("main-7", "10.244.0.9", true);
        impostor["metadata"]["ownerReferences"][0]["uid"] = json!("someone-else");
        let mut unowned = pod("main-8", "10.244.0.10", true);
        unowned["metadata"]["ownerReferences"] = json!([]);
        let mut orphaned = pod("main-0", "10.244.0.2", true);
        orphaned["metadata"].as_object_mut().unwrap().remove("ownerReferences");
        let names = |v: Vec<Value>| v.iter().map(|p| p["metadata"]["name"].as_str().unwrap().to_string()).collect::<Vec<_>>();
        let all = vec![pod("main-1", "10.244.0.3", true), impostor, unowned, orphaned];
        assert_eq!(names(replicas(all.clone(), Some(&sts), &json!({}))), ["main-1"]);
        // Replaced: the old pods are orphaned for a while; those that were endpoints stay.
        let before = json!({"endpoints": [{"name": "main-0"}]});
        assert_eq!(names(replicas(all, None, &before)), ["main-0"]);
    }

    fn sts(ready: i64) -> Value {
        json!({"metadata": {"generation": 4}, "status": {"observedGeneration": 4, "replicas": 2, "readyReplicas": ready, "currentRevision": "a", "updateRevision": "a"}})
    }

    #[test]
    fn endpoints_are_the_ready_replicas_with_the_names_their_certificates_carry() {
        let r = rec(json!({"replicas": 2, "storage": {"s3": {"bucket": "b"}}, "tags": ["tag:audit"]}));
        let pods = [pod("main-1", "10.244.0.3", true), pod("main-0", "10.244.0.2", true), pod("main-2", "10.244.0.4", false)];
        let c = readiness(&r, Some(&sts(2)), &pods);
        assert_eq!((c.ready, c.reason), (true, "Ready"));
        let s = status(&r, &c, Some(&sts(2)), &pods, None);
        assert_eq!(
            s["endpoints"],
            json!([
                {"name": "main-0", "address": "10.244.0.2:8444", "serverName": "main-0.main-replicas.ns.svc", "tags": ["tag:audit"]},
                {"name": "main-1", "address": "10.244.0.3:8444", "serverName": "main-1.main-replicas.ns.svc", "tags": ["tag:audit"]},
            ])
        );
        assert_eq!((s["readyReplicas"].clone(), s["observedGeneration"].clone(), s["storage"].clone()), (json!(2), json!(2), json!("s3")));
    }

    #[test]
    fn conditions_say_why_not_ready() {
        let r = rec(json!({"replicas": 2, "storage": {"s3": {"bucket": "b"}}}));
        assert_eq!(readiness(&r, Some(&sts(0)), &[pod("main-0", "10.244.0.2", false)]).reason, "StorageUnavailable");
        assert_eq!(readiness(&r, Some(&sts(1)), &[pod("main-0", "10.244.0.2", true)]).reason, "Provisioning");
        let mut rolling = sts(2);
        rolling["status"]["updateRevision"] = json!("b");
        rolling["status"]["updatedReplicas"] = json!(1);
        assert_eq!(readiness(&r, Some(&rolling), &[pod("main-0", "1.1.1.1", true), pod("main-1", "1.1.1.2", true)]).reason, "Provisioning");
        assert_eq!(readiness(&rec(json!({"replicas": 0})), None, &[]).reason, "ScaledToZero");
    }

    #[test]
    fn the_transition_time_moves_only_with_the_status() {
        let r = rec(json!({}));
        let c = Condition { ready: true, reason: "Ready", message: "1 of 1 replicas ready".into() };
        let old = json!([{"type": "Ready", "status": "True", "lastTransitionTime": "2020-01-01T00:00:00Z"}]);
        assert_eq!(status(&r, &c, None, &[], Some(&old))["conditions"][0]["lastTransitionTime"], "2020-01-01T00:00:00Z");
        let c = Condition { ready: false, ..c };
        assert_ne!(status(&r, &c, None, &[], Some(&old))["conditions"][0]["lastTransitionTime"], "2020-01-01T00:00:00Z");
    }
}
