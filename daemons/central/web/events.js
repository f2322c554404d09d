// The events page: the network's Kafka records from Central's /api/v1/events, live through
// /api/v1/events/stream (Server-Sent Events). Newest first; at most MAX_ROWS records in the
// page. Every value from a record goes in with textContent, never as HTML.

const API = "/api/v1/events";
export const MAX_ROWS = 1000;

const $ = (id) => document.getElementById(id);
const rows = $("rows");
const status = $("status");
let stream = null;
let loaded = ""; // what the last load showed
let liveText = ""; // how the live stream is doing ("" when off)
let pending = []; // live records waiting for the next frame
let frameAsked = false;

function showStatus() {
  status.textContent = [loaded, liveText].filter(Boolean).join("; ");
}

function query() {
  const params = new URLSearchParams();
  for (const option of $("topic").selectedOptions) params.append("topic", option.value);
  const partition = $("partition").value.replace(/\s/g, "");
  if (partition) params.set("partition", partition);
  const cp = $("cp").value.trim();
  const driver = $("driver").value.trim();
  if (cp) params.set("cp", cp);
  if (driver) params.set("driver", driver);
  return params;
}

export function flag(record) {
  if (record.error) return "error";
  if (record.sealed) return record.opened ? "opened" : "sealed";
  if (record.signed) return "signed";
  return "plain";
}

export function summary(record) {
  if (!record.event) {
    if (record.error) return "! " + record.error;
    if (record.sealed) return "sealed with " + (record.envelope ? record.envelope.key_id : "?");
    return "";
  }
  const parts = [];
  for (const [name, value] of Object.entries(record.event)) {
    if (name === "type" || value === null || value === "" || name.endsWith("ts_ms")) continue;
    const shown = typeof value === "number" && !Number.isInteger(value) ? Number(value.toFixed(3)) : value;
    parts.push(`${name}=${shown}`);
  }
  const text = parts.join(" ");
  return record.error ? `! ${record.error} | ${text}` : text;
}

function cell(tr, text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  tr.appendChild(td);
  return td;
}

function toggle(tr) {
  const open = tr.getAttribute("aria-expanded") === "true";
  const next = tr.nextElementSibling;
  if (open) {
    if (next && next.classList.contains("detail")) next.remove();
    tr.setAttribute("aria-expanded", "false");
    return;
  }
  const detail = document.createElement("tr");
  detail.className = "detail";
  const td = document.createElement("td");
  td.colSpan = 8;
  const pre = document.createElement("pre");
  pre.textContent = JSON.stringify(tr._record, null, 2);
  td.appendChild(pre);
  detail.appendChild(td);
  tr.after(detail);
  tr.setAttribute("aria-expanded", "true");
}

function row(record) {
  const tr = document.createElement("tr");
  tr.className = "record";
  tr.tabIndex = 0;
  tr.dataset.topic = record.topic;
  tr.dataset.partition = String(record.partition);
  tr.dataset.offset = String(record.offset);
  tr.dataset.key = record.key === null ? "" : record.key;
  tr.setAttribute("aria-expanded", "false");
  tr._record = record;
  cell(tr, record.time || "-");
  cell(tr, record.topic);
  cell(tr, String(record.partition));
  cell(tr, String(record.offset));
  cell(tr, record.key === null ? "-" : record.key);
  cell(tr, record.event_type || "?");
  const f = flag(record);
  const badge = document.createElement("span");
  badge.className = "flag flag-" + f;
  badge.textContent = f;
  cell(tr, "").appendChild(badge);
  cell(tr, summary(record), "summary");
  return tr;
}

// Oldest rows (at the bottom) go once the page holds MAX_ROWS records.
function trim() {
  let records = rows.querySelectorAll("tr.record").length;
  while (records > MAX_ROWS && rows.lastElementChild) {
    const last = rows.lastElementChild;
    last.remove();
    if (last.classList.contains("record")) records -= 1;
  }
  const tail = rows.lastElementChild;
  if (tail && tail.classList.contains("record") && tail.getAttribute("aria-expanded") === "true") {
    tail.setAttribute("aria-expanded", "false");
  }
}

// records: oldest first; shown newest first.
function prepend(records) {
  const fragment = document.createDocumentFragment();
  for (let i = records.length - 1; i >= 0; i -= 1) fragment.appendChild(row(records[i]));
  rows.insertBefore(fragment, rows.firstChild);
  trim();
}

function flush() {
  frameAsked = false;
  const batch = pending;
  pending = [];
  prepend(batch);
}

function onRecord(record) {
  pending.push(record);
  if (pending.length > MAX_ROWS) pending.splice(0, pending.length - MAX_ROWS);
  if (!frameAsked) {
    frameAsked = true;
    requestAnimationFrame(flush);
  }
}

async function load() {
  const params = query();
  params.set("limit", $("limit").value || "200");
  loaded = "Loading…";
  showStatus();
  try {
    const response = await fetch(`${API}?${params}`, { credentials: "same-origin", headers: { Accept: "application/json" } });
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || response.statusText);
    rows.replaceChildren();
    prepend(body);
    loaded = `${body.length} record(s)`;
  } catch (err) {
    loaded = "Cannot load the records: " + err.message;
  }
  showStatus();
}

function stopLive(why) {
  if (stream) stream.close();
  stream = null;
  liveText = why || "";
  showStatus();
}

function startLive() {
  stopLive("connecting live…");
  const source = new EventSource(`${API}/stream?${query()}`, { withCredentials: true });
  stream = source;
  source.addEventListener("live", () => {
    liveText = "Live: new records appear at the top";
    showStatus();
  });
  source.addEventListener("message", (e) => onRecord(JSON.parse(e.data)));
  source.addEventListener("end", (e) => {
    stopLive("the live stream ended: " + JSON.parse(e.data).reason);
    $("live").checked = false;
  });
  source.onerror = () => {
    if (stream !== source) return;
    liveText = "live stream interrupted; reconnecting…";
    showStatus();
  };
}

function apply() {
  load();
  if ($("live").checked) startLive();
}

$("filters").addEventListener("submit", (e) => {
  e.preventDefault();
  apply();
});
$("live").addEventListener("change", () => {
  if ($("live").checked) startLive();
  else stopLive();
});
rows.addEventListener("click", (e) => {
  const tr = e.target.closest("tr.record");
  if (tr) toggle(tr);
});
rows.addEventListener("keydown", (e) => {
  const tr = e.target.closest("tr.record");
  if (!tr) return;
  if (e.key === "Enter" || e.key === " ") {
    e.preventDefault();
    toggle(tr);
  } else if (e.key === "ArrowDown" || e.key === "ArrowUp") {
    e.preventDefault();
    let next = e.key === "ArrowDown" ? tr.nextElementSibling : tr.previousElementSibling;
    while (next && !next.classList.contains("record")) {
      next = e.key === "ArrowDown" ? next.nextElementSibling : next.previousElementSibling;
    }
    if (next) next.focus();
  }
});

const initial = new URLSearchParams(location.search);
for (const option of $("topic").options) option.selected = initial.getAll("topic").includes(option.value);
$("partition").value = initial.get("partition") || "";
$("cp").value = initial.get("cp") || "";
$("driver").value = initial.get("driver") || "";
$("live").checked = initial.get("live") === "1";
apply();
