//! A pod's status as the kubelet computes it (Kubernetes 1.20, `getPhase` and
//! `generateAPIPodStatus`): the phase from the containers' states and the restart
//! policy, the conditions `Initialized`, `ContainersReady` and `Ready` (True only
//! when every container is ready; `lastTransitionTime` kept while a condition's
//! status stays), merged into what the API server holds so the conditions others own
//! (`PodScheduled`) stay. Pure; no I/O.

use serde_json::{json, Map, Value};

/// The conditions this kubelet owns.
const OWN_CONDITIONS: [&str; 3] = ["Initialized", "ContainersReady", "Ready"];

/// (type, status, reason, message) of a condition the kubelet owns.
pub type Condition = (&'static str, bool, &'static str, String);

/// What the kubelet knows of a pod, ready to be written.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    pub phase: &'static str,
    /// `None` until the pod has an address.
    pub pod_ip: Option<String>,
    pub host_ip: String,
    pub start_time: Option<String>,
    pub init_statuses: Vec<Value>,
    pub statuses: Vec<Value>,
    pub conditions: Vec<Condition>,
}

fn status_of<'a>(list: &'a [Value], name: &str) -> Option<&'a Value> {
    list.iter().find(|s| s["name"].as_str() == Some(name))
}

/// The pod phase from its containers' statuses (`getPhase`).
pub fn phase(spec: &Value, init_statuses: &[Value], statuses: &[Value]) -> &'static str {
    let (mut pending_init, mut failed_init) = (0, 0);
    for c in spec["initContainers"].as_array().into_iter().flatten() {
        let Some(s) = status_of(init_statuses, c["name"].as_str().unwrap_or_default()) else {
            pending_init += 1;
            continue;
        };
        let (state, last) = (&s["state"], &s["lastState"]);
        if state["running"].is_object() {
            pending_init += 1;
        } else if state["terminated"].is_object() {
            if state["terminated"]["exitCode"] != json!(0) {
                failed_init += 1;
            }
        } else if state["waiting"].is_object() && last["terminated"].is_object() {
            if last["terminated"]["exitCode"] != json!(0) {
                failed_init += 1;
            }
        } else {
            pending_init += 1;
        }
    }
    let (mut unknown, mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0, 0);
    for c in spec["containers"].as_array().into_iter().flatten() {
        let Some(s) = status_of(statuses, c["name"].as_str().unwrap_or_default()) else {
            unknown += 1;
            continue;
        };
        let (state, last) = (&s["state"], &s["lastState"]);
        if state["running"].is_object() {
            running += 1;
        } else if state["terminated"].is_object() {
            stopped += 1;
            if state["terminated"]["exitCode"] == json!(0) {
                succeeded += 1;
            }
        } else if state["waiting"].is_object() {
            if last["terminated"].is_object() {
                stopped += 1;
            } else {
                waiting += 1;
            }
        } else {
            unknown += 1;
        }
    }
    let policy = spec["restartPolicy"].as_str().unwrap_or("Always");
    if failed_init > 0 && policy == "Never" {
        return "Failed";
    }
    if pending_init > 0 || waiting > 0 {
        return "Pending";
    }
    if running > 0 && unknown == 0 {
        return "Running";
    }
    if running == 0 && stopped > 0 && unknown == 0 {
        return match policy {
            "Always" => "Running",
            _ if stopped == succeeded => "Succeeded",
            "Never" => "Failed",
            _ => "Running",
        };
    }
    "Pending"
}

/// The kubelet's conditions for these statuses.
pub fn conditions(phase: &str, init_statuses: &[Value], statuses: &[Value]) -> Vec<Condition> {
    let names = |list: &[Value], pred: &dyn Fn(&Value) -> bool| -> Vec<String> { list.iter().filter(|s| pred(s)).filter_map(|s| s["name"].as_str().map(String::from)).collect() };
    let incomplete = names(init_statuses, &|s| s["state"]["terminated"]["exitCode"] != json!(0));
    let unready = names(statuses, &|s| s["ready"] != json!(true));
    let done = phase == "Succeeded" || phase == "Failed";
    let initialized = if incomplete.is_empty() || done {
        ("Initialized", true, "", String::new())
    } else {
        ("Initialized", false, "ContainersNotInitialized", format!("containers with incomplete status: [{}]", incomplete.join(" ")))
    };
    let ready = |kind: &'static str| {
        if done {
            (kind, false, "PodCompleted", String::new())
        } else if unready.is_empty() {
            (kind, true, "", String::new())
        } else {
            (kind, false, "ContainersNotReady", format!("containers with unready status: [{}]", unready.join(" ")))
        }
    };
    vec![initialized, ready("Ready"), ready("ContainersReady")]
}

