//! S3 storage end to end against a real S3 server (`moto_server`, started here on a
//! free loopback port): real kubectl sessions through the demo's proxy to a recorder
//! run with `--s3-bucket`; the bucket is read with moto's plain HTTP API, never through
//! the recorder. A second recorder with an empty spool serves what the first uploaded;
//! a quiet session's bytes reach the bucket within the flush interval; a bucket that
//! does not exist stops the recorder at start with one line naming the flag.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::s3::{Env, Moto, BUCKET};
use support::{eventually, free_port, port_alive, wait_with_timeout, Demo, Kubectl, OutputExt, Proto, Spawned, TempDir};

const PREFIX: &str = "cluster-a";
/// Small, so a test waits a second or two for an upload; the default is 10 s.
const FLUSH: &str = "1s";
/// moto accepts any credentials; these only have to be present.
const CREDS: Env = &[("AWS_ACCESS_KEY_ID", "test-key"), ("AWS_SECRET_ACCESS_KEY", "test-secret")];

/// The value of one sample on the recorder's `/metrics`.
fn recorder_metric(demo: &Demo, name: &str) -> u64 {
    let (status, text) = demo.recorder_get(Some("recorder-reader"), "/metrics");
    assert_eq!(status, 200, "{text}");
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or_else(|| panic!("no metric {name}:\n{text}"))
}

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

/// A recorder with the demo's PKI on `port`, spooling to `storage`, with `s3` flags
/// and only the AWS credentials in `creds` (none from the test's environment).
fn recorder(demo: &Demo, port: u16, storage: &std::path::Path, s3: &[&str], creds: Env) -> Command {
    let mut c = Command::new(support::BIN);
    c.args(recorder_args(demo, port, storage)).args(s3).stdin(Stdio::null());
    for v in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SHARED_CREDENTIALS_FILE"] {
        c.env_remove(v);
    }
    // No ~/.aws/credentials of the machine's either.
    c.env("HOME", storage).envs(creds.iter().copied());
    c
}

/// The demo recorder's command line with `--listen` and `--storage-dir` replaced.
fn recorder_args(demo: &Demo, port: u16, storage: &std::path::Path) -> Vec<String> {
    let cmdline = std::fs::read_to_string(demo.path("recorder.cmdline")).expect("recorder.cmdline");
    let mut args: Vec<String> = cmdline.split_whitespace().skip(1).map(String::from).collect();
    let set = |args: &mut Vec<String>, flag: &str, value: String| {
        let i = args.iter().position(|a| a == flag).expect(flag);
        args[i + 1] = value;
    };
    set(&mut args, "--listen", format!("127.0.0.1:{port}"));
    set(&mut args, "--storage-dir", storage.display().to_string());
    args
}

fn recorder_log(demo: &Demo) -> String {
    std::fs::read_to_string(demo.path("recorder-restarted.log")).unwrap_or_default()
}

/// The spool's day folder of a recording (the bucket uses the same).
fn day(demo: &Demo, id: &str) -> String {
    demo.cast_path(id).parent().and_then(|d| d.file_name()).map(|d| d.to_string_lossy().into_owned()).expect("a day folder")
}

