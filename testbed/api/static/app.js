"use strict";
// The dashboard: a finished run from the API, a run in progress from the /ws/live feed.
// Plain JS, no build and no network beyond this server.

const $ = (sel) => document.querySelector(sel);
const S = {
  selected: null,     // run shown
  liveId: null,       // run in progress on the server, if any
  follow: true,       // switch to a new live run when one starts
  power: { x: [], households: {}, grid: [] },
  trades: [],
  drawPending: false,
};
const chart = new LineChart($("#power-chart"), { xLabel: "market hour", yLabel: "lab W" });

function num(v, digits) {
  if (v === null || v === undefined || !isFinite(v)) { return "–"; }
  return String(Number(Number(v).toFixed(digits === undefined ? 4 : digits)));
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) { e.textContent = text; }
  if (cls) { e.className = cls; }
  return e;
}

async function api(path, opts) {
  const r = await fetch(path, opts);
  let body = null;
  try { body = await r.json(); } catch (_) { body = null; }
  if (!r.ok) {
    const err = new Error((body && body.detail) ? String(body.detail) : r.statusText);
    err.status = r.status;
    throw err;
  }
  return body;
}

// -- panels -----------------------------------------------------------------------------

function setStatus(status) {
  const b = $("#run-status");
  b.textContent = status || "–";
  b.dataset.status = status || "";
}

function setSafety(state, events) {
  const b = $("#safety-state");
  b.textContent = "safety: " + (state || "–");
  b.dataset.state = state || "";
  if (events) {
    const ul = $("#safety-events");
    ul.replaceChildren();
    for (const e of events.slice(-12).reverse()) { ul.append(safetyItem(e)); }
  }
}

function safetyItem(e) {
  const bits = [e.event];
  if (e.household) { bits.push("rig " + e.household); }
  if (e.reason) { bits.push(e.reason); }
  if (e.source) { bits.push("from " + e.source); }
  if (e.errors && e.errors.length) { bits.push(e.errors.length + " errors"); }
  return el("li", bits.join(" · "));
}

function addSafety(e) {
  const ul = $("#safety-events");
  ul.prepend(safetyItem(e));
  while (ul.children.length > 12) { ul.lastChild.remove(); }
}

function setClearing(c) {
  const p = $("#clearing-price");
  p.textContent = c ? num(c.price) : "–";
  p.dataset.value = c && c.price !== null && c.price !== undefined ? String(c.price) : "";
  $("#clearing-method").textContent = c && c.method !== null && c.method !== undefined
    ? String(c.method) : "–";
  $("#volume").textContent = c ? num(c.volume_kwh, 3) : "–";
}

function setOrderbook(book) {
  const tb = $("#orderbook tbody");
  tb.replaceChildren();
  $("#orderbook-interval").textContent = book && book.interval !== null
    && book.interval !== undefined ? "interval " + book.interval : "";
  if (!book) { return; }
  const orders = [...book.orders].sort((a, b) =>
    a.side === b.side ? (a.side === "sell" ? a.price - b.price : b.price - a.price)
      : (a.side === "sell" ? -1 : 1));
  for (const o of orders) {
    const tr = el("tr");
    tr.append(el("td", o.household), el("td", o.side, o.side), el("td", num(o.energy_kwh, 3)),
              el("td", num(o.price)));
    tb.append(tr);
  }
}

function setTrades(list) {
  S.trades = list.slice();
  const tb = $("#trades tbody");
  tb.replaceChildren();
  for (const t of S.trades) { tb.append(tradeRow(t)); }
  $("#trade-count").textContent = "(" + S.trades.length + ")";
}

function tradeRow(t) {
  const tr = el("tr");
  tr.append(el("td", String(t.seq)), el("td", t.seller), el("td", t.buyer),
            el("td", num(t.energy_kwh, 3)), el("td", num(t.price)));
  return tr;
}

function addTrade(t) {
  S.trades.push(t);
  $("#trades tbody").append(tradeRow(t));
  $("#trade-count").textContent = "(" + S.trades.length + ")";
}

function setHead(height, hash) {
  $("#ledger-height").textContent = height === null || height === undefined ? "–" : String(height);
  const h = $("#ledger-head");
  h.textContent = hash ? hash.slice(0, 16) + "…" : "–";
  h.title = hash || "";
  h.dataset.hash = hash || "";
}

function setVerified(v) {
  const d = $("#ledger-verified");
  if (!v) { d.textContent = "–"; d.className = ""; return; }
  d.textContent = v.ok ? "✓ verified (" + v.blocks + " blocks)"
    : "✗ block " + v.height + ": " + v.reason;
  d.className = v.ok ? "ok" : "bad";
}

function setValidation(v) {
  const d = $("#validation");
  if (!v || !v.total) { d.textContent = "–"; d.className = ""; return; }
  d.textContent = v.passed + "/" + v.total + " checks passed";
  d.className = v.ok ? "ok" : "bad";
}

// -- power chart ------------------------------------------------------------------------

function resetPower() {
  S.power = { x: [], households: {}, grid: [] };
  drawPower();
}

