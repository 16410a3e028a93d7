// The Multilane admin page: plain DOM code over the JSON API, no build step.
// Every call carries the CSRF header the server asks of cookie-authenticated requests;
// every API error is shown to the operator.
"use strict";

const REFRESH_MS = 1000;
const state = { previous: new Map(), previousAt: 0, hosts: [], partitions: [] };

// ---- helpers -------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value !== undefined && value !== null && value !== false) node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function formatBytes(bytes) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let value = Number(bytes), unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit++; }
  return (unit === 0 ? value : value.toFixed(value < 10 ? 2 : 1)) + " " + units[unit];
}

function showMessage(kind, text) {
  const box = el("div", { class: "message " + kind, role: kind === "error" ? "alert" : "status" },
    el("span", {}, text),
    el("button", { type: "button", title: "dismiss", onclick: () => box.remove() }, "✕"));
  document.getElementById("messages").append(box);
  if (kind === "info") setTimeout(() => box.remove(), 6000);
}

class ApiError extends Error {}

async function api(method, path, body) {
  const options = { method, credentials: "same-origin", headers: { "X-Multilane-Request": "1" } };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, options);
  } catch (e) {
    throw new ApiError(`${method} ${path}: the server did not answer (${e.message})`);
  }
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
  if (!response.ok) {
    const why = (data && data.error) || text || response.statusText;
    throw new ApiError(`${method} ${path} failed (${response.status}): ${why}`);
  }
  return data;
}

// Runs an operator action: shows its error, or a confirmation, then refreshes.
async function act(description, action) {
  try {
    const result = await action();
    if (description) showMessage("info", description);
    await refresh();
    return result;
  } catch (e) {
    showMessage("error", e.message);
    return null;
  }
}

function accessPill(access) {
  return el("span", { class: access === "read-only" ? "pill ro" : "pill" }, access);
}

function fillRows(tableId, rows, emptyText, columns) {
  const body = document.querySelector(`#${tableId} tbody`);
  body.replaceChildren(...(rows.length ? rows
    : [el("tr", { class: "empty" }, el("td", { colspan: columns }, emptyText))]));
}

// ---- rendering -----------------------------------------------------------------------

function renderArray(array) {
  document.getElementById("array-id").textContent =
    `array ${array.id} · ${array.disks.length} disks · chunk ${formatBytes(array.chunk_size)}`;
  const used = array.capacity ? (100 * array.used) / array.capacity : 0;
  document.getElementById("capacity-used").style.width = used.toFixed(1) + "%";
  document.getElementById("capacity-text").textContent =
    `${formatBytes(array.used)} used · ${formatBytes(array.free)} free · ` +
    `${formatBytes(array.capacity)} capacity (${used.toFixed(1)}% used)`;
  fillRows("disks", array.disks.map((d) => el("tr", {},
    el("td", {}, d.index), el("td", {}, d.path),
    el("td", { class: "num" }, formatBytes(d.size)), el("td", { class: "num" }, formatBytes(d.data_size)))),
  "no disks", 4);
}

function renderPartitions(partitions) {
  fillRows("partitions", partitions.map((p) => {
    const grow = el("input", { name: "grow-" + p.name, placeholder: formatBytes(p.size) });
    return el("tr", { "data-name": p.name },
      el("td", {}, p.name), el("td", { class: "num" }, p.id),
      el("td", { class: "num" }, formatBytes(p.size)),
      el("td", {}, p.shared ? "shared" : "private"),
      el("td", {}, p.hosts.length ? p.hosts.map((h) => el("span", { class: "pill" }, `${h.host} (${h.access})`)) : "—"),
      el("td", { class: "num" }, p.lanes),
      el("td", {}, grow, " ", el("button", { type: "button", class: "secondary",
        onclick: () => growPartition(p.name, grow.value) }, "Grow")),
      el("td", {}, el("button", { type: "button", class: "danger",
        onclick: () => deletePartition(p) }, "Delete")));
  }), "No partitions yet: create one below.", 8);
}

