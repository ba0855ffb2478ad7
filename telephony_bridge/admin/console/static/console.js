// The console's one script: it fills each page shell from the admin API (/admin/...) with the session cookie.
// Every change it asks for carries the page's CSRF token in X-CSRF-Token. Text from the API is only ever set
// as text (never parsed as HTML), so a transcript cannot inject markup.
"use strict";

const csrfToken = document.querySelector('meta[name="csrf-token"]').content;

async function api(path, options = {}) {
  const headers = { Accept: "application/json", ...(options.headers || {}) };
  if (options.method && options.method !== "GET") headers["X-CSRF-Token"] = csrfToken;
  const response = await fetch(path, { ...options, headers, credentials: "same-origin" });
  let body = null;
  try { body = await response.json(); } catch (error) { body = null; }
  if (response.status === 401) window.location.assign("/console/sign-in");
  return { ok: response.ok, status: response.status, body };
}

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "text") node.textContent = value;
    else if (name === "className") node.className = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

function seconds(value) {
  const total = Math.round(value);
  const minutes = Math.floor(total / 60);
  return minutes ? `${minutes}m ${String(total % 60).padStart(2, "0")}s` : `${value.toFixed(1)}s`;
}

function clock(value) {
  if (value === null || value === undefined) return "";
  const minutes = Math.floor(value / 60);
  return `${String(minutes).padStart(2, "0")}:${(value - minutes * 60).toFixed(1).padStart(4, "0")}`;
}

const ACTIVITY = { connecting: "connecting", listening: "listening", speaking: "speaking", using_tool: "using a tool",
  transferring: "transferring" };

function transcriptLine(line) {
  const item = el("li", { "data-speaker": line.speaker });
  if (line.at_s !== null && line.at_s !== undefined) {
    item.dataset.at = line.at_s;
    item.append(el("span", { className: "at", text: clock(line.at_s) }));
  }
  item.append(el("span", { className: "who", text: `${line.speaker}:` }));
  item.append(el("span", { className: line.speaker === "tool" ? "tool" : "said", text: line.text }));
  return item;
}

function revealButton(callSid, target) {
  const button = el("button", { type: "button", className: "secondary", text: "Reveal number" });
  button.addEventListener("click", async () => {
    const answer = await api(`/admin/calls/${encodeURIComponent(callSid)}/caller`, { method: "POST" });
    if (answer.ok) {
      target.textContent = answer.body.caller;
      button.remove();
    } else {
      target.textContent += ` (could not reveal: ${answer.body ? answer.body.detail : answer.status})`;
    }
  });
  return button;
}

// Live: one card per call, kept current by the admin API's server-sent events.
function livePage() {
  const cards = document.getElementById("live-calls");
  const status = document.getElementById("live-status");
  const empty = document.getElementById("no-calls");
  const dialog = document.getElementById("end-dialog");
  const calls = new Map();
  let ending = null;

  function refreshEmpty() { empty.hidden = calls.size > 0; }

  function card(call) {
    const caller = el("span", { className: "caller", text: call.caller || "unknown caller" });
    const duration = el("span", { className: "duration" });
    const badge = el("span", { className: "badge" });
    const transcript = el("ol", { className: "transcript", "aria-live": "polite", "aria-label": `Transcript of the call to ${call.number}`, tabindex: "0" });
    const endButton = el("button", { type: "button", className: "danger", text: "End call" });
    const node = el("article", { className: "card", "data-call-sid": call.call_sid, "aria-label": `Call to ${call.number}` },
      el("h2", { text: `${call.number}` }),
      el("p", { className: "meta" }, el("span", {}, "From ", caller), duration, badge),
      transcript,
      el("div", { className: "actions" }, endButton, call.caller ? revealButton(call.call_sid, caller) : null));
    endButton.addEventListener("click", () => {
      ending = call.call_sid;
      document.getElementById("end-dialog-text").textContent =
        `The caller on ${call.number} hears a goodbye, then the line drops.`;
      dialog.showModal();
    });
    return { node, duration, badge, transcript, endButton, base: call.duration_s, since: performance.now() };
  }

  function update(call) {
    let entry = calls.get(call.call_sid);
    if (!entry) {
      entry = card(call);
      calls.set(call.call_sid, entry);
      cards.append(entry.node);
      refreshEmpty();
    }
    entry.base = call.duration_s;
    entry.since = performance.now();
    entry.badge.textContent = ACTIVITY[call.activity] || call.activity;
    entry.badge.className = `badge ${call.activity}`;
    if (call.lines_from === 0) entry.transcript.replaceChildren();
    for (const line of call.transcript) entry.transcript.append(transcriptLine(line));
    entry.transcript.scrollTop = entry.transcript.scrollHeight;
    showDuration(entry);
  }

  function showDuration(entry) {
    entry.duration.textContent = seconds(entry.base + (performance.now() - entry.since) / 1000);
  }

  function ended(data) {
    const entry = calls.get(data.call_sid);
    if (!entry) return;
    entry.node.remove();
    calls.delete(data.call_sid);
    status.textContent = `Call ${data.call_sid} ended${data.outcome ? ` (${data.outcome})` : ""}.`;
    refreshEmpty();
  }

  dialog.addEventListener("close", async () => {
    const callSid = ending;
    ending = null;
    if (dialog.returnValue !== "end" || !callSid) return;
    const entry = calls.get(callSid);
    if (entry) entry.endButton.disabled = true;
    status.textContent = `Ending call ${callSid}…`;
    const answer = await api(`/admin/calls/${encodeURIComponent(callSid)}/end`, { method: "POST" });
    if (!answer.ok && answer.status !== 202) {
      status.textContent = `Could not end call ${callSid}: ${answer.body ? answer.body.detail : answer.status}`;
      if (entry) entry.endButton.disabled = false;
    }
  });

  // The duration counts up on the page between events; the data still comes only from the stream.
  setInterval(() => { for (const entry of calls.values()) showDuration(entry); }, 1000);

  const events = new EventSource("/admin/calls/live/events");
  events.addEventListener("open", () => {
    status.textContent = "Connected: calls appear and update as they happen.";
    for (const entry of calls.values()) entry.node.remove();
    calls.clear();
    refreshEmpty();
  });
  events.addEventListener("call", (event) => update(JSON.parse(event.data)));
  events.addEventListener("ended", (event) => ended(JSON.parse(event.data)));
  events.addEventListener("error", () => { status.textContent = "Connection to the bridge lost; reconnecting…"; });
  refreshEmpty();
}

