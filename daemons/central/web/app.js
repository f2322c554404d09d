// The operator's console: Central's live stream drawn as a grid of CP tiles and a few panes.
//
// One EventSource on /api/v1/stream: a snapshot, then diffs (only what changed). Each tile is
// kept in a Map by CP id and updated field by field when its CP changed: no full re-render, so
// thousands of CPs stay cheap. Filtering toggles `hidden` on tiles. Commands are fetch() calls
// with JSON bodies (the server refuses state-changing requests that are not JSON).
//
// At 5,000 CPs a few thousand readings arrive a second. Only what can be seen is drawn:
// a tile off screen keeps its CP's latest JSON and its data-state (filters, counts and
// tests read it) and gets its text when it scrolls into view; the panes are redrawn at
// most once a second. `window.evprotoConsole` counts the work (benchmarks/console_cost.py).

const API = "/api/v1";
const MAX_ROWS = 200; // rows drawn in a pane; the rest is counted
const MAX_MESSAGES = 200;

const $ = (sel) => document.querySelector(sel);
const el = (tag, props = {}, text = "") => {
  const node = document.createElement(tag);
  Object.assign(node, props);
  if (text) node.textContent = text;
  return node;
};

/** id -> {el, cp, parts}: the tile of each CP and what it shows now. */
const tiles = new Map();
/** state name -> {label, short, color, background} (the panel's table, from the server). */
const looks = new Map();
const counts = new Map();
const requests = new Map();
const weatherIds = new Set();
let me = { role: "viewer", name: "", may: ["viewer"] };
let filter = { text: "", state: "" };
let source = null;
/** What drawing costs: read by benchmarks/console_cost.py. */
const stats = { snapshots: 0, diffs: 0, applyMs: 0, tilesDrawn: 0, tilesDeferred: 0 };
window.evprotoConsole = stats;
/** Tiles on screen (IntersectionObserver); the others are drawn when they scroll into view. */
const onScreen = new Set();
const PANES_EVERY_MS = 1000;

const fmt = (v, digits) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));
const alertText = (a) => a.replaceAll("_", " ");
const canOperate = () => me.may.includes("operator");
const isAdmin = () => me.may.includes("admin");
const time = (iso) => (iso ? new Date(iso).toLocaleTimeString() : "");

// -- tiles ------------------------------------------------------------------------------

function stopReason(cp) {
  // The CP JSON names a weather stop in its alerts; any other stop is the operator's.
  return cp.alerts.includes("weather") ? "weather" : "operator";
}

function detailText(cp) {
  if (cp.state === "SUPPLYING") return `driver ${cp.driver_id ?? "–"}`;
  return looks.get(cp.state)?.label ?? "";
}

function figuresText(cp) {
  if (cp.state === "SUPPLYING") {
    return `${fmt(cp.power_kw, 1)} kW · ${fmt(cp.energy_kwh, 2)} kWh · ${fmt(cp.amount_eur, 2)} EUR`;
  }
  if (cp.state === "STOPPED") return `reason: ${stopReason(cp)}`;
  return "";
}

function newTile(cp) {
  const node = el("article", { className: "tile" });
  node.setAttribute("role", "listitem");
  node.dataset.cpId = cp.id;
  const parts = {
    id: el("span", {}, cp.id),
    state: el("span", { className: "state-name" }),
    location: el("p", { className: "loc" }),
    price: el("p", { className: "price" }),
    detail: el("p", { className: "state" }),
    figures: el("p", { className: "figures" }),
    alerts: el("p", { className: "alerts" }),
  };
  const title = el("h3");
  title.append(parts.id, parts.state);
  node.append(title, parts.location, parts.price, parts.detail, parts.figures, parts.alerts);
  if (canOperate()) {
    const actions = el("div", { className: "actions" });
    for (const [action, word] of [["stop", "Stop"], ["resume", "Resume"]]) {
      const button = el("button", { type: "button" }, word);
      button.dataset.action = action;
      button.setAttribute("aria-label", `${word} ${cp.id}`);
      actions.append(button);
    }
    node.append(actions);
  }
  return { el: node, cp: null, parts };
}

function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