function renderHosts(hosts, sessions) {
  fillRows("hosts", hosts.map((h) => {
    const mine = sessions.filter((s) => s.host === h.name);
    const lanes = mine.filter((s) => s.kind === "data").length;
    const control = mine.length - lanes;
    const connection = mine.length
      ? el("span", { class: "pill on" }, `connected: ${control} control, ${lanes} lanes`)
      : el("span", { class: "pill off" }, "offline");
    return el("tr", { "data-name": h.name },
      el("td", {}, h.name),
      el("td", {}, h.partitions.length ? h.partitions.map((p) => el("span", { class: "pill" }, `${p.partition} (${p.access})`)) : "—"),
      el("td", {}, connection),
      el("td", {},
        el("button", { type: "button", class: "secondary", onclick: () => rotateSecret(h.name) }, "Rotate secret"), " ",
        el("button", { type: "button", class: "danger", onclick: () => deleteHost(h.name) }, "Delete")));
  }), "No hosts yet: create one below.", 4);
}

function renderAssignments(assignments) {
  fillRows("assignments", assignments.map((a) => {
    const other = a.access === "read-write" ? "read-only" : "read-write";
    return el("tr", { "data-host": a.host, "data-partition": a.partition },
      el("td", {}, a.host), el("td", {}, a.partition), el("td", {}, accessPill(a.access)),
      el("td", {},
        el("button", { type: "button", class: "secondary",
          onclick: () => assign(a.host, a.partition, other) }, `Make ${other}`), " ",
        el("button", { type: "button", class: "danger",
          onclick: () => revoke(a.host, a.partition) }, "Revoke")));
  }), "No host has access to any partition yet.", 4);
}

// Rebuilds a select's options only when the names changed, so an open drop-down (and
// the operator's choice) survives the refresh.
function fillSelect(select, names) {
  const current = [...select.options].map((o) => o.value);
  if (current.length === names.length && current.every((n, i) => n === names[i])) return;
  const keep = select.value;
  select.replaceChildren(...names.map((n) => el("option", { value: n }, n)));
  if (names.includes(keep)) select.value = keep;
}

function rates(sessions, now) {
  const seconds = state.previousAt ? (now - state.previousAt) / 1000 : 0;
  const out = new Map();
  for (const s of sessions) {
    const before = state.previous.get(s.id);
    const rate = (field) => before && seconds > 0 ? Math.max(0, s[field] - before[field]) / seconds : 0;
    out.set(s.id, { ops: rate("ops"), read: rate("bytes_read"), written: rate("bytes_written") });
  }
  state.previous = new Map(sessions.map((s) => [s.id, s]));
  state.previousAt = now;
  return out;
}

function laneBar(width) {
  const bar = el("span", { class: "lane-bar" });
  bar.style.width = width + "px"; // CSSOM, which the page's CSP allows (unlike style="")
  return bar;
}

function renderSessions(sessions) {
  const perSecond = rates(sessions, performance.now());
  const top = Math.max(1, ...[...perSecond.values()].map((r) => r.read + r.written));
  const rows = sessions.map((s) => {
    const r = perSecond.get(s.id);
    const width = Math.round((120 * (r.read + r.written)) / top);
    return el("tr", { "data-host": s.host, "data-kind": s.kind },
      el("td", {}, s.host), el("td", {}, s.kind),
      el("td", {}, s.partition ?? "—"), el("td", { class: "num" }, s.queue ?? "—"),
      el("td", { class: "num" }, s.lane ?? "—"), el("td", {}, s.peer),
      el("td", { class: "num" }, r.ops.toFixed(0)),
      el("td", { class: "num" }, formatBytes(r.read) + "/s"),
      el("td", { class: "num" }, formatBytes(r.written) + "/s"),
      el("td", {}, s.kind === "data" ? laneBar(width) : ""),
      el("td", { class: "num" }, s.ops), el("td", { class: "num" }, s.errors));
  });
  document.querySelector("#sessions tbody").replaceChildren(...rows);
  document.getElementById("sessions-empty").hidden = sessions.length > 0;
}

// ---- history charts (inline SVG, no library) ------------------------------------------

