// kubetape recorder UI: recordings, search, a session's page with its player, live
// sessions and API events. Everything it shows comes from the recorder's JSON API
// with the browser session's cookie; text from recordings is only ever set as text
// (never as HTML), since the recorded user wrote it.
"use strict";

const PAGE = 50;
const main = document.getElementById("main");
const state = { me: null, player: null };
// For tests and the curious: the player on the page.
window.kubetape = state;

// ---- small helpers ----

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c !== undefined && c !== null) e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

function show(...nodes) {
  main.replaceChildren(...nodes.flat().filter((n) => n !== null && n !== undefined));
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path) {
  const r = await fetch(path, { credentials: "same-origin", headers: { Accept: "application/json" } });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new ApiError(r.status, body.message || r.statusText);
  return body;
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== "") q.set(k, v);
  return q.toString();
}

function route() {
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, q] = hash.split("?");
  return { parts: path.split("/").filter(Boolean).map(decodeURIComponent), params: new URLSearchParams(q || "") };
}

function go(path, params) {
  const q = params ? query(params) : "";
  location.hash = "#" + path + (q ? "?" + q : "");
}

function clock(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  const two = (n) => String(n).padStart(2, "0");
  return h ? `${h}:${two(m)}:${two(r)}` : `${m}:${two(r)}`;
}

function when(rfc3339) {
  if (!rfc3339) return "";
  const d = new Date(rfc3339);
  return isNaN(d) ? rfc3339 : d.toLocaleString();
}

function duration(m) {
  if (!m.ended) return "";
  return clock((new Date(m.ended) - new Date(m.started)) / 1000);
}

function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

function status(m) {
  const live = m.status === "recording";
  return el("span", { class: `badge ${m.status}`, text: live ? "live" : m.status });
}

function failure(e) {
  // Not signed in yet: the form, without an error; signed in and refused: why.
  if (e.status === 401) return signIn(state.me ? e.message : "");
  const text = e.status === 403 ? `Not allowed: ${e.message}` : `${e.status || ""} ${e.message}`;
  show(el("p", { class: "error", role: "alert", text }));
}

// A form whose fields become the route's query.
function filterForm(fields, params, onSubmit) {
  const inputs = fields.map(([name, label, kind, options]) => {
    const value = params.get(name) || "";
    const input =
      kind === "select"
        ? el("select", { name }, el("option", { value: "", text: "any" }), options.map((o) => el("option", { value: o, text: o, selected: o === value })))
        : el("input", { name, type: kind || "text", value, autocomplete: "off" });
    return el("label", {}, label, input);
  });
  const form = el("form", { class: "filters", role: "search" }, inputs, el("div", {}, el("button", { type: "submit", text: "Apply" })));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const values = {};
    for (const [k, v] of new FormData(form)) if (v) values[k] = v;
    onSubmit(values);
  });
  return form;
}

// datetime-local values are local time; the API compares RFC 3339 UTC strings.
function utc(local) {
  if (!local) return undefined;
  const d = new Date(local);
  return isNaN(d) ? undefined : d.toISOString();
}

// ---- sign-in ----

async function signIn(why) {
  state.me = null;
  renderWho();
  const token = el("input", { id: "token", name: "token", type: "password", autocomplete: "off", required: true });
  const message = el("p", { class: "error", role: "alert", text: why && why !== "Unauthorized" ? why : "" });
  const form = el(
    "form",
    { class: "signin" },
    el("h1", { text: "Sign in" }),
    el("p", { class: "muted", text: "With a Kubernetes token the cluster accepts (kubectl create token NAME, or your OIDC ID token). You see the recordings of the namespaces RBAC lets you watch (get on recordings.kubetape.dev)." }),
    el("label", { for: "token" }, "Token", token),
    el("div", {}, el("button", { type: "submit", text: "Sign in" })),
    message
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    // The token goes in a header, never the URL; the answer sets an HttpOnly cookie.
    const r = await fetch("/ui/login", { method: "POST", credentials: "same-origin", headers: { Authorization: "Bearer " + token.value.trim() } });
    token.value = "";
    const body = await r.json().catch(() => ({}));
    if (!r.ok) {
      message.textContent = body.message || r.statusText;
      return;
    }
    state.me = body;
    renderWho();
    render();
  });
  show(form);
  token.focus();
}

async function signOut() {
  await fetch("/ui/logout", { method: "POST", credentials: "same-origin" });
  signIn();
}

function renderWho() {
  document.getElementById("who").textContent = state.me ? (state.me.kind === "reader" ? `certificate ${state.me.name}` : state.me.name) : "";
  document.getElementById("signout").hidden = !(state.me && state.me.kind === "viewer");
}

