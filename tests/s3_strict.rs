//! S3 storage against a strict server: `s3s-fs` (started here on a free loopback port)
//! checks the SigV4 signature of every request, where moto (tests/s3.rs) accepts any.
//! Real kubectl sessions go through the demo's proxy to a recorder run with
//! `--s3-bucket`; the bucket is read back from the plain files s3s-fs keeps under
//! `DATA_DIR/bucket/key` (and the ETag from its bookkeeping), never through the
//! recorder. A session of more than 8 MiB lands whole (a multipart upload, signed
//! part by part) and byte for byte the spool's cast; a wrong secret key
//! stores nothing and is reported in one line naming the setting.

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::s3::{recorder, recorder_metric_at, Env, S3sFs, BUCKET};
use support::{eventually, port_alive, Demo, Kubectl, OutputExt, Proto};

const PREFIX: &str = "cluster-a";
/// Small, so a test waits a second or two for an upload; the default is 10 s.
const FLUSH: &str = "1s";
const ACCESS_KEY: &str = "kubetape-test";
const SECRET_KEY: &str = "kubetape-test-secret";
const CREDS: Env = &[("AWS_ACCESS_KEY_ID", ACCESS_KEY), ("AWS_SECRET_ACCESS_KEY", SECRET_KEY)];
/// The right access key with another secret: every signature is wrong.
const WRONG_SECRET: &str = "not-the-secret";
/// Raw bytes the big session prints (as base64, a third more): above rust-s3's 8 MiB
/// part size, so the finished cast goes up as a multipart upload of two parts or more.
const BIG_SESSION_BYTES: u64 = 9_000_000;
/// A 12 MB session through kubectl, the proxy and the recorder on 2 shared cores.
const BIG_SESSION_TIMEOUT: Duration = Duration::from_secs(120);
/// The whole cast after the session: a pass every half interval, then a multipart
/// upload of ~12 MB to loopback.
const UPLOAD_WAIT: Duration = Duration::from_secs(30);
/// Failed upload passes are retried after 1 s, doubling to 30 s: two more of them.
const TWO_RETRIES: Duration = Duration::from_secs(90);
/// The recorder's S3 check at start: one ListObjectsV2 to loopback, refused at once.
const STARTUP_CHECK: Duration = Duration::from_secs(30);
/// A one-line session through kubectl and the proxy.
const SMALL_SESSION_TIMEOUT: Duration = Duration::from_secs(30);

fn s3_flags(url: &str) -> Vec<&str> {
    vec!["--s3-bucket", BUCKET, "--s3-endpoint", url, "--s3-path-style", "--s3-prefix", PREFIX, "--s3-flush-interval", FLUSH]
}

/// The sidecars in the demo recorder's spool (`recordings/<day>/<id>.json`).
fn spool_sidecars(demo: &Demo) -> Vec<std::path::PathBuf> {
    let files = |d: std::path::PathBuf| std::fs::read_dir(d).map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>()).unwrap_or_default();
    files(demo.path("recordings")).into_iter().filter(|d| d.is_dir()).flat_map(files).filter(|p| p.extension().is_some_and(|e| e == "json")).collect()
}

#[test]
fn a_session_over_8_mib_lands_in_a_strict_bucket_byte_for_byte() {
    let s3 = S3sFs::start(ACCESS_KEY, SECRET_KEY);
    s3.create_bucket(BUCKET);
    let demo = Demo::start();
    demo.disable_events();
    demo.kill("recorder");
    let url = s3.url();
    let _recorder = demo.restart_with_env("recorder", &s3_flags(&url), None, CREDS);
    let log = || std::fs::read_to_string(demo.path("recorder-restarted.log")).unwrap_or_default();

    let k = Kubectl::new(&demo, "kubeconfig", "1.32", Proto::WebSocket);
    let script = format!("head -c {BIG_SESSION_BYTES} /dev/urandom | base64; echo strict-$((6*7))");
    let session = {
        let k = k.clone();
        std::thread::spawn(move || k.run_timeout(&["exec", "web-0", "--", "sh", "-c", &script], None, BIG_SESSION_TIMEOUT))
    };
    // The spool lets go of a recording once it is in the bucket, so its final cast is
    // read the moment its sidecar says it ended (the bucket takes longer than that: a
    // pass, then a 12 MB multipart upload).
    let (id, day, spool_json, spool_cast) = eventually(BIG_SESSION_TIMEOUT, || {
        let sidecars = spool_sidecars(&demo);
        let [sidecar] = &sidecars[..] else { return Err(format!("expected one recording in the spool, found {sidecars:?}; recorder: {}", log())) };
        let json = std::fs::read(sidecar).map_err(|e| format!("{}: {e}", sidecar.display()))?;
        let meta: serde_json::Value = serde_json::from_slice(&json).map_err(|e| format!("sidecar: {e}"))?;
        if meta["status"] == "recording" {
            return Err("still recording".to_string());
        }
        let cast = std::fs::read(sidecar.with_extension("cast")).unwrap_or_else(|e| panic!("the spool let go of the cast before it could be read: {e}"));
        let day = sidecar.parent().and_then(|d| d.file_name()).map(|d| d.to_string_lossy().into_owned()).expect("a day folder");
        Ok((meta["id"].as_str().expect("an id").to_string(), day, json, cast))
    });
    let out = session.join().expect("kubectl thread");
    assert!(out.status.success() && out.stdout.ends_with(b"strict-42\n"), "{}", out.describe());
    assert!(spool_cast.len() > 8 << 20, "the cast is above one 8 MiB part: {} bytes", spool_cast.len());
    let base = format!("{PREFIX}/sessions/{day}/{id}");

    // The bucket holds the cast as one object, byte for byte the spool's, and the
    // sidecar; the segments are gone.
    eventually(UPLOAD_WAIT, || {
        let json = s3.object(&format!("{base}.json")).ok_or_else(|| format!("no sidecar yet; bucket {:?}; recorder: {}", s3.keys(""), log()))?;
        let cast = s3.object(&format!("{base}.cast")).ok_or("a sidecar but no cast")?;
        let segments = s3.keys(&format!("{base}/"));
        // The bucket's sidecar is the spool's and names the recorder holding it.
        let mut bucket_meta: serde_json::Value = serde_json::from_slice(&json).map_err(|e| format!("bucket sidecar: {e}"))?;
        let holder = bucket_meta.as_object_mut().and_then(|m| m.remove("recorder"));
        let same = serde_json::from_slice::<serde_json::Value>(&spool_json).ok() == Some(bucket_meta) && holder.as_ref().is_some_and(|h| h.is_string());
        if cast == spool_cast && same && segments.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "cast {} bytes (spool {}, equal {}), sidecar the spool's naming its recorder {same} ({holder:?}), segments left {segments:?}",
                cast.len(),
                spool_cast.len(),
                cast == spool_cast
            ))
        }
    });
    // s3s-fs assembled the cast from signed parts: a multipart ETag, `<md5>-<parts>`.
    let e_tag = s3.e_tag(&format!("{base}.cast")).expect("an ETag for the cast");
    let parts: u32 = e_tag.rsplit_once('-').and_then(|(_, n)| n.parse().ok()).unwrap_or_else(|| panic!("not a multipart ETag: {e_tag}"));
    assert!(parts >= 2, "{parts} parts: {e_tag}");
    eprintln!("the cast: {} bytes, ETag {e_tag}", spool_cast.len());
    // Of sessions, nothing else: the cast and the sidecar (beside them, under
    // `recorders/`, only this recorder's lease).
    assert_eq!(s3.keys(&format!("{PREFIX}/sessions/")), vec![format!("{base}.cast"), format!("{base}.json")]);
    assert!(!log().contains("s3 upload pass failed"), "no upload was refused: {}", log());
}