#[test]
fn a_session_lands_in_the_bucket_whole_and_a_recorder_with_an_empty_spool_serves_it() {
    let moto = Moto::start();
    let (demo, first) = demo_with_bucket(&moto);
    let k = Kubectl::new(&demo, "kubeconfig", "1.32", Proto::WebSocket);
    let out = k.run_timeout(&["exec", "web-0", "--", "sh", "-c", "echo s3-$((6*7)); exit 4"], None, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(4), "{}", out.describe());
    let (meta, _) = demo.wait_recording(|_, c| c.contains("s3-42"));
    let id = meta["id"].as_str().expect("an id").to_string();
    let spool_cast = std::fs::read(demo.cast_path(&id)).expect("spool cast");
    let spool_json = std::fs::read(demo.cast_path(&id).with_extension("json")).expect("spool sidecar");
    let base = format!("{PREFIX}/sessions/{}/{id}", day(&demo, &id));

    // The bucket holds the recording as one object and its sidecar, byte for byte,
    // and no segment is left.
    eventually(Duration::from_secs(10), || {
        let json = moto.object(&format!("{base}.json")).ok_or_else(|| format!("no sidecar in the bucket yet: {:?} {}", moto.keys(""), recorder_log(&demo)))?;
        let cast = moto.object(&format!("{base}.cast")).ok_or("no cast in the bucket")?;
        let parts = moto.keys(&format!("{base}/"));
        if json == spool_json && cast == spool_cast && parts.is_empty() {
            Ok(())
        } else {
            Err(format!("bucket: cast {} bytes (spool {}), sidecar equal: {}, segments left: {parts:?}", cast.len(), spool_cast.len(), json == spool_json))
        }
    });

    // Another recorder, its spool empty, serves it from the bucket after the first is gone.
    drop(first);
    let spool = TempDir::new("empty-spool");
    let port = free_port();
    let url = moto.url();
    let mut c = recorder(&demo, port, &spool.0, &["--s3-bucket", BUCKET, "--s3-endpoint", &url, "--s3-path-style", "--s3-prefix", PREFIX], CREDS);
    c.stdout(Stdio::null()).stderr(std::fs::File::create(demo.path("recorder-second.log")).expect("log"));
    let _second = Spawned(c.spawn().expect("second recorder"));
    support::wait_for_port(port);
    let (status, body) = demo.recorder_get_at(port, Some("recorder-reader"), "/v1/recordings");
    assert_eq!(status, 200, "{body}");
    let list: Value = serde_json::from_str(&body).expect("JSON list");
    let listed = list["items"].as_array().expect("items").iter().find(|m| m["id"] == id.as_str()).cloned();
    assert_eq!(listed.as_ref().map(|m| (&m["status"], &m["exitCode"])), Some((&Value::from("complete"), &Value::from(4))), "{body}");
    let (status, body) = demo.recorder_get_at(port, Some("recorder-reader"), &format!("/v1/recordings/{id}"));
    assert_eq!((status, serde_json::from_str::<Value>(&body).ok()), (200, serde_json::from_slice(&spool_json).ok()), "{body}");
    let (status, body) = demo.recorder_get_at(port, Some("recorder-reader"), &format!("/v1/recordings/{id}/cast"));
    assert_eq!((status, body.as_bytes()), (200, &spool_cast[..]));
    assert!(std::fs::read_dir(&spool.0).map(|d| d.flatten().all(|e| e.file_name() == "events")).unwrap_or(true), "served from the bucket, not copied to the spool");
}

#[test]
fn a_quiet_sessions_bytes_are_in_the_bucket_within_the_flush_interval() {
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
    let id = eventually(Duration::from_secs(20), || {
        demo.recordings()
            .into_iter()
            .find(|(m, c)| m["status"] == "recording" && c.contains("quiet-42"))
            .map(|(m, _)| m["id"].as_str().unwrap_or("").to_string())
            .ok_or("not in the spool yet".to_string())
    });
    let seen = Instant::now();
    let base = format!("{PREFIX}/sessions/{}/{id}", day(&demo, &id));
    // The flush interval (1 s) and a second for the requests themselves.
    let segments = eventually(Duration::from_secs(2), || {
        let data: Vec<u8> = moto.keys(&format!("{base}/")).iter().filter_map(|k| moto.object(k)).flatten().collect();
        if String::from_utf8_lossy(&data).contains("quiet-42") {
            Ok(data)
        } else {
            Err(format!("segments hold {:?}", String::from_utf8_lossy(&data)))
        }
    });
    let spool = std::fs::read(demo.cast_path(&id)).expect("spool cast");
    assert!(spool.starts_with(&segments), "the segments are the spool's first bytes, in order");
    assert!(moto.object(&format!("{base}.json")).is_none(), "no sidecar while recording: {:?}", seen.elapsed());

    // The session ends: the whole cast replaces the segments.
    let _ = quiet.kill();
    let _ = quiet.wait();
    let (meta, _) = demo.wait_recording(|m, _| m["id"] == id.as_str());
    let spool = std::fs::read(demo.cast_path(&id)).expect("spool cast");
    eventually(Duration::from_secs(10), || match (moto.object(&format!("{base}.cast")), moto.keys(&format!("{base}/")).is_empty()) {
        (Some(cast), true) if cast == spool => Ok(()),
        (cast, empty) => Err(format!("cast {:?} bytes of {}, segments gone: {empty}; {meta}", cast.map(|c| c.len()), spool.len())),
    });
}

