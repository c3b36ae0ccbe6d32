// veba's dashboard: plain JavaScript, no framework, nothing from outside the
// appliance. Every value shown goes in as text (textContent), never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const MAX_ROWS = 200; // live list rows kept
const state = { overview: null, source: null, livePaused: false, selected: new Set(), confirm: null };

// -- small helpers ------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

async function api(path, options) {
  const response = await fetch(path, {
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    ...options,
  });
  if (response.status === 401) {
    location.href = "/login?next=/";
    throw new Error("signed out");
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
  return body;
}

const post = (path, body) => api(path, { method: "POST", body: JSON.stringify(body || {}) });

function showError(error) {
  const node = $("error");
  node.textContent = error ? String(error.message || error) : "";
  node.hidden = !error;
}

function clock(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleTimeString() : "";
}

function when(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleString() : "";
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 120) return `${seconds.toFixed(1)} s`;
  return `${Math.round(seconds / 60)} min`;
}

function ms(value) {
  return value === null || value === undefined ? "" : `${value.toFixed(value < 10 ? 1 : 0)} ms`;
}

function lastLine(text) {
  const lines = String(text || "").trim().split("\n");
  return lines[lines.length - 1].slice(0, 300);
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

// -- routing ------------------------------------------------------------------

const views = ["live", "functions", "event", "dlq", "providers"];

function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  let view = parts[0] || "live";
  if (view === "events" && parts[1]) view = "event";
  if (!views.includes(view)) view = "live";
  for (const name of views) $(`view-${name}`).hidden = name !== view;
  for (const link of document.querySelectorAll("nav a[data-view]")) {
    link.classList.toggle("current", link.dataset.view === view);
  }
  showError(null);
  if (view === "live") startLive();
  else stopLive();
  if (view === "event") showEvent(parts[1]);
  if (view === "dlq") showDlq(parts[1]);
  refresh();
}

// -- the overview: chart, functions, providers ---------------------------------

async function refresh() {
  try {
    state.overview = await api("/api/v1/overview");
  } catch (error) {
    showError(error);
    return;
  }
  const o = state.overview;
  $("dlq-total").textContent = o.dlq && o.dlq.total ? String(o.dlq.total) : "";
  if (!$("view-live").hidden) drawChart(o.series);
  if (!$("view-functions").hidden) showFunctions(o.functions);
  if (!$("view-providers").hidden) showProviders(o);
}

const SERIES = [
  ["events", "#1d3557", (s) => s.events],
  ["delivered", "#2a9d8f", (s) => s.deliveries.delivered],
  ["retried", "#e9c46a", (s) => s.deliveries.retried],
  ["dead", "#e63946", (s) => s.deliveries.dead],
];

function drawChart(series) {
  const box = $("chart");
  if (!series) return;
  const width = 720, height = 160, step = series.step || 10;
  const lines = SERIES.map(([name, colour, pick]) => [name, colour, (pick(series) || []).map((n) => n / step)]);
  const top = Math.max(1, ...lines.flatMap(([, , values]) => values));
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  for (const [name, colour, values] of lines) {
    if (!values.length) continue;
    const dx = width / Math.max(1, values.length - 1);
    const points = values.map((v, i) => `${(i * dx).toFixed(1)},${(height - 4 - (v / top) * (height - 20)).toFixed(1)}`);
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", points.join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", colour);
    line.setAttribute("stroke-width", "1.5");
    line.setAttribute("vector-effect", "non-scaling-stroke");
    line.setAttribute("data-series", name);
    svg.append(line);
  }
  const legend = el("div", { class: "legend" },
    ...lines.map(([name, colour, values]) => {
      const now = values.length ? values[values.length - 1] : 0;
      const item = el("span", {}, `${name} ${now.toFixed(1)}/s`);
      item.style.setProperty("--c", colour);
      return item;
    }),
    el("span", { class: "muted" }, `per second, 10 s steps; top of the chart ${top.toFixed(top < 10 ? 1 : 0)}/s`));
  box.replaceChildren(svg, legend);
}