// Calls: the call log, newest first, filtered and paged by the admin API's cursor.
function callsPage() {
  const form = document.getElementById("call-filters");
  const body = document.querySelector("#calls-table tbody");
  const status = document.getElementById("calls-status");
  const older = document.getElementById("older");
  const newer = document.getElementById("newer");
  const cursors = [null];
  let next = null;

  async function load() {
    const query = new URLSearchParams();
    for (const [name, value] of new FormData(form)) if (value) query.set(name, value);
    query.set("limit", "25");
    const cursor = cursors[cursors.length - 1];
    if (cursor) query.set("cursor", cursor);
    status.textContent = "Loading…";
    const answer = await api(`/admin/calls?${query}`);
    if (!answer.ok) {
      status.textContent = `The call log cannot be read: ${answer.body ? answer.body.detail : answer.status}`;
      return;
    }
    body.replaceChildren();
    for (const call of answer.body.calls) {
      const link = el("a", { href: `/console/calls/${encodeURIComponent(call.call_sid)}`, text: call.call_sid });
      body.append(el("tr", {},
        el("td", { text: call.started_at.replace("T", " ").slice(0, 19) }), el("td", {}, link),
        el("td", { text: call.from || "-" }), el("td", { text: call.to }), el("td", { text: call.direction }),
        el("td", { text: seconds(call.duration_s) }), el("td", { text: call.outcome }),
        el("td", { text: String(call.barge_ins) })));
    }
    next = answer.body.next_cursor;
    older.disabled = !next;
    newer.disabled = cursors.length < 2;
    status.textContent = answer.body.calls.length ? `${answer.body.calls.length} calls on this page.` : "No calls match.";
  }

  form.addEventListener("submit", (event) => { event.preventDefault(); cursors.length = 1; load(); });
  older.addEventListener("click", () => { cursors.push(next); load(); });
  newer.addEventListener("click", () => { cursors.pop(); load(); });
  load();
}

function fact(list, name, value) {
  list.append(el("dt", { text: name }));
  const dd = el("dd");
  if (value !== null && typeof value === "object") dd.append(el("pre", { text: JSON.stringify(value, null, 2) }));
  else dd.textContent = value === null || value === undefined || value === "" ? "-" : String(value);
  list.append(dd);
  return dd;
}

// Generic rendering of fields the console does not know yet (the call policy: hours, limits, usage, cost).
function showUnknown(section, list, record, known) {
  const extra = Object.keys(record).filter((name) => !known.has(name));
  for (const name of extra) fact(list, name, record[name]);
  section.hidden = extra.length === 0;
}

