//! Pod lifecycle shared by both simulator modes: containers become host processes,
//! and their states are written to the pod's status, in the simulator's own store or,
//! in kubelet mode, in the real API server.

use std::sync::Arc;

use serde_json::{json, Value};

use super::Cluster;
use crate::sim::process::Mounts;
use crate::sim::runtime::Container;
use crate::sim::store;

pub fn pod_dir(cluster: &Cluster, ns: &str, pod: &str) -> std::path::PathBuf {
    // Both names are validated DNS names, so neither can climb out of data_dir.
    cluster.config.data_dir.join(ns).join(pod)
}

pub fn container_argv(spec: &Value) -> Vec<String> {
    let strings = |v: &Value| v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect::<Vec<_>>()).unwrap_or_default();
    let (command, args) = (strings(&spec["command"]), strings(&spec["args"]));
    match (command.is_empty(), args.is_empty()) {
        (false, _) => command.into_iter().chain(args).collect(),
        (true, false) => args,
        (true, true) => vec!["sh".into()], // the usual image default (busybox, alpine)
    }
}

pub fn container_env(spec: &Value, pod: &str) -> Vec<(String, String)> {
    let mut env = vec![("HOSTNAME".to_string(), pod.to_string())];
    for e in spec["env"].as_array().into_iter().flatten() {
        if let (Some(n), Some(v)) = (e["name"].as_str(), e["value"].as_str()) {
            env.push((n.into(), v.into()));
        }
    }
    env
}

fn running_status(name: &str, spec: &Value, ns: &str, pod: &str) -> Value {
    json!({
        "name": name, "image": spec["image"], "imageID": "", "ready": true, "started": true, "restartCount": 0,
        "containerID": format!("kubetape-sim://{ns}/{pod}/{name}"),
        "state": {"running": {"startedAt": store::now_rfc3339()}}
    })
}

/// Starts a container process and records its state in the pod's status list
/// `status_field` (`containerStatuses` or `ephemeralContainerStatuses`).
pub fn start_container(cluster: &Arc<Cluster>, ns: &str, pod: &str, spec: &Value, status_field: &'static str) -> Result<(), String> {
    let cname = spec["name"].as_str().unwrap_or_default().to_string();
    let dir = pod_dir(cluster, ns, pod);
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let argv = container_argv(spec);
    let tty = spec["tty"].as_bool().unwrap_or(false);
    let stdin = spec["stdin"].as_bool().unwrap_or(false);
    let stdin_once = spec["stdinOnce"].as_bool().unwrap_or(false);
    let exit_cluster = cluster.clone();
    let (exit_ns, exit_pod, exit_name) = (ns.to_string(), pod.to_string(), cname.clone());
    let container = Container::start(&argv, &dir, &container_env(spec, pod), &Mounts::Host, tty, stdin, stdin_once, move |code| {
        let _ = exit_cluster.update_pod_status(&exit_ns, &exit_pod, |status| {
            let finished = store::now_rfc3339();
            if let Some(list) = status[status_field].as_array_mut() {
                for s in list.iter_mut().filter(|s| s["name"] == json!(exit_name)) {
                    let reason = if code == 0 { "Completed" } else { "Error" };
                    s["state"] = json!({"terminated": {"exitCode": code, "reason": reason, "finishedAt": finished}});
                    s["ready"] = json!(false);
                    s["started"] = json!(false);
                }
            }
            let statuses = status["containerStatuses"].as_array().cloned().unwrap_or_default();
            let all_done = statuses.iter().all(|s| s["state"]["terminated"].is_object());
            if status_field == "containerStatuses" && all_done {
                let failed = statuses.iter().any(|s| s["state"]["terminated"]["exitCode"] != json!(0));
                status["phase"] = json!(if failed { "Failed" } else { "Succeeded" });
                status["conditions"] = json!([{"type": "Ready", "status": "False"}]);
            }
        });
    })
    .map_err(|e| format!("starting {argv:?}: {e}"))?;
    cluster.containers.lock().unwrap_or_else(|e| e.into_inner()).insert((ns.into(), pod.into(), cname.clone()), container);
    cluster.update_pod_status(ns, pod, |status| {
        let list = &mut status[status_field];
        if !list.is_array() {
            *list = json!([]);
        }
        if let Some(l) = list.as_array_mut() {
            l.retain(|s| s["name"] != json!(cname));
            l.push(running_status(&cname, spec, ns, pod));
        }
    })
}

pub fn start_pod(cluster: &Arc<Cluster>, ns: &str, pod: &str, containers: &[Value]) {
    let _ = cluster.update_pod_status(ns, pod, |status| {
        status["phase"] = json!("Running");
        status["podIP"] = json!("127.0.0.1");
        status["hostIP"] = json!("127.0.0.1");
        status["startTime"] = json!(store::now_rfc3339());
        status["conditions"] = json!([{"type": "Ready", "status": "True"}, {"type": "ContainersReady", "status": "True"}]);
        status["containerStatuses"] = json!([]);
    });
    for spec in containers {
        if let Err(e) = start_container(cluster, ns, pod, spec, "containerStatuses") {
            log::warn!("container failed to start ns={ns} pod={pod} error={e}");
            let _ = cluster.update_pod_status(ns, pod, |status| {
                status["phase"] = json!("Failed");
                status["message"] = json!(e);
            });
            return;
        }
    }
}

/// Kills a pod's containers and removes its files.
pub fn stop_pod(cluster: &Cluster, ns: &str, pod: &str) {
    let mut containers = cluster.containers.lock().unwrap_or_else(|e| e.into_inner());
    containers.retain(|(cns, cpod, _), c| {
        let mine = cns == ns && cpod == pod;
        if mine {
            c.kill();
        }
        !mine
    });
    let _ = std::fs::remove_dir_all(pod_dir(cluster, ns, pod));
}