function drawTile(tile, cp) {
  const old = tile.cp;
  const { parts, el: node } = tile;
  if (!old || old.state !== cp.state) {
    node.dataset.state = cp.state;
    const look = looks.get(cp.state);
    node.style.backgroundColor = look ? look.background : "";
    node.style.color = look ? look.color : "";
    setText(parts.state, cp.state);
    countState(old?.state, cp.state);
  }
  tile.cp = cp;
  node.hidden = !matches(cp);
  if (!onScreen.has(node) && tile.drawn && old && old.alerts.join(",") === cp.alerts.join(",")) {
    tile.stale = true; // drawn when it scrolls into view
    stats.tilesDeferred += 1;
    return;
  }
  drawText(tile, cp, old);
}

function drawText(tile, cp, old) {
  const { parts } = tile;
  tile.drawn = true;
  tile.stale = false;
  stats.tilesDrawn += 1;
  setText(parts.location, cp.location);
  setText(parts.price, `${cp.price_eur_kwh} EUR/kWh`);
  setText(parts.detail, detailText(cp));
  setText(parts.figures, figuresText(cp));
  const alertsKey = cp.alerts.join(",");
  if (!old || old.alerts.join(",") !== alertsKey) {
    parts.alerts.replaceChildren(
      ...cp.alerts.map((a) => {
        const badge = el("span", { className: "badge" }, alertText(a));
        badge.dataset.alert = a;
        return badge;
      }),
    );
    const weather = cp.alerts.includes("weather") || cp.alerts.includes("weather_unknown");
    if (weather) weatherIds.add(cp.id);
    else weatherIds.delete(cp.id);
    dirty.weather = true;
  }
}

const visibility = new IntersectionObserver(
  (entries) => {
    for (const entry of entries) {
      if (entry.isIntersecting) {
        onScreen.add(entry.target);
        const tile = tiles.get(entry.target.dataset.cpId);
        if (tile?.stale) drawText(tile, tile.cp, tile.cp);
      } else {
        onScreen.delete(entry.target);
      }
    }
  },
  { rootMargin: "200px" },
);

function upsertCps(cps, fragment) {
  for (const cp of cps) {
    let tile = tiles.get(cp.id);
    if (!tile) {
      tile = newTile(cp);
      tiles.set(cp.id, tile);
      visibility.observe(tile.el);
      (fragment ?? $("#grid")).append(tile.el);
    }
    drawTile(tile, cp);
  }
}

function removeCps(ids) {
  for (const id of ids) {
    const tile = tiles.get(id);
    if (!tile) continue;
    countState(tile.cp.state, null);
    visibility.unobserve(tile.el);
    onScreen.delete(tile.el);
    tile.el.remove();
    tiles.delete(id);
    weatherIds.delete(id);
    dirty.weather = true;
  }
}

// -- counts and filters -----------------------------------------------------------------

function countState(before, after) {
  if (before) counts.set(before, (counts.get(before) ?? 1) - 1);
  if (after) counts.set(after, (counts.get(after) ?? 0) + 1);
  dirty.counts = true;
}

function drawCounts() {
  const items = [el("li", {}, `${tiles.size} CPs`)];
  for (const [state, look] of looks) {
    const item = el("li", {}, `${counts.get(state) ?? 0} ${state.toLowerCase()}`);
    item.dataset.state = state;
    item.style.backgroundColor = look.background;
    item.style.color = look.color;
    items.push(item);
  }
  $("#counts").replaceChildren(...items);
}

function matches(cp) {
  if (filter.state && cp.state !== filter.state) return false;
  if (!filter.text) return true;
  return cp.id.toLowerCase().includes(filter.text) || cp.location.toLowerCase().includes(filter.text);
}

function applyFilter() {
  filter = { text: $("#search").value.trim().toLowerCase(), state: $("#state-filter").value };
  for (const tile of tiles.values()) tile.el.hidden = !matches(tile.cp);
}

// -- panes ------------------------------------------------------------------------------

const dirty = { counts: false, weather: false, requests: false };

function row(cells) {
  const tr = el("tr");
  for (const c of cells) tr.append(el("td", {}, String(c ?? "")));
  return tr;
}

