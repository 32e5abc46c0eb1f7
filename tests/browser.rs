//! The recorder's web UI in a real browser (headless Chromium), against the demo: real
//! kubectl sessions through its proxy, the recorder asking the (simulated) cluster's
//! TokenReview and SubjectAccessReview, and viewers signing in with the tokens the
//! demo prints. alice may watch every namespace, bob none.
//!
//! Screenshots of each page go to `target/tmp/browser/` (`CARGO_TARGET_TMPDIR`).

mod support;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use support::browser::{Browser, PAGE_WAIT};
use support::{eventually, Demo, Kubectl, OutputExt, Proto};

const ENTER: &str = "\u{E007}";

fn shots() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser")
}

fn token(demo: &Demo, user: &str) -> String {
    std::fs::read_to_string(demo.path(&format!("{user}.token"))).expect("the demo's token file").trim().to_string()
}

fn ui(demo: &Demo) -> String {
    format!("https://localhost:{}/", demo.listen_port("recorder"))
}

fn sign_in(b: &Browser, demo: &Demo, user: &str) {
    b.go(&ui(demo));
    b.type_into("#token", &token(demo, user));
    b.keys(ENTER);
    b.wait_text("#who", "signed in", |t| t == user);
}

/// The one recording whose cast holds `text`, once the recorder has it whole.
fn recording_with(demo: &Demo, text: &str) -> Value {
    demo.wait_recording(|m, cast| m["status"] == "complete" && cast.contains(text)).0
}

/// What the page's fetch of `path` got: `[status, body]`.
fn page_fetch(b: &Browser, path: &str) -> (u64, String) {
    let v = b.async_script("const done = arguments[1]; fetch(arguments[0]).then(async r => done([r.status, await r.text()]));", json!([path]));
    (v[0].as_u64().unwrap_or(0), v[1].as_str().unwrap_or_default().to_string())
}

fn player_time(b: &Browser) -> f64 {
    b.async_script("const done = arguments[0]; Promise.resolve(kubetape.player.getCurrentTime()).then(done);", json!([])).as_f64().unwrap_or(-1.0)
}