fn condition_json(c: &Condition, since: Value) -> Value {
    let mut v = json!({"type": c.0, "status": if c.1 { "True" } else { "False" }, "lastProbeTime": null, "lastTransitionTime": since});
    if !c.2.is_empty() {
        v["reason"] = json!(c.2);
    }
    if !c.3.is_empty() {
        v["message"] = json!(c.3);
    }
    v
}

/// `current` (the status the API server holds) with `desired` written over it:
/// conditions merged by type, each keeping its `lastTransitionTime` while its status
/// stays and taking `now` when it changes.
pub fn merge(current: &Value, desired: &Desired, now: &str) -> Value {
    let mut status = if current.is_object() { current.clone() } else { Value::Object(Map::new()) };
    status["phase"] = json!(desired.phase);
    status["hostIP"] = json!(desired.host_ip);
    if let Some(ip) = &desired.pod_ip {
        status["podIP"] = json!(ip);
        status["podIPs"] = json!([{"ip": ip}]);
    }
    if let Some(t) = &desired.start_time {
        if !status["startTime"].is_string() {
            status["startTime"] = json!(t);
        }
    }
    status["containerStatuses"] = json!(desired.statuses);
    if desired.init_statuses.is_empty() {
        if let Some(o) = status.as_object_mut() {
            o.remove("initContainerStatuses");
        }
    } else {
        status["initContainerStatuses"] = json!(desired.init_statuses);
    }
    let old: Vec<Value> = current["conditions"].as_array().cloned().unwrap_or_default();
    let mut merged: Vec<Value> = old.iter().filter(|c| !OWN_CONDITIONS.contains(&c["type"].as_str().unwrap_or_default())).cloned().collect();
    for c in &desired.conditions {
        let want = if c.1 { "True" } else { "False" };
        let since = old
            .iter()
            .find(|o| o["type"] == json!(c.0) && o["status"] == json!(want))
            .map(|o| o["lastTransitionTime"].clone())
            .filter(Value::is_string)
            .unwrap_or_else(|| json!(now));
        merged.push(condition_json(c, since));
    }
    status["conditions"] = json!(merged);
    if desired.phase != "Failed" {
        if let Some(o) = status.as_object_mut() {
            o.remove("message");
            o.remove("reason");
        }
    }
    status
}

