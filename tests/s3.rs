//! S3 storage end to end against a real S3 server (`moto_server`, started here on a
//! free loopback port): real kubectl sessions through the demo's proxy to a recorder
//! run with `--s3-bucket`; the bucket is read with moto's plain HTTP API, never through
//! the recorder. Covered: a recording lands whole and leaves the spool; a running
//! session is in the bucket within the flush interval and visible from another
//! recorder; API events go to the bucket and any recorder answers for them; an outage
//! mid-session; a full spool; a recorder killed mid-upload and restarted with its
//! spool; a recorder lost with its spool; bad settings keep the recorder up, not
//! ready, saying why.

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::s3::{day, recorder, recorder_metric, Env, Moto, BUCKET};
use support::{eventually, free_port, wait_with_timeout, Demo, Kubectl, OutputExt, Proto, Spawned, TempDir};

const PREFIX: &str = "cluster-a";
/// Small, so a test waits a second or two for an upload; the default is 10 s.
const FLUSH: &str = "1s";
/// moto accepts any credentials; these only have to be present.
const CREDS: Env = &[("AWS_ACCESS_KEY_ID", "test-key"), ("AWS_SECRET_ACCESS_KEY", "test-secret")];

/// The demo with its recorder restarted to upload to `moto`.
fn demo_with_bucket(moto: &Moto) -> (Demo, Spawned) {
    moto.create_bucket(BUCKET);
    let demo = Demo::start();
    demo.disable_events();
    demo.kill("recorder");
    let url = moto.url();
    let recorder =
        demo.restart_with_env("recorder", &["--s3-bucket", BUCKET, "--s3-endpoint", &url, "--s3-path-style", "--s3-prefix", PREFIX, "--s3-flush-interval", FLUSH], None, CREDS);
    (demo, recorder)
}

fn recorder_log(demo: &Demo) -> String {
    std::fs::read_to_string(demo.path("recorder-restarted.log")).unwrap_or_default()
}

/// A recording as the recorder's API gives it (spool or bucket): sidecar and cast.
fn api_recording(demo: &Demo, port: u16, id: &str) -> Option<(Value, String)> {
    let (status, meta) = demo.recorder_get_at(port, Some("recorder-reader"), &format!("/v1/recordings/{id}"));
    if status != 200 {
        return None;
    }
    let (status, cast) = demo.recorder_get_at(port, Some("recorder-reader"), &format!("/v1/recordings/{id}/cast"));
    (status == 200).then(|| (serde_json::from_str(&meta).unwrap_or(Value::Null), cast))
}

/// Waits until the recorder on `port` lists an ended recording whose cast satisfies `pred`.
fn wait_ended(demo: &Demo, port: u16, pred: impl Fn(&str) -> bool) -> (Value, String) {
    eventually(Duration::from_secs(30), || {
        let (status, body) = demo.recorder_get_at(port, Some("recorder-reader"), "/v1/recordings");
        let list: Value = serde_json::from_str(&body).map_err(|e| format!("{status} {body}: {e}"))?;
        for m in list["items"].as_array().into_iter().flatten().filter(|m| m["status"] != "recording") {
            if let Some((meta, cast)) = api_recording(demo, port, m["id"].as_str().unwrap_or("")) {
                if pred(&cast) {
                    return Ok((meta, cast));
                }
            }
        }
        Err(format!("no ended recording matches yet: {body}"))
    })
}

/// The recorder's `/readyz`: status and text.
fn readyz(demo: &Demo, port: u16) -> (u16, String) {
    demo.recorder_get_at(port, None, "/readyz")
}

/// Keys of the multipart uploads in progress in the bucket (ListMultipartUploads).
fn multipart_uploads(moto: &Moto) -> Vec<String> {
    let (status, body) = moto.request("GET", &format!("/{BUCKET}?uploads"));
    assert_eq!(status, 200, "listing uploads: {}", String::from_utf8_lossy(&body));
    String::from_utf8_lossy(&body).split("<Key>").skip(1).filter_map(|r| r.split("</Key>").next()).map(String::from).collect()
}

/// Waits until a recording's segments in the bucket hold `text`.
fn wait_segment(moto: &Moto, base: &str, text: &str) {
    eventually(Duration::from_secs(10), || if String::from_utf8_lossy(&segments(moto, base)).contains(text) { Ok(()) } else { Err(format!("no segment holds {text:?} yet")) });
}

/// The bytes of a recording's segments in the bucket, joined in key order.
fn segments(moto: &Moto, base: &str) -> Vec<u8> {
    moto.keys(&format!("{base}/")).iter().filter_map(|k| moto.object(k)).flatten().collect()
}

/// Whether the demo recorder's spool still holds recording `id` (its cast or sidecar).
fn spool_has(demo: &Demo, id: &str) -> bool {
    let days = std::fs::read_dir(demo.path("recordings")).map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>()).unwrap_or_default();
    days.iter().any(|d| d.join(format!("{id}.cast")).exists() || d.join(format!("{id}.json")).exists())
}

/// A cast's header line, parsed.
fn header(cast: &str) -> Value {
    cast.lines().next().and_then(|l| serde_json::from_str(l).ok()).unwrap_or(Value::Null)
}

