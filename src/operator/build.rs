//! What a Recorder should own, as pure functions of the resource (and the operator's
//! settings): the recorder's configuration, Services, ServiceAccount, TLS Secret and
//! StatefulSet. The reconcile loop only compares these with what exists and applies
//! the difference; the golden tests under `tests/golden/operator/` pin their shape.

use serde_json::{json, Map, Value};

use super::spec::{RecorderSpec, GROUP, VERSION};
use crate::kube::recorders;

/// Where recorders listen, in every replica.
pub const RECORDER_PORT: u16 = 8444;
/// The CN the proxy's client certificate carries; recorders let it write.
pub const PROXY_CLIENT_CN: &str = "kubetape-proxy";
/// The CN of the reader certificate each Recorder gets (Secret `<name>-reader`),
/// before `namespace/name`: one CA issues them all, so each must name its Recorder.
const READER_CN_PREFIX: &str = "kubetape-reader:";
/// A changed configuration or certificate rolls the replicas through this annotation.
pub const CONFIG_HASH: &str = "kubetape.dev/config-hash";
/// Enough for a recorder to hand its sessions to another replica and upload its spool.
const GRACE_SECONDS: u64 = 30;

const CONFIG_DIR: &str = "/etc/kubetape/config";
const TLS_DIR: &str = "/etc/kubetape/tls";
const S3_CA_DIR: &str = "/etc/kubetape/s3-ca";
const DATA_DIR: &str = "/data";
/// The image's user (the Dockerfile's `USER 65532:65532`).
const NONROOT: u64 = 65532;
/// Where a pod's API credentials are looked for (`ApiServer::in_cluster`).
const API_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The lifetime of the recorder's projected token (the kubelet renews it).
const API_TOKEN_SECONDS: u64 = 3607;
/// What a recorder serving viewers needs: create on tokenreviews and subjectaccessreviews.
pub const AUTH_DELEGATOR: &str = "system:auth-delegator";
/// The labels of a viewers binding naming its Recorder.
pub const VIEWERS_OF_NAMESPACE: &str = "kubetape.dev/recorder-namespace";
pub const VIEWERS_OF_NAME: &str = "kubetape.dev/recorder-name";

/// A Recorder as read from the API server.
#[derive(Clone, Debug)]
pub struct Recorder {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub generation: i64,
    pub spec: RecorderSpec,
}

impl Recorder {
    pub fn from_object(obj: &Value) -> Result<Recorder, String> {
        let meta = &obj["metadata"];
        let text = |v: &Value| v.as_str().map(String::from).ok_or_else(|| "metadata: name, namespace and uid are required".to_string());
        Ok(Recorder {
            name: text(&meta["name"])?,
            namespace: text(&meta["namespace"])?,
            uid: text(&meta["uid"])?,
            generation: meta["generation"].as_i64().unwrap_or(0),
            spec: serde_json::from_value(obj.get("spec").cloned().unwrap_or(json!({}))).map_err(|e| format!("spec: {e}"))?,
        })
    }

    /// The headless Service that names each replica.
    pub fn replicas_service(&self) -> String {
        recorders::replicas_service(&self.name)
    }

    pub fn tls_secret(&self) -> String {
        format!("{}-tls", self.name)
    }

    /// A client certificate that may read this Recorder's recordings through its API.
    pub fn reader_secret(&self) -> String {
        format!("{}-reader", self.name)
    }

    /// The only reader this Recorder's replicas let in: a reader certificate of
    /// another Recorder (the same CA signed it) must not read these recordings.
    pub fn reader_cn(&self) -> String {
        format!("{READER_CN_PREFIX}{}/{}", self.namespace, self.name)
    }

    pub fn config_map(&self) -> String {
        format!("{}-config", self.name)
    }

    /// The name replica `pod`'s certificate is valid for, as the proxy checks it.
    pub fn server_name(&self, pod: &str) -> String {
        recorders::server_name(&self.namespace, &self.name, pod)
    }

    /// What the serving certificate covers: every replica and the Service.
    pub fn certificate_names(&self) -> Vec<String> {
        let (svc, ns) = (self.replicas_service(), &self.namespace);
        // localhost too: readers reach a recorder through `kubectl port-forward`.
        vec![
            format!("*.{svc}.{ns}.svc"),
            format!("*.{svc}.{ns}.svc.cluster.local"),
            format!("{}.{ns}.svc", self.name),
            format!("{}.{ns}.svc.cluster.local", self.name),
            "localhost".into(),
        ]
    }

