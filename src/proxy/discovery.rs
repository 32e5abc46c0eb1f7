//! Recorders learnt from the cluster (`--recorders-from-cluster`): a thread lists the
//! `Recorder` resources of the trusted namespaces every [`POLL`] and keeps their ready
//! replicas, so a replica that appears is used and one that goes away is dropped,
//! with no restart. A failed list keeps the last known replicas (an API server blip
//! must not leave sessions without a recorder); the session's own failover handles a
//! replica that is gone meanwhile. The TLS towards the replicas is taken from the
//! proxy's certificates as renewed, per lookup.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::pki_types::ServerName;

use crate::kube::recorders::{self, Endpoint};
use crate::kube::rest::Rest;
use crate::net::reload::Reloading;
use crate::recording::client::RecorderTarget;

use super::certs::Certs;

/// How soon a replica that became ready (or went away) is seen.
const POLL: Duration = Duration::from_secs(2);

/// What one list found, with a generation that moves when it changes.
pub struct ClusterRecorders {
    current: RwLock<(u64, Arc<Vec<Endpoint>>)>,
    /// Their `cluster_recorders` config trusts the operator's CA and presents the
    /// proxy's client certificate.
    certs: Arc<Reloading<Certs>>,
}

impl ClusterRecorders {
    /// Lists once now (so the first sessions find the recorders), then polls.
    pub fn start(rest: Rest, namespaces: Vec<String>, certs: Arc<Reloading<Certs>>) -> std::io::Result<Arc<ClusterRecorders>> {
        let me = Arc::new(ClusterRecorders { current: RwLock::new((0, Arc::new(Vec::new()))), certs });
        me.refresh(&rest, &namespaces);
        let it = me.clone();
        std::thread::Builder::new().name("recorder-discovery".into()).spawn(move || loop {
            std::thread::sleep(POLL);
            it.refresh(&rest, &namespaces);
        })?;
        Ok(me)
    }

    fn refresh(&self, rest: &Rest, namespaces: &[String]) {
        let path = match namespaces {
            [one] if one != "*" => recorders::list_path(Some(one)),
            _ => recorders::list_path(None),
        };
        let found = match rest.get(&path) {
            Ok(Some(list)) => recorders::endpoints(&list, namespaces),
            Ok(None) => {
                log::warn!("recorder discovery: the Recorder resource is not installed (apply vendor-manifests/)");
                return;
            }
            Err(e) => {
                log::warn!("recorder discovery: listing Recorders failed, keeping the last known error={e}");
                return;
            }
        };
        let mut cur = self.current.write().unwrap_or_else(|e| e.into_inner());
        if *cur.1 != found {
            let ids: Vec<&str> = found.iter().map(|e| e.id.as_str()).collect();
            log::info!("recorders from the cluster changed replicas={}", ids.join(","));
            *cur = (cur.0 + 1, Arc::new(found));
        }
    }

    /// The generation, for whoever caches a route.
    pub fn generation(&self) -> u64 {
        self.current.read().unwrap_or_else(|e| e.into_inner()).0
    }

    /// The ready replicas of Recorders that carry one of `tags` (or are named by one,
    /// as `namespace/name`).
    pub fn targets(&self, tags: &[String]) -> Vec<RecorderTarget> {
        let list = self.current.read().unwrap_or_else(|e| e.into_inner()).1.clone();
        // Always there with --recorders-from-cluster (it requires --recorder-ca).
        let Some(tls) = self.certs.get().cluster_recorders.clone() else { return Vec::new() };
        list.iter()
            .filter(|e| tags.iter().any(|t| e.tags.contains(t) || *t == e.recorder))
            .filter_map(|e| {
                let server_name = ServerName::try_from(e.server_name.clone()).ok()?;
                Some(RecorderTarget { name: e.id.clone(), host: e.host.clone(), port: e.port, server_name, tls: tls.clone() })
            })
            .collect()
    }
}