const CALL_FIELDS = new Set(["call_sid", "from", "to", "direction", "started_at", "ended_at", "duration_s", "outcome",
  "end_reason", "barge_ins", "reconnects", "model", "dialect", "transfer", "transcript", "recording", "timeline",
  "profile_in_force", "usage", "cost", "transcript_purged", "amd_result"]);

function tokens(usage) {
  const input = usage.audio_in + usage.text_in;
  const output = usage.audio_out + usage.text_out;
  return `${input} in (${usage.audio_in} audio, ${usage.cached_in} cached), ${output} out (${usage.audio_out} audio)`;
}

function money(value) {
  return value === null || value === undefined ? "- (no prices for the model)" : `${value.toFixed(4)} (estimated)`;
}

// A call: its facts, transcript, timeline picture and recording, the player's position drawn on the picture.
async function callPage() {
  const callSid = document.body.dataset.callSid;
  const status = document.getElementById("call-status");
  const answer = await api(`/admin/calls/${encodeURIComponent(callSid)}`);
  if (!answer.ok) {
    status.textContent = answer.body ? answer.body.detail : `error ${answer.status}`;
    return;
  }
  const call = answer.body;
  status.textContent = "";
  const facts = document.getElementById("call-facts");
  const from = fact(facts, "From", "");
  const caller = el("span", { text: call.from || "-" });
  from.replaceChildren(caller);
  if (call.from) from.append(" ", revealButton(callSid, caller));
  fact(facts, "To", call.to);
  fact(facts, "Direction", call.direction);
  fact(facts, "Started (UTC)", call.started_at.replace("T", " ").slice(0, 19));
  fact(facts, "Duration", seconds(call.duration_s));
  fact(facts, "How it ended", `${call.outcome}${call.end_reason ? ` (${call.end_reason})` : ""}`);
  fact(facts, "Barge-ins", call.barge_ins);
  fact(facts, "Reconnects", call.reconnects);
  fact(facts, "Transfer", call.transfer ? `${call.transfer.target} (${call.transfer.connected ? "connected" : "did not connect"})` : "-");
  const tools = call.transcript.filter((line) => line.speaker === "tool");
  fact(facts, "Tool calls", tools.length ? tools.map((line) => line.text).join("\n") : "none");
  fact(facts, "Model", `${call.model || "-"} (${call.dialect} dialect)`);
  if (call.amd_result) fact(facts, "Answered by", call.amd_result);
  fact(facts, "Profile in force", call.profile_in_force);
  if (call.usage) fact(facts, "Tokens", tokens(call.usage));
  fact(facts, "Cost", money(call.cost));
  showUnknown(document.getElementById("policy-section"), document.getElementById("policy"), call, CALL_FIELDS);

  const transcript = document.getElementById("transcript");
  if (!call.transcript.length) transcript.append(el("li", { text: "Nothing was said, or the call ended first." }));
  for (const line of call.transcript) transcript.append(transcriptLine(line));

  if (call.recording) await recording(call, transcript);
}

async function recording(call, transcript) {
  const section = document.getElementById("timeline-section");
  const player = document.getElementById("player");
  const holder = document.getElementById("timeline");
  section.hidden = false;
  player.src = call.recording;
  const response = await fetch(`${call.timeline}.svg`, { credentials: "same-origin" });
  if (!response.ok) return;
  const svg = document.importNode(new DOMParser().parseFromString(await response.text(), "image/svg+xml").documentElement, true);
  holder.append(svg);
  const left = Number(svg.dataset.left);
  const width = Number(svg.dataset.width);
  const length = Number(svg.dataset.seconds);
  const playhead = document.createElementNS("http://www.w3.org/2000/svg", "line");
  for (const [name, value] of Object.entries({ x1: left, x2: left, y1: 22, y2: 160, stroke: "#111", "stroke-width": 2, id: "playhead" })) {
    playhead.setAttribute(name, value);
  }
  svg.append(playhead);
  const lines = [...transcript.querySelectorAll("li[data-at]")];
  player.addEventListener("timeupdate", () => {
    const x = left + Math.min(player.currentTime, length) / length * width;
    playhead.setAttribute("x1", x.toFixed(1));
    playhead.setAttribute("x2", x.toFixed(1));
    for (const line of lines) line.classList.toggle("playing", Number(line.dataset.at) <= player.currentTime
      && (line.nextElementSibling === null || Number(line.nextElementSibling.dataset.at) > player.currentTime));
  });
  svg.addEventListener("click", (event) => {
    const box = svg.getBoundingClientRect();
    const x = (event.clientX - box.left) * (svg.viewBox.baseVal.width / box.width);
    player.currentTime = Math.max(0, Math.min(length, (x - left) / width * length));
  });
}

