// The voice chat page: wires a transport to the DOM, either the WebSocket SDK
// (voiceforge.js) or the WebRTC bridge's client (webrtc.js); both dispatch the same
// events. Settings live in localStorage (the API key and TURN credential only in
// sessionStorage); `?instructions=…`, `?partials=1`, `?tools=1` and `?transport=webrtc`
// in the URL override them. window.voiceforge exposes the transport's counters (state,
// played frames per response id, ...) for tests and curious people.

import { VoiceChat, VoiceForgeError, defaultServerUrl } from "./voiceforge.js";
import { WebRTCChat, iceServersFrom, offerUrlFor } from "./webrtc.js";

const $ = (id) => document.getElementById(id);
const STATE_LABELS = {
  idle: "Press Start and talk",
  connecting: "Connecting…",
  reconnecting: "Connection lost — reconnecting…",
  listening: "Listening",
  user_speaking: "You are speaking",
  thinking: "Thinking…",
  agent_speaking: "Agent speaking",
  agent_paused: "Agent paused — go on, or it resumes",
};
const STAGE_LABELS = {
  end_of_turn_wait_ms: "end-of-turn wait",
  stt_ms: "speech to text",
  stt_after_end_of_turn_ms: "STT after end of turn",
  llm_first_token_ms: "LLM first token",
  first_chunk_text_ms: "first clause",
  llm_total_ms: "LLM total",
  tts_first_audio_ms: "TTS first audio",
  end_of_speech_to_first_audio_ms: "end of speech → first audio",
  tool_ms: "tools",
};
// Not durations: flags and counts (tool calls are listed in the turn itself).
const FLAG_TIMINGS = new Set(["speculative_transcript", "speculative_response", "played_source_client", "tool_calls", "tool_filler"]);
const TOOL_STATUS_LABELS = {
  running: "running…",
  error: "failed",
  timeout: "timed out",
  invalid_arguments: "bad arguments",
  unknown_tool: "unknown tool",
  cancelled: "cancelled",
};
/**
 * The page's own client tool (Settings → "Browser tools", or `?tools=1`): the
 * server's get_current_time tells the time where the server is; this tells it
 * where the caller is, from the browser's clock and time zone.
 */
const BROWSER_TOOLS = [
  {
    name: "get_local_time",
    description:
      "The caller's own date, time and time zone, read from their browser. Use it when the caller asks what time it is where they are.",
    parameters: { type: "object", properties: {} },
    handler: () => {
      const now = new Date();
      return {
        local_time: now.toLocaleString("en-US", { dateStyle: "full", timeStyle: "short" }),
        time_zone: Intl.DateTimeFormat().resolvedOptions().timeZone,
        utc_offset_minutes: -now.getTimezoneOffset(),
      };
    },
  },
];
const STORE_KEY = "voiceforge.settings";
const TRANSPORTS = ["websocket", "webrtc"];

let chat = null;
let wantConnected = false;
const turns = new Map(); // response id → {item, bubble, text}
let partialItem = null;

window.voiceforge = { state: "idle", playedFrames: {}, responses: {}, cleared: [], transcripts: [] };

// ------------------------------------------------------------------ settings

function loadSettings() {
  let saved = {};
  try {
    saved = JSON.parse(localStorage.getItem(STORE_KEY) || "{}");
  } catch {
    saved = {};
  }
  const params = new URLSearchParams(location.search);
  $("url").value = saved.url || defaultServerUrl();
  $("instructions").value = params.get("instructions") ?? saved.instructions ?? "";
  $("echo").checked = saved.echo ?? true;
  $("noise").checked = saved.noise ?? true;
  $("gain").checked = saved.gain ?? true;
  $("partials").checked = params.has("partials") ? params.get("partials") === "1" : saved.partials ?? false;
  $("browser-tools").checked = params.has("tools") ? params.get("tools") === "1" : saved.browserTools ?? false;
  $("key").value = sessionStorage.getItem("voiceforge.key") || "";
  const transport = params.get("transport") ?? saved.transport;
  $("transport").value = TRANSPORTS.includes(transport) ? transport : "websocket";
  $("ice-servers").value = saved.iceServers || "";
  $("ice-username").value = saved.iceUsername || "";
  $("ice-credential").value = sessionStorage.getItem("voiceforge.iceCredential") || "";
  showTransportSettings();
  if (saved.voice) {
    const option = new Option(saved.voice, saved.voice);
    $("voice").append(option);
    $("voice").value = saved.voice;
  }
}