#[test]
fn a_session_lands_in_the_bucket_whole_leaves_the_spool_and_a_recorder_with_an_empty_spool_serves_it() {
    let moto = Moto::start();
    let (demo, first) = demo_with_bucket(&moto);
    let port = demo.listen_port("recorder");
    let k = Kubectl::new(&demo, "kubeconfig", "1.32", Proto::WebSocket);
    let out = k.run_timeout(&["exec", "web-0", "--", "sh", "-c", "echo s3-$((6*7)); exit 4"], None, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(4), "{}", out.describe());
    let (meta, _) = wait_ended(&demo, port, |c| c.contains("s3-42"));
    let id = meta["id"].as_str().expect("an id").to_string();
    let prefix = format!("{PREFIX}/sessions/");
    let key = |ext: &str| moto.keys(&prefix).into_iter().find(|k| k.ends_with(&format!("/{id}.{ext}")));

    // The bucket holds the recording as one object and its sidecar; no segment is
    // left, and the spool has let go of it.
    let (cast, json) = eventually(Duration::from_secs(10), || {
        let json: Value = key("json").and_then(|k| moto.object(&k)).and_then(|b| serde_json::from_slice(&b).ok()).ok_or("no sidecar in the bucket")?;
        if json["status"] != "complete" {
            return Err(format!("sidecar in the bucket: {json}"));
        }
        let cast = key("cast").and_then(|k| moto.object(&k)).ok_or("no cast in the bucket")?;
        let parts: Vec<String> = moto.keys(&prefix).into_iter().filter(|k| k.contains(&format!("/{id}/"))).collect();
        match (parts.is_empty(), spool_has(&demo, &id)) {
            (true, false) => Ok((cast, json)),
            (empty, spooled) => Err(format!("segments gone: {empty}, still in the spool: {spooled}: {}", recorder_log(&demo))),
        }
    });
    assert_eq!((&json["exitCode"], &json["session"]["failMode"]), (&Value::from(4), &Value::from("open")), "{json}");
    let text = String::from_utf8_lossy(&cast);
    assert!(header(&text)["version"] == 2 && text.contains("s3-42"), "{text}");

    // Another recorder, its spool empty, serves it from the bucket after the first is gone.
    drop(first);
    let spool = TempDir::new("empty-spool");
    let second = free_port();
    let url = moto.url();
    let mut c = recorder(&demo, second, &spool.0, &["--s3-bucket", BUCKET, "--s3-endpoint", &url, "--s3-path-style", "--s3-prefix", PREFIX], CREDS);
    c.stdout(Stdio::null()).stderr(std::fs::File::create(demo.path("recorder-second.log")).expect("log"));
    let _second = Spawned(c.spawn().expect("second recorder"));
    support::wait_for_port(second);
    let (status, body) = demo.recorder_get_at(second, Some("recorder-reader"), "/v1/recordings");
    assert_eq!(status, 200, "{body}");
    let list: Value = serde_json::from_str(&body).expect("JSON list");
    let listed = list["items"].as_array().expect("items").iter().find(|m| m["id"] == id.as_str()).cloned();
    assert_eq!(listed.as_ref().map(|m| (&m["status"], &m["exitCode"])), Some((&Value::from("complete"), &Value::from(4))), "{body}");
    let (served_meta, served_cast) = api_recording(&demo, second, &id).expect("served by the second recorder");
    assert_eq!((served_meta, served_cast.as_bytes()), (json, &cast[..]));
}

