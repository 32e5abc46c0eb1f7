//! `kubetape operator`: turns `Recorder` resources into running recorders.
//!
//! A small loop polls the API server over HTTPS (`kube::rest`) every `--interval`:
//! it keeps the operator's CA (`certs`) and the proxy's certificates, then for each
//! Recorder checks its spec (`spec`), builds what it should own as plain objects
//! (`build`, pure), applies the difference (`apply`) and writes its status with the
//! replicas' endpoints the proxy routes to (`reconcile`). What a Recorder owns carries
//! its ownerReference, so deleting the Recorder lets the garbage collector remove it;
//! S3 data is never touched.

mod apply;
pub mod build;
mod certs;
mod quantity;
mod reconcile;
pub mod spec;

use std::time::Duration;

use crate::args::{Args, Flag};
use crate::error::{Context, Error, Result};
use crate::kube::client::ApiServer;
use crate::kube::rest::Rest;

const NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

pub const FLAGS: &[Flag] = &[
    Flag { name: "kubeconfig", default: None, help: "kubeconfig to reach the API server with [default: the pod's service account]" },
    Flag { name: "namespace", default: None, help: "the operator's namespace, where its CA and the proxy's certificates live [default: the pod's]" },
    Flag { name: "interval", default: Some("2"), help: "seconds between reconcile passes" },
    Flag { name: "recorder-image", default: None, help: "image for Recorders that name none [default: the operator's own, read from its pod]" },
    Flag { name: "proxy-secret", default: Some("kubetape-proxy-tls"), help: "Secret to issue the proxy's serving and client certificates into" },
    Flag {
        name: "proxy-names",
        default: Some("kubetape-proxy"),
        help: "comma-separated names the proxy's serving certificate covers (a bare Service name also covers its .NAMESPACE.svc forms)",
    },
];

pub struct Config {
    rest: Rest,
    namespace: String,
    interval: Duration,
    recorder_image: Option<String>,
    proxy_secret: String,
    proxy_names: Vec<String>,
}

impl Config {
    pub fn from_args(args: &Args) -> Result<Config> {
        let api = match args.path("kubeconfig") {
            Some(p) => ApiServer::from_kubeconfig(&p, None).context("--kubeconfig")?,
            None => ApiServer::in_cluster().context("--kubeconfig not given and not in a cluster")?,
        };
        let namespace = match args.opt("namespace") {
            Some(n) => n,
            None => std::fs::read_to_string(NAMESPACE_FILE).map(|s| s.trim().to_string()).map_err(|e| Error::new(format!("--namespace not given and {NAMESPACE_FILE}: {e}")))?,
        };
        let interval = match args.parsed::<u64>("interval")? {
            0 => crate::bail!("--interval: expected at least 1 second, found 0"),
            s => Duration::from_secs(s),
        };
        let proxy_names = args
            .required("proxy-names")?
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .flat_map(|n| if n.contains('.') || n.parse::<std::net::IpAddr>().is_ok() { vec![n.to_string()] } else { service_names(n, &namespace) })
            .collect();
        Ok(Config { rest: Rest::new(api)?, namespace, interval, recorder_image: args.opt("recorder-image"), proxy_secret: args.required("proxy-secret")?, proxy_names })
    }
}

/// A Service's in-cluster DNS names.
fn service_names(svc: &str, ns: &str) -> Vec<String> {
    vec![svc.to_string(), format!("{svc}.{ns}"), format!("{svc}.{ns}.svc"), format!("{svc}.{ns}.svc.cluster.local")]
}

/// The image of the pod this runs in (`POD_NAME` from the downward API), so
/// recorders run what the operator runs and one image override moves both.
fn own_image(rest: &Rest, namespace: &str) -> Result<String> {
    let pod = std::env::var("POD_NAME").map_err(|_| Error::new("--recorder-image not given, and POD_NAME is not set to find the operator's own image"))?;
    let obj = rest.get(&format!("/api/v1/namespaces/{namespace}/pods/{pod}"))?.ok_or_else(|| Error::new(format!("pod {namespace}/{pod} not found")))?;
    obj["spec"]["containers"][0]["image"].as_str().map(String::from).ok_or_else(|| Error::new(format!("pod {namespace}/{pod} has no container image")))
}

pub fn run(config: Config) -> Result<()> {
    let rest = &config.rest;
    let image = match &config.recorder_image {
        Some(i) => i.clone(),
        None => own_image(rest, &config.namespace)?,
    };
    log::info!("operator started namespace={} recorder_image={image} interval={:?}", config.namespace, config.interval);
    let settings = reconcile::Settings { default_image: image };
    loop {
        if let Err(e) = pass(&config, &settings) {
            log::warn!("reconcile pass failed error={e}");
        }
        std::thread::sleep(config.interval);
    }
}

fn pass(config: &Config, settings: &reconcile::Settings) -> Result<()> {
    let rest = &config.rest;
    let ca = certs::ensure_ca(rest, &config.namespace)?;
    certs::ensure_proxy_secret(rest, &ca, &config.namespace, &config.proxy_secret, &config.proxy_names)?;
    let list =
        rest.get(&format!("/apis/{}/{}/recorders", spec::GROUP, spec::VERSION))?.ok_or_else(|| Error::new("the Recorder resource is not installed (apply vendor-manifests/)"))?;
    let recorders = list["items"].as_array().map(Vec::as_slice).unwrap_or_default();
    for obj in recorders {
        reconcile::reconcile(rest, &ca, settings, obj);
    }
    remove_stale_viewers_bindings(rest, recorders)
}

/// Deletes the viewers bindings (`build::viewers_binding`) of Recorders that are gone,
/// being deleted, or without `enableUI`: cluster-scoped, they have no owner to be
/// garbage-collected with.
fn remove_stale_viewers_bindings(rest: &Rest, recorders: &[serde_json::Value]) -> Result<()> {
    let wanted: Vec<String> = recorders
        .iter()
        .filter(|r| r["spec"]["enableUI"] == true && r["metadata"]["deletionTimestamp"].is_null())
        .map(|r| build::viewers_binding_name(r["metadata"]["namespace"].as_str().unwrap_or_default(), r["metadata"]["name"].as_str().unwrap_or_default()))
        .collect();
    let selector = format!("app.kubernetes.io/managed-by=kubetape-operator,{}", build::VIEWERS_OF_NAME);
    let Some(bindings) = rest.get(&format!("{}?labelSelector={}", apply::VIEWERS_BINDINGS, selector.replace(',', "%2C").replace('/', "%2F")))? else { return Ok(()) };
    for b in bindings["items"].as_array().into_iter().flatten() {
        let name = b["metadata"]["name"].as_str().unwrap_or_default();
        if !wanted.iter().any(|w| w == name) {
            log::info!("removing viewers binding name={name}: its Recorder is gone or has no enableUI");
            if let Err(e) = rest.delete(&format!("{}/{name}", apply::VIEWERS_BINDINGS), "Background") {
                log::warn!("viewers binding not removed name={name} error={e}");
            }
        }
    }
    Ok(())
}