const HISTORY_REFRESH_MS = 2000;
const HISTORY_MIN_SPAN_MS = 60000;
const SVG_NS = "http://www.w3.org/2000/svg";
const PALETTE = ["#1f5fbf", "#d9480f", "#1a7f37", "#9c36b5", "#c2255c", "#0c8599", "#e67700", "#495057"];
const CHART = { width: 520, height: 150, left: 64, right: 10, top: 10, bottom: 20 };
const HISTORY_KINDS = [["partitions", "Per partition"], ["hosts", "Per host"]];
// [id, caption, label format, the unit the axis is rounded in]
const HISTORY_CHARTS = [
  ["throughput", "Throughput (read + write)", (b) => formatBytes(b) + "/s", 1024 * 1024],
  ["iops", "IOPS", (v) => formatCount(v), 1],
  ["latency", "Latency: p50 solid, p99 dashed", (us) => formatMicros(us), 1],
];

function formatCount(value) {
  if (value >= 1e6) return (value / 1e6).toFixed(1) + "M";
  if (value >= 1e3) return (value / 1e3).toFixed(1) + "k";
  return String(Math.round(value));
}

function formatMicros(us) {
  if (us >= 1e6) return (us / 1e6).toFixed(2) + " s";
  if (us >= 1e3) return (us / 1e3).toFixed(us >= 1e4 ? 0 : 1) + " ms";
  return Math.round(us) + " µs";
}

