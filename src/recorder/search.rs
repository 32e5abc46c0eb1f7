//! `GET /v1/search?q=WORDS` (with the list's filters): where in which recordings the
//! words were shown on the terminal, searched in the rendered text
//! (`playback::screen`), not in the raw output: a word drawn with cursor moves is
//! found, escape sequences never match, and a word typed then erased is found at the
//! moment it was on the screen. Each recording's rendering is kept (by its durable
//! length, so a running session is rendered again once it grew), within a bound.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use super::{reads, State};
use crate::net::sync::lock;
use crate::playback::screen::{self, Shown};
use crate::record::protocol::SessionMeta;
use crate::wire::asciicast;

/// Hits given per recording; `truncated` says when there were more.
const HITS_PER_RECORDING: usize = 20;
/// Rendered text kept for searches, in bytes; past this the cache starts over.
const CACHE_BYTES: usize = 256 * 1024 * 1024;
/// The longest query: search words, not documents.
const MAX_QUERY: usize = 256;

type Refusal = (u16, String);

/// Bytes of one recording read for search; a longer one is searched this far.
const MAX_CAST_BYTES: u64 = 64 * 1024 * 1024;

/// One recording's rendering: the durable length it was made from, what each screen
/// row showed, why it stopped short (if it did), and what that holds in memory.
struct Rendering {
    from_len: u64,
    found: Arc<Found>,
    size: usize,
}

/// What search knows of one recording.
pub struct Found {
    pub history: Vec<Shown>,
    pub truncated: Option<&'static str>,
}

/// Renderings of recordings by id, and the bytes they hold together.
#[derive(Default)]
struct Kept {
    size: usize,
    by_id: HashMap<String, Rendering>,
}

#[derive(Default)]
pub struct Renderings {
    kept: Mutex<Kept>,
    /// Held while rendering: one at a time, so searches at once share the cores
    /// with ingest rather than take them (and a recording asked for by two renders once).
    rendering: Mutex<()>,
}

impl Renderings {
    fn kept(&self, id: &str, from_len: u64) -> Option<Arc<Found>> {
        lock(&self.kept).by_id.get(id).filter(|r| r.from_len == from_len).map(|r| r.found.clone())
    }

    /// What recording `id` showed, rendered now unless kept from an earlier search.
    fn found(&self, state: &State, id: &str) -> Result<Arc<Found>, Refusal> {
        // Looked up by the durable length before anything is read: a search over many
        // recordings reads only those that are new or grew.
        let (file, end) = reads::durable(state, id)?;
        if let Some(f) = self.kept(id, end) {
            return Ok(f);
        }
        let _one_at_a_time = lock(&self.rendering);
        if let Some(f) = self.kept(id, end) {
            return Ok(f);
        }
        let bytes = reads::read_whole(&file, end.min(MAX_CAST_BYTES))?;
        let mut found = render(&bytes).map_err(|e| (500, format!("recording {id}: {e}")))?;
        if end > MAX_CAST_BYTES {
            found.truncated = found.truncated.or(Some("the rest was not searched: the recording is longer than search reads"));
        }
        let size = found.history.iter().map(|s| s.text.len() + std::mem::size_of::<Shown>()).sum();
        let found = Arc::new(found);
        let mut kept = lock(&self.kept);
        if kept.size + size > CACHE_BYTES {
            *kept = Kept::default();
        }
        let old = kept.by_id.insert(id.to_string(), Rendering { from_len: end, found: found.clone(), size });
        kept.size = kept.size + size - old.map_or(0, |o| o.size);
        Ok(found)
    }
}

fn render(cast: &[u8]) -> Result<Found, String> {
    let recording = asciicast::parse(cast)?;
    let items = asciicast::items(&recording.events)?;
    let r = screen::render(&recording.header, &items, screen::Purpose::Search)?;
    Ok(Found { history: r.history, truncated: r.truncated })
}

/// The words of a query, lower-cased: a row matches when it holds every one.
pub fn words(q: &str) -> Result<Vec<String>, Refusal> {
    if q.len() > MAX_QUERY {
        return Err((400, format!("q: at most {MAX_QUERY} bytes")));
    }
    let words: Vec<String> = q.split_whitespace().map(str::to_lowercase).collect();
    if words.is_empty() {
        return Err((400, "q: give the words to search for".into()));
    }
    Ok(words)
}

/// The rows of `history` that show every word, as hits, at most `limit`.
pub fn hits<'h>(history: &'h [Shown], words: &[String], limit: usize) -> (Vec<&'h Shown>, bool) {
    let mut found = history.iter().filter(|s| {
        let text = s.text.to_lowercase();
        words.iter().all(|w| text.contains(w.as_str()))
    });
    let hits: Vec<&Shown> = found.by_ref().take(limit).collect();
    let more = found.next().is_some();
    (hits, more)
}

/// The search's answer over `recordings` (already filtered to what the caller may
/// read). A recording that cannot be read or rendered (one whose recorder never wrote
/// a line, one removed meanwhile) is listed in `unsearched` with why, and the search
/// goes on.
pub fn search(state: &State, recordings: &[SessionMeta], words: &[String]) -> Value {
    let (mut items, mut unsearched) = (Vec::new(), Vec::new());
    for m in recordings {
        let found = match state.renderings.found(state, &m.id) {
            Ok(f) => f,
            Err((_, why)) => {
                unsearched.push(json!({"id": m.id, "reason": why}));
                continue;
            }
        };
        let (hits, more) = hits(&found.history, words, HITS_PER_RECORDING);
        if hits.is_empty() {
            continue;
        }
        items.push(json!({
            "id": m.id, "started": m.started, "status": m.status, "user": m.user(), "namespace": m.namespace(), "pod": m.pod(),
            "hits": hits.iter().map(|h| json!({"at": h.at, "text": h.text})).collect::<Vec<_>>(), "truncated": more,
            "searchedPart": found.truncated,
        }));
    }
    json!({"items": items, "unsearched": unsearched})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_matches_when_it_shows_every_word() {
        let history = vec![Shown { at: 1.0, text: "$ kubectl get pods".into() }, Shown { at: 2.0, text: "Pods: 3".into() }, Shown { at: 3.0, text: "get PODS".into() }];
        let (h, more) = hits(&history, &words("GET pods").unwrap(), 10);
        assert_eq!(h.iter().map(|s| s.at).collect::<Vec<_>>(), [1.0, 3.0]);
        assert!(!more);
        let (h, more) = hits(&history, &words("pods").unwrap(), 2);
        assert_eq!((h.len(), more), (2, true));
        assert_eq!(words("  ").unwrap_err().0, 400);
        assert_eq!(words(&"x".repeat(MAX_QUERY + 1)).unwrap_err().0, 400);
    }
}
