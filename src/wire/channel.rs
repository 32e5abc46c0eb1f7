//! The Kubernetes remote-command stream protocol (`k8s.io/apimachinery`
//! `util/remotecommand`, KEP-4006), shared by SPDY and WebSocket. No I/O.
//!
//! ```text
//! SPDY:       one stream per channel, named by its `streamtype` header
//! WebSocket:  one binary message per write: | channel (8) | payload ... |
//!             v5 only: | 255 | channel to close |
//! error channel: one JSON metav1.Status, then the stream or connection ends
//! ```
//!
//! The Status values and the bytes they take live here, for the kubelet simulator and
//! for kubetape's own goodbye alike; framing them is `spdy`'s and `ws`'s.

use serde::Deserialize;

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
/// Carries a JSON `metav1.Status` when the command ends (v4 and later).
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;
/// v5 WebSocket only: the payload names a channel the sender will not write again.
pub const CLOSE: u8 = 255;

/// Remote-command subprotocols, newest first, as a kubelet prefers them.
pub const EXEC_PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"];
pub const PORT_FORWARD_PROTOCOL: &str = "portforward.k8s.io";

/// The channel a SPDY stream carries, from its `streamtype` header.
pub fn channel_for_stream_type(t: &str) -> Option<u8> {
    Some(match t {
        "stdin" => STDIN,
        "stdout" => STDOUT,
        "stderr" => STDERR,
        "error" => ERROR,
        "resize" => RESIZE,
        _ => return None,
    })
}

/// The first protocol the client offered that is in `supported`, in the client's
/// order, as kubelet's `httpstream.Handshake` (`negotiateProtocol`) and `wsstream` do.
pub fn negotiate<'a>(offered: &[&str], supported: &[&'a str]) -> Option<&'a str> {
    offered.iter().find_map(|o| supported.iter().copied().find(|s| s == o))
}

/// A terminal size message: `{"Width":120,"Height":40}` (kubectl's `TerminalSize` has
/// no JSON tags, so keys are capitalised; lower case is accepted too).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub struct TerminalSize {
    #[serde(alias = "Width")]
    pub width: u16,
    #[serde(alias = "Height")]
    pub height: u16,
}

/// Every complete size message in `data`; kubectl may send several in one write.
pub fn parse_resizes(data: &[u8]) -> Vec<TerminalSize> {
    take_resizes(&mut data.to_vec())
}

/// The complete size messages at the front of `buf`, removed from it; a partial one
/// (split across frames) stays for the next call.
pub fn take_resizes(buf: &mut Vec<u8>) -> Vec<TerminalSize> {
    let mut de = serde_json::Deserializer::from_slice(buf).into_iter::<TerminalSize>();
    let mut sizes = Vec::new();
    let mut used = 0;
    while let Some(Ok(size)) = de.next() {
        used = de.byte_offset();
        sizes.push(size);
    }
    buf.drain(..used);
    sizes
}

/// A WebSocket message's payload: the channel, then what is written on it.
pub fn ws_message(channel: u8, data: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(data.len() + 1);
    msg.push(channel);
    msg.extend_from_slice(data);
    msg
}

/// What `status` takes on the error channel: its JSON, as kubelet's `writeStatus`.
pub fn encode_status(status: &serde_json::Value) -> Vec<u8> {
    status.to_string().into_bytes()
}

/// The Status for a session that ends other than by its command's exit, as when
/// kubetape ends one: a Failure, code 500 (InternalError), saying why.
pub fn failure_status(message: &str) -> serde_json::Value {
    crate::wire::status::failure(500, message)
}

/// The Status a kubelet writes on the error channel when a command exits.
pub fn exit_status(code: i32, argv: &[String]) -> serde_json::Value {
    if code == 0 {
        return serde_json::json!({"metadata": {}, "status": "Success"});
    }
    serde_json::json!({
        "metadata": {},
        "status": "Failure",
        "message": format!(
            "command terminated with non-zero exit code: error executing command {argv:?}, exit code {code}"
        ),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}
    })
}

/// The exit code a Status on the error channel reports: 0 for Success, the
/// `ExitCode` cause for NonZeroExitCode, `None` for other failures.
pub fn exit_code(status: &[u8]) -> Option<i32> {
    let v: serde_json::Value = serde_json::from_slice(status).ok()?;
    match v.get("status")?.as_str()? {
        "Success" => Some(0),
        _ => v.pointer("/details/causes")?.as_array()?.iter().find(|c| c.get("reason").and_then(|r| r.as_str()) == Some("ExitCode"))?.get("message")?.as_str()?.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resizes_in_both_cases_and_batched() {
        let got = parse_resizes(br#"{"Width":120,"Height":40}{"width":80,"height":24}"#);
        assert_eq!(got, vec![TerminalSize { width: 120, height: 40 }, TerminalSize { width: 80, height: 24 }]);
        assert_eq!(parse_resizes(b"{\"Width\":"), vec![]);
    }

    #[test]
    fn exit_codes_round_trip() {
        for code in [0, 3, 127] {
            let s = serde_json::to_vec(&exit_status(code, &["sh".into()])).unwrap();
            assert_eq!(exit_code(&s), Some(code));
        }
        assert_eq!(exit_code(br#"{"status":"Failure","message":"x"}"#), None);
        assert_eq!(exit_code(&encode_status(&failure_status("recording failed"))), None, "a failure is no exit");
    }

    #[test]
    fn websocket_messages_lead_with_their_channel() {
        assert_eq!(ws_message(ERROR, b"{}"), b"\x03{}");
        assert_eq!(ws_message(STDOUT, b""), [STDOUT]);
    }

    #[test]
    fn negotiation_prefers_newest_supported() {
        assert_eq!(negotiate(&["v4.channel.k8s.io", "v5.channel.k8s.io"], EXEC_PROTOCOLS), Some("v4.channel.k8s.io"), "the client's order");
        assert_eq!(negotiate(&["v9"], EXEC_PROTOCOLS), None);
    }
}
