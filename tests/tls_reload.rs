//! The proxy follows the renewal of its certificate files without a restart, as the
//! kubelet delivers it (a Secret volume swapped in place through its `..data`
//! symlink): new connections are served the renewed certificate while open ones go
//! on, and recorders are shown the renewed client certificate, the API event stream
//! included.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use kubetape::net::pki::{Ca, Pem};
use support::{eventually, Demo, Kubectl, OutputExt, Proto, RawClient, Spawned, TempDir};

/// Writes `files` into the Secret volume at `volume` as the kubelet does: into a new
/// directory, then `..data` renamed to point at it (atomic), the visible names being
/// symlinks through `..data`. The previous directory is removed, as the kubelet does.
fn kubelet_write(volume: &Path, stamp: &str, files: &[(&str, &str)]) {
    use std::os::unix::fs::symlink;
    std::fs::create_dir_all(volume).unwrap();
    let old = std::fs::read_link(volume.join("..data")).ok();
    let dir = format!("..{stamp}");
    std::fs::create_dir(volume.join(&dir)).unwrap();
    for (name, text) in files {
        std::fs::write(volume.join(&dir).join(name), text).unwrap();
    }
    symlink(&dir, volume.join("..data_tmp")).unwrap();
    std::fs::rename(volume.join("..data_tmp"), volume.join("..data")).unwrap();
    for (name, _) in files {
        if std::fs::symlink_metadata(volume.join(name)).is_err() {
            symlink(format!("..data/{name}"), volume.join(name)).unwrap();
        }
    }
    if let Some(old) = old {
        std::fs::remove_dir_all(volume.join(old)).unwrap();
    }
}

/// Restarts the demo's proxy with its serving and recorder certificates from `volume`.
fn proxy_on_volume(demo: &Demo, volume: &Path) -> Spawned {
    demo.kill("proxy");
    let f = |name: &str| volume.join(name).display().to_string();
    let flags = [f("tls.crt"), f("tls.key"), f("client.crt"), f("client.key")];
    demo.restart_with("proxy", &["--tls-cert", &flags[0], "--tls-key", &flags[1], "--recorder-cert", &flags[2], "--recorder-key", &flags[3]], None)
}

fn proxy_log(demo: &Demo) -> String {
    std::fs::read_to_string(demo.path("proxy-restarted.log")).unwrap_or_default()
}

/// A value of the demo's alice kubeconfig, as written there (base64).
fn alice_field(demo: &Demo, field: &str) -> String {
    let kc = std::fs::read_to_string(demo.path("kubeconfig")).unwrap();
    let line = kc.lines().find_map(|l| l.trim_start().strip_prefix(&format!("{field}:")).map(|v| v.trim().to_string()));
    line.unwrap_or_else(|| panic!("no {field} in the demo kubeconfig"))
}

/// The first certificate of a PEM chain, as DER.
fn leaf(pem: &str) -> Vec<u8> {
    kubetape::net::tls::certs_from_pem(pem.as_bytes(), "cert").unwrap()[0].to_vec()
}

/// Lists pods as alice on `c`; the certificate the proxy served on it.
fn list_pods(c: &mut RawClient) -> Result<Vec<u8>, String> {
    c.send(b"GET /api/v1/namespaces/default/pods HTTP/1.1\r\nHost: kubetape\r\n\r\n").map_err(|e| format!("sending: {e}"))?;
    match c.response() {
        Some((200, _)) => {}
        Some((status, body)) => return Err(format!("{status}: {body}")),
        None => return Err("no response".into()),
    }
    let served = c.stream.conn.peer_certificates().and_then(|certs| certs.first()).map(|cert| cert.to_vec());
    served.ok_or_else(|| "no certificate served".into())
}

#[test]
fn new_connections_get_the_renewed_certificate_and_open_ones_go_on() {
    let demo = Demo::start();
    let ca = Ca::new("kubetape-test-proxy-ca").unwrap();
    let hosts = ["127.0.0.1", "localhost"];
    let (first, renewed) = (ca.server("kubetape-proxy", &hosts).unwrap(), ca.server("kubetape-proxy", &hosts).unwrap());
    let writer = |name: &str| std::fs::read_to_string(demo.path(&format!("pki/{name}"))).unwrap();
    let (client_cert, client_key) = (writer("recorder-writer.pem"), writer("recorder-writer-key.pem"));
    let volume = demo.path("proxy-tls");
    let write = |stamp: &str, p: &Pem| kubelet_write(&volume, stamp, &[("tls.crt", &p.cert), ("tls.key", &p.key), ("client.crt", &client_cert), ("client.key", &client_key)]);
    write("2025_01_01_00_00_00.000000001", &first);
    let _proxy = proxy_on_volume(&demo, &volume);

    // alice's client certificate, trusting the test CA that issues the proxy's.
    let kc = demo.path("test-ca.kubeconfig");
    let b64 = kubetape::wire::base64::encode(ca.cert_pem.as_bytes());
    let creds = format!("client-certificate-data: {}\nclient-key-data: {}\n", alice_field(&demo, "client-certificate-data"), alice_field(&demo, "client-key-data"));
    std::fs::write(&kc, format!("certificate-authority-data: {b64}\n{creds}")).unwrap();
    let addr = demo.proxy_addr();

    let mut open = RawClient::connect(&addr, &kc, true);
    assert_eq!(list_pods(&mut open).unwrap(), leaf(&first.cert), "the first certificate is served at start");

    write("2026_01_01_00_00_00.000000002", &renewed);
    eventually(Duration::from_secs(20), || {
        let served = list_pods(&mut RawClient::connect(&addr, &kc, true))?;
        if served == leaf(&renewed.cert) {
            Ok(())
        } else {
            Err(format!("a new connection is still served the first certificate: {}", proxy_log(&demo)))
        }
    });
    // The connection opened before the renewal goes on, on the certificate it began with.
    assert_eq!(list_pods(&mut open).unwrap(), leaf(&first.cert), "the open connection keeps working");
}