function hoursText(hours) {
  if (!hours) return "always open (no hours set)";
  const days = Object.entries(hours.open).map(([day, spans]) => `${day} ${spans}`).join(", ");
  const holidays = hours.holidays.length ? `; closed ${hours.holidays.join(", ")}` : "";
  return `${days} (${hours.time_zone})${holidays}: ${hours.open_now ? "open now" : "closed now"}`;
}

function limitsText(limits) {
  const parts = [];
  if (limits.max_call_minutes) parts.push(`${limits.max_call_minutes} min a call`);
  if (limits.silence_hangup_seconds) parts.push(`${limits.silence_hangup_seconds} s of silence`);
  if (limits.max_cost_per_call) parts.push(`cost ${limits.max_cost_per_call} a call`);
  return parts.length ? parts.join(", ") : "none";
}

// The call policy of each number (GET /admin/policy): hours, the profile in force now, limits, usage and cost.
async function policyOfNumbers() {
  const section = document.getElementById("policy-section");
  const answer = await api("/admin/policy");
  if (!answer.ok) return;
  const holder = document.getElementById("policy");
  holder.replaceChildren();
  const entries = [["Defaults", answer.body.defaults], ...Object.entries(answer.body.numbers)];
  for (const [number, policy] of entries) {
    const list = el("dl", { className: "facts" });
    fact(list, "Hours", hoursText(policy.hours));
    fact(list, "In force now", policy.in_force_now);
    fact(list, "Limits", limitsText(policy.limits));
    fact(list, "Recording", policy.recording.record ? `on; notice: ${policy.recording.notice || "none"}` : "off");
    const days = (value) => (value === null || value === undefined ? "kept" : `${value} days`);
    fact(list, "Retention", `recordings ${days(policy.retention_days.recordings)}, transcripts ${days(policy.retention_days.transcripts)}`);
    holder.append(el("h3", { text: number }), list);
  }
  const usage = document.getElementById("usage");
  usage.replaceChildren();
  for (const total of answer.body.usage) {
    const row = el("tr");
    for (const value of [total.number, total.model || "-", total.calls, (total.line_seconds / 60).toFixed(1),
      total.tokens.audio_in + total.tokens.text_in, total.tokens.audio_out + total.tokens.text_out,
      total.cost === null ? "-" : total.cost.toFixed(4)]) row.append(el("td", { text: String(value) }));
    usage.append(row);
  }
  if (!answer.body.usage.length) usage.append(el("tr", {}, el("td", { colspan: "7", text: "No calls logged yet." })));
  section.hidden = false;
}

// Numbers: each number's effective profile, the configuration's hash, and reload.
async function numbersPage() {
  const holder = document.getElementById("numbers");
  const result = document.getElementById("reload-result");
  async function load() {
    const answer = await api("/admin/numbers");
    if (!answer.ok) {
      holder.textContent = answer.body ? answer.body.detail : `error ${answer.status}`;
      return;
    }
    document.getElementById("config-hash").textContent = answer.body.config_hash;
    document.getElementById("config-source").textContent = answer.body.source;
    await policyOfNumbers();
    holder.replaceChildren();
    const entries = [["Defaults (numbers not listed)", answer.body.defaults], ...Object.entries(answer.body.numbers)];
    for (const [number, profile] of entries) {
      const list = el("dl", { className: "facts" });
      for (const [name, value] of Object.entries(profile)) fact(list, name, value);
      holder.append(el("details", { className: "number" }, el("summary", { text: number }), list));
    }
  }
  document.getElementById("reload").addEventListener("click", async () => {
    result.replaceChildren(el("p", { text: "Reloading…" }));
    const answer = await api("/admin/reload", { method: "POST" });
    if (answer.body && answer.body.ok) {
      const restart = answer.body.restart_needed.length ? ` Restart needed for: ${answer.body.restart_needed.join(", ")}.` : "";
      result.replaceChildren(el("p", { className: "reload-ok", text: `Reloaded: configuration ${answer.body.config_hash}.${restart}` }));
      await load();
    } else if (answer.body && answer.body.errors) {
      const list = el("ul", { className: "errors" });
      for (const error of answer.body.errors) list.append(el("li", { text: error }));
      result.replaceChildren(el("p", { className: "error", role: "alert",
        text: "The file was refused; the configuration in force stays:" }), list);
    } else {
      result.replaceChildren(el("p", { className: "error", role: "alert",
        text: `Reload failed: ${answer.body ? answer.body.detail : answer.status}` }));
    }
  });
  await load();
}

const PAGES = { live: livePage, calls: callsPage, call: callPage, numbers: numbersPage };
const start = PAGES[document.body.dataset.page];
if (start) start();
