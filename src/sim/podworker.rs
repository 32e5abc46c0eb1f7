//! Kubelet mode: one thread per pod, as the kubelet's pod workers. The sync loop
//! hands each worker the pod as last listed ([`PodFeed`]); the worker gives the pod
//! an address, sets up its volumes (and refreshes them), runs its init containers in
//! order and then its containers as host processes, restarts exited ones as
//! `restartPolicy` says with a back-off, runs their probes, writes the pod's status
//! when it changes, and on deletion stops the containers (SIGTERM, then SIGKILL after
//! the grace period) and confirms the deletion. A slow pod holds only its own thread.
//!
//! Container states follow the kubelet's: `waiting` (`ContainerCreating`,
//! `PodInitializing`, `CreateContainerConfigError`, `CreateContainerError`,
//! `CrashLoopBackOff`), `running`, `terminated` (`Completed`, `Error`,
//! `ContainerCannotRun` when the process could not be started).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{Agent, Cluster};
use crate::net::sync::lock;
use crate::sim::env::{self, EnvList};
use crate::sim::podrefs::{ApiObjects, PodNet, TokenCache};
use crate::sim::podstatus::{self, Desired};
use crate::sim::probe::{self, Handler, Tracker};
use crate::sim::process::{self, Mounts};
use crate::sim::runtime::Container;
use crate::sim::volumes::{self, Layout, Source};
use crate::sim::{kubelet, netns, pods, store};

/// How often a worker looks at its pod when nothing wakes it.
const TICK: Duration = Duration::from_millis(200);
/// Secret, ConfigMap, downward API and projected files are compared with their
/// sources this often (the kubelet re-reads them on its periodic sync, about a
/// minute; shorter here so a test sees a change soon).
const VOLUME_REFRESH: Duration = Duration::from_secs(3);
/// Restart back-off: the first delay, doubled per crash up to the cap (the kubelet's
/// are 10 s and 5 min; shorter here so a crash loop is seen within a test).
const BACKOFF_START: Duration = Duration::from_secs(1);
const BACKOFF_CAP: Duration = Duration::from_secs(10);
/// A container that ran this long before exiting starts its back-off afresh.
const BACKOFF_RESET: Duration = Duration::from_secs(20);
/// A container that could not be configured (a missing Secret) is retried this often.
const CONFIG_RETRY: Duration = Duration::from_secs(1);
/// The longest grace period honoured on deletion or a failed liveness probe.
const MAX_GRACE: Duration = Duration::from_secs(30);
/// How long after SIGKILL a container's exit is waited for.
const KILL_WAIT: Duration = Duration::from_secs(5);
const STOP_POLL: Duration = Duration::from_millis(100);
/// A status written but not yet seen in a listing is written again after this.
const STATUS_RECHECK: Duration = Duration::from_secs(2);
/// The node's address (its InternalIP), which pods see as `status.hostIP`.
pub const HOST_IP: &str = "127.0.0.1";

/// What an exec into a running container needs to see what it sees.
#[derive(Clone, Debug)]
pub struct ExecEnv {
    pub env: Vec<(String, String)>,
    pub dir: PathBuf,
    /// The container has a mount namespace of its own, which an exec joins.
    pub own_mounts: bool,
}

enum Feed {
    Pod(Box<Value>),
    Gone,
}

/// The pod as last listed, from the sync loop to the pod's worker.
pub struct PodFeed {
    latest: Mutex<(Feed, bool)>,
    changed: Condvar,
}

impl PodFeed {
    pub fn new(pod: Value) -> Arc<PodFeed> {
        Arc::new(PodFeed { latest: Mutex::new((Feed::Pod(Box::new(pod)), false)), changed: Condvar::new() })
    }

    pub fn update(&self, pod: Value) {
        let mut l = lock(&self.latest);
        if !matches!(l.0, Feed::Gone) {
            l.0 = Feed::Pod(Box::new(pod));
        }
    }

