// Drives headless Chromium over WebDriver (chromedriver) through the admin page, as an
// operator would: log in with the token, create a host and a partition, assign them,
// see an error shown, watch a host's sessions and throughput appear in the live view,
// see the history charts (throughput, IOPS, latency per partition and per host) move
// under that load and the disk health table, revoke the access and see the lanes go. Saves screenshots. Plain node (>= 18): fetch
// and child_process, no npm packages.
//
// Environment: WEBDRIVER (chromedriver URL), ADMIN_URL, TOKEN_FILE, SERVER (host:port of
// the array server), BIN (folder of the release binaries), WORK (temp folder), OUT
// (screenshot folder).
import { spawn } from "node:child_process";
import { readFileSync, writeFileSync, mkdirSync } from "node:fs";

const env = (name) => {
  if (!process.env[name]) throw new Error(`${name} is not set`);
  return process.env[name];
};
const [WEBDRIVER, ADMIN_URL, SERVER, BIN, WORK, OUT] =
  ["WEBDRIVER", "ADMIN_URL", "SERVER", "BIN", "WORK", "OUT"].map(env);
const TOKEN = readFileSync(env("TOKEN_FILE"), "utf8").trim();
const ELEMENT = "element-6066-11e4-a52e-4f735466cecf";
const children = [];
const measured = {};
// New points (one a second per series) the history charts must gain under load.
const HISTORY_NEW_POINTS = 5;

function log(message) {
  console.log(`browser-test: ${message}`);
}

