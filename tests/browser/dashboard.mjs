// Drives the Molt dashboard in Debian's headless Chromium over the Chrome
// DevTools Protocol (Node's built-in WebSocket; no npm packages).
//
//   node --experimental-websocket dashboard.mjs <base-url> <admin-token> <out-dir> <issue-id> <agent> <pinned-agent,...>
//
// Logs in, clicks Acknowledge, Grab logs, Upgrade and Resolve, screenshots the
// pages, and prints one JSON object with what it saw (the Rust test asserts on it).
import { spawn } from "node:child_process";
import { mkdtempSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const [base, token, outDir, issueId, agent, pinnedList] = process.argv.slice(2);
const pinned = (pinnedList || "").split(",").filter((p) => p);
const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";
const profile = mkdtempSync(join(tmpdir(), "molt-chromium-"));
const browser = spawn(chromiumPath, [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
  "--disable-background-networking", "--no-first-run", "--no-default-browser-check",
  "--remote-debugging-port=0", `--user-data-dir=${profile}`, "--window-size=1400,1000", "about:blank",
], { stdio: ["ignore", "ignore", "pipe"] });

const fail = (msg) => { console.error(`dashboard browser test: ${msg}`); cleanup(); process.exit(1); };
function cleanup() { try { browser.kill("SIGKILL"); } catch {} try { rmSync(profile, { recursive: true, force: true }); } catch {} }
const overall = setTimeout(() => fail("timed out after 90 s"), 90_000);

const wsUrl = await new Promise((resolve, reject) => {
  let buf = "";
  browser.stderr.on("data", (d) => {
    buf += d.toString();
    const m = buf.match(/DevTools listening on (ws:\/\/\S+)/);
    if (m) resolve(m[1]);
  });
  browser.on("exit", (code) => reject(new Error(`chromium exited (${code}) before DevTools was up:\n${buf}`)));
}).catch((e) => fail(e.message));

const ws = new WebSocket(wsUrl);
await new Promise((r, j) => { ws.onopen = r; ws.onerror = () => j(new Error("cannot connect to DevTools")); }).catch((e) => fail(e.message));
let nextId = 1;
const pending = new Map();
const listeners = [];
ws.onmessage = (ev) => {
  const msg = JSON.parse(ev.data);
  if (msg.id && pending.has(msg.id)) {
    const { resolve, reject } = pending.get(msg.id);
    pending.delete(msg.id);
    msg.error ? reject(new Error(JSON.stringify(msg.error))) : resolve(msg.result);
  } else if (msg.method) {
    for (const l of [...listeners]) l(msg);
  }
};
const send = (method, params = {}, sessionId) => new Promise((resolve, reject) => {
  const id = nextId++;
  pending.set(id, { resolve, reject });
  ws.send(JSON.stringify({ id, method, params, sessionId }));
});
const waitFor = (method, sessionId) => new Promise((resolve) => {
  const l = (m) => { if (m.method === method && m.sessionId === sessionId) { listeners.splice(listeners.indexOf(l), 1); resolve(m.params); } };
  listeners.push(l);
});

const { targetId } = await send("Target.createTarget", { url: "about:blank" });
const { sessionId } = await send("Target.attachToTarget", { targetId, flatten: true });
await send("Page.enable", {}, sessionId);
const evaluate = async (expr) => {
  const r = await send("Runtime.evaluate", { expression: expr, returnByValue: true, awaitPromise: true }, sessionId);
  if (r.exceptionDetails) throw new Error(`page script failed: ${expr}: ${JSON.stringify(r.exceptionDetails)}`);
  return r.result.value;
};
const navigate = async (url) => { const l = waitFor("Page.loadEventFired", sessionId); await send("Page.navigate", { url }, sessionId); await l; };
// Clicks an element that submits a form and waits for the next page.
const click = async (selector) => {
  const l = waitFor("Page.loadEventFired", sessionId);
  const found = await evaluate(`(() => { const e = document.querySelector(${JSON.stringify(selector)}); if (!e) return false; e.click(); return true; })()`);
  if (!found) throw new Error(`no element ${selector} on ${await evaluate("location.href")}`);
  await l;
};
const screenshot = async (name) => {
  const { data } = await send("Page.captureScreenshot", { format: "png", captureBeyondViewport: true }, sessionId);
  const path = join(outDir, name);
  writeFileSync(path, Buffer.from(data, "base64"));
  return path;
};
const text = (sel) => evaluate(`document.querySelector(${JSON.stringify(sel)})?.innerText ?? null`);

const seen = {};
try {
  await navigate(`${base}/dashboard`);
  seen.redirectedTo = await evaluate("location.pathname");
  await evaluate(`document.querySelector('#token').value = ${JSON.stringify(token)}`);
  await click("#login");
  seen.afterLogin = await evaluate("location.pathname");
  seen.agentRows = await evaluate("document.querySelectorAll('#agents tr[id^=agent-]').length");
  seen.agentRowText = await text(`#agent-${agent}`);
  seen.issueRowText = await text(`#issue-${issueId}`);
  seen.readinessText = await text("#readiness");
  seen.fleetText = await text("#fleet");
  seen.rolloutText = await text("#rollout");
  seen.rolloutWaiting = await text("#rollout-waiting");
  seen.versionBars = await evaluate("[...document.querySelectorAll('#versions tr.version-bar')].map(r => r.innerText)");
  seen.agentsPageText = await text("#agents-page");
  seen.agentsTotal = await text("#agents-total");
  for (const a of [agent, ...pinned]) seen[`pinCell-${a}`] = await text(`#agent-${a} td.pin`);
  seen.rolloutPinned = await evaluate("[...document.querySelectorAll('#rollout tr.rollout-group td.pinned')].map(c => c.innerText)");
  seen.screenshotDashboard = await screenshot("dashboard.png");

  await click(`#issue-${issueId} button.ack`);
  seen.flashAfterAck = await text("#flash");
  seen.issueRowAfterAck = await text(`#issue-${issueId}`);

  await click(`#agent-${agent} button.grab-logs`);
  seen.flashAfterGrabLogs = await text("#flash");
  seen.pathAfterGrabLogs = await evaluate("location.pathname");

  await navigate(`${base}/dashboard`);
  await click(`#agent-${agent} button.upgrade`);
  seen.flashAfterUpgrade = await text("#flash");

  await click(`#issue-${issueId} button.resolve`);
  seen.flashAfterResolve = await text("#flash");
  seen.issueRowAfterResolve = await text(`#issue-${issueId}`);
  seen.screenshotAfterActions = await screenshot("dashboard-after-actions.png");

  await navigate(`${base}/dashboard/agents/${agent}`);
  seen.stages = await evaluate("[...document.querySelectorAll('#history .stage b')].map(b => b.innerText)");
  seen.stageStates = await evaluate("[...document.querySelectorAll('#history .stage .badge')].map(b => b.innerText)");
  seen.commandsText = await text("#commands");
  seen.screenshotAgent = await screenshot("agent.png");
  seen.title = await evaluate("document.title");
  for (const a of pinned) {
    await navigate(`${base}/dashboard/agents/${a}`);
    seen[`agentPage-${a}`] = await text("#agent-pin");
  }

  // The agents table pages, sorts and filters on the server.
  await navigate(`${base}/dashboard`);
  await click("#agents-next");
  seen.agentsPage2Text = await text("#agents-page");
  seen.agentRowsPage2 = await evaluate("document.querySelectorAll('#agents tr[id^=agent-]').length");
  await click("#sort-name");
  seen.sortedDescFirst = await evaluate("document.querySelector('#agents tr[id^=agent-]')?.id ?? null");
  seen.screenshotAgentsSorted = await screenshot("dashboard-agents-sorted.png");
  await evaluate("document.querySelector('#agents-filter input[name=version]').value = ''");
  await evaluate("document.querySelector('#agents-filter input[name=status]').value = 'Up'");
  await click("#filter-agents");
  seen.filteredRows = await evaluate("[...document.querySelectorAll('#agents tr[id^=agent-]')].map(r => r.id)");
  seen.injected = await evaluate("document.querySelectorAll('script').length");
} catch (e) {
  fail(e.message);
}
clearTimeout(overall);
console.log(JSON.stringify(seen));
ws.close();
cleanup();
process.exit(0);