    /// The pod is no longer listed (deleted at once, with no grace).
    pub fn gone(&self) {
        lock(&self.latest).0 = Feed::Gone;
        self.wake();
    }

    /// Ends the worker's wait early (a container exited).
    pub fn wake(&self) {
        lock(&self.latest).1 = true;
        self.changed.notify_one();
    }

    /// Waits up to `timeout` for a wake-up; returns the pod (`None` once gone).
    fn wait(&self, timeout: Duration) -> Option<Value> {
        let mut l = lock(&self.latest);
        if !l.1 {
            l = self.changed.wait_timeout(l, timeout).map(|(g, _)| g).unwrap_or_else(|e| e.into_inner().0);
        }
        l.1 = false;
        match &l.0 {
            Feed::Pod(p) => Some((**p).clone()),
            Feed::Gone => None,
        }
    }
}

enum State {
    Waiting { reason: &'static str, message: String, until: Instant },
    Running { container: Arc<Container>, started_at: String, since: Instant, kill_at: Option<Instant> },
    Terminated { exit_code: i32, reason: &'static str, message: String, started_at: String, finished_at: String },
}

struct Ctr {
    spec: Value,
    name: String,
    init: bool,
    state: State,
    /// Times a process was started (the restart count is one less).
    starts: u32,
    /// Crashes in a row, for the back-off.
    crashes: u32,
    last_terminated: Option<Value>,
    ready: bool,
    readiness: Option<Tracker>,
    liveness: Option<Tracker>,
    exec: Option<ExecEnv>,
}

impl Ctr {
    fn new(spec: &Value, init: bool, waiting_reason: &'static str) -> Ctr {
        Ctr {
            name: spec["name"].as_str().unwrap_or_default().to_string(),
            spec: spec.clone(),
            init,
            state: State::Waiting { reason: waiting_reason, message: String::new(), until: Instant::now() },
            starts: 0,
            crashes: 0,
            last_terminated: None,
            ready: false,
            readiness: None,
            liveness: None,
            exec: None,
        }
    }

    fn succeeded(&self) -> bool {
        matches!(self.state, State::Terminated { exit_code: 0, .. })
    }

    fn running(&self) -> Option<&Arc<Container>> {
        match &self.state {
            State::Running { container, .. } => Some(container),
            _ => None,
        }
    }

    fn status_json(&self, container_id: &str) -> Value {
        let with_message = |mut v: Value, m: &str| {
            if !m.is_empty() {
                v["message"] = json!(m);
            }
            v
        };
        let state = match &self.state {
            State::Waiting { reason, message, .. } => json!({"waiting": with_message(json!({"reason": reason}), message)}),
            State::Running { started_at, .. } => json!({"running": {"startedAt": started_at}}),
            State::Terminated { exit_code, reason, message, started_at, finished_at } => json!({"terminated": with_message(
                json!({"exitCode": exit_code, "reason": reason, "startedAt": started_at, "finishedAt": finished_at, "containerID": container_id}),
                message
            )}),
        };
        let mut v = json!({
            "name": self.name, "image": self.spec["image"], "imageID": "",
            "ready": if self.init { self.succeeded() } else { self.ready },
            "started": self.running().is_some(),
            "restartCount": self.starts.saturating_sub(1),
            "state": state,
            "lastState": self.last_terminated.as_ref().map(|t| json!({"terminated": t})).unwrap_or_else(|| json!({})),
        });
        if self.starts > 0 {
            v["containerID"] = json!(container_id);
        }
        v
    }
}

/// Whether a container that exited with `code` is started again.
fn restarts(policy: &str, init: bool, code: i32) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => code != 0,
        // An init container that succeeded is done, whatever the policy.
        _ => !init || code != 0,
    }
}

/// The delay before restart number `crashes + 1` of a crash loop.
fn backoff(crashes: u32) -> Duration {
    BACKOFF_START.saturating_mul(1u32 << crashes.min(16)).min(BACKOFF_CAP)
}