async function wd(method, path, body) {
  const response = await fetch(WEBDRIVER + path, {
    method,
    headers: { "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json();
  if (!response.ok) {
    throw new Error(`WebDriver ${method} ${path}: ${JSON.stringify(data.value)}`);
  }
  return data.value;
}

let session = null;
const s = (path) => `/session/${session}${path}`;

async function newSession() {
  const args = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1400,1900", `--user-data-dir=${WORK}/chromium-profile`,
  ];
  const value = await wd("POST", "/session", {
    capabilities: { alwaysMatch: {
      browserName: "chrome",
      "goog:loggingPrefs": { browser: "ALL" },
      "goog:chromeOptions": { binary: process.env.CHROMIUM || "/usr/bin/chromium", args },
    } },
  });
  session = value.sessionId;
}

async function find(css) {
  const found = await wd("POST", s("/elements"), { using: "css selector", value: css });
  return found.map((e) => e[ELEMENT]);
}

async function script(source, ...args) {
  return wd("POST", s("/execute/sync"), { script: source, args });
}

// Polls `check` (async, returns a value or null) until it gives a value or `seconds` pass.
async function waitFor(what, seconds, check) {
  const deadline = Date.now() + seconds * 1000;
  let last = null;
  for (;;) {
    try {
      const value = await check();
      if (value) return value;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${seconds} s waiting for ${what}${last ? `: ${last.message}` : ""}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

async function type(css, text) {
  const [element] = await waitFor(css, 10, async () => (await find(css)).length && find(css));
  await wd("POST", s(`/element/${element}/clear`), {});
  await wd("POST", s(`/element/${element}/value`), { text });
}

// Clicks the element `css` names, finding it afresh on each try (the page re-renders
// its tables every second, which makes older element references stale).
async function click(css) {
  await waitFor(`a click on ${css}`, 10, async () => {
    const [element] = await find(css);
    if (!element) return false;
    await wd("POST", s(`/element/${element}/click`), {});
    return true;
  });
}

async function text(css) {
  return script("const e = document.querySelector(arguments[0]); return e ? e.textContent : null;", css);
}

async function screenshot(name) {
  const png = await wd("GET", s("/screenshot"));
  mkdirSync(OUT, { recursive: true });
  writeFileSync(`${OUT}/${name}`, Buffer.from(png, "base64"));
  log(`screenshot ${OUT}/${name}`);
}

function start(name, args) {
  const child = spawn(`${BIN}/${name}`, args, { stdio: ["ignore", "pipe", "pipe"] });
  child.stdout.on("data", (chunk) => process.stdout.write(`[${name}] ${chunk}`));
  child.stderr.on("data", (chunk) => process.stdout.write(`[${name}] ${chunk}`));
  children.push(child);
  return child;
}

const sessionRows = (kind) => script(
  `return [...document.querySelectorAll('#sessions tbody tr')]
     .filter((r) => r.dataset.host === 'h1' && r.dataset.kind === arguments[0])
     .map((r) => [...r.cells].map((c) => c.textContent));`, kind);

async function operatorSetsUp() {
  let started = Date.now();
  await wd("POST", s("/url"), { url: `${ADMIN_URL}/?token=${TOKEN}` });
  await waitFor("the page to load its data", 15, async () => (await find("#status.ok")).length);
  measured.page_ready_ms = Date.now() - started;
  const url = await wd("GET", s("/url"));
  if (url.includes("token=")) throw new Error(`the token stayed in the address bar: ${url}`);

  await type("#create-host input[name=name]", "h1");
  await click("#create-host button[type=submit]");
  const secret = await waitFor("the new host's secret", 10, async () => {
    const value = (await text("#secret-value")) || "";
    return /^[0-9a-f]{64}$/.test(value.trim()) && value.trim();
  });
  writeFileSync(`${WORK}/h1.secret`, secret + "\n", { mode: 0o600 });
  const download = await script("return document.getElementById('secret-download').download;");
  if (download !== "h1.secret") throw new Error(`secret download is named ${download}`);
  log("host h1 created; its secret was shown once with a download link");

  await type("#create-partition input[name=name]", "vm1");
  await type("#create-partition input[name=size]", "64M");
  await click("#create-partition button[type=submit]");
  await waitFor("partition vm1 in the table", 10, async () => (await find("#partitions tr[data-name=vm1]")).length);

  await click("#assign select[name=host] option[value=h1]");
  await click("#assign select[name=partition] option[value=vm1]");
  await click("#assign select[name=access] option[value=read-write]");
  await click("#assign button[type=submit]");
  await waitFor("the assignment h1 x vm1", 10, async () =>
    (await find("#assignments tr[data-host=h1][data-partition=vm1]")).length);
  log("partition vm1 (64M) created and assigned read-write to h1");

  await type("#create-host input[name=name]", "h1");
  await click("#create-host button[type=submit]");
  const error = await waitFor("the duplicate-host error", 10, async () => {
    const shown = (await text("#messages .message.error span")) || "";
    return shown.includes("already exists") && shown;
  });
  log(`an API error is shown to the operator: ${error}`);
  await script("document.querySelectorAll('#messages .message').forEach((m) => m.remove());");
}

async function hostConnects() {
  const secretFile = `${WORK}/h1.secret`;
  const started = Date.now();
  start("ublk-host", ["discover", "--server", SERVER, "--host", "h1", "--secret-file", secretFile, "--watch"]);
  start("bench", ["--server", SERVER, "--host", "h1", "--secret-file", secretFile, "--partition", "vm1",
    "--rw", "randrw", "--bs", "64k", "--iodepth", "4", "--queues", "2", "--lanes", "2", "--runtime", "60"]);
  const lanes = await waitFor("h1's 4 lanes in the live view", 20, async () => {
    const rows = await sessionRows("data");
    return rows.length === 4 && rows;
  });
  measured.lanes_visible_ms = Date.now() - started;
  await waitFor("h1's control session", 10, async () => (await sessionRows("control")).length === 1);
  await waitFor("h1 shown as connected", 10, async () =>
    ((await text("#hosts tr[data-name=h1]")) || "").includes("connected: 1 control, 4 lanes"));
  const busy = await waitFor("per-lane throughput above zero on every lane", 20, async () => {
    const rows = await sessionRows("data");
    const rates = rows.map((cells) => Number(cells[6]));
    return rows.length === 4 && rates.every((r) => r > 0) && rows;
  });
  measured.lane_ops_per_s = busy.map((cells) => Number(cells[6]));
  log(`live view: ${lanes.length} lanes of h1 on vm1 (queues ${[...new Set(lanes.map((c) => c[3]))].join(",")}), ops/s per lane ${measured.lane_ops_per_s.join(", ")}`);
  await screenshot("admin-page.png");
}

// Reads what a history chart drew (drawChart's data- attributes).
const chart = (id) => script(
  `const c = document.getElementById(arguments[0]);
   return c && c.dataset.points ? { points: Number(c.dataset.points), max: Number(c.dataset.max),
     last: Number(c.dataset.last) } : null;`, id);

async function chartsMove() {
  const ids = ["partitions-throughput", "partitions-iops", "partitions-latency",
    "hosts-throughput", "hosts-iops", "hosts-latency"].map((c) => "chart-" + c);
  const first = await waitFor("every history chart to draw h1's traffic", 20, async () => {
    const drawn = await Promise.all(ids.map(chart));
    return drawn.every((d) => d && d.points > 0 && d.max > 0) && drawn;
  });
  await waitFor("vm1 and h1 in the charts' legends", 10, async () =>
    (await find("#legend-partitions [data-series=vm1]")).length &&
    (await find("#legend-hosts [data-series=h1]")).length);
  const moved = await waitFor("the charts to move (5 new points each, still under load)", 20, async () => {
    const now = await Promise.all(ids.map(chart));
    return now.every((d, i) => d.points >= first[i].points + HISTORY_NEW_POINTS) && now[0].last > 0 && now;
  });
  measured.history_points = moved.map((d) => d.points);
  measured.history_throughput_max_bps = moved[0].max;
  measured.history_p99_max_us = moved[2].max;
  const disks = await waitFor("both member disks in the health table", 10, async () => {
    const rows = await script(`return [...document.querySelectorAll('#disk-health tbody tr')]
      .map((r) => [...r.cells].map((c) => c.textContent));`);
    return rows.length === 2 && rows.every((cells) => cells[2] === "healthy") && rows;
  });
  log(`history charts move under load: points ${first.map((d) => d.points).join(",")} -> ` +
    `${measured.history_points.join(",")}, partition throughput up to ${moved[0].max} B/s, ` +
    `p50/p99 latency up to ${moved[2].max} µs; ${disks.length} disks healthy`);
  await script("document.getElementById('history-section').scrollIntoView();");
  await screenshot("admin-history.png");
  await script("window.scrollTo(0, 0);");
}

async function operatorRevokes() {
  const started = Date.now();
  await click("#assignments tr[data-host=h1][data-partition=vm1] button.danger");
  await wd("POST", s("/alert/accept"), {});
  await waitFor("h1's lanes to leave the live view", 10, async () => (await sessionRows("data")).length === 0);
  measured.revoke_to_lanes_gone_ms = Date.now() - started;
  await waitFor("the partition to show no hosts", 10, async () =>
    ((await text("#partitions tr[data-name=vm1]")) || "").includes("—"));
  log("revoked h1's access to vm1: its lanes closed and left the live view");
  await screenshot("admin-page-revoked.png");
}

async function main() {
  await newSession();
  try {
    await operatorSetsUp();
    await hostConnects();
    await chartsMove();
    await operatorRevokes();
    log(`measured ${JSON.stringify(measured)}`);
    log("PASS");
  } catch (e) {
    await screenshot("failure.png").catch(() => {});
    const console = await wd("POST", s("/se/log"), { type: "browser" }).catch(() => []);
    for (const entry of console) log(`browser console: ${entry.level} ${entry.message}`);
    const loaded = await script(`return performance.getEntriesByType("resource")
      .map((r) => r.name.replace(location.origin, "") + " " + Math.round(r.duration) + " ms");`).catch(() => []);
    log(`resources the page loaded: ${loaded.join(", ") || "none"}`);
    throw e;
  } finally {
    for (const child of children) child.kill("SIGTERM");
    await wd("DELETE", s("")).catch(() => {});
  }
}

main().catch((e) => {
  console.error(`browser-test: FAIL: ${e.message}`);
  process.exit(1);
});