#[test]
fn a_running_session_is_in_the_bucket_within_the_flush_interval_and_another_recorder_shows_it_live() {
    let moto = Moto::start();
    let (demo, _recorder) = demo_with_bucket(&moto);
    let k = Kubectl::new(&demo, "kubeconfig", "1.32", Proto::WebSocket);
    // One line, then silence for longer than the test waits.
    let mut quiet = k
        .command(&["exec", "web-0", "--", "sh", "-c", "echo quiet-$((6*7)); sleep 120"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl");
    let id = demo.wait_running("quiet-42");
    let seen = Instant::now();
    let base = format!("{PREFIX}/sessions/{}/{id}", day(&demo, &id));
    // The flush interval (1 s) and a second for the requests themselves.
    let segments = eventually(Duration::from_secs(2), || {
        let data = segments(&moto, &base);
        if String::from_utf8_lossy(&data).contains("quiet-42") {
            Ok(data)
        } else {
            Err(format!("segments hold {:?}", String::from_utf8_lossy(&data)))
        }
    });
    let in_bucket = seen.elapsed();
    let spool = std::fs::read(demo.cast_path(&id)).expect("spool cast");
    assert!(spool.starts_with(&segments), "the segments are the spool's first bytes, in order");
    let sidecar: Value = serde_json::from_slice(&moto.object(&format!("{base}.json")).expect("a sidecar while recording")).expect("JSON");
    assert_eq!(sidecar["status"], "recording", "{sidecar}");
    let leases: Vec<Value> = moto.keys(&format!("{PREFIX}/recorders/")).iter().filter_map(|k| serde_json::from_slice(&moto.object(k)?).ok()).collect();
    assert!(leases.iter().any(|l| l["sessions"].as_array().is_some_and(|s| s.iter().any(|s| s["id"] == id.as_str()))), "a lease names it: {leases:?}");

    // Another recorder, its spool empty, lists it as running and serves what is in the bucket.
    let spool_dir = TempDir::new("other-spool");
    let other = free_port();
    let url = moto.url();
    let mut c = recorder(&demo, other, &spool_dir.0, &["--s3-bucket", BUCKET, "--s3-endpoint", &url, "--s3-path-style", "--s3-prefix", PREFIX], CREDS);
    c.stdout(Stdio::null()).stderr(Stdio::null());
    let _other = Spawned(c.spawn().expect("second recorder"));
    support::wait_for_port(other);
    let (meta, cast) = eventually(Duration::from_secs(10), || api_recording(&demo, other, &id).ok_or("not served by the other recorder".to_string()));
    assert_eq!(meta["status"], "recording", "{meta}");
    assert_eq!(cast.as_bytes(), &segments[..], "the other recorder serves the segments' whole lines");
    assert!(in_bucket < Duration::from_secs(2), "in the bucket {in_bucket:?} after it was durable");

    // The session ends: the whole cast replaces the segments.
    let _ = quiet.kill();
    let _ = quiet.wait();
    eventually(Duration::from_secs(20), || match (moto.object(&format!("{base}.cast")), moto.keys(&format!("{base}/")).is_empty(), spool_has(&demo, &id)) {
        (Some(cast), true, false) if cast.starts_with(&segments) => Ok(()),
        (cast, empty, spooled) => Err(format!("cast {:?} bytes, segments gone: {empty}, in the spool: {spooled}", cast.map(|c| c.len()))),
    });
    let sidecar: Value = serde_json::from_slice(&moto.object(&format!("{base}.json")).expect("sidecar")).expect("JSON");
    assert_ne!(sidecar["status"], "recording", "{sidecar}");
}

#[test]
fn api_events_go_to_the_bucket_and_a_recorder_with_an_empty_spool_answers_for_them() {
    let moto = Moto::start();
    moto.create_bucket(BUCKET);
    let demo = Demo::start();
    demo.kill("recorder");
    let url = moto.url();
    let _recorder =
        demo.restart_with_env("recorder", &["--s3-bucket", BUCKET, "--s3-endpoint", &url, "--s3-path-style", "--s3-prefix", PREFIX, "--s3-flush-interval", FLUSH], None, CREDS);
    let k = Kubectl::new(&demo, "kubeconfig", "1.32", Proto::WebSocket);
    let marker = format!("no-such-pod-{}", free_port());
    let out = k.run(&["get", "pod", &marker]);
    assert!(!out.status.success(), "{}", out.describe());
    // The open segment goes up in parts within the flush interval.
    eventually(Duration::from_secs(20), || {
        let data: Vec<u8> = moto.keys(&format!("{PREFIX}/events/")).iter().filter_map(|k| moto.object(k)).flatten().collect();
        if String::from_utf8_lossy(&data).contains(&marker) {
            Ok(())
        } else {
            Err(format!("events in the bucket: {:?}", moto.keys(&format!("{PREFIX}/events/"))))
        }
    });
    let spool = TempDir::new("events-spool");
    let other = free_port();
    let mut c = recorder(&demo, other, &spool.0, &["--s3-bucket", BUCKET, "--s3-endpoint", &url, "--s3-path-style", "--s3-prefix", PREFIX], CREDS);
    c.stdout(Stdio::null()).stderr(Stdio::null());
    let _other = Spawned(c.spawn().expect("second recorder"));
    support::wait_for_port(other);
    let body = eventually(Duration::from_secs(10), || {
        let (status, body) = demo.recorder_get_at(other, Some("recorder-reader"), "/v1/events?user=alice&limit=50");
        if status == 200 && body.contains(&marker) {
            Ok(body)
        } else {
            Err(format!("{status} {body}"))
        }
    });
    let events: Value = serde_json::from_str(&body).expect("JSON");
    let ev = events["items"].as_array().expect("items").iter().find(|e| e.to_string().contains(&marker)).cloned().expect("the event");
    assert_eq!((&ev["verb"], &ev["name"], &ev["status"]), (&Value::from("get"), &Value::from(marker.as_str()), &Value::from(404)), "{ev}");
}

#[test]
fn an_s3_outage_mid_session_does_not_hold_it_up_and_the_object_is_byte_exact_after_it() {
    let moto = Moto::start();
    let (demo, _recorder) = demo_with_bucket(&moto);
    let port = demo.listen_port("recorder");
    let k = Kubectl::new(&demo, "kubeconfig", "1.32", Proto::WebSocket);
    // Numbered lines for about 10 s; S3 goes away after the first is in the bucket.
    let script = "for i in $(seq 1 40); do echo line-$i; sleep 0.25; done";
    let session = k.command(&["exec", "web-0", "--", "sh", "-c", script]).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("kubectl");
    let id = demo.wait_running("line-1");
    let base = format!("{PREFIX}/sessions/{}/{id}", day(&demo, &id));
    wait_segment(&moto, &base, "line-1");
    let s3_port = moto.port;
    drop(moto);
    let outage = Instant::now();

    // The session goes on and ends normally while S3 is away.
    let out = wait_with_timeout(session, Duration::from_secs(60));
    let want: String = (1..=40).map(|i| format!("line-{i}\n")).collect();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout) == want, "{}", out.describe());
    let (meta, cast) = demo.wait_recording(|m, _| m["id"] == id.as_str());
    assert_eq!(meta["status"], "complete", "{meta}");
    assert!(cast.contains("line-40"), "{cast}");
    let spool_cast = std::fs::read(demo.cast_path(&id)).expect("the spool holds it");
    // Readiness says why, the failures are counted, the lag is shown.
    eventually(Duration::from_secs(10), || match readyz(&demo, port) {
        (503, why) if why.starts_with("S3: ") => Ok(()),
        other => Err(format!("readyz {other:?}")),
    });
    assert!(recorder_metric(&demo, "kubetape_recorder_s3_upload_errors_total") > 0);
    assert!(recorder_metric(&demo, "kubetape_recorder_s3_pending_bytes") > 0, "the pending bytes are shown");
    assert!(recorder_log(&demo).contains("s3 upload pass failed, retrying in"), "{}", recorder_log(&demo));

    // S3 is back (moto keeps nothing: the bucket is made again): the retries upload it.
    let moto = Moto::start_on(s3_port);
    moto.create_bucket(BUCKET);
    let down = outage.elapsed();
    let key = format!("{base}.cast");
    // The retry delay doubles up to 30 s.
    eventually(Duration::from_secs(45), || if moto.object(&key).as_ref() == Some(&spool_cast) { Ok(()) } else { Err(format!("not uploaded: {}", recorder_log(&demo))) });
    eventually(Duration::from_secs(10), || match (recorder_metric(&demo, "kubetape_recorder_s3_pending_bytes"), readyz(&demo, port), spool_has(&demo, &id)) {
        (0, (200, _), false) => Ok(()),
        other => Err(format!("pending, readiness, in the spool: {other:?}")),
    });
    eprintln!("S3 was away for {down:?}");
}