function showFunctions(functions) {
  const rows = (functions || []).map((f) => {
    const button = f.kind === "function"
      ? el("button", { type: "button", "data-function": f.name, onclick: () => pauseFunction(f.name, !f.paused) },
        f.paused ? "Resume" : "Pause")
      : "";
    const error = f.last_error
      ? el("td", { class: "err" }, lastLine(f.last_error.error), " ",
        f.last_error.event_id ? el("a", { href: `#/events/${encodeURIComponent(f.last_error.event_id)}` }, "event") : "")
      : el("td", {});
    return el("tr", { "data-name": f.name },
      el("td", {}, f.name, f.kind === "processor" ? el("span", { class: "muted" }, " processor") : ""),
      el("td", { class: "state" }, f.paused ? `${f.state}, paused` : f.state),
      el("td", { class: "num" }, (f.rate || 0).toFixed(1)),
      el("td", { class: "num" }, ms(f.p50_ms)),
      el("td", { class: "num" }, ms(f.p99_ms)),
      el("td", { class: "num" }, f.errors),
      el("td", { class: "num" }, f.in_flight),
      el("td", { class: "num backlog" }, f.backlog),
      el("td", { class: "num lag" }, duration(f.lag_seconds)),
      el("td", {}, f.version || ""),
      el("td", {}, when(f.deployed)),
      error,
      el("td", {}, button));
  });
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 13, class: "muted" }, "nothing deployed")));
  fill($("functions").tBodies[0], rows);
}

async function pauseFunction(name, pause) {
  try {
    await post(`/api/v1/functions/${encodeURIComponent(name)}/${pause ? "pause" : "resume"}`);
    await refresh();
  } catch (error) {
    showError(error);
  }
}

function showProviders(o) {
  const rows = (o.providers || []).map((p) => el("tr", { "data-name": p.name },
    el("td", {}, p.name),
    el("td", {}, p.type),
    el("td", {}, p.state || (p.connected ? "connected" : "not connected")),
    el("td", { class: "num" }, p.last_key === null ? "" : p.last_key),
    el("td", { class: "num" }, [p.lag === null ? "" : `${p.lag} events`, p.lag_seconds ? duration(p.lag_seconds) : ""].filter(Boolean).join(", ")),
    el("td", { class: "num" }, p.events),
    el("td", { class: "num" }, p.rate === null || p.rate === undefined ? "" : `${p.rate}/s`),
    el("td", { class: "err" }, p.last_error || "")));
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 8, class: "muted" }, "no providers")));
  fill($("providers").tBodies[0], rows);
  const log = o.log || {};
  $("log-size").textContent = `event log ${((log.size_bytes || 0) / 1e6).toFixed(1)} MB`
    + ` (write-ahead log ${((log.wal_bytes || 0) / 1e6).toFixed(1)} MB); veba ${o.version || ""}`;
}

// -- the live stream --------------------------------------------------------------

function filters() {
  const form = new FormData($("filters"));
  const query = new URLSearchParams();
  for (const key of ["type", "source", "name"]) {
    const value = String(form.get(key) || "").trim();
    if (value) query.set(key, value);
  }
  return query;
}

function startLive() {
  if (state.source || state.livePaused) return;
  const query = filters();
  query.set("backlog", "50");
  query.set("rows", String(MAX_ROWS)); // no more than the list keeps
  $("events").replaceChildren();
  $("gap").hidden = true;
  const source = new EventSource(`/api/v1/events/stream?${query}`);
  state.source = source;
  source.addEventListener("open", () => { $("live-state").textContent = "live"; });
  source.addEventListener("error", () => { $("live-state").textContent = "reconnecting..."; });
  source.addEventListener("events", (message) => addEvents(JSON.parse(message.data)));
  source.addEventListener("gap", (message) => {
    const gap = $("gap");
    state.lastGap = Date.now();
    gap.textContent = `${JSON.parse(message.data).missed} event(s) came too fast to list`
      + " (they are in the log).";
    gap.hidden = false;
  });
}