// ---- recordings ----

const LIST_FILTERS = [
  ["user", "User"],
  ["group", "Group"],
  ["namespace", "Namespace"],
  ["pod", "Pod"],
  ["container", "Container"],
  ["type", "Type", "select", ["exec", "attach", "debug", "run"]],
  ["status", "Status", "select", ["recording", "complete", "truncated", "interrupted"]],
  ["since", "Since", "datetime-local"],
  ["until", "Until", "datetime-local"],
];

function recordingRow(m) {
  const s = m.session || {};
  const open = () => go(m.status === "recording" ? `/live/${m.id}` : `/r/${m.id}`);
  const link = el("a", { href: m.status === "recording" ? `#/live/${m.id}` : `#/r/${m.id}`, text: when(m.started) });
  const row = el(
    "tr",
    { class: "link", "data-id": m.id },
    el("td", {}, link),
    el("td", { text: (s.user && s.user.name) || "" }),
    el("td", { class: "mono", text: `${s.namespace || ""}/${s.pod || ""}${s.container ? " · " + s.container : ""}` }),
    el("td", { text: s.type || "" }),
    el("td", { class: "mono hide-narrow", text: (s.command || []).join(" ") }),
    el("td", {}, status(m)),
    el("td", { class: "hide-narrow", text: duration(m) }),
    el("td", { class: "hide-narrow", text: bytes(m.bytes || 0) })
  );
  row.addEventListener("click", (ev) => {
    if (ev.target.tagName !== "A") open();
  });
  return row;
}

function recordingTable(items) {
  return el(
    "div",
    { class: "table-wrap" },
    el(
      "table",
      {},
      el("thead", {}, el("tr", {}, ["Started", "User", "Where", "Type", "Command", "Status", "Length", "Bytes"].map((h, i) => el("th", { class: i > 5 || i === 4 ? "hide-narrow" : null, text: h })))),
      el("tbody", {}, items.map(recordingRow))
    )
  );
}

async function recordings(params) {
  const offset = Number(params.get("offset") || 0);
  const filters = {};
  for (const [k] of LIST_FILTERS) if (params.get(k)) filters[k] = params.get(k);
  const q = { ...filters, since: utc(filters.since), until: utc(filters.until), offset, limit: PAGE };
  const list = await api("/v1/recordings?" + query(q));
  const form = filterForm(LIST_FILTERS, params, (values) => go("/", values));
  const pager = el(
    "div",
    { class: "pager" },
    el("button", { type: "button", class: "quiet", disabled: offset === 0, onclick: () => go("/", { ...filters, offset: Math.max(0, offset - PAGE) }), text: "← Newer" }),
    el("span", { class: "muted", id: "count", text: list.total ? `${offset + 1}–${offset + list.items.length} of ${list.total}` : "No recordings" }),
    el("button", { type: "button", class: "quiet", disabled: offset + PAGE >= list.total, onclick: () => go("/", { ...filters, offset: offset + PAGE }), text: "Older →" })
  );
  show(el("h1", { text: "Recordings" }), form, recordingTable(list.items), pager);
}

// ---- search ----

function highlight(text, words) {
  const out = [];
  const lower = text.toLowerCase();
  let at = 0;
  while (at < text.length) {
    let next = -1, len = 0;
    for (const w of words) {
      const i = lower.indexOf(w, at);
      if (i >= 0 && (next < 0 || i < next)) (next = i), (len = w.length);
    }
    if (next < 0) break;
    out.push(text.slice(at, next), el("mark", { text: text.slice(next, next + len) }));
    at = next + len;
  }
  out.push(text.slice(at));
  return out;
}