#[test]
fn a_full_spool_refuses_new_fail_closed_sessions_and_keeps_fail_open_ones_truncated() {
    let demo = Demo::start();
    demo.disable_events();
    demo.kill("recorder");
    // S3 unreachable: nothing leaves the spool.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let _recorder = demo.restart_with_env(
        "recorder",
        &["--s3-bucket", BUCKET, "--s3-endpoint", &dead, "--s3-path-style", "--spool-max-bytes", "64Ki", "--s3-flush-interval", FLUSH],
        None,
        CREDS,
    );
    let port = demo.listen_port("recorder");
    let alice = Kubectl::new(&demo, "kubeconfig", "1.32", Proto::WebSocket);
    let out = alice.run_timeout(&["exec", "web-0", "--", "sh", "-c", "head -c 100000 /dev/zero | tr '\\0' x; echo"], None, Duration::from_secs(30));
    assert!(out.status.success(), "{}", out.describe());
    eventually(Duration::from_secs(10), || match recorder_metric(&demo, "kubetape_recorder_spool_bytes") {
        n if n >= 64 * 1024 => Ok(()),
        n => Err(format!("spool bytes {n}")),
    });

    // bob is fail-closed: refused before anything runs, told why.
    let bob = Kubectl::new(&demo, "bob.kubeconfig", "1.32", Proto::WebSocket);
    let out = bob.run_timeout(&["exec", "web-0", "--", "sh", "-c", "echo closed-$((6*7))"], None, Duration::from_secs(30));
    assert!(!out.status.success() && !out.stdout_str().contains("closed-42"), "{}", out.describe());
    assert!(String::from_utf8_lossy(&out.stderr).contains("spool is full"), "the user is told why: {}", out.describe());
    assert!(!demo.recordings().iter().any(|(m, _)| m["session"]["user"]["name"] == "bob"), "no recording for the refused session");

    // alice is fail-open: runs, and its recording says it was not kept.
    let out = alice.run_timeout(&["exec", "web-0", "--", "sh", "-c", "echo open-$((6*7))"], None, Duration::from_secs(30));
    assert!(out.status.success() && out.stdout_str() == "open-42", "{}", out.describe());
    let (meta, cast) = demo.wait_recording(|m, _| m["reason"].as_str().is_some_and(|r| r.contains("spool is full")));
    assert_eq!(meta["status"], "truncated", "{meta}");
    assert!(!cast.contains("open-42") && header(&cast)["version"] == 2, "only the header is kept: {cast}");
    let (code, why) = readyz(&demo, port);
    assert_eq!(code, 503, "{why}");
}

#[test]
fn a_recorder_killed_during_an_upload_resumes_with_its_spool_and_aborts_the_unfinished_upload() {
    let moto = Moto::start();
    moto.create_bucket(BUCKET);
    let demo = Demo::start();
    demo.disable_events();
    demo.kill("recorder");
    // The recorder reaches moto through a gate that holds the second part of the first
    // multipart upload: the recorder is killed while it waits on it.
    let gate = Gate::start(&moto, "partNumber=2&");
    let through = gate.url();
    let flags = |endpoint: &str| ["--s3-bucket", BUCKET, "--s3-endpoint", endpoint, "--s3-path-style", "--s3-prefix", PREFIX, "--s3-flush-interval", FLUSH].map(String::from);
    let first = flags(&through);
    let mut recorder = demo.restart_with_env("recorder", &first.iter().map(String::as_str).collect::<Vec<_>>(), None, CREDS);
    let k = Kubectl::new(&demo, "kubeconfig", "1.32", Proto::WebSocket);
    // Past one 8 MiB part: the cast goes up as a multipart upload.
    let out = k.run_timeout(&["exec", "web-0", "--", "sh", "-c", "head -c 20000000 /dev/zero | tr '\\0' y | fold -w 100"], None, Duration::from_secs(120));
    assert!(out.status.success(), "{}", out.describe());
    let (meta, _) = demo.wait_recording(|m, _| m["bytes"].as_u64().is_some_and(|b| b > 8 << 20));
    let id = meta["id"].as_str().expect("an id").to_string();
    let base = format!("{PREFIX}/sessions/{}/{id}", day(&demo, &id));
    eventually(Duration::from_secs(30), || if gate.held() { Ok(()) } else { Err(format!("no second part sent yet: {}", recorder_log(&demo))) });
    let spool_cast = std::fs::read(demo.cast_path(&id)).expect("spool cast");
    assert_eq!(multipart_uploads(&moto), [format!("{base}.cast")], "an upload under way");
    let _ = recorder.0.kill();
    let _ = recorder.0.wait();
    assert!(moto.object(&format!("{base}.cast")).is_none(), "killed before the cast was whole");

    // Restarted with the same spool (straight to moto): the upload is aborted, the
    // recording uploaded once, byte for byte.
    let again = flags(&moto.url());
    let _again = demo.restart_with_env("recorder", &again.iter().map(String::as_str).collect::<Vec<_>>(), None, CREDS);
    eventually(Duration::from_secs(60), || {
        let json = moto.object(&format!("{base}.json")).and_then(|b| serde_json::from_slice::<Value>(&b).ok()).unwrap_or(Value::Null);
        match (
            json["status"] == "complete",
            moto.object(&format!("{base}.cast")).is_some_and(|c| c == spool_cast),
            moto.keys(&format!("{base}/")).is_empty(),
            multipart_uploads(&moto).is_empty(),
        ) {
            (true, true, true, true) => Ok(()),
            state => Err(format!("complete, cast equal, segments gone, no upload left: {state:?}: {}", recorder_log(&demo))),
        }
    });
    assert!(!spool_has(&demo, &id), "the spool let go of it");
}

