//! Output that is not UTF-8, recorded through real kubectl (1.27 over SPDY, 1.32 over
//! WebSocket): every player shows it (`asciinema cat`, the independent one, and
//! `kubetape play`) as `String::from_utf8_lossy` shows it, escape sequences intact,
//! and `kubetape play --raw` gives the stream back bit-exact. Every split of every byte
//! value is checked in `wire::asciicast`'s unit tests; here the bytes take the real
//! path: a container's pipe or terminal, the API server's frames, the tap, the recorder.

mod support;

use std::process::Command;
use std::time::Duration;

use kubetape::wire::asciicast;
use support::{asciinema_cat, Demo, Kubectl, OutputExt, Proto};

/// The two transports, each with the oldest kubectl that speaks it.
const TRANSPORTS: [(&str, Proto); 2] = [("1.27", Proto::Spdy), ("1.32", Proto::WebSocket)];

/// The text of a recording's events with `code`.
fn shown(cast: &str, code: &str) -> String {
    let rec = asciicast::parse(cast.as_bytes()).expect("the recording parses");
    rec.events.iter().filter(|e| e.code == code).map(|e| e.data.as_str()).collect()
}

/// `kubetape play` with `args` on recording `id`, which must succeed quietly.
fn play(demo: &Demo, id: &str, args: &[&str]) -> Vec<u8> {
    let out = Command::new(support::BIN).arg("play").args(args).arg("--file").arg(demo.cast_path(id)).output().expect("running kubetape play");
    assert!(out.status.success() && out.stderr.is_empty(), "kubetape play {args:?}: {}", out.describe());
    out.stdout
}

/// The recording whose command names `tag`, once it is complete.
fn recording(demo: &Demo, tag: &str) -> (String, String) {
    let (meta, cast) = demo.wait_recording(|m, _| m["session"]["command"].to_string().contains(tag));
    assert_eq!(meta["status"], "complete", "{meta}");
    (meta["id"].as_str().expect("an id").to_string(), cast)
}

#[test]
fn an_invalid_byte_no_longer_hides_a_terminals_output() {
    let demo = Demo::start();
    for (version, proto) in TRANSPORTS {
        let k = Kubectl::new(&demo, "kubeconfig", version, proto);
        let tag = format!("tty-{proto}");
        let script = format!(r#"printf "A\377B\n"; printf "\033[31mred\033[0m\n" # {tag}"#);
        let out = k.run_tty(&["exec", "-it", "web-0", "--", "sh", "-c", &script], "", Duration::from_secs(30));
        assert!(out.status.success(), "{}", out.describe());
        let (id, cast) = recording(&demo, &tag);
        // The terminal turns \n into \r\n.
        let sent: &[u8] = b"A\xffB\r\n\x1b[31mred\x1b[0m\r\n";
        assert_eq!(play(&demo, &id, &["--raw", "stdout"]), sent, "--raw stdout is bit-exact: {cast}");
        let lossy = String::from_utf8_lossy(sent);
        assert_eq!(lossy, "A\u{fffd}B\r\n\x1b[31mred\x1b[0m\r\n");
        assert_eq!(shown(&cast, "o"), lossy, "the o events: {cast}");
        assert_eq!(asciinema_cat(&cast), lossy, "what asciinema cat prints");
        assert_eq!(String::from_utf8_lossy(&play(&demo, &id, &[])), format!("{lossy}\r\n[kubetape: exit:0]\n"), "what kubetape play prints");
    }
}

#[test]
fn every_byte_value_through_real_kubectl_is_shown_and_recovered() {
    let demo = Demo::start();
    let every: Vec<u8> = (0..=255).collect();
    std::fs::write(demo.path("sim-data/default/web-0/every.bin"), &every).expect("writing every.bin");
    // A euro sign written in two parts (two frames, as the pause makes likely), and a
    // byte that is not UTF-8 on stderr.
    let mut want_out = every.clone();
    want_out.extend_from_slice("€\n".as_bytes());
    let want_err: &[u8] = b"\xfe\n";
    for (version, proto) in TRANSPORTS {
        let k = Kubectl::new(&demo, "kubeconfig", version, proto);
        let tag = format!("bytes-{proto}");
        let script = format!(r"cat every.bin; printf '\342\202'; sleep 0.3; printf '\254\n'; printf '\376\n' >&2 # {tag}");
        let out = k.run_timeout(&["exec", "web-0", "--", "sh", "-c", &script], None, Duration::from_secs(30));
        assert!(out.status.success(), "{}", out.describe());
        assert_eq!((out.stdout.as_slice(), out.stderr.as_slice()), (want_out.as_slice(), want_err), "what kubectl received");
        let (id, cast) = recording(&demo, &tag);
        assert_eq!(play(&demo, &id, &["--raw", "stdout"]), want_out, "--raw stdout: {cast}");
        assert_eq!(play(&demo, &id, &["--raw", "stderr"]), want_err, "--raw stderr: {cast}");
        let lossy = String::from_utf8_lossy(&want_out);
        assert!(lossy.ends_with("\u{fffd}€\n"), "a split sequence is whole again");
        assert_eq!(shown(&cast, "o"), lossy, "the o events: {cast}");
        assert_eq!(shown(&cast, "e"), "\u{fffd}\n", "the e events: {cast}");
        assert_eq!(asciinema_cat(&cast), lossy, "what asciinema cat prints");
    }
}