async function search(params) {
  const q = params.get("q") || "";
  const input = el("input", { name: "q", type: "search", value: q, placeholder: "words the terminal showed", "aria-label": "Search what terminals showed" });
  const form = el("form", { class: "search", role: "search" }, input, el("button", { type: "submit", text: "Search" }));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    go("/search", { q: input.value.trim() });
  });
  if (!q) {
    show(el("h1", { text: "Search" }), form, el("p", { class: "muted", text: "Searches the rendered screen text of every recording you may watch, including text that was later erased." }));
    input.focus();
    return;
  }
  show(el("h1", { text: "Search" }), form, el("p", { class: "muted", text: "Searching…" }));
  const found = await api("/v1/search?" + query({ q }));
  const words = q.toLowerCase().split(/\s+/).filter(Boolean);
  const results = found.items.map((r) =>
    el(
      "section",
      { class: "result", "data-id": r.id },
      el("div", {}, el("a", { href: `#/r/${r.id}`, text: `${r.user} · ${r.namespace}/${r.pod}` }), " ", el("span", { class: "muted", text: when(r.started) }), " ", status(r)),
      el(
        "ul",
        { class: "hits" },
        r.hits.map((h) => el("li", {}, el("a", { href: `#/r/${r.id}?t=${(Math.ceil(h.at * 100) / 100).toFixed(2)}`, class: "hit", "data-at": h.at }, `${clock(h.at)}  `, highlight(h.text, words))))
      ),
      r.truncated ? el("p", { class: "muted", text: "More hits in this recording." }) : null
    )
  );
  const unsearched = (found.unsearched || []).map((u) => el("li", { text: `${u.id}: ${u.reason}` }));
  show(
    el("h1", { text: "Search" }),
    form,
    el("p", { class: "muted", id: "count", text: `${found.items.length} recording${found.items.length === 1 ? "" : "s"}` }),
    results,
    unsearched.length ? el("div", {}, el("h2", { text: "Not searched" }), el("ul", {}, unsearched)) : null
  );
}

// ---- a session ----

function context(m) {
  const s = m.session || {};
  const u = s.user || {};
  const imp = s.impersonated;
  const rows = [
    ["User", u.name],
    ["Groups", (u.groups || []).join(", ")],
    ["Signed in by", u.authenticatedBy],
    ["From", u.sourceAddress],
    ["Impersonating", imp ? [imp.user, (imp.groups || []).join(", ")].filter(Boolean).join(" · ") : null],
    ["Namespace", s.namespace],
    ["Pod", s.pod],
    ["Container", s.container],
    ["Target container", s.targetContainer],
    ["Image", s.image],
    ["Command", (s.command || []).join(" ")],
    ["Type", s.type],
    ["Protocol", [s.protocol, (s.subprotocols || []).join(", ")].filter(Boolean).join(" · ")],
    ["Terminal", s.tty ? "yes" : "no"],
    ["Status", m.status],
    ["Exit code", m.exit_code ?? m.exitCode],
    ["Why it ended", m.reason],
    ["Started", when(m.started)],
    ["Ended", when(m.ended)],
    ["Bytes", bytes(m.bytes || 0)],
    ["Proxy", s.proxy ? `${s.proxy.id} (${s.proxy.version})` : m.writer],
    ["Fail mode", s.failMode],
    ["Session id", m.id],
  ];
  return el("dl", { class: "context" }, rows.filter(([, v]) => v !== undefined && v !== null && v !== "").map(([k, v]) => [el("dt", { text: k }), el("dd", { text: String(v) })]));
}

function eventRows(items) {
  return items.map((e) =>
    el(
      "tr",
      {},
      el("td", { text: when(e.received) }),
      el("td", { text: (e.user && e.user.name) || "" }),
      el("td", { text: e.verb }),
      el("td", { class: "mono", text: e.resource ? [e.resource, e.subresource].filter(Boolean).join("/") + (e.name ? ` ${e.name}` : "") : e.path }),
      el("td", { class: "hide-narrow", text: e.stage || "" }),
      el("td", { text: e.namespace || "" }),
      el("td", { text: e.status ?? "" }),
      el("td", {}, e.session_id || e.sessionId ? el("a", { href: `#/r/${e.session_id || e.sessionId}`, text: "session" }) : "")
    )
  );
}

function eventTable(items, empty) {
  if (!items.length) return el("p", { class: "muted", text: empty });
  return el(
    "div",
    { class: "table-wrap" },
    el("table", {}, el("thead", {}, el("tr", {}, ["Received", "User", "Verb", "Resource", "Stage", "Namespace", "Status", ""].map((h) => el("th", { class: h === "Stage" ? "hide-narrow" : null, text: h })))), el("tbody", {}, eventRows(items)))
  );
}

// A recorded terminal size is what the recorded user chose: the player gets at most
// what `kubetape play` renders (a 65535x65535 resize would stall it).
const MAX_COLS = 500, MAX_ROWS = 200;

function clampSize(cols, rows) {
  const clamp = (v, max, dflt) => (Number.isFinite(v) ? Math.min(Math.max(1, Math.floor(v)), max) : dflt);
  return [clamp(cols, MAX_COLS, 80), clamp(rows, MAX_ROWS, 24)];
}

