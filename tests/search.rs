//! Search over what the terminal showed, through the recorder's API
//! (`GET /v1/search`): real kubectl sessions through the demo's proxy print a word
//! drawn right half first with cursor moves, and a word written then erased. Search
//! finds each in its own session only, as the terminal showed it, though neither
//! stands whole in the raw recording; what only escape sequences hold matches nothing.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{eventually, Demo, Kubectl, OutputExt, Proto};

const STEP: Duration = Duration::from_secs(30);

fn search(demo: &Demo, q: &str) -> (u16, Value) {
    let (code, body) = demo.recorder_get(Some("recorder-reader"), &format!("/v1/search?q={q}"));
    (code, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// The one recording search finds for `q`, once the session's recording holds it.
fn found_once(demo: &Demo, q: &str) -> Value {
    eventually(STEP, || match search(demo, q) {
        (200, v) if v["items"].as_array().is_some_and(|i| i.len() == 1) => Ok(v["items"][0].clone()),
        other => Err(format!("search {q}: {other:?}")),
    })
}

#[test]
fn search_finds_words_as_the_terminal_showed_them() {
    let demo = Demo::start();
    let alice = Kubectl::new(&demo, "kubeconfig", "1.32", Proto::WebSocket);
    let hex = kubetape::net::random::hex(4);
    let (left, right) = (format!("dra{hex}"), format!("wn{hex}"));
    let drawn = format!("{left}{right}");
    // Right half at column 8, then the left half before it, in red.
    let out = alice.run(&["exec", "web-0", "--", "printf", &format!("\\033[2J\\033[2;{}H{right}\\033[2;1H\\033[31m{left}\\033[0m\\n", left.len() + 1)]);
    assert!(out.status.success(), "{}", out.describe());
    let erased = format!("gone{hex}");
    let out = alice.run(&["exec", "web-0", "--", "printf", &format!("{erased}{}\\033[Kls\\n", "\\b".repeat(erased.len()))]);
    assert!(out.status.success(), "{}", out.describe());

    let hit = found_once(&demo, &drawn);
    assert_eq!(hit["hits"][0]["text"], Value::String(drawn.clone()), "{hit}");
    assert!(hit["hits"][0]["at"].as_f64().is_some(), "{hit}");
    let id = hit["id"].as_str().expect("an id");
    let (code, cast) = demo.recorder_get(Some("recorder-reader"), &format!("/v1/recordings/{id}/cast"));
    assert_eq!(code, 200);
    assert!(cast.contains(&right) && !cast.contains(&drawn), "the raw recording does not hold the word whole");

    let gone = found_once(&demo, &erased);
    assert_ne!(gone["id"], hit["id"], "each word in its own session");
    assert_eq!(gone["hits"][0]["text"], Value::String(erased.clone()));

    // "31m" and "2J" stand only in escape sequences; words of both sessions at once in none.
    for q in ["31m", "2J", &format!("{drawn}+{erased}")] {
        assert_eq!(search(&demo, q), (200, serde_json::json!({"items": [], "unsearched": []})), "{q}");
    }
    assert_eq!(search(&demo, "").0, 400);
    // Readers only, as for the rest of the API.
    assert_eq!(demo.recorder_get(None, &format!("/v1/search?q={drawn}")).0, 401);
}