function fill(tableSel, rows, total) {
  const body = $(`${tableSel} tbody`);
  const shown = rows.slice(0, MAX_ROWS);
  if (total > shown.length) shown.push(row([`+${total - shown.length} more`]));
  body.replaceChildren(...shown);
}

function drawRequests() {
  const list = [...requests.values()].sort((a, b) => a.id - b.id);
  $("#requests-count").textContent = `(${list.length})`;
  fill(
    "#requests",
    list.slice(0, MAX_ROWS).map((s) =>
      row([s.id, s.cp_id, s.driver_id, s.status, fmt(s.energy_kwh, 2), fmt(s.amount_eur, 2), time(s.started_at)]),
    ),
    list.length,
  );
}

function drawTickets(tickets) {
  fill(
    "#tickets",
    tickets.map((s) =>
      row([s.id, s.cp_id, s.driver_id, s.status, fmt(s.energy_kwh, 2), fmt(s.amount_eur, 2), time(s.ended_at), s.end_reason]),
    ),
    tickets.length,
  );
}

function drawWeather() {
  const ids = [...weatherIds].sort();
  $("#weather-count").textContent = `(${ids.length})`;
  const items = ids.slice(0, MAX_ROWS).map((id) => {
    const cp = tiles.get(id).cp;
    const what = cp.alerts.includes("weather") ? "stopped: below 0 °C" : "weather unknown";
    const item = el("li", {}, `${id} at ${cp.location}: ${what}`);
    item.dataset.weatherCp = id; // not data-cp-id: that names tiles only
    return item;
  });
  if (!ids.length) items.push(el("li", { className: "dim" }, "none"));
  if (ids.length > MAX_ROWS) items.push(el("li", {}, `+${ids.length - MAX_ROWS} more`));
  $("#weather").replaceChildren(...items);
}

function addMessages(messages) {
  const list = $("#messages");
  for (const m of messages) {
    const item = el("li", {}, `${time(m.ts)} ${m.level === "info" ? "" : m.level.toUpperCase() + ": "}${m.text}`);
    item.dataset.level = m.level;
    list.prepend(item);
  }
  while (list.childElementCount > MAX_MESSAGES) list.lastElementChild.remove();
}

async function getJson(path) {
  const answer = await fetch(path, { headers: { Accept: "application/json" } });
  if (answer.status === 401) {
    window.location.assign("/login");
    throw new Error("not logged in");
  }
  const body = await answer.json();
  if (!answer.ok) throw new Error(body.error ?? `HTTP ${answer.status}`);
  return body;
}

async function loadDrivers() {
  try {
    const drivers = await getJson(`${API}/drivers`);
    $("#drivers-count").textContent = `(${drivers.length})`;
    $("#drivers").replaceChildren(...drivers.slice(0, 2000).map((d) => el("li", {}, d)));
  } catch (err) {
    notice(`drivers: ${err.message}`, true);
  }
}

async function loadAudit() {
  try {
    const entries = await getJson(`${API}/audit?limit=200`);
    const rows = entries.reverse().map((e) => row([e.ts, e.actor, e.source, e.action, e.object, e.outcome]));
    fill("#audit", rows, rows.length);
  } catch (err) {
    notice(`audit log: ${err.message}`, true);
  }
}

function notice(text, error = false) {
  const node = $("#notice");
  node.textContent = text;
  node.classList.toggle("error", error);
}

// -- the stream -------------------------------------------------------------------------

let panesAt = 0;
let panesTimer = null;

function drawPanes() {
  panesTimer = null;
  panesAt = performance.now();
  if (dirty.counts) drawCounts();
  if (dirty.weather) drawWeather();
  if (dirty.requests) drawRequests();
  dirty.counts = dirty.weather = dirty.requests = false;
}

function apply(update) {
  const t0 = performance.now();
  applyUpdate(update);
  if (update.type === "snapshot" || performance.now() - panesAt >= PANES_EVERY_MS) {
    if (panesTimer !== null) clearTimeout(panesTimer);
    drawPanes();
  } else if (panesTimer === null && (dirty.counts || dirty.weather || dirty.requests)) {
    panesTimer = setTimeout(drawPanes, PANES_EVERY_MS - (performance.now() - panesAt));
  }
  if (update.type === "snapshot") stats.snapshots += 1;
  else stats.diffs += 1;
  stats.applyMs += performance.now() - t0;
}