#[test]
fn a_wrong_secret_key_stores_nothing_and_says_so_in_one_line() {
    let s3 = S3sFs::start(ACCESS_KEY, SECRET_KEY);
    s3.create_bucket(BUCKET);
    let demo = Demo::start();
    demo.disable_events();
    demo.kill("recorder");
    let port = demo.listen_port("recorder");
    let storage = demo.cmdline_arg("recorder", "--storage-dir").expect("--storage-dir in recorder.cmdline");
    let url = s3.url();
    let log_path = demo.path("recorder-wrong-secret.log");
    let mut c = recorder(&demo, port, std::path::Path::new(&storage), &s3_flags(&url), &[("AWS_ACCESS_KEY_ID", ACCESS_KEY), ("AWS_SECRET_ACCESS_KEY", WRONG_SECRET)]);
    let mut child = support::Spawned(c.stdout(Stdio::null()).stderr(std::fs::File::create(&log_path).expect("log")).spawn().expect("recorder"));
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    // One line names the setting to fix, whether the recorder keeps running, not
    // ready, and says why (as it does now), or stops at start (as it did).
    let line = eventually(STARTUP_CHECK, || {
        let err = log();
        match err.lines().find(|l| l.contains(&format!("--s3-bucket \"{BUCKET}\"")) && l.contains("AWS_SECRET_ACCESS_KEY")) {
            Some(l) => Ok(l.to_string()),
            None => Err(format!("no line naming --s3-bucket and AWS_SECRET_ACCESS_KEY; exited: {:?}; stderr: {err}", child.0.try_wait())),
        }
    });
    eprintln!("the recorder said: {line}");
    assert!(!log().contains(WRONG_SECRET) && !log().contains(SECRET_KEY), "no secret printed: {}", log());

    match child.0.try_wait().expect("the recorder's status") {
        Some(status) => {
            assert!(!status.success(), "a recorder that cannot store exits non-zero: {}", log());
            assert_eq!(log().lines().last().map(str::to_string), Some(line.clone()), "the message is the last line: {}", log());
            assert!(!port_alive(port), "never listened");
        }
        None => {
            // Running but not ready: /readyz answers 503 and the reason.
            let (status, body) = eventually(STARTUP_CHECK, || {
                if port_alive(port) {
                    Ok(demo.recorder_get_at(port, Some("recorder-reader"), "/readyz"))
                } else {
                    Err(format!("neither exited nor listening: {}", log()))
                }
            });
            assert!(status == 503 && body.contains("AWS_SECRET_ACCESS_KEY"), "/readyz: {status} {body}");
            eprintln!("/readyz answered {status}: {body}");
            // A session goes to the spool (or is refused); uploads of it keep failing.
            let k = Kubectl::new(&demo, "kubeconfig", "1.32", Proto::WebSocket);
            let out = k.run_timeout(&["exec", "web-0", "--", "sh", "-c", "echo wrong-secret-$((6*7))"], None, SMALL_SESSION_TIMEOUT);
            let errors = || recorder_metric_at(&demo, port, "kubetape_recorder_s3_upload_errors_total");
            let after_session = errors();
            eventually(TWO_RETRIES, || match errors() {
                n if n >= after_session + 2 => Ok(()),
                n => Err(format!("{n} failed upload passes, {after_session} when the session ended ({})", out.describe())),
            });
        }
    }
    // The server holds nothing: no object, no upload in progress.
    assert_eq!(s3.keys(""), Vec::<String>::new(), "the bucket stays empty");
    let own: Vec<String> = std::fs::read_dir(&s3.data).expect("data dir").flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(own, vec![BUCKET.to_string()], "no metadata or multipart parts beside the bucket either");
}
