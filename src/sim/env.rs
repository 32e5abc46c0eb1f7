//! A container's environment and command line as the kubelet builds them
//! (`makeEnvironmentVariables` and `ExpandContainerCommandAndArgs` in Kubernetes
//! 1.20): `envFrom` first, then `env` in order (literal values expanded against what
//! came before, `valueFrom` read from the pod or the API), then the service variables
//! not already set; `$(VAR)` in `command` and `args` expanded against the result.
//! Pure, given an [`Objects`]; no I/O of its own.

use serde_json::Value;

use crate::sim::expand::expand;
use crate::sim::podrefs::{self, field_ref, object_data, Kind, Objects, PodNet};

/// Names as Kubernetes 1.20 accepts them for environment variables (`IsEnvVarName`):
/// `[-._a-zA-Z][-._a-zA-Z0-9]*`.
pub fn is_env_var_name(name: &str) -> bool {
    let ok = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_');
    name.bytes().next().is_some_and(|b| !b.is_ascii_digit() && ok(b)) && name.bytes().all(ok)
}

/// Variables in the order first set; setting one again replaces its value in place.
#[derive(Default, Debug, Clone, PartialEq, Eq)]
pub struct EnvList(pub Vec<(String, String)>);

impl EnvList {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn set(&mut self, name: &str, value: String) {
        match self.0.iter_mut().find(|(k, _)| k == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name.to_string(), value)),
        }
    }
}

fn optional(v: &Value) -> bool {
    v["optional"].as_bool().unwrap_or(false)
}

/// The object a reference names, `Ok(None)` when it is missing and optional.
fn referenced(objects: &mut dyn Objects, kind: Kind, name: &str, optional: bool) -> Result<Option<Value>, String> {
    match objects.get(kind, name)? {
        Some(obj) => Ok(Some(obj)),
        None if optional => Ok(None),
        None => Err(podrefs::not_found(kind, name)),
    }
}

/// The environment of `container` in `pod`. `service` holds the variables standing in
/// for the cluster's services (`KUBERNETES_SERVICE_HOST`, ...). An `Err` is the
/// message of a `CreateContainerConfigError`.
pub fn container_env(pod: &Value, container: &Value, net: &PodNet, service: &[(String, String)], objects: &mut dyn Objects) -> Result<EnvList, String> {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
    let mut env = EnvList::default();
    let mut service: Vec<(String, String)> = service.to_vec();
    for from in container["envFrom"].as_array().into_iter().flatten() {
        let prefix = from["prefix"].as_str().unwrap_or_default();
        let (kind, r) = if from["configMapRef"].is_object() {
            (Kind::ConfigMap, &from["configMapRef"])
        } else if from["secretRef"].is_object() {
            (Kind::Secret, &from["secretRef"])
        } else {
            continue;
        };
        let name = r["name"].as_str().unwrap_or_default();
        let Some(obj) = referenced(objects, kind, name, optional(r))? else { continue };
        // Keys that are no variable names are skipped (the kubelet records an event).
        for (k, v) in object_data(kind, &obj, true)? {
            let key = format!("{prefix}{k}");
            if is_env_var_name(&key) {
                env.set(&key, String::from_utf8_lossy(&v).into_owned());
            }
        }
    }
    for var in container["env"].as_array().into_iter().flatten() {
        let name = var["name"].as_str().unwrap_or_default();
        let literal = var["value"].as_str().unwrap_or_default();
        let from = &var["valueFrom"];
        let value = if !literal.is_empty() {
            let svc = &service;
            expand(literal, |n| env.get(n).map(String::from).or_else(|| svc.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone())))
        } else if from["fieldRef"].is_object() {
            field_ref(pod, from["fieldRef"]["fieldPath"].as_str().unwrap_or_default(), Some(net))?
        } else if let Some((kind, r)) = [(Kind::ConfigMap, &from["configMapKeyRef"]), (Kind::Secret, &from["secretKeyRef"])].into_iter().find(|(_, r)| r.is_object()) {
            let (obj_name, key) = (r["name"].as_str().unwrap_or_default(), r["key"].as_str().unwrap_or_default());
            let Some(obj) = referenced(objects, kind, obj_name, optional(r))? else { continue };
            match object_data(kind, &obj, true)?.remove(key) {
                Some(v) => String::from_utf8_lossy(&v).into_owned(),
                None if optional(r) => continue,
                None => return Err(format!("couldn't find key {key} in {} {ns}/{obj_name}", kind.title())),
            }
        } else if from["resourceFieldRef"].is_object() {
            return Err(format!("env {name}: resourceFieldRef is not supported by kubetape sim (resources are ignored)"));
        } else {
            String::new()
        };
        // A variable the pod sets itself replaces the service one, also for expansion.
        service.retain(|(k, _)| k != name);
        env.set(name, value);
    }
    for (k, v) in service {
        if env.get(&k).is_none() {
            env.set(&k, v);
        }
    }
    Ok(env)
}

/// `command` and `args` with `$(VAR)` expanded against `env`.
pub fn expanded_command(container: &Value, env: &EnvList) -> (Vec<String>, Vec<String>) {
    let list =
        |field: &str| -> Vec<String> { container[field].as_array().into_iter().flatten().filter_map(Value::as_str).map(|s| expand(s, |n| env.get(n).map(String::from))).collect() };
    (list("command"), list("args"))
}