function applyUpdate(update) {
  if (update.type === "snapshot") {
    looks.clear();
    for (const look of update.looks) looks.set(look.state, look);
    fillStateFilter();
    const fresh = new Set(update.cps.map((cp) => cp.id));
    removeCps([...tiles.keys()].filter((id) => !fresh.has(id)));
    const fragment = document.createDocumentFragment();
    upsertCps(update.cps, fragment);
    $("#grid").append(fragment);
    requests.clear();
    $("#messages").replaceChildren();
  } else if (update.cps) {
    upsertCps(update.cps);
  }
  if (update.removed) removeCps(update.removed);
  if (update.requests) {
    for (const s of update.requests) requests.set(s.id, s);
    dirty.requests = true;
  }
  if (update.requests_ended) {
    for (const id of update.requests_ended) requests.delete(id);
    dirty.requests = true;
  }
  if (update.messages) addMessages(update.messages);
  if (update.tickets) drawTickets(update.tickets);
  if (update.status) {
    $("#central-id").textContent = update.status.central_id ?? "";
    if (update.status.kafka_ok === false) notice("Central cannot reach Kafka", true);
  }
}

function fillStateFilter() {
  const select = $("#state-filter");
  if (select.options.length > 1) return;
  for (const state of looks.keys()) select.append(el("option", { value: state }, state));
}

function connect() {
  const conn = $("#conn");
  source = new EventSource(`${API}/stream`);
  source.onopen = () => {
    conn.dataset.conn = "live";
    conn.textContent = "live";
  };
  source.onmessage = (event) => apply(JSON.parse(event.data));
  source.onerror = async () => {
    conn.dataset.conn = "connecting";
    conn.textContent = "reconnecting…";
    if (source.readyState === EventSource.CLOSED) {
      // Refused (the session ended?) rather than cut: find out, then try again.
      try {
        await getJson(`${API}/whoami`);
        setTimeout(connect, 2000);
      } catch {
        /* sent to the login page */
      }
    }
  };
}

// -- commands ---------------------------------------------------------------------------

async function command(action, cpId) {
  const path = cpId ? `${API}/cps/${encodeURIComponent(cpId)}/${action}` : `${API}/cps/${action}`;
  const answer = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: "{}",
  });
  const body = await answer.json().catch(() => ({}));
  if (answer.ok) notice(`${action.toUpperCase()} sent to ${body.cps?.join(", ") || "no charge point"}`);
  else notice(`${action} ${cpId ?? "all"}: ${body.error ?? `HTTP ${answer.status}`}`, true);
}

function onClick(event) {
  const button = event.target.closest("button[data-action]");
  if (!button) return;
  const action = button.dataset.action;
  if (action === "stop-all" || action === "resume-all") {
    const verb = action.split("-")[0];
    if (window.confirm(`${verb === "stop" ? "Stop" : "Resume"} every charge point?`)) command(verb, null);
    return;
  }
  const tile = button.closest("[data-cp-id]");
  if (tile) command(action, tile.dataset.cpId);
}

async function logout() {
  await fetch("/logout", { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" });
  window.location.assign("/login");
}

// -- start ------------------------------------------------------------------------------

async function start() {
  me = await getJson(`${API}/whoami`);
  me.may ??= [me.role];
  $("#who").textContent = `${me.name} (${me.role})`;
  for (const node of document.querySelectorAll(".operator-only")) node.hidden = !canOperate();
  for (const node of document.querySelectorAll(".admin-only")) node.hidden = !isAdmin();
  $("#logout").hidden = me.login === false; // --insecure: nobody logged in
  document.body.addEventListener("click", onClick);
  $("#search").addEventListener("input", applyFilter);
  $("#state-filter").addEventListener("change", applyFilter);
  $("#logout").addEventListener("click", logout);
  $("#drivers-refresh").addEventListener("click", loadDrivers);
  $("#audit-refresh").addEventListener("click", loadAudit);
  connect();
  loadDrivers();
  if (isAdmin()) loadAudit();
  setInterval(loadDrivers, 30_000);
}

start().catch((err) => notice(`the console could not start: ${err.message}`, true));