/// `terminationGracePeriodSeconds` (or the deletion's own grace period), capped.
fn grace_period(pod: &Value) -> Duration {
    let secs = pod["metadata"]["deletionGracePeriodSeconds"].as_u64().or_else(|| pod["spec"]["terminationGracePeriodSeconds"].as_u64()).unwrap_or(30);
    Duration::from_secs(secs).min(MAX_GRACE)
}

pub struct Worker {
    cluster: Arc<Cluster>,
    feed: Arc<PodFeed>,
    ns: String,
    name: String,
    uid: String,
    layout: Layout,
    pod_dir: PathBuf,
    net: Option<PodNet>,
    network_error: Option<String>,
    start_time: String,
    /// Volumes set up at least once: name → (directory, always read-only).
    volumes: HashMap<String, (PathBuf, bool)>,
    volume_error: Option<String>,
    next_volume_sync: Instant,
    tokens: TokenCache,
    init: Vec<Ctr>,
    main: Vec<Ctr>,
    written: Option<(Desired, Instant)>,
}

impl Worker {
    fn agent(&self) -> &Agent {
        // A worker is only started in kubelet mode, where the agent is configured.
        self.cluster.config.agent.as_ref().expect("pod workers run only in kubelet mode")
    }

    /// Runs the pod until it is deleted; returns how it ended.
    pub fn run(cluster: Arc<Cluster>, feed: Arc<PodFeed>) -> String {
        let Some(pod) = feed.wait(Duration::ZERO) else { return "gone before it started".into() };
        let meta = &pod["metadata"];
        let (ns, name, uid) = (meta["namespace"].as_str().unwrap_or_default(), meta["name"].as_str().unwrap_or_default(), meta["uid"].as_str().unwrap_or_default());
        let has_init = pod["spec"]["initContainers"].as_array().is_some_and(|a| !a.is_empty());
        let ctrs = |field: &str, init: bool, reason: &'static str| pod["spec"][field].as_array().into_iter().flatten().map(|s| Ctr::new(s, init, reason)).collect::<Vec<_>>();
        let mut w = Worker {
            layout: Layout::new(&cluster.config.data_dir, ns, uid),
            pod_dir: pods::pod_dir(&cluster, ns, name),
            ns: ns.into(),
            name: name.into(),
            uid: uid.into(),
            net: None,
            network_error: None,
            start_time: store::now_rfc3339(),
            volumes: HashMap::new(),
            volume_error: None,
            next_volume_sync: Instant::now(),
            tokens: TokenCache::default(),
            init: ctrs("initContainers", true, "PodInitializing"),
            main: ctrs("containers", false, if has_init { "PodInitializing" } else { "ContainerCreating" }),
            written: None,
            cluster,
            feed,
        };
        log::info!("pod started ns={} pod={} uid={}", w.ns, w.name, w.uid);
        let mut pod = pod;
        loop {
            if pod["metadata"]["deletionTimestamp"].is_string() {
                w.stop(grace_period(&pod));
                w.clean_up();
                return w.confirm_deletion();
            }
            w.sync(&pod);
            match w.feed.wait(TICK) {
                Some(p) => pod = p,
                None => {
                    w.stop(Duration::ZERO);
                    w.clean_up();
                    return "removed from the API server".into();
                }
            }
        }
    }

    fn container_id(&self, c: &Ctr) -> String {
        format!("kubetape-sim://{}/{}/{}", self.ns, self.name, c.name)
    }

    fn sync(&mut self, pod: &Value) {
        let now = Instant::now();
        if self.net.is_none() {
            self.set_up_network(pod);
        }
        if now >= self.next_volume_sync {
            self.sync_volumes(pod);
            self.next_volume_sync = now + VOLUME_REFRESH;
        }
        let phase = self.desired(pod).phase;
        if phase != "Succeeded" && phase != "Failed" {
            let policy = pod["spec"]["restartPolicy"].as_str().unwrap_or("Always").to_string();
            let mut init_done = true;
            for i in 0..self.init.len() {
                let mut c = std::mem::replace(&mut self.init[i], Ctr::new(&Value::Null, true, ""));
                self.step(&mut c, pod, &policy);
                let done = c.succeeded();
                self.init[i] = c;
                if !done {
                    init_done = false;
                    break;
                }
            }
            if init_done {
                for i in 0..self.main.len() {
                    let mut c = std::mem::replace(&mut self.main[i], Ctr::new(&Value::Null, false, ""));
                    self.step(&mut c, pod, &policy);
                    self.main[i] = c;
                }
            }
        }
        self.write_status(pod);
    }