// The recording as the player's data, fetched once per page (each fetch is a view the
// recorder records). A session without a terminal wrote bare line feeds: newline mode
// shows them as a terminal would have.
async function loadCast(id) {
  const r = await fetch(`/v1/recordings/${encodeURIComponent(id)}/cast`, { credentials: "same-origin" });
  if (!r.ok) throw new ApiError(r.status, r.statusText);
  const lines = (await r.text()).split("\n").filter((l) => l.startsWith("{") || l.startsWith("["));
  const header = JSON.parse(lines[0]);
  // The player knows `o` only: stderr (`e`) shows as output, as on the terminal.
  const events = lines
    .slice(1)
    .filter((l) => l.startsWith("["))
    .map((l) => JSON.parse(l))
    .map((e) => (e[1] === "e" ? [e[0], "o", e[2]] : e))
    .flatMap((e) => {
      if (e[1] !== "r") return [e];
      const m = /^(\d+)x(\d+)$/.exec(String(e[2]).trim());
      return m ? [[e[0], "r", clampSize(Number(m[1]), Number(m[2])).join("x")]] : [];
    });
  [header.width, header.height] = clampSize(header.width, header.height);
  if (header.kubetape && header.kubetape.tty === false) events.unshift([0, "o", "\u001b[20h"]);
  return [header, ...events];
}

function makePlayer(container, src, opts) {
  if (state.player) state.player.dispose();
  container.replaceChildren();
  state.player = AsciinemaPlayer.create(src, container, { fit: "width", terminalFontSize: "14px", ...opts });
  return state.player;
}

async function session(id, params) {
  const m = await api(`/v1/recordings/${encodeURIComponent(id)}`);
  const startAt = Number(params.get("t") || 0);
  const holder = el("div", { class: "player", id: "player" });
  const speed = el("select", { id: "speed", "aria-label": "Speed" }, ["0.5", "1", "2", "4", "8"].map((s) => el("option", { value: s, text: `${s}×`, selected: s === "1" })));
  // Opened at a search hit's time: idle time is kept, so the timeline is the recording's.
  const idle = el("input", { type: "checkbox", id: "idle", checked: !params.has("t") });
  // The poster shows the screen at `at` before playing starts.
  const cast = await loadCast(id);
  // Before playing, the screen as the session left it (or at the hit's time).
  const end = cast.length > 1 ? cast[cast.length - 1][0] : 0;
  const load = (at, poster) =>
    makePlayer(
      holder,
      { data: cast },
      { startAt: at, poster: `npt:${poster}`, speed: Number(speed.value), idleTimeLimit: idle.checked ? 2 : undefined, preload: true }
    );
  const reload = async () => {
    const now = (await (state.player ? state.player.getCurrentTime() : startAt)) || 0;
    load(now, now);
  };
  speed.addEventListener("change", reload);
  idle.addEventListener("change", reload);
  const controls = el(
    "div",
    { class: "controls" },
    el("label", {}, "Speed ", speed),
    el("label", {}, idle, " Skip idle time over 2 s"),
    el("span", { class: "muted", text: "Keys: space play/pause, ← → seek, 0–9 jump, f full screen" }),
    m.status === "recording" ? el("a", { class: "button", href: `#/live/${id}`, text: "Watch live" }) : null
  );
  const eventsBox = el("div", {}, el("p", { class: "muted", text: "Loading events…" }));
  const streamsBox = el("div");
  const viewsBox = el("div", {}, el("p", { class: "muted", text: "Loading…" }));
  show(
    el("h1", {}, `${(m.session.user || {}).name || "?"} · ${m.session.namespace}/${m.session.pod} `, status(m)),
    el("div", { class: "session" }, el("div", {}, holder, controls), context(m)),
    el("h2", { text: "File transfers and port-forwards" }),
    streamsBox,
    el("h2", { text: "API requests of this session" }),
    eventsBox,
    el("h2", { text: "Who watched this recording" }),
    viewsBox
  );
  load(startAt, params.has("t") ? startAt : end);
  holder.querySelector(".ap-wrapper")?.focus();
  const [events, views] = await Promise.all([api("/v1/events?" + query({ session: id, limit: 500 })).catch((e) => e), api(`/v1/recordings/${encodeURIComponent(id)}/views`).catch((e) => e)]);
  if (events instanceof Error) eventsBox.replaceChildren(el("p", { class: "error", text: events.message }));
  else {
    const own = events.items.filter((e) => !e.kind);
    const streams = events.items.filter((e) => e.kind);
    eventsBox.replaceChildren(eventTable(own, "No API requests recorded with this session id."));
    streamsBox.replaceChildren(
      streams.length
        ? el("ul", {}, streams.map((e) => el("li", { class: "mono", text: `${e.kind}: ${JSON.stringify(e.file_transfer || e.fileTransfer || e.port_forward || e.portForward || {})}` })))
        : el("p", { class: "muted", text: "None." })
    );
  }
  if (views instanceof Error) viewsBox.replaceChildren(el("p", { class: "error", text: views.message }));
  else
    viewsBox.replaceChildren(
      el(
        "div",
        { class: "table-wrap" },
        el(
          "table",
          { id: "views" },
          el("thead", {}, el("tr", {}, ["When", "Who", "How", "From"].map((h) => el("th", { text: h })))),
          el("tbody", {}, views.items.map((v) => el("tr", {}, el("td", { text: when(v.at) }), el("td", { text: v.by.kind === "certificate" ? `${v.by.name} (reader certificate)` : v.by.name }), el("td", { text: v.how }), el("td", { class: "mono", text: v.sourceAddress }))))
        )
      )
    );
}

