//! The operator's CA and what it issues, so mutual TLS between proxies and recorders
//! needs no cert-manager (an air-gapped cluster has none). The CA lives in a Secret in
//! the operator's namespace (its public half also in a ConfigMap, for kubeconfigs);
//! each Recorder gets a serving certificate, the proxy a serving and a client one.
//! A certificate is reissued when the names it must cover change, or a month before
//! it expires.

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::kube::rest::Rest;
use crate::net::pki::{Ca, Pem, LEAF_DAYS};
use crate::wire::base64;

const CA_NAME: &str = "kubetape-operator-ca";
/// The names a certificate was issued for, and when it was issued (Unix seconds).
const NAMES: &str = "kubetape.dev/certificate-names";
const ISSUED: &str = "kubetape.dev/issued-at";
/// Reissue this long before expiry.
const RENEW_BEFORE_DAYS: u64 = 30;

/// Secret and ConfigMap names in the operator's namespace.
pub const CA_SECRET: &str = "kubetape-ca";

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn data(secret: &Value, key: &str) -> Option<String> {
    secret["data"][key].as_str().and_then(base64::decode).and_then(|b| String::from_utf8(b).ok())
}

/// The CA from its Secret, made on first start. The Secret is created, never
/// replaced: two operators starting at once agree on whichever was created first.
pub fn ensure_ca(rest: &Rest, namespace: &str) -> Result<Ca> {
    let path = format!("/api/v1/namespaces/{namespace}/secrets/{CA_SECRET}");
    let secret = match rest.get(&path)? {
        Some(s) => s,
        None => {
            let ca = Ca::new(CA_NAME)?;
            let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": CA_SECRET, "namespace": namespace}, "type": "kubernetes.io/tls",
                                "data": {"tls.crt": super::build::b64(&ca.cert_pem), "tls.key": super::build::b64(&ca.key_pem)}});
            match rest.create(&format!("/api/v1/namespaces/{namespace}/secrets"), &secret) {
                Ok(_) => log::info!("operator CA created secret={namespace}/{CA_SECRET}"),
                Err(e) if e.code() == Some(409) => {}
                Err(e) => return Err(e.into()),
            }
            rest.get(&path)?.ok_or_else(|| Error::new(format!("secret {namespace}/{CA_SECRET} vanished after creation")))?
        }
    };
    let (cert, key) =
        data(&secret, "tls.crt").zip(data(&secret, "tls.key")).ok_or_else(|| Error::new(format!("secret {namespace}/{CA_SECRET}: tls.crt and tls.key are required")))?;
    let ca = Ca::restore(CA_NAME, &cert, &key)?;
    // The public half, readable by whoever writes kubeconfigs for the proxy.
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": CA_SECRET, "namespace": namespace}, "data": {"ca.crt": ca.cert_pem}});
    super::apply::apply(rest, cm).map_err(|e| Error::new(format!("configmap {namespace}/{CA_SECRET}: {e}")))?;
    Ok(ca)
}

/// Whether `existing` (a Secret this module wrote) still serves for `names`.
pub fn still_good(existing: Option<&Value>, names: &[String], ca: &Ca) -> bool {
    let Some(s) = existing else { return false };
    let issued: u64 = s["metadata"]["annotations"][ISSUED].as_str().and_then(|t| t.parse().ok()).unwrap_or(0);
    // An issue time in the future (a garbled or forged annotation) is not fresh.
    let fresh = now().checked_sub(issued).is_some_and(|age| age < (LEAF_DAYS - RENEW_BEFORE_DAYS) * 86_400);
    s["metadata"]["annotations"][NAMES].as_str() == Some(names.join(",").as_str()) && fresh && data(s, "ca.crt").as_deref() == Some(ca.cert_pem.as_str())
}

/// The annotations recording what a certificate was issued for.
pub fn issued_for(names: &[String]) -> Value {
    json!({NAMES: names.join(","), ISSUED: now().to_string()})
}

pub fn serving(ca: &Ca, names: &[String]) -> Result<Pem> {
    let hosts: Vec<&str> = names.iter().map(String::as_str).collect();
    ca.server(names.first().map(String::as_str).unwrap_or("kubetape"), &hosts)
}

/// The proxy's Secret: `tls.crt`/`tls.key` for kubectl users, `client.crt`/
/// `client.key` for the recorders, `ca.crt` to trust the recorders with.
pub fn ensure_proxy_secret(rest: &Rest, ca: &Ca, namespace: &str, name: &str, names: &[String]) -> Result<()> {
    let path = format!("/api/v1/namespaces/{namespace}/secrets/{name}");
    let existing = rest.get(&path)?;
    if still_good(existing.as_ref(), names, ca) {
        return Ok(());
    }
    let server = serving(ca, names)?;
    let client = ca.client(super::build::PROXY_CLIENT_CN, &[])?;
    let b64 = super::build::b64;
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace, "annotations": issued_for(names)}, "type": "Opaque",
                        "data": {"tls.crt": b64(&server.cert), "tls.key": b64(&server.key), "client.crt": b64(&client.cert), "client.key": b64(&client.key), "ca.crt": b64(&ca.cert_pem)}});
    match existing {
        None => rest.create(&format!("/api/v1/namespaces/{namespace}/secrets"), &secret)?,
        Some(live) => {
            let mut next = secret;
            next["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"].clone();
            rest.replace(&path, &next)?
        }
    };
    log::info!("proxy certificates issued secret={namespace}/{name} names={}", names.join(","));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_is_reissued_when_old_renamed_or_dated_in_the_future() {
        let ca = Ca::new("test").unwrap();
        let names = vec!["a.ns.svc".to_string()];
        let secret = |issued: u64, names: &str| json!({"metadata": {"annotations": {NAMES: names, ISSUED: issued.to_string()}}, "data": {"ca.crt": crate::wire::base64::encode(ca.cert_pem.as_bytes())}});
        assert!(still_good(Some(&secret(now() - 86_400, "a.ns.svc")), &names, &ca));
        assert!(!still_good(Some(&secret(now() - (LEAF_DAYS - RENEW_BEFORE_DAYS) * 86_400, "a.ns.svc")), &names, &ca));
        assert!(!still_good(Some(&secret(now() - 86_400, "b.ns.svc")), &names, &ca));
        assert!(!still_good(Some(&secret(u64::MAX, "a.ns.svc")), &names, &ca));
        assert!(!still_good(None, &names, &ca));
    }
}