#[test]
fn a_viewer_watches_sessions_in_the_browser() {
    let demo = Demo::start();
    let alice = Kubectl::new(&demo, "kubeconfig", "1.32", Proto::WebSocket);
    let hex = kubetape::net::random::hex(4);
    // Shown only once the screen is redrawn: the right half first, then the left.
    let (left, right) = (format!("redra{hex}"), format!("wn{hex}"));
    let word = format!("{left}{right}");
    let out = alice.run(&["exec", "web-0", "--", "printf", &format!("\\033[2J\\033[1;{}H{right}\\033[1;1H\\033[32m{left}\\033[0m\\n", left.len() + 1)]);
    assert!(out.status.success(), "{}", out.describe());
    let drawn = recording_with(&demo, &right);
    // Two lines three seconds apart, for the player's timing; and markup, which must stay text.
    let (first, second, markup, stderr) = (format!("first{hex}"), format!("second{hex}"), format!("<img id=xss{hex} src=x>"), format!("stderr{hex}"));
    let out = alice.run(&["exec", "web-0", "--", "sh", "-c", &format!("echo {first}; echo '{markup}'; echo {stderr} >&2; sleep 3; echo {second}")]);
    assert!(out.status.success(), "{}", out.describe());
    let timed = recording_with(&demo, &second);
    let timed_id = timed["id"].as_str().expect("id").to_string();

    // A recorded user asking for a 65535x65535 terminal, to make their session
    // unplayable: the player gets at most what `play` renders, and shows what followed.
    let hidden = format!("hidden{hex}");
    let cmdline = format!("stty cols 65535 rows 65535; {} exec -it web-0 -- sh -c 'sleep 0.5; echo {hidden}'", alice.bin.display());
    let out = support::wait_with_timeout(
        std::process::Command::new("script")
            .args(["-qec", &cmdline, "/dev/null"])
            .env("KUBECONFIG", demo.path("kubeconfig"))
            .env("HOME", std::env::temp_dir())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("script(1): install bsdutils"),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", out.describe());
    let huge = recording_with(&demo, &hidden);
    assert!(demo.recordings().iter().any(|(m, cast)| m["id"] == huge["id"] && cast.contains("65535x65535")), "the cast holds the huge resize");

    let b = Browser::start(&shots());
    // Signing in: a made-up token is refused; alice's opens a session held in a cookie
    // the page's scripts cannot read.
    b.go(&ui(&demo));
    b.type_into("#token", "made-up-token");
    b.keys(ENTER);
    b.wait_text("main", "a refused token", |t| t.contains("did not accept"));
    sign_in(&b, &demo, "alice");
    let cookies = b.cookies();
    let session = cookies.iter().find(|c| c["name"] == "__Host-kubetape").unwrap_or_else(|| panic!("no session cookie in {cookies:?}"));
    assert_eq!((&session["httpOnly"], &session["secure"], &session["sameSite"]), (&json!(true), &json!(true), &json!("Strict")), "{session}");
    assert!(session["expiry"].as_u64().is_some(), "the cookie expires: {session}");
    let cookie_value = session["value"].as_str().expect("value").to_string();
    assert!(!b.script("return document.cookie", json!([])).as_str().unwrap_or_default().contains("kubetape"), "HttpOnly: not in document.cookie");

    // The list, filtered.
    let list = b.wait_text("main", "the recordings list", |t| t.contains("web-0") && t.contains("of 3"));
    assert!(list.contains("alice"), "{list}");
    b.screenshot("list");
    b.type_into("input[name=user]", "nobody");
    b.keys(ENTER);
    b.wait_text("#count", "an empty filter", |t| t == "No recordings");
    b.type_into("input[name=user]", "alice");
    b.keys(ENTER);
    b.wait_text("#count", "alice's recordings", |t| t == "1–3 of 3");
    // The huge terminal plays, clamped, to its end.
    b.go(&format!("{}#/r/{}?t=30", ui(&demo), huge["id"].as_str().unwrap_or_default()));
    b.wait_text("#player .ap-term", "the session that asked for a huge terminal", |t| t.contains(&hidden));

    // Search, from the keyboard: the redrawn word is found whole, in its own session.
    b.go(&format!("{}#/search", ui(&demo)));
    b.type_into("input[name=q]", &word);
    b.keys(ENTER);
    let results = b.wait_text("main", "a search hit", |t| t.contains("1 recording"));
    assert!(results.contains(&word), "{results}");
    assert_eq!(b.script("return [...document.querySelectorAll('section.result')].map(s => s.dataset.id)", json!([])), json!([drawn["id"]]));
    b.screenshot("search");
    // A hit shows what the terminal showed: the recording it came from was viewed.
    let (_, views) = demo.recorder_get(Some("recorder-reader"), &format!("/v1/recordings/{}/views", drawn["id"].as_str().unwrap_or_default()));
    assert!(views.contains(r#""how":"search""#) && views.contains(r#""name":"alice""#), "{views}");
    // What the recorded user wrote stays text: the markup shows, and makes no element.
    b.go(&format!("{}#/search?q=xss{hex}", ui(&demo)));
    let shown = b.wait_text("main", "the markup's hit", |t| t.contains("1 recording"));
    assert!(shown.contains(&markup), "{shown}");
    assert_eq!(b.script(&format!("return document.getElementById('xss{hex}') === null"), json!([])), json!(true), "no element from a recording");

    // A hit opens the session at its time; the player shows the screen of that moment.
    b.go(&format!("{}#/search?q={second}", ui(&demo)));
    b.wait_text("main", "the second line's hit", |t| t.contains("1 recording"));
    b.click("a.hit");
    b.wait_text("#player .ap-term", "the player at the hit", |t| t.contains(&first) && t.contains(&second));
    let page = b.text("main");
    let protocol = timed["session"]["protocol"].as_str().unwrap_or_default().to_string();
    assert!(protocol.to_lowercase().contains("websocket"), "kubectl 1.32 over WebSocket: {protocol}");
    for field in ["alice", "web-0", "default", "exec", "complete", &protocol, &timed_id] {
        assert!(page.contains(field), "the session's context shows {field}: {page}");
    }
    // Seeking back to second 1: the first line, not yet the second.
    b.script("kubetape.player.seek(1.0)", json!([]));
    b.wait_text("#player .ap-term", "the screen at 1 s", |t| t.contains(&first) && t.contains(&stderr) && !t.contains(&second));
    b.screenshot("player-mid-session");
    // Play from there: time moves on, and the second line comes.
    b.click("#player .ap-playback-button");
    let before = player_time(&b);
    eventually(PAGE_WAIT, || match player_time(&b) {
        t if t > before => Ok(()),
        t => Err(format!("playing: time {t}, started at {before}")),
    });
    b.wait_text("#player .ap-term", "played to the second line", |t| t.contains(&second));
    // A new speed reloads the player where it was.
    b.script("const s = document.getElementById('speed'); s.value = '4'; s.dispatchEvent(new Event('change'));", json!([]));
    b.wait_text("#player .ap-term", "the player at 4x, where it was", |t| t.contains(&second));
    // The session's API requests (linked by session id) and who watched it.
    let requests = b.wait_text("main", "the session's API requests", |t| t.contains("pods/exec web-0"));
    assert!(requests.contains("alice"), "{requests}");
    b.wait_text("#views", "alice's view", |t| t.contains("alice") && t.contains("cast"));
    // The recorder has it too, for the reader certificate.
    let (code, views) = demo.recorder_get(Some("recorder-reader"), &format!("/v1/recordings/{timed_id}/views"));
    assert_eq!(code, 200, "{views}");
    let views: Value = serde_json::from_str(&views).expect("views JSON");
    assert!(views["items"].as_array().is_some_and(|v| v.iter().any(|v| v["by"] == json!({"kind": "user", "name": "alice", "uid": "alice-uid"}) && v["how"] == "cast")), "{views}");

    // Events, filtered, and exported as audit.k8s.io/v1.
    b.go(&format!("{}#/events", ui(&demo)));
    b.wait_text("main", "the events view", |t| t.contains("pods/exec"));
    b.screenshot("events");
    let export = b.script("return document.querySelector('a[download]').getAttribute('href')", json!([]));
    let (code, audit) = page_fetch(&b, export.as_str().expect("export link"));
    assert_eq!(code, 200);
    let first_event: Value = serde_json::from_str(audit.lines().next().expect("an audit line")).expect("JSON");
    assert_eq!((&first_event["apiVersion"], &first_event["kind"]), (&json!("audit.k8s.io/v1"), &json!("Event")));

    // A live session, followed while it prints.
    let ticking = format!("tick{hex}");
    let live_cmd = format!("i=0; while [ $i -lt 120 ]; do echo {ticking}-$i; sleep 0.25; i=$((i+1)); done");
    let mut runner = alice.command(&["exec", "web-0", "--", "sh", "-c", &live_cmd]);
    let mut running = runner.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().expect("kubectl exec");
    let live_id = demo.wait_running(&ticking);
    b.go(&format!("{}#/?status=recording", ui(&demo)));
    b.wait_text("main", "the live session listed", |t| t.contains("live"));
    b.click(&format!("tbody a[href='#/live/{live_id}']"));
    let seen = |t: &str| t.lines().filter_map(|l| l.trim().strip_prefix(&format!("{ticking}-"))?.parse::<u32>().ok()).max();
    let at = b.wait_text("#player .ap-term", "the live view", |t| seen(t).is_some());
    let then = seen(&at).unwrap_or(0);
    b.wait_text("#player .ap-term", "the live view moving on", |t| seen(t).is_some_and(|n| n >= then + 4));
    b.screenshot("live");
    let (code, meta) = demo.recorder_get(Some("recorder-reader"), &format!("/v1/recordings/{live_id}"));
    assert!(code == 200 && meta.contains(r#""status":"recording""#), "followed while still running: {meta}");
    let _ = running.kill();
    let _ = running.wait();

    // Theme and a phone-width screen.
    b.go(&ui(&demo));
    b.wait_text("main", "the list again", |t| t.contains("web-0"));
    b.click("#theme");
    b.screenshot("list-dark");
    b.set_size(390, 844);
    b.go(&format!("{}#/r/{timed_id}", ui(&demo)));
    b.wait_text("main", "the session on a phone", |t| t.contains(&timed_id));
    // Opened without a time: the screen as the session left it, before playing.
    b.wait_text("#player .ap-term", "the last screen", |t| t.contains(&first) && t.contains(&second));
    let overflow = b.script("return document.documentElement.scrollWidth - window.innerWidth", json!([]));
    assert!(overflow.as_i64().is_some_and(|o| o <= 0), "nothing wider than the screen: {overflow}");
    b.screenshot("session-phone");

    // Everything came from the recorder: the policy let nothing else in.
    let refused: Vec<String> = b.console().into_iter().filter(|l| l.contains("Content Security Policy") || l.contains("Refused")).collect();
    assert!(refused.is_empty(), "{refused:?}");

    // Signing out ends the session on the recorder, not only in the browser: the old
    // cookie, replayed, gets nothing.
    b.click("#signout");
    b.wait_text("main", "the sign-in form", |t| t.contains("Sign in"));
    let mut c = demo.recorder_client(None);
    c.send(format!("GET /v1/recordings HTTP/1.1\r\nHost: r\r\nCookie: __Host-kubetape={cookie_value}\r\n\r\n").as_bytes()).expect("request");
    let (code, body) = c.response().expect("response");
    assert_eq!(code, 401, "{body}");
    assert!(!body.contains("web-0"));
}

#[test]
fn a_viewer_without_rights_sees_nothing() {
    let demo = Demo::start();
    let alice = Kubectl::new(&demo, "kubeconfig", "1.32", Proto::Spdy);
    let secret = format!("private{}", kubetape::net::random::hex(4));
    let out = alice.run(&["exec", "web-0", "--", "echo", &secret]);
    assert!(out.status.success(), "{}", out.describe());
    let id = recording_with(&demo, &secret)["id"].as_str().expect("id").to_string();

    let b = Browser::start(&shots());
    // Without signing in: the page, but no data; no error yet, and no sign-out button.
    b.go(&ui(&demo));
    b.wait_text("main", "the sign-in form", |t| t.contains("Sign in"));
    assert_eq!(b.text("main .error"), "", "nothing has failed yet");
    assert_eq!(b.script("return getComputedStyle(document.getElementById('signout')).display", json!([])), json!("none"));
    for path in ["/v1/recordings", &format!("/v1/recordings/{id}"), &format!("/v1/recordings/{id}/cast"), &format!("/v1/search?q={secret}")] {
        let (code, body) = page_fetch(&b, path);
        assert_eq!(code, 401, "{path}: {body}");
        assert!(!body.contains(&secret) && !body.contains("web-0"), "{path}: {body}");
    }
    sign_in(&b, &demo, "bob");
    b.wait_text("#count", "bob's empty list", |t| t == "No recordings");
    b.go(&format!("{}#/r/{id}", ui(&demo)));
    let denied = b.wait_text("main", "a refused recording", |t| t.contains("Not allowed"));
    assert!(!denied.contains(&secret) && !denied.contains("web-0"), "{denied}");
    b.screenshot("denied");
    for path in [format!("/v1/recordings/{id}/cast"), format!("/v1/recordings/{id}/live"), format!("/v1/recordings/{id}/views")] {
        let (code, body) = page_fetch(&b, &path);
        assert_eq!(code, 403, "{path}: {body}");
        assert!(!body.contains(&secret), "{path}: {body}");
    }
    b.go(&format!("{}#/search?q={secret}", ui(&demo)));
    b.wait_text("#count", "bob's search", |t| t == "0 recordings");
    let (code, body) = page_fetch(&b, "/v1/events?limit=10");
    assert_eq!(code, 200);
    assert_eq!(serde_json::from_str::<Value>(&body).expect("JSON")["items"], json!([]), "no events of a namespace bob may not watch");
    // bob's attempt is not a view: nothing of the recording reached him.
    let (_, views) = demo.recorder_get(Some("recorder-reader"), &format!("/v1/recordings/{id}/views"));
    assert!(!views.contains("bob"), "{views}");
}
