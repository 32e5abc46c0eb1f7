//! Seeded mutation fuzzing, on stable Rust, of every `wire` parser, both recording
//! taps, the tar scanner and the port-forward counter. Each target takes raw bytes and checks more than "no panic": an incremental
//! parser fed the same bytes in random pieces says what it says when fed them whole
//! (frames, body bytes, tap events with adjacent output of one stream merged, the same
//! error); the chunked decoder never claims more bytes than it was given; and what an
//! encoder writes parses back to what it was given. Inputs are real-looking kubectl
//! traffic built below, mutated: bit flips, inserted, deleted and duplicated bytes,
//! splices, interesting values, truncation. There is no coverage feedback (stable
//! Rust has no instrumentation for it), so the corpus stays fixed and input `i` is a
//! pure function of the seed and `i`.
//!
//! `KUBETAPE_FUZZ_INPUTS` sets the number of inputs across all targets and
//! `KUBETAPE_FUZZ_SEED` the seed (a fixed default; printed either way). A failing
//! input is shrunk and kept under `tests/fuzz-seeds/<target>/<hash>`; `replay_seeds`
//! runs every kept input on every `cargo test`. `scripts/fuzz` runs 10^7 in release.
//! The only I/O is reading and writing that folder.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt::{self, Debug, Write as _};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, Once, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kubetape::kube::request_info::request_info;
use kubetape::recording::fail::FailMode;
use kubetape::recording::portforward::{self, Meter, Side};
use kubetape::recording::tap::{SpdyTap, Tap, TapEvent, WsTap};
use kubetape::recording::tar::{self, TarScan};
use kubetape::wire::asciicast::{self, Piece, Utf8Splitter};
use kubetape::wire::channel::{self, TerminalSize};
use kubetape::wire::http::{self, BodyLength, ChunkedDecoder};
use kubetape::wire::spdy::{self, Frame, HeaderDeflater, HeaderInflater, HeaderList, SpdyError};
use kubetape::wire::{base64, der, ws};

/// Inputs when `KUBETAPE_FUZZ_INPUTS` is unset: about 4 s of a debug build on an idle
/// core, as part of every `cargo test`.
const DEFAULT_INPUTS: u64 = 20_000;
/// The seed when `KUBETAPE_FUZZ_SEED` is unset ("kubetape" in ASCII).
const DEFAULT_SEED: u64 = 0x6b75_6265_7461_7065;
/// Mutations stop growing an input here: larger inputs cost time, not coverage.
const MAX_INPUT: usize = 128 * 1024;
/// One input in this many is random bytes rather than a mutated seed.
const RAW_ONE_IN: usize = 64;
/// Shrinking a failing input stops after this many tries, to bound the time it takes.
const SHRINK_RUNS: usize = 2_000;
/// Byte-by-byte feeding stops here: a call per byte makes a 64 KiB input slow.
const MAX_BYTEWISE: usize = 4096;
/// Growing-buffer parses tried per input for the HTTP head parsers.
const PREFIX_CUTS: usize = 8;
/// One input running this long is a hang: the slowest seeds take milliseconds.
const HANG_AFTER: Duration = Duration::from_secs(60);
/// Failure messages are cut here: a mismatch between two 64 KiB payloads is not read.
const MESSAGE_CAP: usize = 600;