/// Every recording in a recorder's storage directory: (sidecar, cast text).
fn stored(dir: &Path) -> Vec<(serde_json::Value, String)> {
    let entries = |d: &Path| std::fs::read_dir(d).map(|r| r.flatten().map(|e| e.path()).collect::<Vec<PathBuf>>()).unwrap_or_default();
    let mut out = Vec::new();
    for day in entries(dir).into_iter().filter(|p| p.is_dir()) {
        for p in entries(&day).into_iter().filter(|p| p.extension().is_some_and(|e| e == "json")) {
            let meta = serde_json::from_slice(&std::fs::read(&p).unwrap_or_default()).unwrap_or_default();
            out.push((meta, std::fs::read_to_string(p.with_extension("cast")).unwrap_or_default()));
        }
    }
    out
}

#[test]
fn recorders_are_shown_the_renewed_client_certificate() {
    let demo = Demo::start();
    let pki = |name: &str| demo.path(&format!("pki/{name}"));
    let read = |name: &str| std::fs::read_to_string(pki(name)).unwrap();

    // A recorder that trusts only a new CA for its clients (its serving certificate is
    // the demo's, so the policy's caFile still verifies it).
    let new_ca = Ca::new("kubetape-test-new-recorder-ca").unwrap();
    std::fs::write(pki("new-recorder-ca.pem"), &new_ca.cert_pem).unwrap();
    let reader = new_ca.client("auditor", &[]).unwrap();
    std::fs::write(pki("new-reader.pem"), &reader.cert).unwrap();
    std::fs::write(pki("new-reader-key.pem"), &reader.key).unwrap();
    let port = support::free_port();
    let storage = TempDir::new("new-ca-recorder");
    let cmdline = std::fs::read_to_string(demo.path("recorder.cmdline")).unwrap();
    let mut args: Vec<String> = cmdline.split_whitespace().skip(1).map(String::from).collect();
    let p = |path: PathBuf| path.display().to_string();
    args.extend(["--listen".into(), format!("127.0.0.1:{port}"), "--storage-dir".into(), p(storage.0.clone()), "--client-ca".into(), p(pki("new-recorder-ca.pem"))]);
    let _recorder = Spawned::start(&args, &storage.0.join("recorder.log"));
    support::wait_for_port(port);
    demo.edit_policy(|v| v["recorders"][0]["url"] = serde_json::json!(format!("https://127.0.0.1:{port}")));

    // The proxy's volume holds the demo's serving certificate and its old client one.
    let volume = demo.path("proxy-tls");
    let (serving_cert, serving_key) = (read("proxy.pem"), read("proxy-key.pem"));
    let (old_cert, old_key) = (read("recorder-writer.pem"), read("recorder-writer-key.pem"));
    let renewed = new_ca.client("kubetape-proxy", &[]).unwrap();
    kubelet_write(&volume, "2025_01_01_00_00_00.1", &[("tls.crt", &serving_cert), ("tls.key", &serving_key), ("client.crt", &old_cert), ("client.key", &old_key)]);
    let _proxy = proxy_on_volume(&demo, &volume);

    // bob's sessions and API events must be recorded: the recorder refuses the old
    // certificate, so bob is refused.
    let bob = Kubectl::new(&demo, "bob.kubeconfig", "1.32", Proto::WebSocket);
    let before = bob.run(&["exec", "web-0", "--", "echo", "before-renewal"]);
    assert!(!before.status.success(), "recorded with a certificate the recorder does not trust: {}", before.describe());
    assert!(stored(&storage.0).is_empty(), "the recorder stored something from the old certificate: {:?}", stored(&storage.0));

    kubelet_write(&volume, "2026_01_01_00_00_00.2", &[("tls.crt", &serving_cert), ("tls.key", &serving_key), ("client.crt", &renewed.cert), ("client.key", &renewed.key)]);
    // The event stream bob's first exec opened is rerouted with the renewed certificate;
    // the session is recorded with it.
    eventually(Duration::from_secs(30), || {
        let out = bob.run(&["exec", "web-0", "--", "echo", "after-renewal"]);
        if out.status.success() && out.stdout_str() == "after-renewal" {
            Ok(())
        } else {
            Err(format!("bob still refused after the renewal: {}\n{}", out.describe(), proxy_log(&demo)))
        }
    });
    eventually(Duration::from_secs(20), || {
        let all = stored(&storage.0);
        // The output line, as the cast's JSON spells it (the header names the command too).
        let found = all.iter().any(|(m, c)| m["status"] == "complete" && m["session"]["user"]["name"] == "bob" && c.contains("after-renewal\\n"));
        if found {
            Ok(())
        } else {
            Err(format!("the recorder holds no complete recording of bob's session: {all:?}"))
        }
    });
    let (code, body) = demo.recorder_get_at(port, Some("new-reader"), "/v1/events?user=bob&limit=10000");
    assert_eq!(code, 200, "{body}");
    let events: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(events["items"].as_array().is_some_and(|items| items.iter().any(|e| e["subresource"] == "exec")), "bob's exec event reached the recorder: {body}");
}