function saveSettings() {
  const settings = {
    // Only a URL the user changed is kept: the page's own server is the default.
    url: $("url").value.trim() === defaultServerUrl() ? "" : $("url").value.trim(),
    instructions: $("instructions").value,
    voice: $("voice").value,
    echo: $("echo").checked,
    noise: $("noise").checked,
    gain: $("gain").checked,
    partials: $("partials").checked,
    browserTools: $("browser-tools").checked,
    transport: $("transport").value,
    iceServers: $("ice-servers").value.trim(),
    iceUsername: $("ice-username").value.trim(),
  };
  try {
    localStorage.setItem(STORE_KEY, JSON.stringify(settings));
    sessionStorage.setItem("voiceforge.key", $("key").value);
    sessionStorage.setItem("voiceforge.iceCredential", $("ice-credential").value);
  } catch {
    /* private mode: settings just do not persist */
  }
}

function showTransportSettings() {
  const webrtc = $("transport").value === "webrtc";
  $("transport-note").hidden = !webrtc;
  $("webrtc-settings").hidden = !webrtc;
}

function sessionFields() {
  const fields = { partial_transcript_interval_ms: $("partials").checked ? 400 : 0 };
  const instructions = $("instructions").value.trim();
  if (instructions) fields.instructions = instructions;
  if ($("voice").value) fields.voice = $("voice").value;
  return fields;
}

function fillVoices(voices) {
  const select = $("voice");
  const current = select.value;
  select.replaceChildren(new Option("Server default", ""));
  for (const voice of voices) select.append(new Option(voice, voice));
  select.value = voices.includes(current) ? current : "";
}

// ------------------------------------------------------------------- the log

function scrollLog() {
  const log = $("log");
  log.scrollTop = log.scrollHeight;
}

function addItem(kind, who) {
  $("log").querySelector(".empty")?.remove();
  const item = document.createElement("li");
  item.className = kind;
  if (who) {
    const label = document.createElement("div");
    label.className = "who";
    label.textContent = who;
    item.append(label);
  }
  const bubble = document.createElement("div");
  bubble.className = "bubble";
  item.append(bubble);
  $("log").append(item);
  scrollLog();
  return { item, bubble };
}

function note(text, { error = false } = {}) {
  $("log").querySelector(".empty")?.remove();
  const item = document.createElement("li");
  item.className = error ? "note error" : "note";
  item.textContent = text;
  $("log").append(item);
  scrollLog();
}

function showPartial(text) {
  if (!partialItem) partialItem = addItem("user partial", "You");
  partialItem.bubble.textContent = text;
  scrollLog();
}

function showFinal(text) {
  const entry = partialItem || addItem("user", "You");
  partialItem = null;
  entry.item.className = "user";
  entry.item.dataset.role = "transcript";
  entry.bubble.textContent = text;
  scrollLog();
}

function agentTurn(responseId) {
  let turn = turns.get(responseId);
  if (!turn) {
    const { item, bubble } = addItem("agent", "Agent");
    item.dataset.responseId = responseId;
    turn = { item, bubble, text: "" };
    turns.set(responseId, turn);
  }
  return turn;
}

/** The caller spoke over a reply: it paused, then resumed (a backchannel) or was cut. */
function markPlayback(responseId, status) {
  const { item } = agentTurn(responseId);
  item.dataset.playback = status;
  let badge = item.querySelector(".badge.playback");
  if (!badge) {
    badge = document.createElement("span");
    badge.className = "badge playback";
    item.querySelector(".who").append(badge);
  }
  badge.textContent = status;
}

/** A tool call, as a small line above the reply it belongs to. */
function showToolCall(call) {
  const { item } = agentTurn(call.response_id);
  let list = item.querySelector("ul.tools");
  if (!list) {
    list = document.createElement("ul");
    list.className = "tools";
    item.insertBefore(list, item.querySelector(".bubble"));
  }
  const entry = document.createElement("li");
  entry.className = "tool";
  entry.dataset.callId = call.call_id;
  entry.dataset.executor = call.executor;
  entry.dataset.status = "running";
  const name = document.createElement("code");
  name.textContent = `${call.name}(${argumentsSummary(call.arguments)})`;
  const where = document.createElement("span");
  where.className = "where";
  where.textContent = call.executor === "client" ? "in this page" : "on the server";
  const status = document.createElement("span");
  status.className = "tool-status";
  status.textContent = TOOL_STATUS_LABELS.running;
  entry.append(name, " ", where, " ", status);
  list.append(entry);
  scrollLog();
}