#[test]
fn fuzz() {
    let inputs = env_u64("KUBETAPE_FUZZ_INPUTS").unwrap_or(DEFAULT_INPUTS);
    let seed = env_u64("KUBETAPE_FUZZ_SEED").unwrap_or(DEFAULT_SEED);
    println!("fuzz: {inputs} inputs, seed {seed} (KUBETAPE_FUZZ_SEED={seed} repeats this run)");
    let watchdog = Watchdog::start();
    let corpora: Vec<Vec<Vec<u8>>> = TARGETS.iter().map(|t| (t.seeds)()).collect();
    keep_ordinary_seeds(&corpora);
    // Failures already kept are counted, not kept again under another shrunk input.
    let mut failures: BTreeMap<String, Found> = BTreeMap::new();
    for (t, path, data) in kept_inputs() {
        if let Err(f) = run(&TARGETS[t], &data, &watchdog) {
            failures.insert(f.signature(&TARGETS[t]), Found { path, failure: f, hits: 0, new: false });
        }
    }
    let mut counts = vec![0u64; TARGETS.len()];
    let start = Instant::now();
    for i in 0..inputs {
        let t = (i % TARGETS.len() as u64) as usize;
        let mut rng = Rng::new(mix(seed ^ mix(i)));
        let data = mutate(&mut rng, &corpora[t]);
        counts[t] += 1;
        let Err(f) = run(&TARGETS[t], &data, &watchdog) else { continue };
        let found = failures.entry(f.signature(&TARGETS[t])).or_insert_with(|| {
            let small = shrink(&TARGETS[t], &data, &f.location, &watchdog);
            let path = keep(TARGETS[t].name, "", &small);
            let failure = run(&TARGETS[t], &small, &watchdog).err().unwrap_or(f);
            println!("fuzz: FAILURE {}: {}\nfuzz: kept {}", TARGETS[t].name, failure, rel(&path));
            Found { path, failure, hits: 0, new: true }
        });
        found.hits += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    println!("fuzz: inputs per target:");
    for (t, n) in TARGETS.iter().zip(&counts) {
        println!("fuzz:   {:<20} {n}", t.name);
    }
    let total: u64 = counts.iter().sum();
    println!("fuzz: total {total} inputs in {secs:.1} s ({:.0} inputs/s), seed {seed}", total as f64 / secs.max(1e-9));
    let report: Vec<String> = failures.values().map(|f| format!("{} ({} inputs, {}): {}", rel(&f.path), f.hits, if f.new { "new" } else { "kept before" }, f.failure)).collect();
    for line in &report {
        println!("fuzz: failing input {line}");
    }
    assert!(report.is_empty(), "{} failures:\n{}", report.len(), report.join("\n"));
}

#[test]
fn replay_seeds() {
    let watchdog = Watchdog::start();
    let kept = kept_inputs();
    for t in TARGETS {
        assert!(kept.iter().any(|(i, _, _)| TARGETS[*i].name == t.name), "no kept input for {}: run `cargo test --test fuzz`", t.name);
    }
    let failures: Vec<String> = kept.iter().filter_map(|(t, path, data)| run(&TARGETS[*t], data, &watchdog).err().map(|f| format!("{}: {f}", rel(path)))).collect();
    println!("replay: {} kept inputs, {} failing", kept.len(), failures.len());
    assert!(failures.is_empty(), "{} kept inputs fail:\n{}", failures.len(), failures.join("\n"));
}

// ---- targets ----

struct Target {
    name: &'static str,
    check: fn(&[u8]),
    seeds: fn() -> Vec<Vec<u8>>,
}

const TARGETS: &[Target] = &[
    Target { name: "http_request", check: http_request, seeds: request_seeds },
    Target { name: "http_response", check: http_response, seeds: response_seeds },
    Target { name: "chunked", check: chunked, seeds: chunked_seeds },
    Target { name: "chunked_round_trip", check: chunked_round_trip, seeds: param_seeds },
    Target { name: "query", check: query, seeds: query_seeds },
    Target { name: "spdy_frames", check: spdy_frames, seeds: spdy_seeds },
    Target { name: "spdy_round_trip", check: spdy_round_trip, seeds: param_seeds },
    Target { name: "ws_frames", check: ws_frames, seeds: ws_seeds },
    Target { name: "ws_round_trip", check: ws_round_trip, seeds: param_seeds },
    Target { name: "channel", check: channel_messages, seeds: channel_seeds },
    Target { name: "asciicast", check: asciicast_streams, seeds: asciicast_seeds },
    Target { name: "base64", check: base64_text, seeds: base64_seeds },
    Target { name: "der", check: der_subject, seeds: der_seeds },
    Target { name: "request_info", check: request_infos, seeds: request_info_seeds },
    Target { name: "spdy_tap_up", check: spdy_tap_up, seeds: spdy_up_seeds },
    Target { name: "spdy_tap_down", check: spdy_tap_down, seeds: spdy_down_seeds },
    Target { name: "ws_tap_up", check: ws_tap_up, seeds: ws_up_seeds },
    Target { name: "ws_tap_down", check: ws_tap_down, seeds: ws_down_seeds },
    Target { name: "tar", check: tar_listing, seeds: tar_seeds },
    Target { name: "port_forward", check: port_forward_counts, seeds: port_forward_seeds },
];

fn http_request(data: &[u8]) {
    let whole = http::parse_request(data);
    prefix_stable(data, &whole, http::parse_request, |r| matches!(r, Ok(None)));
    let Ok(Some((head, n))) = whole else { return };
    assert!(n <= data.len(), "request head of {n} bytes from {}", data.len());
    // The proxy forwards heads re-encoded: what it writes must parse back the same,
    // field by field, so that each kind of difference is a failure of its own.
    let enc = head.encode();
    let parsed = http::parse_request(&enc);
    let Ok(Some((again, used))) = parsed else { panic!("re-encoded request head {} does not parse: {parsed:?}", capped(&String::from_utf8_lossy(&enc))) };
    same(&used, &enc.len(), "re-encoded request head: bytes consumed");
    same(&again.method, &head.method, "re-encoded request head: method");
    same(&again.target, &head.target, "re-encoded request head: target");
    same(&again.headers, &head.headers, "re-encoded request head: headers");
    request_info(&head.method, head.path(), head.query());
    http::query_pairs(head.query());
    if let Ok(BodyLength::Chunked) = http::request_body(&head) {
        chunked(&data[n..]);
    }
}

fn http_response(data: &[u8]) {
    let whole = http::parse_response(data);
    prefix_stable(data, &whole, http::parse_response, |r| matches!(r, Ok(None)));
    let Ok(Some((head, n))) = whole else { return };
    assert!(n <= data.len(), "response head of {n} bytes from {}", data.len());
    let enc = head.encode();
    let parsed = http::parse_response(&enc);
    let Ok(Some((again, used))) = parsed else { panic!("re-encoded response head {} does not parse: {parsed:?}", capped(&String::from_utf8_lossy(&enc))) };
    same(&used, &enc.len(), "re-encoded response head: bytes consumed");
    same(&again.status, &head.status, "re-encoded response head: status");
    same(&again.reason, &head.reason, "re-encoded response head: reason");
    same(&again.headers, &head.headers, "re-encoded response head: headers");
    let _ = http::response_body("HEAD", &head);
    if let Ok(BodyLength::Chunked) = http::response_body("GET", &head) {
        chunked(&data[n..]);
    }
}

fn chunked(data: &[u8]) {
    let mut dec = ChunkedDecoder::default();
    let mut whole_out = Vec::new();
    let whole = dec.decode(data, &mut whole_out);
    if let Ok(n) = whole {
        assert!(n <= data.len(), "consumed {n} of {} bytes", data.len());
        assert!(dec.is_done() || n == data.len(), "stopped at {n} of {} bytes before the end of the body", data.len());
    }
    let whole_done = dec.is_done();
    let mut dec = ChunkedDecoder::default();
    let mut out = Vec::new();
    let mut used = Ok(0);
    for p in pieces(data, 1) {
        match dec.decode(p, &mut out) {
            Err(e) => {
                used = Err(e);
                break;
            }
            Ok(n) => {
                assert!(n <= p.len(), "consumed {n} of a {}-byte piece", p.len());
                used = used.map(|u| u + n);
                if dec.is_done() {
                    break;
                }
                assert_eq!(n, p.len(), "a piece is consumed whole until the body ends");
            }
        }
    }
    same(&used, &whole, "chunked body fed in pieces: bytes consumed, or the error");
    same(&out, &whole_out, "chunked body fed in pieces: body bytes");
    same(&dec.is_done(), &whole_done, "chunked body fed in pieces: finished");
}

fn chunked_round_trip(data: &[u8]) {
    // The input is the body; a PRNG seeded from it decides where chunks end.
    let parts = pieces_by(data, &mut Rng::new(hash(data)), 64);
    let full: Vec<&[u8]> = parts.iter().copied().filter(|p| !p.is_empty()).collect();
    let decode = |parts: &[&[u8]]| {
        let mut enc: Vec<u8> = parts.iter().flat_map(|p| http::encode_chunk(p)).collect();
        enc.extend_from_slice(http::LAST_CHUNK);
        let len = enc.len();
        enc.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let mut dec = ChunkedDecoder::default();
        let mut out = Vec::new();
        let used = dec.decode(&enc, &mut out);
        (used, out, dec.is_done(), len)
    };
    let (used, out, done, len) = decode(&full);
    same(&(used, out, done), &(Ok(len), data.to_vec(), true), "encode_chunk → ChunkedDecoder");
    if full.len() < parts.len() {
        let (used, out, done, len) = decode(&parts);
        same(&(used, out, done), &(Ok(len), data.to_vec(), true), "encode_chunk → ChunkedDecoder, with an empty chunk");
    }
}

fn query(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    same(&http::percent_decode(&text), &percent_decode_by_spec(&text), "percent_decode against %XX with two hex digits");
    let pairs = http::query_pairs(&text);
    assert!(pairs.len() <= text.split('&').count());
}

/// `+` is a space, `%` and two hex digits a byte, anything else itself (RFC 3986
/// section 2.1; the URL standard's application/x-www-form-urlencoded parser).
fn percent_decode_by_spec(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |j: usize| b.get(j).and_then(|c| (*c as char).to_digit(16));
        match (b[i], hex(i + 1), hex(i + 2)) {
            (b'+', _, _) => out.push(b' '),
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 2;
            }
            (c, _, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A frame with what it borrows copied: (type, first id or field, second, flags, bytes).
type OwnedFrame = (u32, u32, u32, u8, Vec<u8>);
/// Data frames get a type no control frame has (control types are 16 bits).
const DATA_KIND: u32 = 0x1_0000;

fn owned(f: &Frame<'_>) -> OwnedFrame {
    match *f {
        Frame::Data { stream_id, flags, payload } => (DATA_KIND, stream_id, 0, flags, payload.to_vec()),
        Frame::SynStream { stream_id, associated_id, flags, header_block } => (spdy::TYPE_SYN_STREAM.into(), stream_id, associated_id, flags, header_block.to_vec()),
        Frame::SynReply { stream_id, flags, header_block } => (spdy::TYPE_SYN_REPLY.into(), stream_id, 0, flags, header_block.to_vec()),
        Frame::Headers { stream_id, flags, header_block } => (spdy::TYPE_HEADERS.into(), stream_id, 0, flags, header_block.to_vec()),
        Frame::RstStream { stream_id, status } => (spdy::TYPE_RST_STREAM.into(), stream_id, status, 0, Vec::new()),
        Frame::Ping { id } => (spdy::TYPE_PING.into(), id, 0, 0, Vec::new()),
        Frame::GoAway { last_good_stream_id, status } => (spdy::TYPE_GOAWAY.into(), last_good_stream_id, status, 0, Vec::new()),
        Frame::WindowUpdate { stream_id, delta } => (spdy::TYPE_WINDOW_UPDATE.into(), stream_id, delta, 0, Vec::new()),
        Frame::OtherControl { kind, flags, payload } => (kind.into(), 0, 0, flags, payload.to_vec()),
    }
}

type SpdyStream = (Vec<(OwnedFrame, Option<Result<HeaderList, SpdyError>>)>, Result<usize, SpdyError>);

/// The frames in `pieces`, each header block inflated in order as one direction's
/// blocks are, and how the stream ended: the bytes left over, or the error.
fn spdy_stream(pieces: &[&[u8]]) -> SpdyStream {
    let mut inflater = HeaderInflater::default();
    let mut frames = Vec::new();
    let mut buf = Vec::new();
    for p in pieces {
        buf.extend_from_slice(p);
        let mut at = 0;
        loop {
            match spdy::parse_frame(&buf[at..]) {
                Ok(Some((f, n))) => {
                    assert!((spdy::FRAME_HEAD_LEN..=buf.len() - at).contains(&n), "frame of {n} bytes from {}", buf.len() - at);
                    let block = match f {
                        Frame::SynStream { header_block, .. } | Frame::SynReply { header_block, .. } | Frame::Headers { header_block, .. } => Some(header_block),
                        _ => None,
                    };
                    frames.push((owned(&f), block.map(|b| inflater.inflate(b))));
                    at += n;
                }
                Ok(None) => break,
                Err(e) => return (frames, Err(e)),
            }
        }
        buf.drain(..at);
    }
    (frames, Ok(buf.len()))
}

fn spdy_frames(data: &[u8]) {
    let (whole, whole_end) = spdy_stream(&[data]);
    let (frames, end) = spdy_stream(&pieces(data, 2));
    same(&end, &whole_end, "SPDY frames fed in pieces: bytes left, or the error");
    same(&frames, &whole, "SPDY frames fed in pieces: frames and header lists");
}

fn spdy_round_trip(data: &[u8]) {
    let mut r = Reader(data);
    let mut deflater = HeaderDeflater::default();
    let mut stream = Vec::new();
    let mut want: Vec<(OwnedFrame, Option<HeaderList>)> = Vec::new();
    while !r.0.is_empty() {
        let (op, id, flags) = (r.u8(), r.u32(), r.u8());
        let masked = id & 0x7fff_ffff;
        let (bytes, frame, headers) = match op % 6 {
            0 => {
                let n = r.u16() as usize;
                let payload = r.take(n).to_vec();
                (spdy::encode_data(id, flags, &payload), (DATA_KIND, masked, 0, flags, payload), None)
            }
            op @ (1 | 2) => {
                let list: Vec<(String, String)> = (0..r.u8() % 4).map(|_| (r.text(16), r.text(48))).collect();
                let pairs: Vec<(&str, &str)> = list.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
                let block = deflater.deflate(&pairs);
                let decoded: HeaderList = list.iter().map(|(n, v)| (n.to_ascii_lowercase(), v.split('\0').map(String::from).collect())).collect();
                if op == 1 {
                    let frame: OwnedFrame = (spdy::TYPE_SYN_STREAM.into(), masked, 0, flags, block.clone());
                    (spdy::encode_syn_stream(id, flags, &block), frame, Some(decoded))
                } else {
                    let frame: OwnedFrame = (spdy::TYPE_SYN_REPLY.into(), masked, 0, flags, block.clone());
                    (spdy::encode_syn_reply(id, flags, &block), frame, Some(decoded))
                }
            }
            3 => {
                let status = r.u32();
                (spdy::encode_rst_stream(id, status), (spdy::TYPE_RST_STREAM.into(), masked, status, 0, Vec::new()), None)
            }
            4 => (spdy::encode_ping(id), (spdy::TYPE_PING.into(), id, 0, 0, Vec::new()), None),
            _ => {
                let status = r.u32();
                (spdy::encode_goaway(id, status), (spdy::TYPE_GOAWAY.into(), masked, status, 0, Vec::new()), None)
            }
        };
        stream.extend(bytes);
        want.push((frame, headers));
    }
    let (frames, end) = spdy_stream(&[&stream]);
    let got: Vec<(OwnedFrame, Option<HeaderList>)> = frames.into_iter().map(|(f, h)| (f, h.map(|h| h.unwrap_or_default()))).collect();
    same(&(got, end), &(want, Ok(0)), "spdy::encode_* and HeaderDeflater → parse_frame and HeaderInflater");
}

type WsStream = (Vec<ws::Frame>, Result<usize, ws::WsError>);

/// The frames in `pieces`, each checked against its head, and how the stream ended.
fn ws_stream(pieces: &[&[u8]]) -> WsStream {
    let mut frames = Vec::new();
    let mut buf = Vec::new();
    for p in pieces {
        buf.extend_from_slice(p);
        let mut at = 0;
        loop {
            match ws::parse_frame(&buf[at..]) {
                Ok(Some((f, n))) => {
                    let parsed = ws::parse_head(&buf[at..]);
                    let Ok(Some(head)) = parsed else { panic!("parse_frame found a frame, parse_head {parsed:?}") };
                    same(&(head.fin, head.opcode, head.head_len as u64 + head.payload_len), &(f.fin, f.opcode, n as u64), "frame head against frame");
                    assert!(n <= buf.len() - at, "frame of {n} bytes from {}", buf.len() - at);
                    frames.push(f);
                    at += n;
                }
                Ok(None) => break,
                Err(e) => {
                    same(&ws::parse_head(&buf[at..]), &Err(e.clone()), "frame head against frame");
                    return (frames, Err(e));
                }
            }
        }
        buf.drain(..at);
    }
    (frames, Ok(buf.len()))
}

fn ws_frames(data: &[u8]) {
    let (whole, whole_end) = ws_stream(&[data]);
    let (frames, end) = ws_stream(&pieces(data, 3));
    same(&end, &whole_end, "WebSocket frames fed in pieces: bytes left, or the error");
    same(&frames, &whole, "WebSocket frames fed in pieces: frames");
}

/// Payload lengths at the edges of the 7-bit, 16-bit and 64-bit length forms.
const WS_EDGE_LENGTHS: &[usize] = &[125, 126, 127, 0xffff, 0x1_0000];

fn ws_round_trip(data: &[u8]) {
    let mut r = Reader(data);
    let mut stream = Vec::new();
    let mut want = Vec::new();
    while !r.0.is_empty() {
        let bits = r.u8();
        let opcode = [ws::OP_CONTINUATION, ws::OP_TEXT, ws::OP_BINARY, ws::OP_CLOSE, ws::OP_PING, ws::OP_PONG][bits as usize % 6];
        let control = opcode >= ws::OP_CLOSE;
        let fin = control || bits & 0x80 != 0;
        let mask = (bits & 0x40 != 0).then(|| r.u32().to_be_bytes());
        let len_byte = r.u8() as usize;
        let len = if control {
            len_byte % 126
        } else if bits & 0x20 != 0 {
            WS_EDGE_LENGTHS[len_byte % WS_EDGE_LENGTHS.len()]
        } else {
            len_byte
        };
        // The input's bytes, then a pattern when it runs out: edge lengths stay cheap.
        let mut payload = r.take(len).to_vec();
        payload.extend((payload.len()..len).map(|i| i as u8));
        stream.extend(ws::encode_frame(fin, opcode, mask, &payload));
        want.push(ws::Frame { fin, opcode, payload });
    }
    same(&ws_stream(&[&stream]), &(want, Ok(0)), "ws::encode_frame → parse_frame");
}

fn channel_messages(data: &[u8]) {
    channel::parse_resizes(data);
    channel::exit_code(data);
    // What kubectl writes on the resize stream, and what a kubelet writes on the error
    // stream, read back.
    let mut r = Reader(data);
    let sizes: Vec<TerminalSize> = (0..r.u8() % 4).map(|_| TerminalSize { width: r.u16(), height: r.u16() }).collect();
    let json: String = sizes.iter().map(|s| format!("{{\"Width\":{},\"Height\":{}}}", s.width, s.height)).collect();
    same(&channel::parse_resizes(json.as_bytes()), &sizes, "resize JSON → parse_resizes");
    let code = r.u32() as i32;
    let status = serde_json::to_vec(&channel::exit_status(code, &[r.text(16)])).expect("a Value always serializes");
    same(&channel::exit_code(&status), &Some(code), "exit_status → exit_code");
}

fn asciicast_streams(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = asciicast::recover_stream(&text, asciicast::STDOUT);
    let _ = asciicast::recover_stream(&text, asciicast::STDERR);
    let _ = asciicast::parse(data).map(|r| asciicast::items(&r.events).map(|i| asciicast::stream_bytes(&i, asciicast::STDOUT)));
    // The splitter keeps every byte in order at any split, its text events show what
    // `from_utf8_lossy` shows, and a recording of what it made gives the stream back
    // bit-exact.
    for stream in [asciicast::STDOUT, asciicast::STDERR] {
        let mut splitter = Utf8Splitter::default();
        let (mut kept, mut shown) = (Vec::new(), String::new());
        let mut cast = String::from("{\"version\": 2}\n");
        let mut add = |piece: Piece| {
            kept.extend_from_slice(piece.bytes());
            shown.push_str(piece.text());
            cast.push_str(&asciicast::output_lines(0.25, stream, &piece));
        };
        for p in pieces(data, 4 + u64::from(stream)) {
            splitter.push(p).into_iter().for_each(&mut add);
        }
        splitter.finish().into_iter().for_each(&mut add);
        same(&kept, &data.to_vec(), "Utf8Splitter pieces, concatenated");
        same(&shown, &text.to_string(), "Utf8Splitter text, concatenated, against from_utf8_lossy");
        same(&asciicast::recover_stream(&cast, stream), &Ok(data.to_vec()), "output_lines → recover_stream");
    }
}

/// Where kubeconfig files written by other tools wrap base64 (PEM's line length).
const BASE64_WRAP: usize = 64;

fn base64_text(data: &[u8]) {
    base64::decode(&String::from_utf8_lossy(data));
    let enc = base64::encode(data);
    same(&base64::decode(&enc), &Some(data.to_vec()), "base64 encode → decode");
    let wrapped: Vec<&str> = enc.as_bytes().chunks(BASE64_WRAP).map(|c| std::str::from_utf8(c).expect("base64 is ASCII")).collect();
    same(&base64::decode(&wrapped.join("\n")), &Some(data.to_vec()), "base64 encode, wrapped → decode");
}

fn der_subject(data: &[u8]) {
    der::subject_cn_and_orgs(data);
    let mut r = Reader(data);
    let cn = r.text(200);
    let orgs: Vec<String> = (0..r.u8() % 4).map(|_| r.text(40)).collect();
    same(&der::subject_cn_and_orgs(&certificate(&cn, &orgs)), &Some((cn, orgs)), "certificate subject → subject_cn_and_orgs");
}

fn request_infos(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (method, target) = text.split_once(' ').unwrap_or((&*text, ""));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let info = request_info(method, path, query);
    if !info.is_resource_request {
        same(&info.verb, &method.to_ascii_lowercase(), "a non-resource request's verb is its method");
    }
}

#[derive(Debug, PartialEq)]
struct TapRun {
    outcome: Result<(), String>,
    at_boundary: Option<bool>,
    events: Vec<TapEvent>,
}

/// Feeds `pieces` until an error, merging adjacent output of one stream.
fn tap_run(tap: &mut dyn Tap, pieces: &[&[u8]]) -> TapRun {
    let mut events = Vec::new();
    let mut outcome = Ok(());
    for p in pieces {
        if let Err(e) = tap.feed(p, &mut events) {
            outcome = Err(e.to_string());
            break;
        }
    }
    let mut merged: Vec<TapEvent> = Vec::new();
    for e in events {
        match (merged.last_mut(), e) {
            (Some(TapEvent::Output { stream: a, data: d }), TapEvent::Output { stream: b, data }) if *a == b => d.extend(data),
            (_, e) => merged.push(e),
        }
    }
    TapRun { events: merged, at_boundary: outcome.is_ok().then(|| tap.at_boundary()), outcome }
}

/// Whole against pieces for one tap; then what the tap would tell the client must
/// parse as whole frames of its protocol.
fn tap_split<T: Tap>(data: &[u8], salt: u64, make: impl Fn() -> T, frames_in: fn(&[u8]) -> Result<usize, String>) {
    let mut tap = make();
    let whole = tap_run(&mut tap, &[data]);
    let split = tap_run(&mut make(), &pieces(data, salt));
    same(&split.outcome, &whole.outcome, "tap fed in pieces: outcome");
    same(&split.events, &whole.events, "tap fed in pieces: events");
    same(&split.at_boundary, &whole.at_boundary, "tap fed in pieces: at a frame boundary");
    same(&frames_in(&tap.goodbye("recording failed: fuzz")), &Ok(0), "goodbye parses as whole frames, nothing left");
}

fn spdy_left(bytes: &[u8]) -> Result<usize, String> {
    spdy_stream(&[bytes]).1.map_err(|e| e.to_string())
}

fn ws_left(bytes: &[u8]) -> Result<usize, String> {
    ws_stream(&[bytes]).1.map_err(|e| e.to_string())
}

fn spdy_tap_up(data: &[u8]) {
    tap_split(data, 5, || SpdyTap::pair().0, spdy_left);
}

fn spdy_tap_down(data: &[u8]) {
    // The server's stream ids mean something only after the client's SYN_STREAMs.
    let make = || {
        let (mut up, down) = SpdyTap::pair();
        up.feed(&standard_spdy_session().0, &mut Vec::new()).expect("the standard client session parses");
        down
    };
    tap_split(data, 6, make, spdy_left);
}

fn ws_tap_up(data: &[u8]) {
    tap_split(data, 7, || WsTap::pair().0, ws_left);
}

fn ws_tap_down(data: &[u8]) {
    tap_split(data, 8, || WsTap::pair().1, ws_left);
}

/// The tar scanner lists the same files however the stream is split.
fn tar_listing(data: &[u8]) {
    let scan = |pieces: &[&[u8]]| {
        let mut s = TarScan::default();
        pieces.iter().for_each(|p| s.feed(p));
        s.listing().clone()
    };
    same(&scan(&pieces(data, 9)), &scan(&[data]), "tar scan in pieces");
}

/// The port-forward counter counts the same however the stream is split. The first
/// byte picks the framing; the rest is the client's stream, then (after the first
/// `0xff 0xfe` pair, if any) the server's.
fn port_forward_counts(data: &[u8]) {
    let Some((&framing, rest)) = data.split_first() else { return };
    let (upgrade, subprotocol) = [("SPDY/3.1", "portforward.k8s.io"), ("websocket", portforward::SPDY_OVER_WEBSOCKET), ("websocket", "v4.channel.k8s.io")][framing as usize % 3];
    let cut = rest.windows(2).position(|w| w == [0xff, 0xfe]).unwrap_or(rest.len());
    let (up, down) = (&rest[..cut], rest.get(cut + 2..).unwrap_or_default());
    let count = |split: bool| {
        let m = Meter::new(upgrade, subprotocol, "ports=8080,9090", FailMode::Open);
        for (side, bytes, salt) in [(Side::ToPod, up, 10), (Side::FromPod, down, 11)] {
            let parts = if split { pieces(bytes, salt) } else { vec![bytes] };
            parts.iter().for_each(|p| same(&m.feed(side, p), &Ok(()), "fail-open counting never ends the forward"));
        }
        let r = m.report();
        (r.ports, r.truncated, r.reason)
    };
    same(&count(true), &count(false), "port-forward counts in pieces");
}

// ---- seeds: real-looking kubectl traffic ----

const EXEC_QUERY: &str = "command=sh&command=-c&command=echo%20hi%3B%20ls%20-l&container=web&stdin=true&stdout=true&stderr=true&tty=false";

fn request_seeds() -> Vec<Vec<u8>> {
    let host = "Host: 127.0.0.1:6443\r\nUser-Agent: kubectl/v1.33.0 (linux/amd64) kubernetes/abcdef0\r\nAuthorization: Bearer kt-0123456789\r\n";
    let mut seeds: Vec<Vec<u8>> = vec![
        format!("POST /api/v1/namespaces/default/pods/web-0/exec?{EXEC_QUERY} HTTP/1.1\r\n{host}Content-Length: 0\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v5.channel.k8s.io\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\nX-Stream-Protocol-Version: channel.k8s.io\r\n\r\n"),
        format!("GET /api/v1/namespaces/default/pods/web-0/exec?command=sh&stdin=true&stdout=true&tty=true HTTP/1.1\r\n{host}Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: v5.channel.k8s.io,v4.channel.k8s.io\r\n\r\n"),
        format!("POST /api/v1/namespaces/kube-system/pods/coredns-5d78c9869d-abcde/attach?container=coredns&stdin=true&stdout=true&tty=true HTTP/1.1\r\n{host}Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n"),
        format!("GET /api/v1/namespaces/default/pods?watch=true&resourceVersion=5&allowWatchBookmarks=true HTTP/1.1\r\n{host}Accept: application/json\r\n\r\n"),
        format!("GET /apis/apps/v1/namespaces/prod/deployments/api/scale HTTP/1.1\r\n{host}Accept: application/json;as=Table;v=v1;g=meta.k8s.io\r\n\r\n"),
        format!("PATCH /api/v1/namespaces/default/configmaps/c?fieldManager=kubectl-edit HTTP/1.1\r\n{host}Content-Type: application/strategic-merge-patch+json\r\nContent-Length: 27\r\n\r\n{{\"data\":{{\"key\":\"value\"}}}}"),
        format!("POST /api/v1/namespaces/default/configmaps?fieldManager=kubectl-client-side-apply HTTP/1.1\r\n{host}Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n1c\r\n{{\"kind\":\"ConfigMap\",\"data\":{{}}\r\n1\r\n}}\r\n0\r\n\r\n"),
        "GET /version HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".into(),
        "POST /api/v1/namespaces HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(),
        "GET /api HTTP/1.1\r\nHost: x\r\nX-A: b\r\n c\r\n\r\n".into(),
        "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n".into(),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect();
    seeds.push(b"GET /api/v1/namespaces/caf\xc3\xa9/pods HTTP/1.1\r\nHost: x\r\nX-Bin: \x80\xff\r\n\r\n".to_vec());
    seeds
}

fn response_seeds() -> Vec<Vec<u8>> {
    let status = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"pods \"web-0\" is forbidden","reason":"Forbidden","code":403}"#;
    vec![
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n".into(),
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: v5.channel.k8s.io\r\n\r\n".into(),
        format!("HTTP/1.1 403 Forbidden\r\nAudit-Id: 8d2c\r\nCache-Control: no-cache, private\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\nContent-Length: {}\r\n\r\n{status}", status.len()),
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n2e\r\n{\"type\":\"ADDED\",\"object\":{\"kind\":\"Pod\",\"a\":1}}\n\r\n0\r\n\r\n".into(),
        "HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n".into(),
        "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n".into(),
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nlog line\n".into(),
        "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}".into(),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect()
}

fn chunked_seeds() -> Vec<Vec<u8>> {
    vec![
        b"5;name=val\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT".to_vec(),
        b"2e\r\n{\"type\":\"ADDED\",\"object\":{\"kind\":\"Pod\",\"a\":1}}\n\r\n30\r\n{\"type\":\"MODIFIED\",\"object\":{\"kind\":\"Pod\",\"a\":2}}\n\r\n0\r\n\r\n".to_vec(),
        b"000001 ; ext\r\nx\r\nfFfF\r\n".to_vec(),
        b"0\r\n\r\n".to_vec(),
        b"4\r\nwiki\r\n0\r\nExpires: never\r\nX-A: b\r\n\r\nHTTP/1.1 200 OK\r\n".to_vec(),
    ]
}

/// Seeds for the round-trip targets, whose input is parameters and payload.
fn param_seeds() -> Vec<Vec<u8>> {
    let mut counting: Vec<u8> = (0..=255).collect();
    counting.extend((0..=255).rev());
    vec![
        b"hello world".to_vec(),
        counting,
        "h\u{e9}llo \u{2192} w\u{f6}rld \u{1f600}\n\0\r\n".as_bytes().to_vec(),
        vec![0; 40],
        vec![0xff; 40],
        b"\x01\x00\x00\x00\x05\x00\x02streamtype\x00stdout\x02\x7f\xff\xff\xff\x01\x00\x10abcdefghijklmnop".to_vec(),
    ]
}

fn query_seeds() -> Vec<Vec<u8>> {
    [EXEC_QUERY, "watch=true&resourceVersion=5", "a+b=%e2%82%ac&x&=y&&", "%", "%4", "%41%4g%zz%%41", "labelSelector=app%3Dweb%2Ctier%21%3Dfront"]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect()
}

/// A kubectl exec over SPDY/3.1, as kubectl and a kubelet write it: (client to
/// server, server to client).
fn spdy_session(tty: bool, exit: i32) -> (Vec<u8>, Vec<u8>) {
    let mut client_z = HeaderDeflater::default();
    let mut server_z = HeaderDeflater::default();
    let (mut up, mut down) = (Vec::new(), Vec::new());
    let streams: &[(u32, &str)] =
        if tty { &[(1, "error"), (3, "stdin"), (5, "stdout"), (7, "resize")] } else { &[(1, "error"), (3, "stdin"), (5, "stdout"), (7, "stderr"), (9, "resize")] };
    for &(id, t) in streams {
        let block = client_z.deflate(&[("streamtype", t), ("x-kubernetes-pf", "")]);
        up.extend(spdy::encode_syn_stream(id, 0, &block));
        down.extend(spdy::encode_syn_reply(id, 0, &server_z.deflate(&[])));
    }
    let resize = if tty { 7 } else { 9 };
    up.extend(spdy::encode_data(3, 0, b"ls -l\n"));
    up.extend(spdy::encode_data(resize, 0, br#"{"Width":120,"Height":40}{"Width":8"#));
    up.extend(spdy::encode_data(resize, 0, br#"0,"Height":24}"#));
    up.extend(spdy::encode_ping(1));
    up.extend(spdy::encode_data(3, spdy::FLAG_FIN, &[]));
    down.extend(spdy::encode_ping(1));
    down.extend(spdy::encode_data(5, 0, b"h\xc3\xa9llo \xe2"));
    down.extend(spdy::encode_data(5, 0, b"\x82\xac world\r\n"));
    if !tty {
        down.extend(spdy::encode_data(7, 0, b"ls: cannot access 'x': No such file or directory\n"));
    }
    let status = serde_json::to_vec(&channel::exit_status(exit, &["sh".into()])).expect("a Value always serializes");
    let (a, b) = status.split_at(status.len() / 2);
    down.extend(spdy::encode_data(1, 0, a));
    down.extend(spdy::encode_data(1, 0, b));
    down.extend(spdy::encode_data(1, spdy::FLAG_FIN, &[]));
    down.extend(spdy::encode_data(5, spdy::FLAG_FIN, &[]));
    down.extend(spdy::encode_goaway(7, 0));
    (up, down)
}

/// The client side the down-tap target starts from (stream ids 1 to 9 named).
fn standard_spdy_session() -> &'static (Vec<u8>, Vec<u8>) {
    static SESSION: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    SESSION.get_or_init(|| spdy_session(false, 3))
}

/// Control frames with no encoder in `spdy`: SETTINGS, WINDOW_UPDATE, and HEADERS.
fn spdy_other_frames() -> Vec<u8> {
    let mut out = vec![0x80, 3, 0, 4, 0, 0, 0, 12, 0, 0, 0, 1, 0, 0, 0, 7, 0, 0, 0, 100];
    out.extend([0x80, 3, 0, 9, 0, 0, 0, 8, 0, 0, 0, 5, 0, 1, 0, 0]);
    let block = HeaderDeflater::default().deflate(&[(":status", "200"), ("set", "a\0b")]);
    out.extend([0x80, 3, 0, 8, 0]);
    out.extend(&((4 + block.len()) as u32).to_be_bytes()[1..]);
    out.extend(5u32.to_be_bytes());
    out.extend(block);
    out.extend(spdy::encode_rst_stream(5, 5));
    out
}

fn spdy_seeds() -> Vec<Vec<u8>> {
    let (up, down) = spdy_session(false, 3);
    let (tty_up, tty_down) = spdy_session(true, 0);
    vec![up, down, tty_up, tty_down, spdy_other_frames()]
}

fn spdy_up_seeds() -> Vec<Vec<u8>> {
    vec![spdy_session(false, 3).0, spdy_session(true, 0).0]
}

fn spdy_down_seeds() -> Vec<Vec<u8>> {
    let mut failure = spdy_session(false, 0).1;
    failure.extend(spdy::encode_data(1, spdy::FLAG_FIN, br#"{"status":"Failure","message":"container not found"}"#));
    let mut unknown = spdy::encode_data(11, 0, b"no such stream");
    unknown.extend(spdy::encode_data(5, 0, &[]));
    unknown.extend(spdy_other_frames());
    vec![spdy_session(false, 3).1, spdy_session(false, 0).1, failure, unknown]
}

/// A kubectl exec over WebSocket (v5.channel.k8s.io): (client to server, masked;
/// server to client), one with a 64-bit length.
fn ws_session(big: bool) -> (Vec<u8>, Vec<u8>) {
    let mask = Some([7, 1, 9, 3]);
    let mut up = ws::encode_frame(true, ws::OP_BINARY, mask, b"\x00ls -l\n");
    up.extend(ws::encode_frame(true, ws::OP_BINARY, mask, b"\x04{\"Width\":80,\"Height\":24}"));
    up.extend(ws::encode_frame(false, ws::OP_BINARY, Some([0xff, 0, 0x80, 0x7f]), b"\x04{\"Width\":100,"));
    up.extend(ws::encode_frame(true, ws::OP_CONTINUATION, mask, b"\"Height\":30}"));
    up.extend(ws::encode_frame(true, ws::OP_PONG, mask, b"p"));
    up.extend(ws::encode_frame(true, ws::OP_BINARY, mask, &[channel::CLOSE, channel::STDIN]));
    let mut down = ws::encode_frame(true, ws::OP_BINARY, None, b"\x01");
    down.extend(ws::encode_frame(false, ws::OP_BINARY, None, b"\x01h\xc3\xa9llo \xe2"));
    down.extend(ws::encode_frame(true, ws::OP_PING, None, b"p"));
    // Past 0xffff bytes the length takes its 64-bit form.
    let middle = if big { vec![b'x'; 0x1_0000 + 100] } else { vec![b'y'; 300] };
    down.extend(ws::encode_frame(false, ws::OP_CONTINUATION, None, &middle));
    down.extend(ws::encode_frame(true, ws::OP_CONTINUATION, None, b"\x82\xac\n"));
    down.extend(ws::encode_frame(true, ws::OP_BINARY, None, b"\x02err\n"));
    let mut status = vec![channel::ERROR];
    status.extend(serde_json::to_vec(&channel::exit_status(2, &["ls".into()])).expect("a Value always serializes"));
    down.extend(ws::encode_frame(true, ws::OP_BINARY, None, &status));
    down.extend(ws::encode_frame(true, ws::OP_CLOSE, None, &ws::close_payload(1000, "")));
    (up, down)
}

fn ws_seeds() -> Vec<Vec<u8>> {
    let (up, down) = ws_session(false);
    vec![up, down, ws_session(true).1, ws::encode_frame(true, ws::OP_TEXT, Some([1, 2, 3, 4]), b"AWhlbGxv")]
}

fn ws_up_seeds() -> Vec<Vec<u8>> {
    vec![ws_session(false).0]
}

fn ws_down_seeds() -> Vec<Vec<u8>> {
    let mut failure = ws::encode_frame(true, ws::OP_BINARY, None, b"\x03");
    failure.extend(ws::encode_frame(true, ws::OP_BINARY, None, br#"{"status":"Failure","message":"x"}"#));
    vec![ws_session(false).1, ws_session(true).1, failure]
}

fn tar_seeds() -> Vec<Vec<u8>> {
    let pax = "27 path=pax/named/file.bin\n12 size=700\n";
    vec![
        [tar::encode_entry("dir/", b"", b'5'), tar::encode_entry("dir/a.txt", b"hello", b'0'), tar::END.to_vec()].concat(),
        [tar::encode_entry("././@LongLink", "long/".repeat(40).as_bytes(), b'L'), tar::encode_entry("long", &[1; 600], b'0'), tar::END.to_vec()].concat(),
        [tar::encode_entry("PaxHeaders/x", pax.as_bytes(), b'x'), tar::encode_header("p", 99, b'0', Some("pre")), vec![2; 1024], tar::END.to_vec()].concat(),
    ]
}

fn port_forward_seeds() -> Vec<Vec<u8>> {
    let (mut cz, mut sz) = (HeaderDeflater::default(), HeaderDeflater::default());
    let (mut up, mut down) = (Vec::new(), Vec::new());
    for (id, t) in [(1, "error"), (3, "data")] {
        up.extend(spdy::encode_syn_stream(id, 0, &cz.deflate(&[("streamtype", t), ("port", "8080"), ("requestid", "0")])));
        down.extend(spdy::encode_syn_reply(id, 0, &sz.deflate(&[])));
    }
    up.extend(spdy::encode_data(3, 0, b"GET / HTTP/1.1\r\n\r\n"));
    down.extend(spdy::encode_data(3, spdy::FLAG_FIN, b"HTTP/1.1 200 OK\r\n\r\n"));
    let ws = |bytes: &[u8], mask| ws::encode_frame(true, ws::OP_BINARY, mask, bytes);
    let joined = |framing: u8, up: &[u8], down: &[u8]| [&[framing][..], up, &[0xff, 0xfe], down].concat();
    let mask = Some([3, 1, 4, 1]);
    vec![
        joined(0, &up, &down),
        joined(1, &ws(&up, mask), &ws(&down, None)),
        joined(2, &[ws(b"\x00hello", mask), ws(b"\x02x", mask)].concat(), &[ws(b"\x00\x90\x1f", None), ws(b"\x00data", None)].concat()),
    ]
}

fn channel_seeds() -> Vec<Vec<u8>> {
    let exit = serde_json::to_vec(&channel::exit_status(137, &["sleep".into(), "9".into()])).expect("a Value always serializes");
    vec![
        br#"{"Width":120,"Height":40}{"width":80,"height":24}"#.to_vec(),
        br#"{"Width":65535,"Height":0} {"Width":1"#.to_vec(),
        exit,
        br#"{"metadata":{},"status":"Success"}"#.to_vec(),
        br#"{"status":"Failure","reason":"NonZeroExitCode","details":{"causes":[{"reason":"Other"},{"reason":"ExitCode","message":"-1"}]}}"#.to_vec(),
    ]
}

fn asciicast_seeds() -> Vec<Vec<u8>> {
    let cast = concat!(
        "{\"version\": 2, \"width\": 80, \"height\": 24, \"timestamp\": 1764110000}\n",
        "[0.012345, \"o\", \"h\\u00e9llo \\r\\n\"]\n",
        "[0.013000, \"e\", \"oops\"]\n",
        "[0.020000, \"b\", \"stdout:/w==\"]\n",
        "[0.021000, \"b\", \"stderr:AAEC\"]\n",
        "[0.500000, \"r\", \"120x40\"]\n",
        "\n",
        "[3.100000, \"m\", \"exit:3\"]\n",
    );
    let mut binary = "h\u{e9}llo \u{2192} w\u{f6}rld \u{2713} \u{1f600}\n".as_bytes().to_vec();
    binary.extend_from_slice(&[0xff, 0xfe, 0x00, 0xc3]);
    binary.extend_from_slice("\u{e9} end".as_bytes());
    binary.extend_from_slice(&[0xf0, 0x9f]);
    vec![cast.as_bytes().to_vec(), binary]
}

fn base64_seeds() -> Vec<Vec<u8>> {
    vec![b"Zm9vYmFy".to_vec(), b"Zg==".to_vec(), b"LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0t\nTUlJQg==\n".to_vec(), b"Zm9v!".to_vec()]
}

fn der_seeds() -> Vec<Vec<u8>> {
    let long = "x".repeat(300);
    vec![certificate("alice", &["sre".into(), "system:masters".into()]), certificate(&long, &[]), b"\x30\x85\0\0\0\0\0".to_vec()]
}

const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
const OID_O: &[u8] = &[0x55, 0x04, 0x0a];
const OID_SHA256_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b];

/// One DER TLV, with the long length form past 127 bytes.
fn tlv(tag: u8, contents: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    if contents.len() < 0x80 {
        out.push(contents.len() as u8);
    } else {
        let len = contents.len().to_be_bytes();
        let skip = len.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (len.len() - skip) as u8);
        out.extend_from_slice(&len[skip..]);
    }
    out.extend_from_slice(contents);
    out
}

/// An X.509 certificate shaped as RFC 5280 section 4.1 has it, with this subject.
fn certificate(cn: &str, orgs: &[String]) -> Vec<u8> {
    let name = |attrs: &[(&[u8], &str)]| {
        let rdns: Vec<u8> = attrs.iter().flat_map(|(oid, v)| tlv(0x31, &tlv(0x30, &[tlv(0x06, oid), tlv(0x0c, v.as_bytes())].concat()))).collect();
        tlv(0x30, &rdns)
    };
    let mut subject: Vec<(&[u8], &str)> = vec![(OID_CN, cn)];
    subject.extend(orgs.iter().map(|o| (OID_O, o.as_str())));
    let algorithm = tlv(0x30, &tlv(0x06, OID_SHA256_RSA));
    let tbs = [
        tlv(0xa0, &tlv(0x02, &[2])),
        tlv(0x02, &[0x01, 0x23]),
        algorithm.clone(),
        name(&[(OID_CN, "kubernetes")]),
        tlv(0x30, &[tlv(0x17, b"250101000000Z"), tlv(0x17, b"350101000000Z")].concat()),
        name(&subject),
        tlv(0x30, &[algorithm.clone(), tlv(0x03, &[0, 4, 1])].concat()),
    ]
    .concat();
    tlv(0x30, &[tlv(0x30, &tbs), algorithm, tlv(0x03, &[0, 0xde, 0xad])].concat())
}

fn request_info_seeds() -> Vec<Vec<u8>> {
    [
        "GET /api/v1/namespaces/default/pods?watch=true&resourceVersion=5",
        "GET /api/v1/watch/namespaces/default/pods",
        "POST /api/v1/namespaces/default/pods/web-0/exec?command=sh",
        "PUT /api/v1/namespaces/gone/finalize",
        "GET /apis/apps/v1/namespaces/ns/deployments/d/scale",
        "DELETE /api/v1/namespaces/default/pods",
        "GET /openapi/v3",
        "PROPFIND //api//v1//",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

// ---- the engine ----

/// splitmix64: tiny, fast, and good enough to choose mutations.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform enough in `0..n`; 0 when `n` is 0.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

/// The splitmix64 finalizer: spreads `i` and `i + 1` far apart.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// FNV-1a: names kept inputs and seeds the cuts of an input, so a replay cuts it the same way.
fn hash(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

const INTERESTING_BYTES: &[u8] = &[0, 1, 0x7f, 0x80, 0xff, b'\r', b'\n', b':', b' ', b'\t', b'0', b'9', b'a', b'f', b';', b'%', b'+', b'?', b'&', b'=', b'{', b'"'];
const INTERESTING_INTS: &[u64] = &[
    0,
    1,
    0x7e,
    0x7f,
    0x80,
    0xff,
    0x100,
    125,
    126,
    127,
    0x7fff,
    0x8000,
    0xffff,
    0x1_0000,
    0xff_ffff,
    0x100_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    1 << 32,
    1 << 63,
    u64::MAX,
    64 << 20,
    (64 << 20) + 1,
];
const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\r\n\r\n",
    b": ",
    b"chunked",
    b"Transfer-Encoding: chunked\r\n",
    b"Content-Length: 0\r\n",
    b"Content-Length: 18446744073709551616\r\n",
    b"Connection: Upgrade\r\n",
    b"0\r\n\r\n",
    b"ffffffffffffffff",
    b"HTTP/1.1",
    b"{\"Width\":",
    b"\"Height\":",
    b"}",
    b"{\"status\":\"Success\"}",
    b"\"ExitCode\"",
    b"%",
    b"+",
    b"=",
    b"&",
    b"/namespaces/",
    b"\xc3\xa9",
    b"\xf0\x9f",
    b"[0.1, \"b\", \"stdout:",
    b"==",
];

/// One input from the corpus: a seed with stacked mutations, now and then raw bytes.
fn mutate(rng: &mut Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    if rng.chance(RAW_ONE_IN) {
        let n = rng.below(512);
        return (0..n).map(|_| rng.next() as u8).collect();
    }
    let mut d = corpus[rng.below(corpus.len())].clone();
    for _ in 0..1 << rng.below(4) {
        let at = rng.below(d.len() + 1);
        let end = |rng: &mut Rng, d: &Vec<u8>| {
            let len = if rng.chance(8) { rng.below(d.len() / 2 + 1) } else { 1 + rng.below(16) };
            (at + len).min(d.len())
        };
        match rng.below(11) {
            0 => {
                if let Some(b) = d.get_mut(at) {
                    *b ^= 1 << rng.below(8);
                }
            }
            1 => {
                if let Some(b) = d.get_mut(at) {
                    *b = rng.next() as u8;
                }
            }
            2 => {
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                d.splice(at..at, bytes);
            }
            3 => {
                let e = end(rng, &d);
                d.drain(at..e);
            }
            4 => {
                let e = end(rng, &d);
                let copy = d[at..e].to_vec();
                let to = rng.below(d.len() + 1);
                d.splice(to..to, copy);
            }
            5 => {
                let other = &corpus[rng.below(corpus.len())];
                let from = rng.below(other.len() + 1);
                if rng.chance(2) {
                    d.truncate(at);
                    d.extend_from_slice(&other[from..]);
                } else {
                    let to = (from + 1 + rng.below(64)).min(other.len());
                    d.splice(at..at, other[from..to].iter().copied());
                }
            }
            6 => {
                if let Some(b) = d.get_mut(at) {
                    *b = INTERESTING_BYTES[rng.below(INTERESTING_BYTES.len())];
                }
            }
            7 => {
                let v = INTERESTING_INTS[rng.below(INTERESTING_INTS.len())];
                let width = [1, 2, 3, 4, 8][rng.below(5)];
                let be = v.to_be_bytes();
                let mut bytes = be[8 - width..].to_vec();
                if rng.chance(4) {
                    bytes.reverse();
                }
                let e = (at + width).min(d.len());
                d.splice(at..e, bytes);
            }
            8 => d.truncate(at),
            9 => {
                d.splice(at..at, TOKENS[rng.below(TOKENS.len())].iter().copied());
            }
            _ => {
                if let Some(b) = d.get_mut(at) {
                    *b = b.wrapping_add(rng.below(71) as u8).wrapping_sub(35);
                }
            }
        }
        d.truncate(MAX_INPUT);
    }
    d
}

/// `data` cut into pieces, the way a PRNG seeded from the data (and `salt`, one per
/// target) chooses: byte by byte, in two, in small pieces (some empty), or in large ones.
fn pieces(data: &[u8], salt: u64) -> Vec<&[u8]> {
    let mut rng = Rng::new(hash(data) ^ mix(salt));
    match rng.below(4) {
        0 if data.len() <= MAX_BYTEWISE => data.chunks(1).collect(),
        1 => {
            let (a, b) = data.split_at(rng.below(data.len() + 1));
            vec![a, b]
        }
        2 => pieces_by(data, &mut rng, 16),
        _ => pieces_by(data, &mut rng, data.len() / 2 + 1),
    }
}

/// `data` in pieces of `0..=max` bytes each.
fn pieces_by<'a>(data: &'a [u8], rng: &mut Rng, max: usize) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let end = (at + rng.below(max + 1)).min(data.len());
        out.push(&data[at..end]);
        at = end;
    }
    out
}

/// A parser that says "incomplete" until the head is whole must, as a reader's buffer
/// grows, first say something else when it says what it says of the whole input.
fn prefix_stable<T: PartialEq + Debug>(data: &[u8], whole: &T, parse: impl Fn(&[u8]) -> T, incomplete: impl Fn(&T) -> bool) {
    let mut rng = Rng::new(hash(data) ^ mix(0));
    let mut cuts: Vec<usize> = (0..PREFIX_CUTS).map(|_| rng.below(data.len() + 1)).collect();
    cuts.sort_unstable();
    for at in cuts {
        let got = parse(&data[..at]);
        if !incomplete(&got) {
            same(&got, whole, &format!("first complete parse of the first {at} bytes"));
            return;
        }
    }
}

/// Reads the parameters of a round-trip input; zeros once the input runs out.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }

    fn u8(&mut self) -> u8 {
        self.take(1).first().copied().unwrap_or(0)
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    /// Up to `max` bytes as text.
    fn text(&mut self, max: usize) -> String {
        let n = self.u8() as usize % (max + 1);
        String::from_utf8_lossy(self.take(n)).into_owned()
    }
}

/// Fails the check, with both sides shown up to [`MESSAGE_CAP`], when they differ.
#[track_caller]
fn same<T: PartialEq + Debug>(got: &T, want: &T, what: &str) {
    if got != want {
        panic!("{what}: got {}, want {}", capped(got), capped(want));
    }
}

fn capped(v: &impl Debug) -> String {
    /// Stops formatting at the cap: a 64 KiB payload is never formatted whole.
    struct Cap(String);
    impl fmt::Write for Cap {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            let room = MESSAGE_CAP.saturating_sub(self.0.len());
            if s.len() <= room {
                self.0.push_str(s);
                return Ok(());
            }
            let mut cut = room;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            self.0.push_str(&s[..cut]);
            self.0.push_str("...");
            Err(fmt::Error)
        }
    }
    let mut out = Cap(String::new());
    let _ = write!(out, "{v:?}");
    out.0
}

struct Failure {
    /// Where the panic was raised: a line in src/ is a bug there, one here an invariant.
    location: String,
    message: String,
}

impl Failure {
    fn signature(&self, target: &Target) -> String {
        format!("{} at {}", target.name, self.location)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "panicked at {}: {}", self.location, self.message)
    }
}

struct Found {
    path: PathBuf,
    failure: Failure,
    hits: u64,
    new: bool,
}

thread_local! {
    /// Whether this thread is running an input: its panics are caught, not printed.
    static CATCHING: Cell<bool> = const { Cell::new(false) };
    static CAUGHT: RefCell<Option<Failure>> = const { RefCell::new(None) };
}

/// Records the panics of inputs on the thread running them and leaves every other
/// panic to the hook that was there before.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let earlier = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !CATCHING.with(Cell::get) {
                return earlier(info);
            }
            let location = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
            let payload = info.payload();
            let message = payload.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| payload.downcast_ref::<String>().cloned()).unwrap_or_default();
            CAUGHT.with(|c| *c.borrow_mut() = Some(Failure { location, message }));
        }));
    });
}