function svgEl(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

// The smallest 1/2/5 x 10^n at or above `value`, so the axis reads well.
function niceTop(value) {
  if (!(value > 0)) return 1;
  const power = Math.pow(10, Math.floor(Math.log10(value)));
  return [1, 2, 5, 10].map((m) => m * power).find((v) => v >= value);
}

// Draws `lines` ({ color, dash, t: [ms], v: [value or null] }) over the window ending at
// `now`; a null value breaks the line. Records what it drew in data- attributes.
function drawChart(svg, lines, format, unit, now, windowMs) {
  const { width, height, left, right, top, bottom } = CHART;
  const plotW = width - left - right, plotH = height - top - bottom;
  const max = Math.max(0, ...lines.flatMap((l) => l.v.filter((v) => v !== null)));
  const yTop = niceTop(max / unit) * unit;
  const x = (t) => left + plotW * (1 - (now - t) / windowMs);
  const y = (v) => top + plotH * (1 - v / yTop);
  const children = [];
  for (const fraction of [0, 0.5, 1]) {
    const yy = y(yTop * fraction);
    children.push(svgEl("line", { x1: left, x2: width - right, y1: yy, y2: yy, stroke: "#e4e7ec" }));
    children.push(svgEl("text", { x: left - 6, y: yy + 3, "text-anchor": "end" }, format(yTop * fraction)));
  }
  for (const fraction of [1, 2 / 3, 1 / 3, 0]) {
    const ago = windowMs * fraction;
    const label = !ago ? "now" : ago >= 60000 ? `−${Math.round(ago / 60000)} min` : `−${Math.round(ago / 1000)} s`;
    children.push(svgEl("text", { x: x(now - ago), y: height - 6,
      "text-anchor": fraction === 1 ? "start" : fraction ? "middle" : "end" }, label));
  }
  let points = 0;
  for (const line of lines) {
    let segment = [];
    const flush = () => {
      if (segment.length) {
        children.push(svgEl("polyline", { points: segment.join(" "), fill: "none", stroke: line.color,
          "stroke-width": 1.6, "stroke-dasharray": line.dash || "none", "stroke-linejoin": "round" }));
      }
      segment = [];
    };
    line.t.forEach((t, i) => {
      const v = line.v[i];
      if (v === null || t < now - windowMs) { flush(); return; }
      segment.push(`${x(t).toFixed(1)},${y(v).toFixed(1)}`);
      points++;
    });
    flush();
  }
  svg.replaceChildren(...children);
  svg.dataset.max = String(max);
  svg.dataset.points = String(points);
  svg.dataset.last = String(lines.reduce((sum, l) => sum + (l.v[l.v.length - 1] || 0), 0));
}

function historyRow(kind, title) {
  let row = document.getElementById("history-" + kind);
  if (row) return row;
  const figures = HISTORY_CHARTS.map(([chart, caption]) => el("figure", {},
    el("figcaption", {}, caption),
    svgEl("svg", { id: `chart-${kind}-${chart}`, class: "chart",
      viewBox: `0 0 ${CHART.width} ${CHART.height}`, role: "img", "aria-label": `${title}: ${caption}` })));
  row = el("div", { id: "history-" + kind, class: "history-row" },
    el("h3", {}, title), el("div", { class: "charts" }, ...figures),
    el("div", { class: "legend", id: `legend-${kind}` }));
  document.getElementById("history-charts").append(row);
  return row;
}

// The time axis: the whole window once it is full, else what the server has so far
// (at least HISTORY_MIN_SPAN_MS), so a fresh server's first minutes are readable.
function historySpan(history) {
  const oldest = Math.min(history.now_ms, ...["partitions", "hosts"]
    .flatMap((kind) => history[kind].map((s) => (s.t.length ? s.t[0] : history.now_ms))));
  return Math.min(history.window_ms, Math.max(HISTORY_MIN_SPAN_MS, history.now_ms - oldest));
}

function renderHistory(history) {
  const span = historySpan(history);
  for (const [kind, title] of HISTORY_KINDS) {
    historyRow(kind, title);
    const series = history[kind];
    const color = (i) => PALETTE[i % PALETTE.length];
    const sum = (s, a, b) => s[a].map((v, i) => v + s[b][i]);
    const latency = (s, field) => s[field].map((v, i) => (s.iops[i] > 0 ? v : null));
    const lines = {
      throughput: series.map((s, i) => ({ color: color(i), t: s.t, v: sum(s, "read_bps", "write_bps") })),
      iops: series.map((s, i) => ({ color: color(i), t: s.t, v: s.iops })),
      latency: series.flatMap((s, i) => [
        { color: color(i), t: s.t, v: latency(s, "p50_us") },
        { color: color(i), dash: "4 3", t: s.t, v: latency(s, "p99_us") }]),
    };
    for (const [chart, , format, unit] of HISTORY_CHARTS) {
      drawChart(document.getElementById(`chart-${kind}-${chart}`), lines[chart], format, unit,
        history.now_ms, span);
    }
    document.getElementById(`legend-${kind}`).replaceChildren(...(series.length
      ? series.map((s, i) => {
        const swatch = el("span", { class: "swatch" });
        swatch.style.background = color(i); // CSSOM, allowed by the page's CSP
        return el("span", { "data-series": s.name }, swatch, s.name);
      })
      : [el("span", { class: "muted" }, "No traffic in the last 15 minutes.")]));
  }
  fillRows("disk-health", history.disks.map((d) => el("tr", { "data-disk": d.index },
    el("td", {}, d.index), el("td", {}, d.path),
    el("td", {}, el("span", { class: d.healthy ? "pill on" : "pill bad" }, d.healthy ? "healthy" : "I/O errors")),
    el("td", { class: "num" }, d.io_errors), el("td", { class: "num" }, d.errors_in_window),
    el("td", {}, d.last_error
      ? `${new Date(d.last_error.at_unix_ms).toLocaleString()}: ${d.last_error.message}` : "—"))),
  "no disks", 6);
}

let refreshingHistory = false;
let lastHistoryError = "";

async function refreshHistory() {
  if (refreshingHistory) return;
  refreshingHistory = true;
  try {
    renderHistory(await api("GET", "/api/history"));
    lastHistoryError = "";
  } catch (e) {
    if (e.message !== lastHistoryError) showMessage("error", e.message);
    lastHistoryError = e.message;
  } finally {
    refreshingHistory = false;
  }
}

// ---- refresh -------------------------------------------------------------------------

let refreshing = null;
let lastRefreshError = "";

async function refresh() {
  if (refreshing) return refreshing;
  refreshing = (async () => {
    const status = document.getElementById("status");
    try {
      const [array, partitions, hosts, assignments, sessions] = await Promise.all(
        ["array", "partitions", "hosts", "assignments", "sessions"].map((r) => api("GET", "/api/" + r)));
      renderArray(array);
      renderPartitions(partitions.partitions);
      renderHosts(hosts.hosts, sessions.sessions);
      renderAssignments(assignments.assignments);
      renderSessions(sessions.sessions);
      fillSelect(document.querySelector("#assign select[name=host]"), hosts.hosts.map((h) => h.name));
      fillSelect(document.querySelector("#assign select[name=partition]"), partitions.partitions.map((p) => p.name));
      status.textContent = "live · updated " + new Date().toLocaleTimeString();
      status.className = "status ok";
      lastRefreshError = "";
    } catch (e) {
      status.textContent = "not updating";
      status.className = "status bad";
      if (e.message !== lastRefreshError) showMessage("error", e.message);
      lastRefreshError = e.message;
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

// ---- actions -------------------------------------------------------------------------

function growPartition(name, size) {
  if (!size.trim()) { showMessage("error", `Type the new size of ${name} first (e.g. 2G).`); return; }
  act(`Partition ${name} grown to ${size}.`, () => api("PATCH", `/api/partitions/${encodeURIComponent(name)}`, { size }));
}

async function deletePartition(p) {
  if (!confirm(`Delete partition ${p.name} and all its data?`)) return;
  const path = `/api/partitions/${encodeURIComponent(p.name)}`;
  try {
    await api("DELETE", path);
    showMessage("info", `Partition ${p.name} deleted.`);
  } catch (e) {
    if (!/attached/.test(e.message) || !confirm(`${e.message}\n\nDisconnect those hosts and delete anyway?`)) {
      showMessage("error", e.message);
    } else {
      await act(`Partition ${p.name} deleted (its sessions were closed).`, () => api("DELETE", path + "?force=true"));
      return;
    }
  }
  await refresh();
}

function deleteHost(name) {
  if (!confirm(`Delete host ${name}? Its sessions are closed.`)) return;
  act(`Host ${name} deleted.`, () => api("DELETE", `/api/hosts/${encodeURIComponent(name)}`));
}

function showSecret(created) {
  document.getElementById("secret-host").textContent = created.name;
  document.getElementById("secret-value").textContent = created.secret;
  const link = document.getElementById("secret-download");
  link.href = URL.createObjectURL(new Blob([created.secret + "\n"], { type: "text/plain" }));
  link.download = created.secret_file_name;
  link.textContent = `Download ${created.secret_file_name}`;
  document.getElementById("secret-usage").textContent = created.usage;
  document.getElementById("secret-box").hidden = false;
}

async function rotateSecret(name) {
  if (!confirm(`Give host ${name} a new secret? The old one stops working for new connections.`)) return;
  const rotated = await act(`Host ${name} has a new secret.`, () => api("POST", `/api/hosts/${encodeURIComponent(name)}/rotate-secret`));
  if (rotated) showSecret(rotated);
}

function assign(host, partition, access) {
  act(`${host} has ${partition} ${access}.`, () => api("PUT",
    `/api/assignments/${encodeURIComponent(host)}/${encodeURIComponent(partition)}`, { access }));
}

function revoke(host, partition) {
  if (!confirm(`Revoke ${host}'s access to ${partition}? Its I/O on it stops.`)) return;
  act(`${host} no longer has ${partition}.`, () => api("DELETE",
    `/api/assignments/${encodeURIComponent(host)}/${encodeURIComponent(partition)}`));
}

function onSubmit(id, handler) {
  document.getElementById(id).addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = event.target;
    const ok = await handler(new FormData(form), form);
    if (ok) form.reset();
  });
}

function setup() {
  onSubmit("create-partition", (data) => act(`Partition ${data.get("name")} created.`, () =>
    api("POST", "/api/partitions", { name: data.get("name"), size: data.get("size"), shared: data.get("shared") === "on" })));
  onSubmit("create-host", async (data) => {
    const created = await act(`Host ${data.get("name")} created.`, () => api("POST", "/api/hosts", { name: data.get("name") }));
    if (created) showSecret(created);
    return created;
  });
  onSubmit("assign", async (data) => {
    if (!data.get("host") || !data.get("partition")) {
      showMessage("error", "Create a host and a partition first, then pick them here.");
      return null;
    }
    return act(`${data.get("host")} has ${data.get("partition")} ${data.get("access")}.`, () => api("PUT",
      `/api/assignments/${encodeURIComponent(data.get("host"))}/${encodeURIComponent(data.get("partition"))}`,
      { access: data.get("access") }));
  });
  document.getElementById("secret-close").addEventListener("click", () => {
    document.getElementById("secret-box").hidden = true;
    document.getElementById("secret-value").textContent = "";
  });
  refresh();
  setInterval(refresh, REFRESH_MS);
  refreshHistory();
  setInterval(refreshHistory, HISTORY_REFRESH_MS);
}

setup();