    /// The labels that select this Recorder's replicas. Never the user's labels:
    /// a selector is immutable, so one that followed them could never be updated.
    pub fn selector(&self) -> Value {
        json!({"app.kubernetes.io/name": "kubetape-recorder", "app.kubernetes.io/instance": self.name})
    }

    fn labels(&self) -> Value {
        let mut l = self.selector();
        l["app.kubernetes.io/managed-by"] = json!("kubetape-operator");
        l
    }

    fn metadata(&self, name: &str) -> Value {
        json!({
            "name": name, "namespace": self.namespace, "labels": self.labels(),
            "ownerReferences": [{"apiVersion": format!("{GROUP}/{VERSION}"), "kind": "Recorder", "name": self.name, "uid": self.uid, "controller": true, "blockOwnerDeletion": true}]
        })
    }
}

/// The recorder's flags, as the JSON config file it reads (`--config`).
pub fn recorder_config(rec: &Recorder) -> Value {
    let mut c = json!({
        "tls-cert": format!("{TLS_DIR}/tls.crt"), "tls-key": format!("{TLS_DIR}/tls.key"), "client-ca": format!("{TLS_DIR}/ca.crt"),
        "storage-dir": DATA_DIR, "writers": PROXY_CLIENT_CN, "readers": rec.reader_cn(),
    });
    if rec.spec.enable_ui {
        // Viewers sign in with their Kubernetes tokens, checked with the pod's own.
        c["ui"] = json!(true);
        c["viewers-from-cluster"] = json!(true);
    }
    if let Some(s3) = &rec.spec.storage.s3 {
        c["s3-bucket"] = json!(s3.bucket);
        c["s3-path-style"] = json!(s3.path_style.to_string());
        for (key, v) in [("s3-endpoint", &s3.endpoint), ("s3-region", &s3.region), ("s3-prefix", &s3.prefix)] {
            if let Some(v) = v {
                c[key] = json!(v);
            }
        }
        if let Some(ca) = &s3.ca {
            let key = ca.secret.as_ref().or(ca.config_map.as_ref()).map(|r| r.key.as_str()).unwrap_or("ca.crt");
            c["s3-ca-file"] = json!(format!("{S3_CA_DIR}/{key}"));
        }
    }
    c
}

pub fn config_map(rec: &Recorder) -> Value {
    let text = serde_json::to_string_pretty(&recorder_config(rec)).unwrap_or_default();
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": rec.metadata(&rec.config_map()), "data": {"recorder.json": text}})
}

pub fn service_account(rec: &Recorder) -> Value {
    let mut meta = rec.metadata(&rec.name);
    if !rec.spec.pod.service_account.annotations.is_empty() {
        meta["annotations"] = Value::Object(rec.spec.pod.service_account.annotations.clone());
    }
    // A recorder calls the Kubernetes API only for viewers (`enableUI`), and then its
    // pods mount a bound token of their own (`stateful_set`).
    json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta, "automountServiceAccountToken": false})
}

/// The ClusterRoleBinding of a Recorder with `enableUI`: its service account may ask
/// the cluster about viewers (TokenReview, SubjectAccessReview: `system:auth-delegator`).
/// Cluster-scoped, so no owner reference; the operator removes it (by its labels) once
/// the Recorder is gone or no longer has `enableUI`.
pub fn viewers_binding(rec: &Recorder) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": viewers_binding_name(&rec.namespace, &rec.name), "labels": {
            "app.kubernetes.io/managed-by": "kubetape-operator", VIEWERS_OF_NAMESPACE: rec.namespace, VIEWERS_OF_NAME: rec.name,
        }},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": AUTH_DELEGATOR},
        "subjects": [{"kind": "ServiceAccount", "name": rec.name, "namespace": rec.namespace}],
    })
}

/// Names never collide: `:` is in neither a namespace's nor a Recorder's name.
pub fn viewers_binding_name(namespace: &str, name: &str) -> String {
    format!("kubetape-recorder-viewers:{namespace}:{name}")
}