    fn set_up_network(&mut self, pod: &Value) {
        let Some(_) = self.agent().pod_cidr else {
            self.net = Some(PodNet { pod_ip: HOST_IP.into(), host_ip: HOST_IP.into() });
            return;
        };
        let preferred = pod["status"]["podIP"].as_str().and_then(|s| s.parse::<Ipv4Addr>().ok());
        let picked = lock(&self.cluster.pod_ips).as_mut().and_then(|a| a.allocate(&self.uid, preferred));
        let Some(ip) = picked else {
            self.network_error = Some(format!("no free address left in --pod-cidr {}", self.agent().pod_cidr.map(|c| c.to_string()).unwrap_or_default()));
            return;
        };
        match netns::add(ip) {
            Ok(()) => {
                self.network_error = None;
                self.net = Some(PodNet { pod_ip: ip.to_string(), host_ip: HOST_IP.into() });
            }
            Err(e) => {
                if let Some(a) = lock(&self.cluster.pod_ips).as_mut() {
                    a.release(&self.uid);
                }
                self.network_error = Some(format!("setting up the pod's address: {e}"));
            }
        }
    }

    fn sync_volumes(&mut self, pod: &Value) {
        let mut tokens = std::mem::take(&mut self.tokens);
        let api = &self.agent().api;
        let mut objects = ApiObjects::new(api, pod, &mut tokens);
        let mut errors = Vec::new();
        let mut set_up = Vec::new();
        for vol in pod["spec"]["volumes"].as_array().into_iter().flatten() {
            let name = vol["name"].as_str().unwrap_or_default().to_string();
            let source = match volumes::source(pod, vol, &mut objects) {
                Ok(s) => s,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            let dir = self.layout.dir(&name, &source);
            let written = match &source {
                Source::Files(files) => volumes::write_files(&dir, files).map(|changed| {
                    if changed && self.volumes.contains_key(&name) {
                        log::info!("volume refreshed ns={} pod={} volume={name}", self.ns, self.name);
                    }
                }),
                Source::EmptyDir | Source::Claim { .. } => std::fs::create_dir_all(&dir),
            };
            match written {
                Ok(()) => {
                    let read_only = source.always_read_only() || matches!(source, Source::Claim { read_only: true, .. });
                    set_up.push((name, (dir, read_only)));
                }
                Err(e) => errors.push(format!("MountVolume.SetUp failed for volume \"{name}\" : writing {}: {e}", dir.display())),
            }
        }
        drop(objects);
        self.tokens = tokens;
        self.volumes.extend(set_up);
        if let Some(e) = errors.first() {
            if self.volume_error.as_ref() != Some(e) {
                log::warn!("volume not ready ns={} pod={} error={e}", self.ns, self.name);
            }
        }
        self.volume_error = errors.into_iter().next();
    }

    /// Moves one container along: notices its exit, runs its probes, restarts it or
    /// starts it when its time has come.
    fn step(&mut self, c: &mut Ctr, pod: &Value, policy: &str) {
        let now = Instant::now();
        let host = self.net.as_ref().map(|n| n.pod_ip.clone()).unwrap_or_else(|| HOST_IP.into());
        if let State::Running { container, started_at, since, kill_at } = &mut c.state {
            if let Some(code) = container.exit_code() {
                let reason = if code == 0 { "Completed" } else { "Error" };
                log::info!("container exited ns={} pod={} container={} exit_code={code}", self.ns, self.name, c.name);
                if since.elapsed() >= BACKOFF_RESET {
                    c.crashes = 0;
                }
                c.state = State::Terminated { exit_code: code, reason, message: String::new(), started_at: started_at.clone(), finished_at: store::now_rfc3339() };
                c.ready = false;
            } else {
                if kill_at.is_some_and(|at| now >= at) {
                    container.kill();
                }
                let container = container.clone();
                if let Some(t) = c.liveness.as_mut().filter(|t| t.due(now)) {
                    let ok = run_probe(&t.probe.handler, &c.spec, &host, c.exec.as_ref(), &container, t.probe.timeout);
                    if t.record(ok.is_ok(), Instant::now()) && !t.ok {
                        log::info!("liveness probe failed, restarting ns={} pod={} container={} error={}", self.ns, self.name, c.name, ok.err().unwrap_or_default());
                        container.terminate();
                        if let State::Running { kill_at, .. } = &mut c.state {
                            *kill_at = Some(now + grace_period(pod));
                        }
                    }
                }
                match c.readiness.as_mut() {
                    Some(t) if t.due(now) => {
                        let ok = run_probe(&t.probe.handler, &c.spec, &host, c.exec.as_ref(), &container, t.probe.timeout);
                        if t.record(ok.is_ok(), Instant::now()) {
                            log::info!("readiness changed ns={} pod={} container={} ready={} error={}", self.ns, self.name, c.name, t.ok, ok.err().unwrap_or_default());
                        }
                        c.ready = t.ok;
                    }
                    Some(t) => c.ready = t.ok,
                    None => c.ready = true,
                }
            }
        }
        if let State::Terminated { exit_code, reason, message, started_at, finished_at } = &c.state {
            if restarts(policy, c.init, *exit_code) {
                let mut last = json!({"exitCode": exit_code, "reason": reason, "startedAt": started_at, "finishedAt": finished_at, "containerID": self.container_id(c)});
                if !message.is_empty() {
                    last["message"] = json!(message);
                }
                c.last_terminated = Some(last);
                let delay = backoff(c.crashes);
                c.crashes += 1;
                let message = format!("back-off {}s restarting failed container={} pod={}_{}({})", delay.as_secs(), c.name, self.name, self.ns, self.uid);
                c.state = State::Waiting { reason: "CrashLoopBackOff", message, until: now + delay };
            }
        }
        if matches!(c.state, State::Waiting { until, .. } if now >= until) {
            self.start(c, pod);
        }
    }

    fn waiting(c: &mut Ctr, reason: &'static str, message: String, retry: Duration) {
        c.state = State::Waiting { reason, message, until: Instant::now() + retry };
    }

    fn start(&mut self, c: &mut Ctr, pod: &Value) {
        let Some(net) = self.net.clone() else {
            let message = self.network_error.clone().unwrap_or_default();
            return Self::waiting(c, "ContainerCreating", message, CONFIG_RETRY);
        };
        let wanted = pod["spec"]["volumes"].as_array().map(Vec::len).unwrap_or(0);
        if self.volumes.len() < wanted {
            let message = self.volume_error.clone().unwrap_or_default();
            return Self::waiting(c, "ContainerCreating", message, CONFIG_RETRY);
        }
        let mut tokens = std::mem::take(&mut self.tokens);
        let resolved = {
            let mut objects = ApiObjects::new(&self.agent().api, pod, &mut tokens);
            env::container_env(pod, &c.spec, &net, &self.agent().service_env, &mut objects)
        };
        self.tokens = tokens;
        let vars = match resolved {
            Ok(v) => v,
            Err(e) => {
                if !matches!(&c.state, State::Waiting { message, .. } if *message == e) {
                    log::warn!("container not configured ns={} pod={} container={} error={e}", self.ns, self.name, c.name);
                }
                return Self::waiting(c, "CreateContainerConfigError", e, CONFIG_RETRY);
            }
        };
        let lookup = |n: &str| vars.get(n).map(String::from);
        let mounts = match volumes::container_mounts(&c.spec, &self.volumes, &lookup) {
            Ok(m) => m,
            Err(e) => return Self::waiting(c, "CreateContainerConfigError", e, CONFIG_RETRY),
        };
        if !mounts.is_empty() && !process::is_root() {
            let e = "volume mounts need root: kubetape sim gives each container with volumeMounts its own mount namespace".to_string();
            return Self::waiting(c, "CreateContainerError", e, CONFIG_RETRY);
        }
        let probes = (probe::parse(&c.spec["readinessProbe"]), probe::parse(&c.spec["livenessProbe"]));
        let (readiness, liveness) = match probes {
            (Ok(r), Ok(l)) => (r, l),
            (Err(e), _) => return Self::waiting(c, "CreateContainerConfigError", format!("readinessProbe: {e}"), CONFIG_RETRY),
            (_, Err(e)) => return Self::waiting(c, "CreateContainerConfigError", format!("livenessProbe: {e}"), CONFIG_RETRY),
        };
        let (command, args) = env::expanded_command(&c.spec, &vars);
        let image = c.spec["image"].as_str().unwrap_or_default();
        let entrypoint = self.agent().images.get(image).map(|p| p.display().to_string());
        let argv = env::argv(command, args, entrypoint.as_deref());
        let hostname = pod["spec"]["hostname"].as_str().unwrap_or(&self.name).to_string();
        let mut full = EnvList(vec![("HOSTNAME".into(), hostname), ("HOME".into(), self.pod_dir.display().to_string())]);
        for (k, v) in vars.0 {
            full.set(&k, v);
        }
        let dir = c.spec["workingDir"].as_str().filter(|d| d.starts_with('/')).map(PathBuf::from).unwrap_or_else(|| self.pod_dir.clone());
        if let Err(e) = std::fs::create_dir_all(&self.pod_dir) {
            return Self::waiting(c, "CreateContainerError", format!("creating {}: {e}", self.pod_dir.display()), CONFIG_RETRY);
        }
        let own_mounts = !mounts.is_empty();
        let mounts = if own_mounts { Mounts::New(mounts) } else { Mounts::Host };
        let (tty, stdin, stdin_once) = (c.spec["tty"].as_bool().unwrap_or(false), c.spec["stdin"].as_bool().unwrap_or(false), c.spec["stdinOnce"].as_bool().unwrap_or(false));
        let feed = self.feed.clone();
        c.starts += 1;
        let started_at = store::now_rfc3339();
        match Container::start(&argv, &dir, &full.0, &mounts, tty, stdin, stdin_once, move |_| feed.wake()) {
            Ok(container) => {
                log::info!(
                    "container started ns={} pod={} container={} restarts={} argv0={}",
                    self.ns,
                    self.name,
                    c.name,
                    c.starts - 1,
                    argv.first().map(String::as_str).unwrap_or("")
                );
                let key = (self.ns.clone(), self.name.clone(), c.name.clone());
                let exec = ExecEnv { env: full.0.clone(), dir, own_mounts };
                lock(&self.cluster.containers).insert(key.clone(), container.clone());
                lock(&self.cluster.exec_envs).insert(key, exec.clone());
                let now = Instant::now();
                c.exec = Some(exec);
                c.readiness = readiness.map(|p| Tracker::new(p, now, false));
                c.liveness = liveness.map(|p| Tracker::new(p, now, true));
                c.ready = c.readiness.is_none();
                c.state = State::Running { container, started_at, since: now, kill_at: None };
            }
            Err(e) => {
                let message = format!("starting {argv:?}: {e}");
                log::warn!("container failed to start ns={} pod={} container={} error={message}", self.ns, self.name, c.name);
                c.state = State::Terminated { exit_code: 128, reason: "ContainerCannotRun", message, started_at: started_at.clone(), finished_at: started_at };
            }
        }
    }

    fn desired(&self, pod: &Value) -> Desired {
        let init: Vec<Value> = self.init.iter().map(|c| c.status_json(&self.container_id(c))).collect();
        let main: Vec<Value> = self.main.iter().map(|c| c.status_json(&self.container_id(c))).collect();
        let phase = podstatus::phase(&pod["spec"], &init, &main);
        Desired {
            phase,
            pod_ip: self.net.as_ref().map(|n| n.pod_ip.clone()),
            host_ip: HOST_IP.into(),
            start_time: Some(self.start_time.clone()),
            conditions: podstatus::conditions(phase, &init, &main),
            init_statuses: init,
            statuses: main,
        }
    }

    fn write_status(&mut self, pod: &Value) {
        let desired = self.desired(pod);
        if podstatus::holds(&pod["status"], &desired) {
            self.written = Some((desired, Instant::now()));
            return;
        }
        if let Some((d, at)) = &self.written {
            if *d == desired && at.elapsed() < STATUS_RECHECK {
                return;
            }
        }
        log::debug!("writing pod status ns={} pod={} phase={}", self.ns, self.name, desired.phase);
        if let Err(e) = kubelet::write_pod_status(&self.agent().api, &self.ns, &self.name, &self.uid, |current| podstatus::merge(current, &desired, &store::now_rfc3339())) {
            log::warn!("pod status not written ns={} pod={} error={e}", self.ns, self.name);
        }
        // Also after a failure: tried again after STATUS_RECHECK, not every tick.
        self.written = Some((desired, Instant::now()));
    }

    fn all(&self) -> impl Iterator<Item = &Ctr> {
        self.init.iter().chain(self.main.iter())
    }

    /// Stops every running container: SIGTERM, up to `grace` for it to exit, SIGKILL.
    fn stop(&mut self, grace: Duration) {
        let running: Vec<Arc<Container>> = self.all().filter_map(|c| c.running().cloned()).filter(|c| c.exit_code().is_none()).collect();
        if running.is_empty() {
            return;
        }
        let began = Instant::now();
        if !grace.is_zero() {
            running.iter().for_each(|c| c.terminate());
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline && running.iter().any(|c| c.exit_code().is_none()) {
                std::thread::sleep(STOP_POLL);
            }
        }
        let left: Vec<_> = running.iter().filter(|c| c.exit_code().is_none()).collect();
        if !left.is_empty() {
            log::info!("killing containers after the grace period ns={} pod={} grace_seconds={} left={}", self.ns, self.name, grace.as_secs(), left.len());
            left.iter().for_each(|c| c.kill());
            let deadline = Instant::now() + KILL_WAIT;
            while Instant::now() < deadline && left.iter().any(|c| c.exit_code().is_none()) {
                std::thread::sleep(STOP_POLL);
            }
        }
        log::info!("containers stopped ns={} pod={} containers={} killed={} millis={}", self.ns, self.name, running.len(), left.len(), began.elapsed().as_millis());
    }

    /// Forgets the pod's containers, frees its address and removes its files
    /// (claims stay).
    fn clean_up(&mut self) {
        let mine = |k: &(String, String, String)| k.0 == self.ns && k.1 == self.name;
        lock(&self.cluster.containers).retain(|k, _| !mine(k));
        lock(&self.cluster.exec_envs).retain(|k, _| !mine(k));
        let freed = lock(&self.cluster.pod_ips).as_mut().and_then(|a| a.release(&self.uid));
        if let Some(ip) = freed {
            if let Err(e) = netns::remove(ip) {
                log::warn!("pod address not removed ns={} pod={} ip={ip} error={e}", self.ns, self.name);
            }
        }
        for dir in [&self.layout.pod, &self.pod_dir] {
            if let Err(e) = std::fs::remove_dir_all(dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    log::warn!("pod files not removed ns={} pod={} dir={} error={e}", self.ns, self.name, dir.display());
                }
            }
        }
    }