#[test]
fn a_recorder_lost_with_its_spool_leaves_an_interrupted_recording_that_another_recorder_finishes() {
    let moto = Moto::start();
    let (demo, mut lost) = demo_with_bucket(&moto);
    let k = Kubectl::new(&demo, "kubeconfig", "1.32", Proto::WebSocket);
    let mut quiet =
        k.command(&["exec", "web-0", "--", "sh", "-c", "echo lost-$((6*7)); sleep 120"]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("kubectl");
    let id = demo.wait_running("lost-42");
    let base = format!("{PREFIX}/sessions/{}/{id}", day(&demo, &id));
    wait_segment(&moto, &base, "lost-42");
    // The pod is deleted: the recorder and its spool are gone.
    let _ = lost.0.kill();
    let _ = lost.0.wait();
    std::fs::remove_dir_all(demo.path("recordings")).expect("wiping the spool");
    let _ = quiet.kill();
    let _ = quiet.wait();

    // Another recorder sees the lost one's lease stop changing and finishes its session.
    let spool = TempDir::new("survivor-spool");
    let survivor = free_port();
    let url = moto.url();
    let mut c = recorder(&demo, survivor, &spool.0, &["--s3-bucket", BUCKET, "--s3-endpoint", &url, "--s3-path-style", "--s3-prefix", PREFIX, "--s3-flush-interval", FLUSH], CREDS);
    c.stdout(Stdio::null()).stderr(std::fs::File::create(demo.path("survivor.log")).expect("log"));
    let _survivor = Spawned(c.spawn().expect("survivor"));
    support::wait_for_port(survivor);
    // Ten flush intervals unchanged (at least 5 s), then a pass.
    let json = eventually(Duration::from_secs(30), || {
        let json = moto.object(&format!("{base}.json")).and_then(|b| serde_json::from_slice::<Value>(&b).ok()).unwrap_or(Value::Null);
        match (json["status"] == "interrupted", moto.keys(&format!("{base}/")).is_empty()) {
            (true, true) => Ok(json),
            state => Err(format!("interrupted, segments gone: {state:?} {json}: {}", std::fs::read_to_string(demo.path("survivor.log")).unwrap_or_default())),
        }
    });
    let cast = String::from_utf8(moto.object(&format!("{base}.cast")).expect("the cast")).expect("UTF-8");
    assert!(header(&cast)["version"] == 2 && cast.contains("lost-42") && cast.ends_with('\n'), "{cast}");
    assert_eq!(json["bytes"].as_u64(), Some(cast.len() as u64), "{json}");
    assert!(json["reason"].as_str().is_some_and(|r| r.contains("was lost")), "{json}");
    assert!(moto.keys(&format!("{PREFIX}/recorders/")).len() == 1, "the lost recorder's lease is gone: {:?}", moto.keys(&format!("{PREFIX}/recorders/")));
}

#[test]
fn bad_s3_settings_keep_the_recorder_up_not_ready_saying_why_and_a_credentials_file_works() {
    let moto = Moto::start();
    let demo = Demo::start();
    let storage = TempDir::new("spool");
    let url = moto.url();
    let dead = format!("http://127.0.0.1:{}", free_port());
    let cases: [(&str, &str, Env, &str); 3] = [
        (BUCKET, &url, CREDS, &format!("--s3-bucket \"{BUCKET}\": the bucket cannot be listed at http://127.0.0.1:")),
        (BUCKET, &dead, CREDS, &format!("--s3-endpoint {dead}: not reachable")),
        (BUCKET, &url, &[], "S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
    ];
    for (i, (bucket, endpoint, creds, want)) in cases.into_iter().enumerate() {
        let port = free_port();
        let log = storage.0.join(format!("recorder-{i}.log"));
        let mut c = recorder(&demo, port, &storage.0, &["--s3-bucket", bucket, "--s3-endpoint", endpoint, "--s3-path-style"], creds);
        let mut r = Spawned(c.stdout(Stdio::null()).stderr(std::fs::File::create(&log).expect("log")).spawn().expect("recorder"));
        support::wait_for_port(port);
        let why = eventually(Duration::from_secs(20), || match readyz(&demo, port) {
            (503, why) if why.contains(want) => Ok(why),
            other => Err(format!("readyz {other:?}: {}", std::fs::read_to_string(&log).unwrap_or_default())),
        });
        assert!(!why.contains('\n'), "one line: {why}");
        assert!(r.0.try_wait().expect("status").is_none(), "still running, not crash-looping");
        assert_eq!(demo.recorder_get_at(port, None, "/healthz").0, 200, "alive");
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(text.lines().any(|l| l.contains(want)), "the log says it: {text}");
        assert!(!text.contains("test-secret"), "credentials never printed: {text}");
        if i == 0 {
            // The bucket appears: the same process becomes ready, no restart.
            moto.create_bucket(BUCKET);
            eventually(Duration::from_secs(45), || match readyz(&demo, port) {
                (200, _) => Ok(()),
                other => Err(format!("readyz {other:?}")),
            });
        }
    }

    // Credentials from a file, as a mounted Secret provides them.
    let file = storage.0.join("aws-credentials");
    std::fs::write(&file, "[default]\naws_access_key_id = file-key\naws_secret_access_key = test-secret\n").expect("credentials file");
    let port = free_port();
    let file = file.display().to_string();
    let mut c = recorder(&demo, port, &storage.0, &["--s3-bucket", BUCKET, "--s3-endpoint", &url, "--s3-path-style"], &[("AWS_SHARED_CREDENTIALS_FILE", &file)]);
    let log = storage.0.join("recorder.log");
    let _r = Spawned(c.stdout(Stdio::null()).stderr(std::fs::File::create(&log).expect("log")).spawn().expect("recorder"));
    support::wait_for_port(port);
    eventually(Duration::from_secs(20), || match readyz(&demo, port) {
        (200, _) => Ok(()),
        other => Err(format!("readyz {other:?}: {}", std::fs::read_to_string(&log).unwrap_or_default())),
    });
    assert!(!std::fs::read_to_string(&log).unwrap_or_default().contains("test-secret"), "credentials never logged");
}

/// A TCP pass-through to moto that holds (never forwards) the first request whose
/// head contains `trigger`, so a test can act while the recorder waits on it.
struct Gate {
    port: u16,
    held: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Gate {
    fn start(moto: &Moto, trigger: &'static str) -> Gate {
        use std::io::{Read, Write};
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("gate listener");
        let port = listener.local_addr().expect("addr").port();
        let held = std::sync::Arc::new(AtomicBool::new(false));
        let (target, flag) = (moto.port, held.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target)) else { continue };
                let (mut c_in, mut s_out) = (client.try_clone().expect("clone"), server.try_clone().expect("clone"));
                let flag = flag.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n @ 1..) = c_in.read(&mut buf) {
                        if !flag.load(Ordering::SeqCst) && String::from_utf8_lossy(&buf[..n]).contains(trigger) {
                            flag.store(true, Ordering::SeqCst);
                            // Held: the request never reaches moto, the connection stays open.
                            std::thread::park();
                        }
                        if s_out.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                    let _ = s_out.shutdown(std::net::Shutdown::Write);
                });
                let (mut s_in, mut c_out) = (server, client);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut s_in, &mut c_out);
                    let _ = c_out.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Gate { port, held }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn held(&self) -> bool {
        self.held.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Sends SIGTERM to a recorder and waits for it to exit.
fn terminate(r: Spawned) {
    let mut r = r;
    // SAFETY: signalling our own child by its pid.
    unsafe { libc::kill(r.0.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(40);
    eventually(Duration::from_secs(40), || match r.0.try_wait() {
        Ok(Some(_)) => Ok(()),
        _ => Err(format!("recorder still running {:?} after SIGTERM", deadline.saturating_duration_since(Instant::now()))),
    });
}

/// The text a cast's output events carry, in order.
fn output_of(cast: &str) -> String {
    cast.lines().skip(1).filter_map(|l| serde_json::from_str::<Value>(l).ok()).filter(|v| v[1] == "o").map(|v| v[2].as_str().unwrap_or("").to_string()).collect()
}

/// Whether the recorder on `port` is recording session `id` now.
fn recording_on(demo: &Demo, port: u16, id: &str) -> bool {
    let (status, body) = demo.recorder_get_at(port, Some("recorder-reader"), &format!("/v1/recordings/{id}"));
    status == 200 && serde_json::from_str::<Value>(&body).is_ok_and(|m| m["status"] == "recording" && m["recorder"].is_null())
}

/// Two recorders on one bucket behind the demo's proxy: the demo's (restarted with
/// S3) and a second one the policy lists after it, with the same tag.
struct Pair<'a> {
    demo: &'a Demo,
    s3: Vec<String>,
    p2: u16,
    spool2: TempDir,
}

impl Pair<'_> {
    fn start<'a>(demo: &'a Demo, moto: &Moto) -> (Pair<'a>, Spawned) {
        let s3: Vec<String> =
            ["--s3-bucket", BUCKET, "--s3-endpoint", &moto.url(), "--s3-path-style", "--s3-prefix", PREFIX, "--s3-flush-interval", FLUSH].map(String::from).to_vec();
        let pair = Pair { demo, s3, p2: free_port(), spool2: TempDir::new("second-spool") };
        let second = pair.start_second();
        let p2 = pair.p2;
        demo.edit_policy(|v| {
            let more = serde_json::json!({"name": "second", "url": format!("https://127.0.0.1:{p2}"), "tags": ["tag:recorder"], "caFile": "pki/recorder-ca.pem"});
            v["recorders"].as_array_mut().expect("recorders").push(more);
        });
        (pair, second)
    }

    fn flags(&self) -> Vec<&str> {
        self.s3.iter().map(String::as_str).collect()
    }

    fn start_second(&self) -> Spawned {
        let mut c = recorder(self.demo, self.p2, &self.spool2.0, &self.flags(), CREDS);
        c.stdout(Stdio::null()).stderr(std::fs::OpenOptions::new().create(true).append(true).open(self.demo.path("recorder-second.log")).expect("log"));
        let r = Spawned(c.spawn().expect("second recorder"));
        support::wait_for_port(self.p2);
        r
    }

    fn start_first(&self) -> Spawned {
        self.demo.restart_with_env("recorder", &self.flags(), None, CREDS)
    }

    fn logs(&self) -> String {
        format!("{}\n{}\n--- second\n{}", recorder_log(self.demo), self.demo.logs(), std::fs::read_to_string(self.demo.path("recorder-second.log")).unwrap_or_default())
    }

    /// alice (fail-open) and bob (fail-closed) print `lines` numbered lines, one every
    /// 0.25 s; returns them with their session ids once each is recording.
    fn sessions(&self, lines: usize) -> Vec<(&'static str, std::process::Child, String)> {
        let run = |kubeconfig: &str, who: &str| {
            Kubectl::new(self.demo, kubeconfig, "1.32", Proto::WebSocket)
                .command(&["exec", "web-0", "--", "sh", "-c", &format!("for i in $(seq 1 {lines}); do echo {who}-$i; sleep 0.25; done")])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("kubectl")
        };
        [("alice", run("kubeconfig", "alice")), ("bob", run("bob.kubeconfig", "bob"))]
            .into_iter()
            .map(|(who, child)| {
                let id = self.demo.wait_running(&format!("{who}-3\\n"));
                (who, child, id)
            })
            .collect()
    }

    /// Each session ran to its end, and its one recording, in the bucket and served
    /// by the recorder on `port`, holds every line once.
    fn check(&self, moto: &Moto, port: u16, sessions: Vec<(&'static str, std::process::Child, String)>, lines: usize) {
        for (who, session, id) in sessions {
            let out = wait_with_timeout(session, Duration::from_secs(90));
            let want: String = (1..=lines).map(|i| format!("{who}-{i}\n")).collect();
            assert!(out.status.success() && String::from_utf8_lossy(&out.stdout) == want, "{who}: {}\n{}", out.describe(), self.logs());
            let (meta, cast) = eventually(Duration::from_secs(30), || match api_recording(self.demo, port, &id) {
                Some((m, c)) if m["status"] == "complete" => Ok((m, c)),
                other => Err(format!("{who}: {other:?}\n{}", self.logs())),
            });
            assert_eq!(output_of(&cast), want, "{who}: every line once, in order: {meta}");
            assert!(!cast.contains("kubetape: "), "{who}: no gap: {cast}");
            let base = format!("{PREFIX}/sessions/{}/{id}", &meta["started"].as_str().unwrap_or("")[..10]);
            eventually(Duration::from_secs(20), || {
                let keys: Vec<String> = moto.keys(&format!("{PREFIX}/sessions/")).into_iter().filter(|k| k.contains(&id)).collect();
                match moto.object(&format!("{base}.cast")) {
                    Some(c) if c == cast.as_bytes() && keys == [format!("{base}.cast"), format!("{base}.json")] => Ok(()),
                    other => Err(format!("{who}: the bucket's cast {:?} bytes, keys {keys:?}", other.map(|c| c.len()))),
                }
            });
        }
    }
}

#[test]
fn recorders_rolled_one_after_the_other_move_their_sessions_and_every_line_is_recorded_once() {
    let moto = Moto::start();
    let (demo, first) = demo_with_bucket(&moto);
    let (pair, second) = Pair::start(&demo, &moto);
    let (p1, p2) = (demo.listen_port("recorder"), pair.p2);
    let lines = 120;
    let sessions = pair.sessions(lines);

    // The first goes away: its sessions continue on the second. Back, it takes them
    // again when the second goes away.
    terminate(first);
    for (_, _, id) in &sessions {
        eventually(Duration::from_secs(20), || if recording_on(&demo, p2, id) { Ok(()) } else { Err(format!("{id} not on the second recorder: {}", pair.logs())) });
    }
    let _again = pair.start_first();
    // As a rolling update does: the next goes once this one is ready.
    eventually(Duration::from_secs(20), || match readyz(&demo, p1) {
        (200, _) => Ok(()),
        other => Err(format!("restarted first recorder not ready: {other:?}")),
    });
    terminate(second);
    for (_, _, id) in &sessions {
        eventually(Duration::from_secs(20), || if recording_on(&demo, p1, id) { Ok(()) } else { Err(format!("{id} not back on the first recorder: {}", pair.logs())) });
    }
    let _second = pair.start_second();
    pair.check(&moto, p1, sessions, lines);
}

#[test]
fn two_recorders_restarted_at_once_leave_exactly_one_complete_recording_per_session() {
    let moto = Moto::start();
    let (demo, first) = demo_with_bucket(&moto);
    let (pair, second) = Pair::start(&demo, &moto);
    let lines = 60;
    let sessions = pair.sessions(lines);
    // Both go away together and come back.
    let stopping = std::thread::spawn(move || terminate(second));
    terminate(first);
    stopping.join().expect("second stopped");
    let _first = pair.start_first();
    let _second = pair.start_second();
    pair.check(&moto, demo.listen_port("recorder"), sessions, lines);
}

/// Checks a session's recorded output against the lines it printed: in order, none
/// twice, and any left out (while no recorder had them) stood for by a marker.
fn assert_once_in_order(who: &str, cast: &str, printed: &[String]) {
    let recorded: Vec<String> = output_of(cast).lines().map(String::from).collect();
    let mut at = 0;
    for line in &recorded {
        let found = printed[at..].iter().position(|p| p == line).unwrap_or_else(|| panic!("{who}: {line:?} recorded twice or out of order:\n{cast}"));
        at += found + 1;
    }
    if recorded.len() < printed.len() {
        // A marker of the gap's length: with text where the gap has room for it.
        let marked =
            cast.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).any(|v| v[1] == "m" && v[2].as_str().is_some_and(|t| t.is_empty() || t.starts_with("kubetape: ")));
        assert!(marked, "{who}: {} lines missing and no marker says so:\n{cast}", printed.len() - recorded.len());
    }
}

#[test]
fn a_recorder_killed_mid_session_loses_at_most_the_flush_window_and_the_session_goes_on_on_another() {
    let moto = Moto::start();
    let (demo, mut first) = demo_with_bucket(&moto);
    let (pair, _second) = Pair::start(&demo, &moto);
    let p2 = pair.p2;
    let lines = 60;
    let sessions = pair.sessions(lines);
    // Some of each is in the bucket (what the first second printed could otherwise be
    // all there is to lose).
    for (who, _, id) in &sessions {
        wait_segment(&moto, &format!("{PREFIX}/sessions/{}/{id}", day(&demo, id)), &format!("{who}-3\\n"));
    }
    // Lost without a word, spool and all.
    let _ = first.0.kill();
    let _ = first.0.wait();
    for (who, session, id) in sessions {
        let out = wait_with_timeout(session, Duration::from_secs(90));
        let printed: Vec<String> = (1..=lines).map(|i| format!("{who}-{i}")).collect();
        let want: String = printed.iter().map(|l| format!("{l}\n")).collect();
        assert!(out.status.success() && String::from_utf8_lossy(&out.stdout) == want, "{who}: the session goes on: {}", out.describe());
        let (meta, cast) = eventually(Duration::from_secs(30), || match api_recording(&demo, p2, &id) {
            Some((m, c)) if m["status"] != "recording" => Ok((m, c)),
            other => Err(format!("{who}: {other:?}")),
        });
        assert_once_in_order(who, &cast, &printed);
        // Whole, or truncated saying what is missing.
        let whole = output_of(&cast).lines().count() == lines;
        let said = meta["reason"].as_str().is_some_and(|r| r.contains("lost with a recorder"));
        assert!((whole && meta["status"] == "complete") || (!whole && meta["status"] == "truncated" && said), "{who}: {meta}");
        let recorded = output_of(&cast).lines().count();
        // At most the flush interval (1 s, 4 lines) and the pass in flight are missing.
        assert!(recorded >= lines - 8, "{who}: {recorded} of {lines} lines recorded: {meta}\n{cast}");
        assert!(output_of(&cast).contains(&format!("{who}-1\n")) && output_of(&cast).contains(&format!("{who}-{lines}\n")), "{cast}");
    }
}

/// moto behind TLS: a terminator on a loopback port serving a certificate for
/// 127.0.0.1 signed by `ca`, passing the plain bytes on to moto.
fn tls_front(moto: &Moto, ca: &kubetape::net::pki::Ca) -> u16 {
    support::init_crypto();
    let pem = ca.server("s3", &["127.0.0.1"]).expect("server certificate");
    let chain = kubetape::net::tls::certs_from_pem(pem.cert.as_bytes(), "cert").expect("chain");
    let key = kubetape::net::tls::key_from_pem(pem.key.as_bytes(), "key").expect("key");
    let config = kubetape::net::tls::server_config(chain, key, None).expect("TLS config");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let port = listener.local_addr().expect("addr").port();
    let target = moto.port;
    std::thread::spawn(move || {
        for sock in listener.incoming().flatten() {
            let config = config.clone();
            std::thread::spawn(move || {
                let Ok(conn) = kubetape::net::conn::Conn::accept_tls(sock, &config, Duration::from_secs(5)) else { return };
                let Ok(plain) = std::net::TcpStream::connect(("127.0.0.1", target)) else { return };
                let (mut from_client, mut to_client) = (conn.read, conn.write);
                let (mut to_moto, mut from_moto) = (plain.try_clone().expect("clone"), plain);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from_client, &mut to_moto);
                    let _ = to_moto.shutdown(std::net::Shutdown::Write);
                });
                let _ = std::io::copy(&mut from_moto, &mut to_client);
            });
        }
    });
    port
}