function setPowerFromApi(r) {
  const x = r.hours || r.t;
  S.power = { x: x.slice(), households: {}, grid: r.grid_w.slice() };
  for (const [h, v] of Object.entries(r.households)) { S.power.households[h] = v.slice(); }
  chart.xLabel = r.hours ? "market hour" : "lab s";
  drawPower();
}

function pushPower(point) {
  const p = S.power;
  const n = p.x.length;
  p.x.push(point.hour !== null && point.hour !== undefined ? point.hour : point.t);
  for (const [h, w] of Object.entries(point.power_w)) {
    if (!p.households[h]) { p.households[h] = new Array(n).fill(null); }
  }
  for (const h of Object.keys(p.households)) {
    p.households[h].push(h in point.power_w ? point.power_w[h] : null);
  }
  p.grid.push(point.grid_w);
  if (p.x.length > 3000) {  // keep the page light on a long run: halve the resolution
    const keep = (_, i) => i % 2 === 0;
    p.x = p.x.filter(keep);
    p.grid = p.grid.filter(keep);
    for (const h of Object.keys(p.households)) { p.households[h] = p.households[h].filter(keep); }
  }
  schedulePowerDraw();
}

function schedulePowerDraw() {
  if (S.drawPending) { return; }
  S.drawPending = true;
  requestAnimationFrame(() => { S.drawPending = false; drawPower(); });
}

function naturalKeys(obj) {
  return Object.keys(obj).sort((a, b) => {
    const na = Number(a); const nb = Number(b);
    return isFinite(na) && isFinite(nb) ? na - nb : a.localeCompare(b);
  });
}

function drawPower() {
  const ids = naturalKeys(S.power.households);
  const series = ids.map((h, i) => ({ name: "household " + h, values: S.power.households[h],
                                      color: PALETTE[i % PALETTE.length] }));
  if (S.power.grid.length) {
    series.push({ name: "grid", values: S.power.grid, color: "#111", width: 2.5 });
  }
  chart.setData(S.power.x, series);
  const legend = $("#legend");
  legend.replaceChildren();
  for (const s of series) {
    const span = el("span", s.name);
    span.style.setProperty("--c", s.color);
    legend.append(span);
  }
}

// -- loading a run ----------------------------------------------------------------------

async function loadRuns() {
  const runs = await api("/api/runs");
  const sel = $("#run-select");
  const current = S.selected;
  sel.replaceChildren();
  for (const r of runs) {
    const o = el("option", r.id + " · " + (r.scenario || "?") + " · " + (r.status || "?"));
    o.value = r.id;
    sel.append(o);
  }
  if (current) { sel.value = current; }
  return runs;
}

async function loadRun(id) {
  S.selected = id;
  $("#run-select").value = id;
  const enc = encodeURIComponent(id);
  const [run, ivs, book, trades, blocks, verify, validation, power, live] = await Promise.all([
    api("/api/runs/" + enc), api("/api/runs/" + enc + "/intervals"),
    api("/api/runs/" + enc + "/orderbook"), api("/api/runs/" + enc + "/trades"),
    api("/api/runs/" + enc + "/blocks"), api("/api/runs/" + enc + "/verify"),
    api("/api/runs/" + enc + "/validation"), api("/api/runs/" + enc + "/readings"),
    api("/api/live"),
  ]);
  if (S.selected !== id) { return; }  // the user moved on meanwhile
  $("#run-title").textContent = (run.scenario || "") + " on " + (run.rig || "");
  setStatus(run.status);
  const last = ivs.length ? ivs[ivs.length - 1] : null;
  setClearing(last ? { price: last.clearing_price, method: last.method,
                       volume_kwh: last.volume_kwh } : null);
  setOrderbook(book.orders.length ? book : null);
  setTrades(trades);
  const head = blocks.length ? blocks[blocks.length - 1] : null;
  setHead(blocks.length, head ? head.hash : null);
  setVerified(verify);
  setValidation(validation);
  setPowerFromApi(power);
  if (live.run && live.run.id === id && live.active.includes(id)) {
    // A run in progress has written nothing for its current interval yet: show the feed.
    applySnapshot(live, false);
  } else if (live.run && live.run.id === id) {
    // Ended while this server watched it: the database has what was committed; an
    // interval cut short by a stop was not, so its values come from the feed.
    setSafety(live.safety.state, live.safety.events);
    if (!ivs.length) { applySnapshot(live, true); }
  } else {
    setSafety(run.status === "running" ? "running" : "safe", []);
  }
}

function applySnapshot(snap, uncommittedOnly) {
  // uncommittedOnly: the run has ended; keep its status and ledger from the database.
  if (!snap.run || snap.run.id !== S.selected) { return; }
  if (!uncommittedOnly) {
    setStatus(snap.run.status);
    setSafety(snap.safety.state, snap.safety.events);
  }
  if (snap.history.length && (!uncommittedOnly || !S.power.x.length)) {
    S.power = { x: [], households: {}, grid: [] };
    chart.xLabel = "market hour";
    for (const p of snap.history) { pushPower(p); }
  }
  if (snap.orderbook) { setOrderbook(snap.orderbook); }
  if (snap.clearing) { setClearing(snap.clearing); }
  if (snap.trades.length) { setTrades(snap.trades); }
  if (snap.block && !uncommittedOnly) { setHead(snap.block.height + 1, snap.block.hash); }
}