/// The Service for readers, and the headless one whose DNS names the replicas.
pub fn services(rec: &Recorder) -> [Value; 2] {
    let port = json!([{"name": "recorder", "port": RECORDER_PORT, "targetPort": "recorder", "protocol": "TCP"}]);
    [
        json!({"apiVersion": "v1", "kind": "Service", "metadata": rec.metadata(&rec.name), "spec": {"selector": rec.selector(), "ports": port, "type": "ClusterIP"}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": rec.metadata(&rec.replicas_service()),
               "spec": {"selector": rec.selector(), "ports": port, "clusterIP": "None", "publishNotReadyAddresses": true}}),
    ]
}

/// A certificate Secret the Recorder owns: its serving certificate (with the CA that
/// also signs the proxy's client certificate, so the recorder can check its
/// writers), or its reader certificate.
pub fn tls_secret(rec: &Recorder, name: &str, cert: &str, key: &str, ca: &str, annotations: Value) -> Value {
    let mut meta = rec.metadata(name);
    meta["annotations"] = annotations;
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": meta, "type": "kubernetes.io/tls",
           "data": {"tls.crt": b64(cert), "tls.key": b64(key), "ca.crt": b64(ca)}})
}

pub fn b64(s: &str) -> String {
    crate::wire::base64::encode(s.as_bytes())
}

/// The StatefulSet running the recorder replicas. `config_hash` covers what the
/// replicas read only at start (their configuration and certificate).
pub fn stateful_set(rec: &Recorder, image: &str, config_hash: &str) -> Value {
    let spec = &rec.spec;
    let env_field = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}});
    let mut env = vec![env_field("POD_NAME", "metadata.name"), env_field("POD_IP", "status.podIP")];
    let mut volumes =
        vec![json!({"name": "config", "configMap": {"name": rec.config_map()}}), json!({"name": "tls", "secret": {"secretName": rec.tls_secret(), "defaultMode": 0o440}})];
    let mut mounts = vec![
        json!({"name": "config", "mountPath": CONFIG_DIR, "readOnly": true}),
        json!({"name": "tls", "mountPath": TLS_DIR, "readOnly": true}),
        json!({"name": "data", "mountPath": DATA_DIR}),
    ];
    if spec.enable_ui {
        // Asking the cluster about viewers: a bound, expiring token, as the proxy's.
        volumes.push(json!({"name": "api", "projected": {"sources": [
            {"serviceAccountToken": {"path": "token", "expirationSeconds": API_TOKEN_SECONDS}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
        ]}}));
        mounts.push(json!({"name": "api", "mountPath": API_DIR, "readOnly": true}));
    }
    let mut claims = Vec::new();
    match (&spec.storage.s3, &spec.storage.filesystem) {
        (Some(s3), _) => {
            // The spool: what is durable here and not yet in the bucket.
            volumes.push(json!({"name": "data", "emptyDir": {}}));
            if let Some(secret) = &s3.credentials_secret {
                for (var, optional) in [("AWS_ACCESS_KEY_ID", false), ("AWS_SECRET_ACCESS_KEY", false), ("AWS_SESSION_TOKEN", true)] {
                    env.push(json!({"name": var, "valueFrom": {"secretKeyRef": {"name": secret, "key": var, "optional": optional}}}));
                }
            }
            if let Some(ca) = &s3.ca {
                let source = match (&ca.secret, &ca.config_map) {
                    (Some(s), _) => json!({"secret": {"secretName": s.name, "items": [{"key": s.key, "path": s.key}]}}),
                    (None, Some(c)) => json!({"configMap": {"name": c.name, "items": [{"key": c.key, "path": c.key}]}}),
                    (None, None) => json!({"emptyDir": {}}),
                };
                let mut v = json!({"name": "s3-ca"});
                if let (Some(obj), Value::Object(src)) = (v.as_object_mut(), source) {
                    obj.extend(src);
                }
                volumes.push(v);
                mounts.push(json!({"name": "s3-ca", "mountPath": S3_CA_DIR, "readOnly": true}));
            }
        }
        (None, Some(fs)) if fs.persistent_volume_claim.is_some() => {
            let c = fs.persistent_volume_claim.as_ref().map(|c| (c.size.clone(), c.storage_class_name.clone())).unwrap_or_default();
            let mut claim_spec = json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": c.0}}});
            if let Some(class) = c.1 {
                claim_spec["storageClassName"] = json!(class);
            }
            claims.push(json!({"metadata": {"name": "data", "labels": rec.selector()}, "spec": claim_spec}));
        }
        _ => volumes.push(json!({"name": "data", "emptyDir": {}})),
    }
    let probe = |path: &str, period: u64, failures: u64| json!({"httpGet": {"scheme": "HTTPS", "path": path, "port": "recorder"}, "periodSeconds": period, "timeoutSeconds": 2, "failureThreshold": failures});
    let mut container = json!({
        "name": "recorder",
        "image": image,
        "imagePullPolicy": spec.image_pull_policy.clone().unwrap_or_else(|| "IfNotPresent".into()),
        "args": ["recorder", format!("--config={CONFIG_DIR}/recorder.json"), format!("--listen=$(POD_IP):{RECORDER_PORT}"), "--replica-name=$(POD_NAME)"],
        "env": env,
        "ports": [{"name": "recorder", "containerPort": RECORDER_PORT, "protocol": "TCP"}],
        "volumeMounts": mounts,
        "readinessProbe": probe("/readyz", 2, 1),
        "livenessProbe": probe("/healthz", 10, 6),
        "securityContext": spec.pod.container_security_context.clone().unwrap_or_else(|| json!({
            "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "runAsNonRoot": true, "capabilities": {"drop": ["ALL"]}
        })),
    });
    if let Some(r) = &spec.resources {
        container["resources"] = r.clone();
    }
    let mut labels = spec.pod.labels.clone();
    if let Value::Object(own) = rec.labels() {
        labels.extend(own); // ours win: they select the replicas
    }
    let mut annotations = spec.pod.annotations.clone();
    annotations.insert(CONFIG_HASH.into(), json!(config_hash));
    let mut pod = json!({
        "serviceAccountName": rec.name,
        "automountServiceAccountToken": false,
        "enableServiceLinks": false,
        "terminationGracePeriodSeconds": GRACE_SECONDS,
        "securityContext": spec.pod.security_context.clone().unwrap_or_else(|| json!({
            "runAsUser": NONROOT, "runAsGroup": NONROOT, "fsGroup": NONROOT, "runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}
        })),
        "containers": [container],
        "volumes": volumes,
    });
    for (field, v) in [("nodeSelector", &spec.pod.node_selector), ("tolerations", &spec.pod.tolerations), ("affinity", &spec.pod.affinity)] {
        if let Some(v) = v {
            pod[field] = v.clone();
        }
    }
    let mut sts = json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": rec.metadata(&rec.name),
        "spec": {
            "replicas": spec.replicas(),
            "serviceName": rec.replicas_service(),
            "selector": {"matchLabels": rec.selector()},
            // Replicas on S3 are peers: start and stop them together, roll one at a time.
            "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "RollingUpdate"},
            "template": {"metadata": {"labels": Value::Object(labels), "annotations": Value::Object(annotations)}, "spec": pod},
        }
    });
    if !claims.is_empty() {
        sts["spec"]["volumeClaimTemplates"] = json!(claims);
    }
    sts
}