/// What runs for a container: with an image mapped to an entrypoint, Docker's rule
/// (`command` replaces the entrypoint, `args` follow; without `command`, the
/// entrypoint and then `args`); otherwise `command` and `args` from the host's PATH,
/// `sh` when both are empty (the usual image default).
pub fn argv(command: Vec<String>, args: Vec<String>, entrypoint: Option<&str>) -> Vec<String> {
    match (entrypoint, command.is_empty()) {
        (_, false) => command.into_iter().chain(args).collect(),
        (Some(path), true) => std::iter::once(path.to_string()).chain(args).collect(),
        (None, true) if args.is_empty() => vec!["sh".into()],
        (None, true) => args,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::podrefs::FixedObjects;
    use serde_json::json;

    fn net() -> PodNet {
        PodNet { pod_ip: "10.244.0.7".into(), host_ip: "127.0.0.1".into() }
    }

    fn pod() -> Value {
        json!({"metadata": {"name": "proxy-1", "namespace": "kubetape", "uid": "u-9", "labels": {"app": "proxy"}},
               "spec": {"nodeName": "n1", "serviceAccountName": "proxy"}})
    }

    fn objects() -> FixedObjects {
        FixedObjects::new(&[
            (Kind::Secret, json!({"metadata": {"name": "creds"}, "data": {"key": "czNjcjN0", "other": "eA=="}})),
            (Kind::ConfigMap, json!({"metadata": {"name": "settings"}, "data": {"LEVEL": "debug", "bad key": "x", "1X": "y"}, "binaryData": {"BIN": "AA=="}})),
        ])
    }

    fn service() -> Vec<(String, String)> {
        vec![("KUBERNETES_SERVICE_HOST".into(), "127.0.0.1".into()), ("KUBERNETES_SERVICE_PORT".into(), "6443".into())]
    }

    #[test]
    fn env_names() {
        for (name, ok) in [("A", true), ("_a.b-c", true), ("1A", false), ("", false), ("a b", false), ("-x", true), ("é", false)] {
            assert_eq!(is_env_var_name(name), ok, "{name:?}");
        }
    }

    #[test]
    fn resolves_like_the_kubelet() {
        let container = json!({
            "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}, {"secretRef": {"name": "absent", "optional": true}}],
            "env": [
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "key"}}},
                {"name": "MAYBE", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "nope", "optional": true}}},
                {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "LEVEL"}}},
                {"name": "ADDR", "value": "$(POD_IP):8080 $$(POD_IP) $(LATER) $(KUBERNETES_SERVICE_PORT)"},
                {"name": "KUBERNETES_SERVICE_HOST", "value": "override"},
                {"name": "LATER", "value": "l"},
                {"name": "EMPTY", "value": ""},
            ]
        });
        let env = container_env(&pod(), &container, &net(), &service(), &mut objects()).unwrap();
        let want: Vec<(&str, &str)> = vec![
            ("CFG_1X", "y"),
            ("CFG_LEVEL", "debug"),
            ("POD_IP", "10.244.0.7"),
            ("POD_NAME", "proxy-1"),
            ("APP", "proxy"),
            ("SECRET", "s3cr3t"),
            ("LEVEL", "debug"),
            ("ADDR", "10.244.0.7:8080 $(POD_IP) $(LATER) 6443"),
            ("KUBERNETES_SERVICE_HOST", "override"),
            ("LATER", "l"),
            ("EMPTY", ""),
            ("KUBERNETES_SERVICE_PORT", "6443"),
        ];
        let got: Vec<(&str, &str)> = env.0.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(got, want);
        let (command, args) = expanded_command(&json!({"command": ["serve", "--bind=$(POD_IP)"], "args": ["$(NOPE)", "$$(POD_IP)"]}), &env);
        assert_eq!(command, ["serve", "--bind=10.244.0.7"]);
        assert_eq!(args, ["$(NOPE)", "$(POD_IP)"]);
    }

    #[test]
    fn missing_references_are_config_errors() {
        let cases = [
            ("missing secret", json!({"env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k"}}}]}), "secrets \"gone\" not found"),
            ("missing key", json!({"env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "k"}}}]}), "couldn't find key k in Secret kubetape/creds"),
            (
                "missing configmap key",
                json!({"env": [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "BIN"}}}]}),
                "couldn't find key BIN in ConfigMap kubetape/settings",
            ),
            ("missing envFrom", json!({"envFrom": [{"configMapRef": {"name": "gone"}}]}), "configmaps \"gone\" not found"),
            ("bad field", json!({"env": [{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "spec.nope"}}}]}), "unsupported fieldPath: spec.nope"),
        ];
        for (name, container, want) in cases {
            assert_eq!(container_env(&pod(), &container, &net(), &[], &mut objects()), Err(want.to_string()), "{name}");
        }
        let optional = json!({"env": [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "k", "optional": true}}}]});
        assert_eq!(container_env(&pod(), &optional, &net(), &[], &mut objects()), Ok(EnvList::default()));
    }

    #[test]
    fn argv_rules() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(argv(vec![], s(&["proxy", "--x"]), Some("/bin/kubetape")), s(&["/bin/kubetape", "proxy", "--x"]));
        assert_eq!(argv(s(&["/bin/true"]), s(&["a"]), Some("/bin/kubetape")), s(&["/bin/true", "a"]));
        assert_eq!(argv(vec![], vec![], Some("/bin/kubetape")), s(&["/bin/kubetape"]));
        assert_eq!(argv(vec![], vec![], None), s(&["sh"]));
        assert_eq!(argv(vec![], s(&["echo", "hi"]), None), s(&["echo", "hi"]));
        assert_eq!(argv(s(&["sh", "-c"]), s(&["exit 3"]), None), s(&["sh", "-c", "exit 3"]));
    }
}