// -- the live feed ----------------------------------------------------------------------

function startLiveRun(run) {
  S.liveId = run.id;
  if (!S.follow || S.selected === run.id) { return; }
  S.selected = run.id;
  $("#run-title").textContent = (run.scenario || "") + " on " + (run.rig || "");
  setStatus(run.status);
  setSafety("running", []);
  resetPower();
  setClearing(null);
  setOrderbook(null);
  setTrades([]);
  setVerified(null);
  setValidation(null);
  setHead(null, null);
  loadRuns().then(() => { $("#run-select").value = run.id; }).catch(() => {});
  // The run's genesis block is on disk before its first event; interval blocks follow live.
  api("/api/runs/" + encodeURIComponent(run.id) + "/blocks").then((blocks) => {
    if (S.selected === run.id && blocks.length && !$("#ledger-head").dataset.hash) {
      setHead(blocks.length, blocks[blocks.length - 1].hash);
    }
  }).catch(() => {});
}

function onMessage(msg) {
  const p = msg.payload || {};
  if (msg.topic === "snapshot") {
    if (p.run && p.run.id && ["running", "resumed"].includes(p.run.status)) {
      startLiveRun(p.run);
      applySnapshot(p, false);
    }
    return;
  }
  if (msg.topic === "status" && ["running", "resumed"].includes(p.status)
      && p.id !== S.liveId) {
    startLiveRun(p);
  }
  const mine = (p.run || p.id) === S.selected;
  switch (msg.topic) {
    case "status":
      if (!mine) { break; }
      setStatus(p.status);
      if (!["running", "resumed"].includes(p.status)) {
        S.liveId = null;
        // The run has ended: everything is in the database now.
        loadRuns().then(() => loadRun(p.id)).catch(() => {});
      }
      break;
    case "readings": if (mine) { pushPower(p); } break;
    case "orderbook": if (mine) { setOrderbook(p); } break;
    case "clearing": if (mine) { setClearing(p); } break;
    case "trade": if (mine) { addTrade(p); } break;
    case "block": if (mine) { setHead(p.height + 1, p.hash); } break;
    case "safety":
      addSafety(p);
      if (p.event === "estop" || p.event === "estop_requested") { setSafety("estop"); }
      else if (p.event === "safe_state") { setSafety(p.complete === false ? "unsafe" : "safe"); }
      else if (p.event === "rig_off_bus") { setSafety("tripped"); }
      break;
    default: break;
  }
}

function connect(delay) {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(proto + "://" + location.host + "/ws/live");
  ws.onopen = () => { $("#conn").textContent = "● live"; delay = 500; };
  ws.onmessage = (ev) => { onMessage(JSON.parse(ev.data)); };
  ws.onclose = () => {
    $("#conn").textContent = "○ reconnecting";
    setTimeout(() => connect(Math.min((delay || 500) * 2, 10000)), delay || 500);
  };
}

// -- emergency stop ---------------------------------------------------------------------

function setupEstop() {
  const dlg = $("#estop-dialog");
  $("#estop-button").addEventListener("click", () => {
    $("#estop-token").value = sessionStorage.getItem("testbed-token") || "";
    $("#estop-result").textContent = "";
    dlg.showModal();
    $("#estop-token").focus();
  });
  $("#estop-cancel").addEventListener("click", (ev) => { ev.preventDefault(); dlg.close(); });
  $("#estop-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const token = $("#estop-token").value;
    const out = $("#estop-result");
    out.textContent = "stopping…";
    try {
      const r = await api("/api/estop", {
        method: "POST",
        headers: { "Authorization": "Bearer " + token, "Content-Type": "application/json" },
        body: JSON.stringify({ reason: "emergency stop (dashboard)" }),
      });
      sessionStorage.setItem("testbed-token", token);
      out.textContent = r.stopped.length ? "stopped: " + r.stopped.join(", ")
        : "no run in progress; nothing to stop";
      out.className = "ok";
    } catch (e) {
      out.textContent = "refused (" + (e.status || "network") + "): " + e.message;
      out.className = "bad";
    }
  });
}

// -- start ------------------------------------------------------------------------------

async function main() {
  setupEstop();
  $("#run-select").addEventListener("change", (ev) => {
    S.follow = ev.target.value === S.liveId;
    loadRun(ev.target.value).catch((e) => { $("#run-title").textContent = e.message; });
  });
  drawPower();
  window.addEventListener("resize", schedulePowerDraw);
  try {
    const [runs, live] = await Promise.all([loadRuns(), api("/api/live")]);
    if (live.active.length) { S.liveId = live.active[0]; }
    const first = S.liveId || (runs.length ? runs[0].id : null);
    if (first) { await loadRun(first); }
  } catch (e) {
    $("#run-title").textContent = "API unavailable: " + e.message;
  }
  connect(500);
  document.body.dataset.ready = "1";
}

main();