function stopLive() {
  if (state.source) state.source.close();
  state.source = null;
}

function addEvents(rows) {
  const list = $("events");
  if (Date.now() - (state.lastGap || 0) > 5000) $("gap").hidden = true;
  const fragment = document.createDocumentFragment();
  for (const row of rows.slice(-MAX_ROWS).reverse()) {
    const names = Object.entries(row.names || {}).map(([k, v]) => `${k} ${v}`).join(", ");
    fragment.append(el("li", { "data-seq": row.seq, "data-received": row.received, "data-id": row.id },
      el("span", { class: "when" }, clock(row.received)),
      el("a", { href: `#/events/${encodeURIComponent(row.id)}` }, row.subject || row.type),
      el("span", { class: "names" }, names),
      el("span", { class: "source" }, row.source)));
  }
  list.prepend(fragment);
  while (list.children.length > MAX_ROWS) list.lastElementChild.remove();
}

// -- one event --------------------------------------------------------------------

async function showEvent(id) {
  const body = $("event-body");
  $("event-title").textContent = id;
  body.replaceChildren(el("p", { class: "muted" }, "loading..."));
  if (!state.overview) await refresh(); // the functions "Replay to" offers
  let record;
  try {
    record = await api(`/api/v1/events/${encodeURIComponent(id)}`);
  } catch (error) {
    body.replaceChildren();
    showError(error);
    return;
  }
  const deliveries = record.deliveries || [];
  const parts = [
    el("p", {}, `seq ${record.seq}, received ${when(record.received)} `,
      el("button", { type: "button", onclick: () => showEvent(id) }, "Reload")),
    el("h3", {}, "Delivered to"),
  ];
  if (!deliveries.length) parts.push(el("p", { class: "muted" }, "no function or processor subscribes to it"));
  for (const d of deliveries) {
    parts.push(el("div", { class: "delivery", "data-subscription": d.subscription },
      el("h4", {}, d.subscription, " ",
        el("span", { class: `status-${d.status}` }, d.status),
        el("span", { class: "muted" }, ` delivery ${d.id}, ${d.attempts} attempt(s)`)),
      el("div", { class: "scroll" }, el("table", { class: "attempts" },
        el("thead", {}, el("tr", {}, ...["attempt", "started", "outcome", "status", "duration"].map((h) => el("th", {}, h)))),
        el("tbody", {}, ...(d.history || []).flatMap((a) => [
          el("tr", {},
            el("td", { class: "num" }, a.attempt),
            el("td", {}, clock(a.started)),
            el("td", {}, a.outcome),
            el("td", { class: "num" }, a.status),
            el("td", { class: "num" }, duration(a.finished - a.started))),
          // The error under its attempt, as wide as the table (tracebacks are long).
          a.error ? el("tr", { class: "error-row" }, el("td", { colspan: 5 }, el("pre", { class: "error" }, a.error))) : null,
        ].filter(Boolean)))))));
  }
  parts.push(replayForm(record.event.id));
  parts.push(el("h3", {}, "CloudEvent"), el("pre", { class: "cloudevent" }, JSON.stringify(record.event, null, 2)));
  body.replaceChildren(...parts);
}

function replayForm(eventId) {
  const names = ((state.overview && state.overview.functions) || []).map((f) => f.name);
  const select = el("select", { "aria-label": "function" }, ...names.map((n) => el("option", { value: n }, n)));
  const force = el("input", { type: "checkbox" });
  const result = el("span", { class: "muted" });
  const go = async () => {
    try {
      const answer = await post(`/api/v1/events/${encodeURIComponent(eventId)}/replay`,
        { function: select.value, force: force.checked });
      result.textContent = `replayed to ${answer.function}`;
      setTimeout(() => showEvent(eventId), 1000);
    } catch (error) {
      result.textContent = String(error.message || error);
    }
  };
  return el("div", { class: "replay" }, "Replay to", select,
    el("label", {}, force, " even if it does not subscribe"),
    el("button", { type: "button", onclick: go, disabled: names.length ? null : "" }, "Replay"), result);
}