/// A short stable digest (FNV-1a, 64 bits) for the config-hash annotation.
pub fn digest(parts: &[&str]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// Sorted keys, so goldens and comparisons do not depend on insertion order.
pub fn canonical(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), canonical(v))).collect::<std::collections::BTreeMap<_, _>>().into_iter().collect::<Map<_, _>>()),
        Value::Array(a) => Value::Array(a.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorder(spec: Value) -> Recorder {
        Recorder::from_object(&json!({"metadata": {"name": "main", "namespace": "kubetape-system", "uid": "0a1b-uid", "generation": 3}, "spec": spec})).unwrap()
    }

    /// Compares with `tests/golden/operator/NAME.json`; `KUBETAPE_BLESS=1` rewrites it.
    fn golden(name: &str, objects: &[Value]) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/operator").join(format!("{name}.json"));
        let text = serde_json::to_string_pretty(&canonical(&json!(objects))).unwrap() + "\n";
        if std::env::var_os("KUBETAPE_BLESS").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &text).unwrap();
        }
        let want = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e} (KUBETAPE_BLESS=1 cargo test --lib operator writes it)", path.display()));
        assert_eq!(text, want, "{} differs; if the change is meant, rerun with KUBETAPE_BLESS=1 and review the diff", path.display());
    }

    fn all(rec: &Recorder) -> Vec<Value> {
        let mut v = vec![config_map(rec), service_account(rec)];
        v.extend(services(rec));
        v.push(stateful_set(rec, "kubetape:0.1.0", "0123456789abcdef"));
        v
    }

    #[test]
    fn quickstart_recorder() {
        golden("quickstart", &all(&recorder(json!({}))));
    }

    #[test]
    fn s3_recorder_with_every_override() {
        let rec = recorder(json!({
            "replicas": 2, "tags": ["tag:audit"], "image": "registry.local/kubetape:1", "imagePullPolicy": "Never",
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
            "storage": {"s3": {"bucket": "recordings", "endpoint": "https://s3.local:9000", "region": "eu-1", "prefix": "prod/", "pathStyle": true,
                               "credentialsSecret": "s3-creds", "ca": {"configMap": {"name": "s3-ca", "key": "ca.pem"}}}},
            "pod": {"labels": {"team": "sec", "app.kubernetes.io/name": "spoofed"}, "annotations": {"a": "b"}, "nodeSelector": {"disk": "ssd"},
                    "tolerations": [{"key": "k", "operator": "Exists"}], "affinity": {"podAntiAffinity": {}},
                    "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/r"}}}
        }));
        golden("s3", &all(&rec));
    }

    #[test]
    fn pvc_recorder() {
        golden(
            "pvc",
            &[stateful_set(&recorder(json!({"storage": {"filesystem": {"persistentVolumeClaim": {"size": "10Gi", "storageClassName": "fast"}}}})), "kubetape:0.1.0", "h")],
        );
    }

    #[test]
    fn the_selector_never_follows_user_labels() {
        let a = stateful_set(&recorder(json!({"pod": {"labels": {"team": "a"}}})), "i", "h");
        let b = stateful_set(&recorder(json!({"pod": {"labels": {"team": "b", "app.kubernetes.io/instance": "evil"}}})), "i", "h");
        assert_eq!(a["spec"]["selector"], b["spec"]["selector"]);
        assert_eq!(b["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/instance"], "main");
        assert_eq!(b["spec"]["template"]["metadata"]["labels"]["team"], "b");
    }

    #[test]
    fn certificate_names_cover_the_names_the_proxy_checks() {
        let rec = recorder(json!({}));
        let name = rec.server_name("main-1");
        assert_eq!(name, "main-1.main-replicas.kubetape-system.svc");
        assert!(rec.certificate_names().iter().any(|n| n.strip_prefix("*.").is_some_and(|rest| name.split_once('.').map(|x| x.1) == Some(rest))));
    }

    #[test]
    fn enable_ui_turns_viewers_on_with_a_token_and_the_auth_delegator_binding() {
        let off = recorder(json!({}));
        let on = recorder(json!({"enableUI": true}));
        assert!(recorder_config(&off).get("ui").is_none() && recorder_config(&off).get("viewers-from-cluster").is_none());
        assert_eq!((&recorder_config(&on)["ui"], &recorder_config(&on)["viewers-from-cluster"]), (&json!(true), &json!(true)));
        let api = |r: &Recorder| {
            let pod = stateful_set(r, "i", "h")["spec"]["template"]["spec"].clone();
            assert_eq!(pod["automountServiceAccountToken"], json!(false));
            pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "api").map(|v| v["projected"]["sources"][0].clone())
        };
        assert_eq!(api(&off), None, "no token for a recorder that never asks the cluster");
        assert_eq!(api(&on), Some(json!({"serviceAccountToken": {"path": "token", "expirationSeconds": API_TOKEN_SECONDS}})));
        let b = viewers_binding(&on);
        assert_eq!(b["roleRef"]["name"], AUTH_DELEGATOR);
        assert_eq!(b["subjects"], json!([{"kind": "ServiceAccount", "name": "main", "namespace": "kubetape-system"}]));
        assert_eq!(b["metadata"]["name"], "kubetape-recorder-viewers:kubetape-system:main");
        assert_ne!(viewers_binding_name("a-b", "c"), viewers_binding_name("a", "b-c"));
    }

    #[test]
    fn digests_differ_by_part_boundaries() {
        assert_ne!(digest(&["ab", "c"]), digest(&["a", "bc"]));
        assert_eq!(digest(&["x"]), digest(&["x"]));
    }
}
