// The Calls view: recent calls from GET /v1/calls, one call's transcript, a latency
// chart per turn and its recording (docs/calls.md). Every text from a record is set
// as textContent: transcripts are what callers said, never markup.

const $ = (id) => document.getElementById(id);
let apiKey = ""; // kept in this page's memory only, never stored
let recordingUrl = null;

function authHeaders() {
  return apiKey ? { Authorization: `Bearer ${apiKey}` } : {};
}

async function api(path) {
  const reply = await fetch(path, { headers: authHeaders(), cache: "no-store" });
  if (!reply.ok) {
    let message = `${reply.status}`;
    try { message += ` ${(await reply.json()).message}`; } catch { /* not JSON */ }
    throw new Error(message);
  }
  return reply;
}

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function bubble(kind, text) {
  const item = element("li", null, kind);
  item.append(element("div", text, "bubble"));
  return item;
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "—";
}

async function showCalls(event) {
  event?.preventDefault();
  apiKey = $("api-key").value.trim();
  const params = new URLSearchParams({ limit: "50" });
  if ($("q").value.trim()) params.set("q", $("q").value.trim());
  if ($("transport").value) params.set("transport", $("transport").value);
  const list = $("calls");
  $("list-status").textContent = "Loading…";
  try {
    const body = await (await api(`/v1/calls?${params}`)).json();
    list.replaceChildren();
    for (const call of body.calls) {
      const item = element("li");
      const open = element("button", `${when(call.started_at)} · ${call.transport} · ${call.turns} turns · ${call.end_reason ?? "in progress"}`, "ghost call-row");
      open.type = "button";
      open.dataset.callId = call.id;
      open.addEventListener("click", () => showCall(call.id));
      item.append(open);
      list.append(item);
    }
    $("list-status").textContent = body.calls.length ? "" : "No calls match.";
  } catch (error) {
    $("list-status").textContent = `Cannot list calls: ${error.message}`;
    $("list-status").classList.add("error");
  }
}

function firstAudioMs(timings) {
  return timings.end_of_turn_to_first_audio_ms ?? timings.end_of_speech_to_first_audio_ms;
}

function drawLatency(turns) {
  const svg = $("latency-chart");
  svg.replaceChildren();
  const values = turns.map((turn) => firstAudioMs(turn.timings) ?? 0);
  const top = Math.max(1, ...values);
  const width = 40 * Math.max(1, values.length);
  svg.setAttribute("viewBox", `0 0 ${width} 120`);
  values.forEach((value, index) => {
    const height = Math.round((value / top) * 100);
    const bar = document.createElementNS("http://www.w3.org/2000/svg", "rect");
    bar.setAttribute("x", String(index * 40 + 8));
    bar.setAttribute("y", String(110 - height));
    bar.setAttribute("width", "24");
    bar.setAttribute("height", String(height));
    bar.setAttribute("class", "latency-bar");
    bar.dataset.ms = String(Math.round(value));
    const title = document.createElementNS("http://www.w3.org/2000/svg", "title");
    const stages = ["stt_ms", "llm_first_token_ms", "tts_first_audio_ms"]
      .filter((name) => name in turns[index].timings)
      .map((name) => `${name.replace(/_ms$/, "")} ${Math.round(turns[index].timings[name])} ms`);
    title.textContent = `turn ${index + 1}: ${Math.round(value)} ms${stages.length ? ` (${stages.join(", ")})` : ""}`;
    bar.append(title);
    svg.append(bar);
  });
}

async function showCall(callId) {
  const call = await (await api(`/v1/calls/${encodeURIComponent(callId)}`)).json();
  $("call").hidden = false;
  $("call-title").textContent = call.id;
  $("call-meta").textContent = `${call.transport} · ${when(call.started_at)} → ${when(call.ended_at)} · ${call.end_reason ?? "in progress"}`;
  const timeline = $("timeline");
  timeline.replaceChildren();
  const turns = call.timeline.filter((entry) => entry.kind === "turn");
  for (const entry of call.timeline) {
    if (entry.user_text) timeline.append(bubble("user", entry.user_text));
    if (entry.kind === "turn") {
      const reply = bubble("agent", entry.heard_text || "(nothing heard)");
      if (entry.interrupted) reply.append(element("span", `cut off: ${entry.reason}`, "badge interrupted"));
      timeline.append(reply);
      for (const tool of entry.tool_calls) {
        timeline.append(element("li", `tool ${tool.name}(${tool.arguments ?? ""}) → ${tool.status ?? "?"}`, "tool"));
      }
    } else {
      timeline.append(element("li", `${entry.kind}: ${entry.status}`, "note"));
    }
  }
  drawLatency(turns);
  const audio = $("recording");
  if (recordingUrl) URL.revokeObjectURL(recordingUrl);
  recordingUrl = null;
  audio.hidden = true;
  audio.removeAttribute("src");
  if (call.recording) {
    // <audio src> cannot send the key: fetch it, then play the bytes.
    const blob = await (await api(`/v1/calls/${encodeURIComponent(callId)}/recording`)).blob();
    recordingUrl = URL.createObjectURL(blob);
    audio.src = recordingUrl;
    audio.hidden = false;
  }
}

$("filters").addEventListener("submit", showCalls);
showCalls();