// -- dead letters -----------------------------------------------------------------

async function showDlq(id) {
  let letters;
  try {
    letters = await api("/api/v1/dlq?limit=500");
  } catch (error) {
    showError(error);
    return;
  }
  state.selected = new Set([...state.selected].filter((n) => letters.some((l) => l.id === n)));
  const rows = letters.map((l) => {
    const box = el("input", { type: "checkbox", "aria-label": `select ${l.id}` });
    box.checked = state.selected.has(l.id);
    box.addEventListener("change", () => { box.checked ? state.selected.add(l.id) : state.selected.delete(l.id); });
    return el("tr", { "data-id": l.id },
      el("td", {}, box),
      el("td", {}, el("a", { href: `#/dlq/${l.id}` }, l.id)),
      el("td", {}, l.subscription),
      el("td", {}, el("a", { href: `#/events/${encodeURIComponent(l.event_id)}` }, l.subject || l.event_id)),
      el("td", { class: "num" }, l.attempts),
      el("td", {}, when(l.finished)),
      el("td", { class: "err" }, lastLine(l.last_error)));
  });
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 7, class: "muted" }, "the dead-letter queue is empty")));
  fill($("dlq").tBodies[0], rows);
  const detail = $("dlq-detail");
  detail.replaceChildren();
  if (id) {
    try {
      const letter = await api(`/api/v1/dlq/${encodeURIComponent(id)}`);
      detail.append(el("h3", {}, `Dead letter ${letter.id} (${letter.subscription})`),
        el("div", { class: "actions" },
          el("button", { type: "button", onclick: () => ask([letter.id]) }, "Redrive this one")),
        el("pre", {}, letter.last_error || ""),
        el("pre", { class: "cloudevent" }, JSON.stringify(letter.event, null, 2)));
    } catch (error) {
      showError(error);
    }
  }
}

function ask(ids) {
  const what = ids === "all" ? "every dead letter" : `${ids.length} dead letter(s)`;
  if (ids !== "all" && !ids.length) {
    $("dlq-result").textContent = "select dead letters first";
    return;
  }
  state.confirm = ids;
  $("confirm-text").textContent = `Redrive ${what}? They will be delivered again.`;
  $("confirm").hidden = false;
}

async function redrive() {
  const ids = state.confirm;
  state.confirm = null;
  $("confirm").hidden = true;
  try {
    const answer = await post("/api/v1/dlq/redrive", ids === "all" ? { all: true } : { ids });
    $("dlq-result").textContent = `redriven: ${answer.redriven}`;
    state.selected.clear();
    location.hash = "#/dlq";
    await showDlq();
    await refresh();
  } catch (error) {
    showError(error);
  }
}

// -- wiring -------------------------------------------------------------------------

function init() {
  window.addEventListener("hashchange", route);
  let typing = null;
  $("filters").addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => { stopLive(); startLive(); }, 300);
  });
  $("filters").addEventListener("submit", (e) => e.preventDefault());
  $("pause-live").addEventListener("click", () => {
    state.livePaused = !state.livePaused;
    $("pause-live").textContent = state.livePaused ? "Resume" : "Pause";
    $("live-state").textContent = state.livePaused ? "paused" : "";
    if (state.livePaused) stopLive();
    else startLive();
  });
  $("redrive-selected").addEventListener("click", () => ask([...state.selected]));
  $("redrive-all").addEventListener("click", () => ask("all"));
  $("confirm-yes").addEventListener("click", redrive);
  $("confirm-no").addEventListener("click", () => { state.confirm = null; $("confirm").hidden = true; });
  $("dlq-every").addEventListener("change", (e) => {
    for (const box of $("dlq").tBodies[0].querySelectorAll("input[type=checkbox]")) {
      box.checked = e.target.checked;
      box.dispatchEvent(new Event("change"));
    }
  });
  setInterval(() => { if (!document.hidden) refresh(); }, 2000);
  route();
}

document.addEventListener("DOMContentLoaded", init);