#[test]
fn an_s3_outage_does_not_hold_sessions_up_and_uploads_catch_up_after_it() {
    let moto = Moto::start();
    let (demo, _recorder) = demo_with_bucket(&moto);
    let port = moto.port;
    drop(moto);
    eventually(Duration::from_secs(10), || if port_alive(port) { Err("moto still listening".to_string()) } else { Ok(()) });

    // The session is acknowledged from the spool while the bucket is away.
    let k = Kubectl::new(&demo, "kubeconfig", "1.32", Proto::WebSocket);
    let out = k.run_timeout(&["exec", "web-0", "--", "sh", "-c", "echo outage-$((6*7))"], None, Duration::from_secs(30));
    assert!(out.status.success() && out.stdout_str() == "outage-42", "{}", out.describe());
    let (meta, _) = demo.wait_recording(|_, c| c.contains("outage-42"));
    let id = meta["id"].as_str().expect("an id").to_string();
    eventually(Duration::from_secs(10), || match recorder_metric(&demo, "kubetape_recorder_s3_upload_errors_total") {
        0 => Err(format!("no failed pass counted: {}", recorder_log(&demo))),
        _ => Ok(()),
    });
    assert!(recorder_metric(&demo, "kubetape_recorder_s3_pending_bytes") > 0, "the lag is shown");
    assert!(recorder_log(&demo).contains("s3 upload pass failed, retrying in"), "{}", recorder_log(&demo));

    // S3 is back (moto keeps nothing: the bucket is made again): the retries upload it.
    let moto = Moto::start_on(port);
    moto.create_bucket(BUCKET);
    let spool = std::fs::read(demo.cast_path(&id)).expect("spool cast");
    let key = format!("{PREFIX}/sessions/{}/{id}.cast", day(&demo, &id));
    // The retry delay doubles up to 30 s.
    eventually(Duration::from_secs(45), || if moto.object(&key).as_ref() == Some(&spool) { Ok(()) } else { Err(format!("not uploaded: {}", recorder_log(&demo))) });
    eventually(Duration::from_secs(10), || match recorder_metric(&demo, "kubetape_recorder_s3_pending_bytes") {
        0 => Ok(()),
        n => Err(format!("{n} bytes still pending")),
    });
}

#[test]
fn bad_s3_settings_stop_the_recorder_at_start_with_one_line_and_a_credentials_file_works() {
    let moto = Moto::start();
    moto.create_bucket(BUCKET);
    let demo = Demo::start();
    let storage = TempDir::new("spool");
    let url = moto.url();
    let dead = format!("http://127.0.0.1:{}", free_port());
    let cases: [(&str, &str, Env, &str); 3] = [
        ("no-such-bucket", &url, CREDS, "--s3-bucket \"no-such-bucket\": the bucket cannot be listed at http://127.0.0.1:"),
        (BUCKET, &dead, CREDS, &format!("--s3-endpoint {dead}: not reachable")),
        (BUCKET, &url, &[], "S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
    ];
    for (bucket, endpoint, creds, want) in cases {
        let port = free_port();
        let mut c = recorder(&demo, port, &storage.0, &["--s3-bucket", bucket, "--s3-endpoint", endpoint, "--s3-path-style"], creds);
        let out = wait_with_timeout(c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("recorder"), Duration::from_secs(90));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "exits, does not serve: {err}");
        let last = err.lines().last().unwrap_or("");
        assert!(last.starts_with("kubetape recorder: ") && last.contains(want), "one line naming the setting, {want:?}: {err}");
        assert!(!err.contains("test-secret"), "credentials never printed: {err}");
        assert!(!port_alive(port), "never listened");
    }

    // Credentials from a file, as a mounted Secret provides them.
    let file = storage.0.join("aws-credentials");
    std::fs::write(&file, "[default]\naws_access_key_id = file-key\naws_secret_access_key = test-secret\n").expect("credentials file");
    let port = free_port();
    let file = file.display().to_string();
    let mut c = recorder(&demo, port, &storage.0, &["--s3-bucket", BUCKET, "--s3-endpoint", &url, "--s3-path-style"], &[("AWS_SHARED_CREDENTIALS_FILE", &file)]);
    let log = storage.0.join("recorder.log");
    let _r = Spawned(c.stdout(Stdio::null()).stderr(std::fs::File::create(&log).expect("log")).spawn().expect("recorder"));
    eventually(Duration::from_secs(20), || if port_alive(port) { Ok(()) } else { Err(format!("not listening: {}", std::fs::read_to_string(&log).unwrap_or_default())) });
    assert!(!std::fs::read_to_string(&log).unwrap_or_default().contains("test-secret"), "credentials never logged");
}