function showToolResult(result) {
  const entry = [...$("log").querySelectorAll("li.tool")].find((li) => li.dataset.callId === result.call_id);
  if (!entry) return;
  entry.dataset.status = result.status;
  entry.querySelector(".tool-status").textContent =
    result.status === "ok" ? `✓ ${formatMs(result.elapsed_ms)}` : TOOL_STATUS_LABELS[result.status] || result.status;
  entry.title = result.output.length > 300 ? `${result.output.slice(0, 300)}…` : result.output;
}

/** `{"city": "Paris", "days": 2}` → `city: "Paris", days: 2`, kept short. */
function argumentsSummary(text) {
  let summary;
  try {
    const value = JSON.parse(text || "{}");
    summary = Object.entries(value).map(([key, item]) => `${key}: ${JSON.stringify(item)}`).join(", ");
  } catch {
    summary = text;
  }
  return summary.length > 60 ? `${summary.slice(0, 59)}…` : summary;
}

function formatMs(ms) {
  return `${Math.round(ms).toLocaleString()} ms`;
}

function finishTurn(done) {
  const turn = agentTurn(done.response_id);
  const { item, bubble } = turn;
  item.dataset.status = done.status;
  const label = item.querySelector(".who");
  if (done.status === "cancelled") {
    item.querySelector(".badge.playback")?.remove(); // "interrupted" says it all
    item.classList.add("interrupted");
    const badge = document.createElement("span");
    badge.className = "badge interrupted";
    badge.textContent = done.reason === "barge_in" || !done.reason ? "interrupted" : `interrupted · ${done.reason.replaceAll("_", " ")}`;
    label.append(badge);
    // What the caller heard stays; the rest is shown struck through.
    const text = done.text || turn.text;
    const heard = done.text_heard || "";
    bubble.replaceChildren();
    if (heard && text.startsWith(heard)) {
      bubble.append(heard);
      const rest = document.createElement("span");
      rest.className = "unheard";
      rest.textContent = text.slice(heard.length);
      bubble.append(rest);
    } else {
      const rest = document.createElement("span");
      rest.className = heard ? "" : "unheard";
      rest.textContent = heard || text || "(nothing was said)";
      bubble.append(rest);
    }
  } else if (done.status === "failed") {
    const badge = document.createElement("span");
    badge.className = "badge failed";
    badge.textContent = "failed";
    label.append(badge);
    if (!bubble.textContent) bubble.textContent = done.text || "(no reply)";
  } else if (done.text) {
    bubble.textContent = done.text;
  }
  const timings = done.timings || {};
  const total = timings.end_of_speech_to_first_audio_ms;
  const stages = Object.entries(timings).filter(([key]) => !FLAG_TIMINGS.has(key) && key !== "end_of_speech_to_first_audio_ms");
  if (total !== undefined || stages.length) {
    const details = document.createElement("details");
    details.className = "latency";
    const summary = document.createElement("summary");
    if (total !== undefined) {
      const strong = document.createElement("strong");
      strong.textContent = formatMs(total);
      summary.append("Latency ", strong, " end of speech → first audio");
    } else {
      summary.textContent = "Stage timings";
    }
    if (timings.speculative_response === 1) summary.append(" · speculative reply");
    else if (timings.speculative_transcript === 1) summary.append(" · speculative transcript");
    const table = document.createElement("table");
    for (const [key, value] of stages) {
      const row = table.insertRow();
      row.insertCell().textContent = STAGE_LABELS[key] || key.replace(/_ms$/, "").replaceAll("_", " ");
      row.insertCell().textContent = formatMs(value);
    }
    if (timings.played_source_client !== undefined) {
      const row = table.insertRow();
      row.insertCell().textContent = "heard, measured by";
      row.insertCell().textContent = timings.played_source_client === 1 ? "this page" : "server clock";
    }
    details.append(summary, table);
    item.append(details);
  }
  scrollLog();
}

// ------------------------------------------------------------------ the call

function setState(state) {
  $("orb").dataset.state = state;
  $("state").textContent = STATE_LABELS[state] || state;
  window.voiceforge.state = state;
}