#[test]
fn an_https_endpoint_needs_its_ca_and_says_which_setting_is_wrong() {
    let moto = Moto::start();
    moto.create_bucket(BUCKET);
    let demo = Demo::start();
    let storage = TempDir::new("ca-spool");
    let ca = kubetape::net::pki::Ca::new("s3-test-ca").expect("CA");
    let other = kubetape::net::pki::Ca::new("some-other-ca").expect("CA");
    let (ca_file, other_file) = (storage.0.join("s3-ca.pem"), storage.0.join("other-ca.pem"));
    std::fs::write(&ca_file, &ca.cert_pem).expect("CA file");
    std::fs::write(&other_file, &other.cert_pem).expect("CA file");
    let endpoint = format!("https://127.0.0.1:{}", tls_front(&moto, &ca));
    let (ca_file, other_file) = (ca_file.display().to_string(), other_file.display().to_string());
    let cases: [(&[&str], Option<&str>); 3] =
        [(&[], Some("set --s3-ca-file to its CA")), (&["--s3-ca-file", &other_file], Some("--s3-ca-file: the certificate of")), (&["--s3-ca-file", &ca_file], None)];
    for (i, (extra, want)) in cases.into_iter().enumerate() {
        let port = free_port();
        let log = storage.0.join(format!("recorder-{i}.log"));
        let mut flags = vec!["--s3-bucket", BUCKET, "--s3-endpoint", &endpoint, "--s3-path-style"];
        flags.extend_from_slice(extra);
        let mut c = recorder(&demo, port, &storage.0, &flags, CREDS);
        let _r = Spawned(c.stdout(Stdio::null()).stderr(std::fs::File::create(&log).expect("log")).spawn().expect("recorder"));
        support::wait_for_port(port);
        eventually(Duration::from_secs(20), || match (readyz(&demo, port), want) {
            ((503, why), Some(want)) if why.contains(want) && !why.contains('\n') => Ok(()),
            ((200, _), None) => Ok(()),
            (other, _) => Err(format!("case {i}: readyz {other:?}, want {want:?}: {}", std::fs::read_to_string(&log).unwrap_or_default())),
        });
    }
}