/// Runs one input through one target; a panic comes back as the failure.
fn run(target: &Target, data: &[u8], watchdog: &Watchdog) -> Result<(), Failure> {
    install_panic_hook();
    watchdog.begin(target.name, data);
    CATCHING.with(|c| c.set(true));
    let result = panic::catch_unwind(AssertUnwindSafe(|| (target.check)(data)));
    CATCHING.with(|c| c.set(false));
    watchdog.end();
    result.map_err(|_| CAUGHT.with(|c| c.borrow_mut().take()).unwrap_or(Failure { location: "unknown".into(), message: String::new() }))
}

/// The smallest input found by deleting ever smaller runs of bytes that still fails
/// at `location`.
fn shrink(target: &Target, data: &[u8], location: &str, watchdog: &Watchdog) -> Vec<u8> {
    let mut best = data.to_vec();
    let mut runs = 0;
    let mut chunk = best.len().div_ceil(2).max(1);
    loop {
        let mut at = 0;
        while at < best.len() && runs < SHRINK_RUNS {
            let mut candidate = best.clone();
            candidate.drain(at..(at + chunk).min(best.len()));
            runs += 1;
            match run(target, &candidate, watchdog) {
                Err(f) if f.location == location => best = candidate,
                _ => at += chunk,
            }
        }
        if chunk == 1 || runs >= SHRINK_RUNS {
            return best;
        }
        chunk = chunk.div_ceil(2);
    }
}