function setConnected(connected) {
  $("connection").dataset.connected = String(connected);
  $("connection").textContent = connected ? "connected" : "offline";
  $("start").textContent = connected || wantConnected ? "Stop" : "Start";
  $("start").dataset.active = String(connected || wantConnected);
  for (const id of ["interrupt", "text", "send"]) $(id).disabled = !connected;
  if (!connected) {
    $("level").style.width = "0%";
    $("orb").style.setProperty("--level", 0);
  }
}

function showBanner(message) {
  $("banner-text").textContent = message;
  $("banner").hidden = false;
}

function hideBanner() {
  $("banner").hidden = true;
}

function wire(session) {
  const on = (type, handler) => session.addEventListener(type, (event) => handler(event.detail));
  on("state", ({ state }) => setState(state));
  on("level", ({ level }) => {
    // RMS → a 60 dB scale, so quiet speech still moves the meter.
    const db = 20 * Math.log10(Math.max(level, 1e-6));
    const fraction = Math.max(0, Math.min(1, (db + 60) / 60));
    $("level").style.width = `${(fraction * 100).toFixed(1)}%`;
    $("orb").style.setProperty("--level", fraction.toFixed(2));
  });
  on("session.created", (message) => {
    fillVoices(message.limits.voices || []);
    if (!message.resumed) note(`Connected · session ${message.session_id}`);
  });
  on("reconnecting", () => {
    $("connection").dataset.connected = "reconnecting";
    $("connection").textContent = "reconnecting";
    note("Connection lost; reconnecting…");
  });
  on("resumed", ({ sessionId }) => {
    setConnected(true);
    note(`Reconnected · the call goes on (session ${sessionId})`);
  });
  on("transcript.delta", (message) => showPartial(message.text));
  on("transcript.final", (message) => showFinal(message.text));
  on("input_audio.turn_ignored", () => {
    if (partialItem) {
      partialItem.item.remove();
      partialItem = null;
    }
  });
  on("response.created", (message) => agentTurn(message.response_id));
  on("response.text.delta", (message) => {
    const turn = agentTurn(message.response_id);
    turn.text += message.delta;
    turn.bubble.textContent = turn.text;
    scrollLog();
  });
  on("response.audio.pause", (message) => markPlayback(message.response_id, "paused"));
  on("response.audio.resume", (message) => markPlayback(message.response_id, "resumed"));
  on("response.done", (message) => finishTurn(message));
  on("response.tool_call", (message) => showToolCall(message));
  on("response.tool_result", (message) => showToolResult(message));
  on("session.ended", ({ reason }) =>
    note(reason === "end_call" ? "The agent ended the call." : `The call ended (${reason.replaceAll("_", " ")}).`),
  );
  on("error", (message) => {
    const text = `Server error ${message.code}: ${message.message}`;
    note(text, { error: true });
    if (message.fatal) showBanner(text);
  });
  on("close", ({ code, reason, ended }) => {
    setConnected(false);
    setState("idle");
    wantConnected = false;
    $("start").textContent = "Start";
    $("start").dataset.active = "false";
    if (ended) return; // the agent hung up (session.ended said so): nothing was lost
    const why = code === 1012 ? "the server is restarting" : reason || `code ${code}`;
    showBanner(`The connection to the server was lost (${why}).`);
    note(`Disconnected (${why})`, { error: true });
  });
}

async function start() {
  hideBanner();
  saveSettings();
  wantConnected = true;
  setConnected(false);
  const microphone = {
    echoCancellation: $("echo").checked,
    noiseSuppression: $("noise").checked,
    autoGainControl: $("gain").checked,
  };
  const url = $("url").value.trim() || defaultServerUrl();
  const apiKey = $("key").value.trim() || null;
  try {
    chat =
      $("transport").value === "webrtc"
        ? new WebRTCChat({
            offerUrl: offerUrlFor(url),
            apiKey,
            microphone,
            iceServers: iceServersFrom($("ice-servers").value, {
              username: $("ice-username").value.trim(),
              credential: $("ice-credential").value,
            }),
            audioElement: $("agent-audio"),
            session: sessionFields(),
            tools: $("browser-tools").checked ? BROWSER_TOOLS : [],
          })
        : new VoiceChat({
            url,
            apiKey,
            session: sessionFields(),
            microphone,
            tools: $("browser-tools").checked ? BROWSER_TOOLS : [],
          });
  } catch (error) {
    wantConnected = false;
    setConnected(false);
    const message = `Bad server URL ${url}: ${error.message}`;
    showBanner(message);
    note(message, { error: true });
    return;
  }
  window.voiceforge = chat.stats;
  wire(chat);
  try {
    await chat.start();
    setConnected(true);
  } catch (error) {
    wantConnected = false;
    setConnected(false);
    setState("idle");
    if (error instanceof VoiceForgeError && error.code === "stopped") return;
    const message = error instanceof VoiceForgeError ? error.message : `Could not start: ${error}`;
    showBanner(message);
    note(message, { error: true });
  }
}