    fn confirm_deletion(&self) -> String {
        match kubelet::confirm_deletion(&self.agent().api, &self.ns, &self.name, &self.uid) {
            Ok(()) => "deleted".into(),
            Err(e) => format!("stopped, deletion not confirmed: {e}"),
        }
    }
}

/// Runs one probe of a running container.
fn run_probe(handler: &Handler, spec: &Value, pod_ip: &str, exec: Option<&ExecEnv>, container: &Container, timeout: Duration) -> Result<(), String> {
    match handler {
        Handler::Http { https, host, port, path, headers } => {
            let port = probe::resolve_port(port, spec)?;
            probe::http_get(*https, host.as_deref().unwrap_or(pod_ip), port, path, headers, timeout)
        }
        Handler::Tcp { host, port } => probe::tcp_socket(host.as_deref().unwrap_or(pod_ip), probe::resolve_port(port, spec)?, timeout),
        Handler::Exec { command } => {
            let exec = exec.ok_or("container has no exec environment")?;
            let mounts = if exec.own_mounts { Mounts::Join(container.pid()) } else { Mounts::Host };
            exec_probe(command, exec, &mounts, timeout)
        }
    }
}

/// Runs `command` in the container to its end or `timeout`; exit status 0 passes.
fn exec_probe(command: &[String], exec: &ExecEnv, mounts: &Mounts, timeout: Duration) -> Result<(), String> {
    use std::io::Read;
    let mut p = process::spawn_in(command, &exec.dir, &exec.env, None, false, mounts).map_err(|e| format!("starting {command:?}: {e}"))?;
    // Read the output so a chatty probe does not block on a full pipe.
    let readers: Vec<_> = [Some(p.stdout), p.stderr.take()]
        .into_iter()
        .flatten()
        .map(|mut f| {
            std::thread::spawn(move || {
                let mut sink = Vec::new();
                let _ = f.read_to_end(&mut sink);
            })
        })
        .collect();
    let deadline = Instant::now() + timeout;
    let status = loop {
        match p.child.try_wait() {
            Ok(Some(s)) => break Ok(process::exit_code(s)),
            Ok(None) if Instant::now() >= deadline => {
                process::kill_group(p.child.id());
                let _ = p.child.wait();
                break Err(format!("command {command:?} timed out after {timeout:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => break Err(e.to_string()),
        }
    };
    for r in readers {
        let _ = r.join();
    }
    match status? {
        0 => Ok(()),
        code => Err(format!("command {command:?} exited with {code}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_policy_and_backoff() {
        let cases = [
            ("Always", false, 0, true),
            ("Always", false, 1, true),
            ("Always", true, 0, false),
            ("Always", true, 1, true),
            ("OnFailure", false, 0, false),
            ("OnFailure", false, 2, true),
            ("Never", false, 1, false),
            ("Never", true, 1, false),
        ];
        for (policy, init, code, want) in cases {
            assert_eq!(restarts(policy, init, code), want, "{policy} init={init} code={code}");
        }
        let delays: Vec<u64> = (0..6).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 10, 10]);
        assert_eq!(backoff(60), BACKOFF_CAP);
    }

    #[test]
    fn grace_periods() {
        assert_eq!(grace_period(&json!({"metadata": {"deletionGracePeriodSeconds": 2}, "spec": {"terminationGracePeriodSeconds": 20}})), Duration::from_secs(2));
        assert_eq!(grace_period(&json!({"metadata": {}, "spec": {"terminationGracePeriodSeconds": 20}})), Duration::from_secs(20));
        assert_eq!(grace_period(&json!({"metadata": {}, "spec": {"terminationGracePeriodSeconds": 600}})), MAX_GRACE);
    }

    #[test]
    fn feed_wakes_and_ends() {
        let feed = PodFeed::new(json!({"n": 1}));
        assert_eq!(feed.wait(Duration::ZERO), Some(json!({"n": 1})));
        feed.update(json!({"n": 2}));
        feed.wake();
        assert_eq!(feed.wait(Duration::from_secs(30)), Some(json!({"n": 2})), "a wake-up ends the wait at once");
        feed.gone();
        feed.update(json!({"n": 3}));
        assert_eq!(feed.wait(Duration::from_secs(30)), None, "gone stays gone");
    }
}