/// Ends the process, keeping the input, when one input runs past [`HANG_AFTER`]: a
/// hang cannot be caught like a panic.
struct Watchdog {
    /// The target and input running now; no target between inputs.
    current: Arc<Mutex<(&'static str, Vec<u8>)>>,
    started: Arc<AtomicU64>,
    /// Dropping it ends the watchdog thread.
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    fn start() -> Watchdog {
        let current = Arc::new(Mutex::new(("", Vec::new())));
        let started = Arc::new(AtomicU64::new(0));
        let (stop, stopped) = mpsc::channel::<()>();
        let (cur, count) = (current.clone(), started.clone());
        let thread = std::thread::Builder::new()
            .name("fuzz-watchdog".into())
            .spawn(move || {
                let mut last = u64::MAX;
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(HANG_AFTER) {
                    let now = count.load(Ordering::Relaxed);
                    let (target, data) = &*cur.lock().unwrap_or_else(|e| e.into_inner());
                    if now == last && !target.is_empty() {
                        let path = keep(target, "", data);
                        println!("fuzz: FAILURE {target}: hang, one input ran for {HANG_AFTER:?}\nfuzz: kept {}", rel(&path));
                        std::process::exit(1);
                    }
                    last = now;
                }
            })
            .expect("spawning the watchdog thread");
        Watchdog { current, started, stop: Some(stop), thread: Some(thread) }
    }

    fn begin(&self, target: &'static str, data: &[u8]) {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        cur.0 = target;
        cur.1.clear();
        cur.1.extend_from_slice(data);
        self.started.fetch_add(1, Ordering::Relaxed);
    }

    /// No input is running: time spent between inputs is not a hang.
    fn end(&self) {
        self.current.lock().unwrap_or_else(|e| e.into_inner()).0 = "";
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn seeds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-seeds")
}

fn rel(path: &Path) -> String {
    path.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap_or(path).display().to_string()
}

/// Writes `data` to `tests/fuzz-seeds/<target>/<prefix><hash>`.
fn keep(target: &str, prefix: &str, data: &[u8]) -> PathBuf {
    let dir = seeds_dir().join(target);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let path = dir.join(format!("{prefix}{:012x}", hash(data) >> 16));
    std::fs::write(&path, data).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

/// Every kept input: (target index, path, bytes), in path order.
fn kept_inputs() -> Vec<(usize, PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let Ok(dirs) = std::fs::read_dir(seeds_dir()) else { return out };
    for dir in dirs.map(|d| d.expect("listing tests/fuzz-seeds").path()).filter(|p| p.is_dir()) {
        let name = dir.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let t = TARGETS.iter().position(|t| t.name == name).unwrap_or_else(|| panic!("tests/fuzz-seeds/{name}: no such fuzz target"));
        for file in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("listing {}: {e}", dir.display())) {
            let path = file.expect("listing a seed folder").path();
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            out.push((t, path, data));
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    out
}

/// Keeps the first seed of a target that has no kept input, so `replay_seeds` runs
/// every target even before anything fails.
fn keep_ordinary_seeds(corpora: &[Vec<Vec<u8>>]) {
    let kept = kept_inputs();
    for (t, corpus) in corpora.iter().enumerate() {
        if !kept.iter().any(|(i, _, _)| *i == t) {
            let path = keep(TARGETS[t].name, "seed-", &corpus[0]);
            println!("fuzz: kept an ordinary seed for {} in {}", TARGETS[t].name, rel(&path));
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok().filter(|v| !v.is_empty())?;
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}: expected a number, found {v:?}")))
}