function stop() {
  wantConnected = false;
  if (chat) chat.stop();
  chat = null;
  setConnected(false);
  setState("idle");
}

// ---------------------------------------------------------- the voice library

const RECORD_MS = 8000;
let recordedVoice = null; // a Blob from the microphone, or null

function apiUrl(path) {
  const url = new URL(offerUrlFor($("url").value.trim() || defaultServerUrl()));
  url.pathname = url.pathname.replace(/\/webrtc\/offer$/, path);
  return url.href;
}

function voiceNote(text, { error = false } = {}) {
  $("voice-note").textContent = text;
  $("voice-note").classList.toggle("error", error);
}

async function recordVoice() {
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (error) {
    voiceNote(`No microphone: ${error.message}`, { error: true });
    return;
  }
  const recorder = new MediaRecorder(stream);
  const parts = [];
  recorder.ondataavailable = (event) => parts.push(event.data);
  const stopped = new Promise((resolve) => (recorder.onstop = resolve));
  recorder.start();
  $("voice-record").disabled = true;
  voiceNote("Recording… speak for 8 seconds.");
  setTimeout(() => recorder.stop(), RECORD_MS);
  await stopped;
  for (const track of stream.getTracks()) track.stop();
  $("voice-record").disabled = false;
  recordedVoice = new Blob(parts, { type: recorder.mimeType || "audio/webm" });
  $("voice-file").value = "";
  voiceNote(`Recorded ${(recordedVoice.size / 1024).toFixed(0)} KiB; name it and add it.`);
}

async function addVoice(event) {
  event.preventDefault();
  const name = $("voice-name").value.trim();
  const file = $("voice-file").files[0] || null;
  const sample = file || recordedVoice;
  if (!name || !sample) {
    voiceNote("Give the voice a name and a recording.", { error: true });
    return;
  }
  const form = new FormData();
  form.append("name", name);
  form.append("audio_sample", sample, file ? file.name : "recording.webm");
  const key = $("key").value.trim();
  voiceNote("Adding…");
  let response;
  try {
    response = await fetch(apiUrl("/v1/voices"), {
      method: "POST",
      body: form,
      headers: key ? { Authorization: `Bearer ${key}` } : {},
    });
  } catch (error) {
    voiceNote(`Could not reach the server: ${error.message}`, { error: true });
    return;
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    voiceNote(body.error?.message || `The server answered ${response.status}`, { error: true });
    return;
  }
  const select = $("voice");
  select.append(new Option(`${body.name} (${body.id})`, body.id));
  select.value = body.id;
  recordedVoice = null;
  voiceNote(`Added ${body.name}: chosen for the next reply once you Apply.`);
}

function init() {
  loadSettings();
  $("voice-record").addEventListener("click", recordVoice);
  $("voice-form").addEventListener("submit", addVoice);
  $("start").addEventListener("click", () => (wantConnected ? stop() : start()));
  $("reconnect").addEventListener("click", () => {
    stop();
    start();
  });
  $("interrupt").addEventListener("click", () => chat && chat.cancel());
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("text").value.trim();
    if (!text || !chat) return;
    if (chat.sendText(text)) {
      showFinal(text);
      $("text").value = "";
    }
  });
  $("settings-form").addEventListener("submit", (event) => {
    event.preventDefault();
    saveSettings();
    if (chat instanceof WebRTCChat) {
      $("apply-note").textContent = "Saved. A WebRTC call keeps the server's session settings; the connection settings apply on the next Start.";
    } else if (chat && chat.ready) {
      chat.updateSession(sessionFields());
      $("apply-note").textContent = "Applied from the next reply.";
    } else {
      $("apply-note").textContent = "Saved; used on the next Start.";
    }
  });
  $("transport").addEventListener("change", showTransportSettings);
  $("clear-log").addEventListener("click", () => {
    $("log").replaceChildren();
    turns.clear();
    partialItem = null;
  });
  if (window.matchMedia("(min-width: 761px)").matches) $("settings-panel").open = true;
}

init();
