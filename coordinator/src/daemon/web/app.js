// The web view's live parts: a run's results as they land (its watch WebSocket), its timeline (the
// events WebSocket, with a replay), and the runs and agents lists refreshed from the server's own
// rendering. No framework and no build step: the coordinator serves this file as it is. Everything a
// record holds is written with textContent, never as markup.

const page = document.body.dataset.page;
const live = document.getElementById("live");

function say(text) {
  if (live) live.textContent = text;
}

function socketUrl(path) {
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${path}`;
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

function badge(state) {
  return element("span", `badge s-${state}`, state);
}

function seconds(ms) {
  if (ms === null || ms === undefined) return "";
  return ms < 10000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.floor(ms / 1000)} s`;
}

const FINAL = new Set(["passed", "failed", "error", "cancelled"]);

// A list whose rows the server renders again every few seconds while the page is in view.
function refresh(fragment) {
  const rows = document.getElementById("rows");
  const tick = async () => {
    if (document.visibilityState === "visible") {
      try {
        const response = await fetch(fragment, { credentials: "same-origin" });
        if (response.status === 401) {
          say("Logged out: run polarizer open again for a new link.");
          return;
        }
        if (response.ok) {
          rows.innerHTML = await response.text();
          say(`Up to date at ${new Date().toLocaleTimeString()}`);
        }
      } catch {
        say("The coordinator cannot be reached; trying again.");
      }
    }
    setTimeout(tick, 3000);
  };
  setTimeout(tick, 3000);
}

// One run, followed over /api/runs/{id}/watch until it ends.
function followRun(run) {
  const rows = new Map();
  for (const row of document.querySelectorAll("#tests tbody tr")) rows.set(row.dataset.test, row);
  let finished = false;
  let wait = 1000;

  const showState = (state) => {
    document.getElementById("run-state").replaceChildren(badge(state));
    document.body.dataset.state = state;
    if (FINAL.has(state)) finished = true;
  };
  const cell = (row, name) => row && row.querySelector(`td.${name}`);
  const started = (update) => {
    const row = rows.get(update.test);
    if (!row) return;
    cell(row, "status").replaceChildren(badge("running"));
    cell(row, "agent").textContent = update.agent;
    cell(row, "attempt").textContent = update.attempt;
  };
  const showTest = (test) => {
    const row = rows.get(test.test);
    if (!row) return;
    cell(row, "status").replaceChildren(badge(test.status));
    cell(row, "attempt").textContent = test.attempt;
    cell(row, "duration").textContent = seconds(test.duration_ms);
    cell(row, "agent").textContent = test.agent;
    row.querySelector("p.message").textContent = test.message;
    if (test.output_tail) row.querySelector("pre.output").textContent = test.output_tail;
    const subresults = row.querySelector("ul.subresults");
    subresults.replaceChildren(
      ...test.subresults.map((sub) => {
        const item = element("li");
        item.append(badge(sub.status), ` ${sub.classname} ${sub.name} ${seconds(sub.duration_ms)} ${sub.message}`);
        return item;
      }),
    );
  };
  const output = (update) => {
    const pre = rows.get(update.test)?.querySelector("pre.output");
    if (!pre) return;
    const lines = (pre.textContent ? pre.textContent.split("\n") : []).concat(update.line).slice(-200);
    pre.textContent = lines.join("\n");
  };
  const showRun = (detail) => {
    showState(detail.state);
    // In a run's JSON, `tests` is its tests (the count of `runs --json` is their number).
    document.getElementById("run-done").textContent = `${detail.done} / ${detail.tests.length}`;
    document.getElementById("run-problems").textContent = detail.problems;
    if (detail.finished) document.getElementById("run-finished").textContent = detail.finished.replace("T", " ").slice(0, 19);
    for (const test of detail.tests) showTest(test);
    for (const suite of detail.suites) {
      const row = document.querySelector(`tr[data-suite="${suite.id}"]`);
      if (!row) continue;
      const state = cell(row, "state");
      state.replaceChildren(badge(suite.state));
      if (suite.waiting_for) state.append(" ", element("small", "", suite.waiting_for));
      cell(row, "attempt").textContent = suite.attempt;
      cell(row, "agent").textContent = suite.agent;
      const versions = suite.versions;
      const parts = [];
      if (versions.commit) parts.push(`tests ${versions.commit.slice(0, 12)}`);
      if (versions.agent_version) parts.push(`agent ${versions.agent_version}`);
      for (const [name, version] of Object.entries(versions.packages)) parts.push(`${name} ${version}`);
      parts.push(...versions.artifacts);
      cell(row, "versions").textContent = parts.join(" · ");
    }
  };

  const connect = () => {
    const socket = new WebSocket(socketUrl(`/api/runs/${run}/watch?output=true`));
    socket.onopen = () => {
      wait = 1000;
      say("Live: results appear as they land.");
    };
    socket.onmessage = (message) => {
      const update = JSON.parse(message.data);
      switch (update.type) {
        case "run":
          showRun(update.run);
          break;
        case "test_started":
          started(update);
          break;
        case "test_finished":
          showTest(update.test);
          break;
        case "output":
          output(update);
          break;
        case "run_finished":
          showState(update.state);
          break;
        default:
          break;
      }
    };
    socket.onclose = (event) => {
      if (finished) {
        say("The run has ended.");
        return;
      }
      say(`Disconnected (${event.reason || event.code}); reconnecting.`);
      setTimeout(connect, wait);
      wait = Math.min(wait * 2, 30000);
    };
  };
  connect();
}

// The run's events as they happened, live while it runs; Replay plays them again in their rhythm.
function timeline(run) {
  const list = document.getElementById("timeline");
  const events = [];
  let last = 0;
  let replaying = false;
  const item = (event) => {
    const entry = element("li");
    const at = element("time", "", (event.time || "").slice(11, 23));
    at.dateTime = event.time;
    entry.append(at, " ", element("strong", "", event.kind), ` ${event.agent}`);
    if (event.test) entry.append(" ", element("code", "", event.test));
    if (event.summary) entry.append(` ${event.summary}`);
    return entry;
  };
  const show = (event) => {
    list.append(item(event));
    while (list.children.length > 2000) list.firstElementChild.remove();
  };
  const connect = () => {
    const socket = new WebSocket(socketUrl(`/api/events?run=${run}&since=${last}`));
    socket.onmessage = (message) => {
      const event = JSON.parse(message.data);
      if (event.id === undefined) return;
      last = event.id;
      events.push(event);
      if (events.length > 20000) events.shift();
      if (!replaying) show(event);
    };
    socket.onclose = (event) => {
      if (event.code === 1000 || event.code === 1008) return;
      setTimeout(connect, 2000);
    };
  };
  connect();
  document.getElementById("replay").addEventListener("click", async () => {
    if (replaying || events.length === 0) return;
    replaying = true;
    list.replaceChildren();
    const times = events.map((event) => Date.parse(event.time) || 0);
    const span = Math.max(1, times[times.length - 1] - times[0]);
    // The whole replay takes at most ten seconds, each gap kept in proportion.
    const scale = Math.min(1, 10000 / span);
    for (let index = 0; index < events.length; index += 1) {
      if (index > 0) {
        const gap = Math.max(0, times[index] - times[index - 1]) * scale;
        if (gap > 0) await new Promise((resolve) => setTimeout(resolve, gap));
      }
      show(events[index]);
    }
    replaying = false;
  });
}

if (page === "runs") refresh("/fragments/runs");
if (page === "agents") refresh("/fragments/agents");
if (page === "run") {
  const run = document.body.dataset.run;
  followRun(run);
  timeline(run);
}