/// Whether `status` already says what `desired` says (times aside).
pub fn holds(status: &Value, desired: &Desired) -> bool {
    let text = |v: &Value| v.as_str().map(String::from);
    let same_conditions = desired.conditions.iter().all(|c| {
        status["conditions"].as_array().into_iter().flatten().any(|o| {
            o["type"] == json!(c.0)
                && o["status"] == json!(if c.1 { "True" } else { "False" })
                && o["reason"].as_str().unwrap_or_default() == c.2
                && o["message"].as_str().unwrap_or_default() == c.3
        })
    });
    let init = status["initContainerStatuses"].as_array().cloned().unwrap_or_default();
    status["phase"].as_str() == Some(desired.phase)
        && (desired.pod_ip.is_none() || text(&status["podIP"]) == desired.pod_ip)
        && text(&status["hostIP"]).as_deref() == Some(desired.host_ip.as_str())
        && status["containerStatuses"].as_array().map(Vec::as_slice).unwrap_or_default() == desired.statuses.as_slice()
        && init == desired.init_statuses
        && same_conditions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(name: &str, ready: bool) -> Value {
        json!({"name": name, "ready": ready, "state": {"running": {"startedAt": "t"}}, "lastState": {}})
    }
    fn exited(name: &str, code: i32) -> Value {
        json!({"name": name, "ready": false, "state": {"terminated": {"exitCode": code}}, "lastState": {}})
    }
    fn backing_off(name: &str, code: i32) -> Value {
        json!({"name": name, "ready": false, "state": {"waiting": {"reason": "CrashLoopBackOff"}}, "lastState": {"terminated": {"exitCode": code}}})
    }
    fn waiting(name: &str) -> Value {
        json!({"name": name, "ready": false, "state": {"waiting": {"reason": "ContainerCreating"}}, "lastState": {}})
    }

    #[test]
    fn phases() {
        let spec = |policy: &str, init: bool| {
            let mut s = json!({"restartPolicy": policy, "containers": [{"name": "a"}, {"name": "b"}]});
            if init {
                s["initContainers"] = json!([{"name": "i"}]);
            }
            s
        };
        type Case = (&'static str, Value, Vec<Value>, Vec<Value>, &'static str);
        let cases: Vec<Case> = vec![
            ("nothing yet", spec("Always", false), vec![], vec![], "Pending"),
            ("one waiting", spec("Always", false), vec![], vec![running("a", true), waiting("b")], "Pending"),
            ("both running", spec("Always", false), vec![], vec![running("a", true), running("b", false)], "Running"),
            ("always: all exited", spec("Always", false), vec![], vec![exited("a", 0), exited("b", 1)], "Running"),
            ("always: crash looping", spec("Always", false), vec![], vec![running("a", true), backing_off("b", 1)], "Running"),
            ("never: all succeeded", spec("Never", false), vec![], vec![exited("a", 0), exited("b", 0)], "Succeeded"),
            ("never: one failed", spec("Never", false), vec![], vec![exited("a", 0), exited("b", 2)], "Failed"),
            ("never: one still running", spec("Never", false), vec![], vec![running("a", true), exited("b", 2)], "Running"),
            ("on failure: restarting", spec("OnFailure", false), vec![], vec![exited("a", 0), backing_off("b", 2)], "Running"),
            ("on failure: done", spec("OnFailure", false), vec![], vec![exited("a", 0), exited("b", 0)], "Succeeded"),
            ("init running", spec("Always", true), vec![running("i", false)], vec![waiting("a"), waiting("b")], "Pending"),
            ("init failed, never", spec("Never", true), vec![exited("i", 1)], vec![waiting("a"), waiting("b")], "Failed"),
            ("init failed, retried", spec("Always", true), vec![backing_off("i", 1)], vec![waiting("a"), waiting("b")], "Pending"),
            ("init done", spec("Always", true), vec![exited("i", 0)], vec![running("a", true), running("b", true)], "Running"),
        ];
        for (name, spec, init, main, want) in cases {
            assert_eq!(phase(&spec, &init, &main), want, "{name}");
        }
    }

    #[test]
    fn ready_only_when_every_container_is() {
        let c = conditions("Running", &[], &[running("a", true), running("b", false)]);
        assert_eq!(c[1], ("Ready", false, "ContainersNotReady", "containers with unready status: [b]".to_string()));
        assert_eq!(conditions("Running", &[], &[running("a", true), running("b", true)])[1], ("Ready", true, "", String::new()));
        assert_eq!(conditions("Succeeded", &[], &[exited("a", 0)])[1].2, "PodCompleted");
        assert_eq!(conditions("Pending", &[waiting("i")], &[])[0], ("Initialized", false, "ContainersNotInitialized", "containers with incomplete status: [i]".to_string()));
    }

    #[test]
    fn merging_keeps_others_and_transition_times() {
        let current = json!({
            "phase": "Pending", "message": "old", "startTime": "t0",
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": "t0"},
                {"type": "Initialized", "status": "True", "lastTransitionTime": "t1"},
                {"type": "Ready", "status": "False", "lastTransitionTime": "t1"}
            ]
        });
        let statuses = vec![running("a", true)];
        let desired = Desired {
            phase: "Running",
            pod_ip: Some("10.244.0.3".into()),
            host_ip: "127.0.0.1".into(),
            start_time: Some("t9".into()),
            init_statuses: vec![],
            conditions: conditions("Running", &[], &statuses),
            statuses,
        };
        assert!(!holds(&current, &desired));
        let merged = merge(&current, &desired, "t2");
        let by_type = |t: &str| merged["conditions"].as_array().unwrap().iter().find(|c| c["type"] == json!(t)).cloned().unwrap();
        assert_eq!(by_type("PodScheduled")["lastTransitionTime"], json!("t0"));
        assert_eq!(by_type("Initialized")["lastTransitionTime"], json!("t1"), "unchanged status keeps its time");
        assert_eq!((by_type("Ready")["status"].clone(), by_type("Ready")["lastTransitionTime"].clone()), (json!("True"), json!("t2")));
        assert_eq!(by_type("ContainersReady")["lastTransitionTime"], json!("t2"));
        assert_eq!((merged["podIP"].clone(), merged["podIPs"].clone(), merged["startTime"].clone()), (json!("10.244.0.3"), json!([{"ip": "10.244.0.3"}]), json!("t0")));
        assert!(merged.get("message").is_none());
        assert!(holds(&merged, &desired));
        assert_eq!(merge(&merged, &desired, "t3"), merged, "writing the same again changes nothing");
    }
}