async function live(id) {
  const m = await api(`/v1/recordings/${encodeURIComponent(id)}`);
  const holder = el("div", { class: "player", id: "player" });
  show(
    el("h1", {}, `Live: ${(m.session.user || {}).name || "?"} · ${m.session.namespace}/${m.session.pod} `, status(m)),
    el("div", { class: "session" }, el("div", {}, holder, el("p", { class: "muted", text: "Shows each line as the recorder makes it durable." })), context(m)),
    el("p", {}, el("a", { href: `#/r/${id}`, text: "Open the recording" }))
  );
  // The cast's lines as server-sent events, played as they come.
  makePlayer(holder, { driver: "eventsource", url: `/v1/recordings/${encodeURIComponent(id)}/live`, bufferTime: 0 }, { autoPlay: true });
}

// ---- API events ----

const EVENT_FILTERS = [
  ["user", "User"],
  ["verb", "Verb", "select", ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"]],
  ["resource", "Resource"],
  ["namespace", "Namespace"],
  ["status", "Status code"],
  ["since", "Since", "datetime-local"],
  ["until", "Until", "datetime-local"],
];

async function events(params) {
  const filters = {};
  for (const [k] of EVENT_FILTERS) if (params.get(k)) filters[k] = params.get(k);
  const q = { ...filters, since: utc(filters.since), until: utc(filters.until), limit: 500 };
  const found = await api("/v1/events?" + query(q));
  const exportLink = el("a", { class: "button quiet", href: "/v1/events?" + query({ ...q, limit: 100000, format: "audit" }), download: "kubetape-audit.jsonl", text: "Export as audit.k8s.io/v1" });
  show(
    el("h1", { text: "API events" }),
    filterForm(EVENT_FILTERS, params, (values) => go("/events", values)),
    el("p", {}, el("span", { class: "muted", id: "count", text: `${found.items.length} events (newest first, at most 500 shown)` }), " ", exportLink),
    eventTable(found.items, "No events.")
  );
}

// ---- routing ----

async function render() {
  if (state.player && !location.hash.match(/^#\/(r|live)\//)) {
    state.player.dispose();
    state.player = null;
  }
  let parts, params;
  try {
    ({ parts, params } = route());
  } catch (e) {
    // A hand-typed hash that does not decode.
    ({ parts, params } = { parts: [], params: new URLSearchParams() });
  }
  const section = parts[0] === "search" ? "search" : parts[0] === "events" ? "events" : "recordings";
  for (const a of document.querySelectorAll("nav a")) {
    if (a.dataset.nav === section) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  try {
    if (!state.me) {
      state.me = await api("/v1/whoami");
      renderWho();
    }
    if (parts[0] === "r" && parts[1]) await session(parts[1], params);
    else if (parts[0] === "live" && parts[1]) await live(parts[1]);
    else if (parts[0] === "search") await search(params);
    else if (parts[0] === "events") await events(params);
    else await recordings(params);
    main.focus({ preventScroll: true });
  } catch (e) {
    failure(e);
  }
}

function initTheme() {
  const saved = localStorage.getItem("kubetape-theme");
  const dark = saved ? saved === "dark" : matchMedia("(prefers-color-scheme: dark)").matches;
  document.documentElement.dataset.theme = dark ? "dark" : "light";
  document.getElementById("theme").addEventListener("click", () => {
    const next = document.documentElement.dataset.theme === "dark" ? "light" : "dark";
    document.documentElement.dataset.theme = next;
    localStorage.setItem("kubetape-theme", next);
  });
}

initTheme();
document.getElementById("signout").addEventListener("click", signOut);
window.addEventListener("hashchange", render);
render();
