// VoiceForge JS SDK: a browser caller on the VoiceForge wire protocol, version 1.4
// (docs/protocol.md). No framework, no build step: an ES module.
//
//   import { VoiceChat } from "./voiceforge.js";
//   const chat = new VoiceChat({ url: "ws://127.0.0.1:8000/ws", session: { instructions } });
//   chat.addEventListener("transcript.final", (e) => console.log(e.detail.text));
//   await chat.start();   // microphone → server → speaker, until chat.stop()
//
// Every server message is re-dispatched as a CustomEvent named by its `type`
// (`event.detail` is the message). The SDK adds `state` (listening, user_speaking,
// thinking, agent_speaking, agent_paused), `level` (microphone RMS, 0..1), `played` (playback
// counters) and `close` ({code, reason, clean}).
//
// What the SDK does for the protocol, so the page does not have to:
// - offers the subprotocols ["voiceforge.v1", "bearer.<key>"] when given an API key;
// - sets input_sample_rate 16000 (the capture worklet resamples) and an
//   output_sample_rate the AudioContext plays natively, before any audio;
// - streams 20 ms PCM16 frames from an AudioWorklet;
// - plays reply audio through a ring-buffer AudioWorklet, flushes it on
//   response.audio.clear and drops any later audio of that response id;
// - reports output_audio.played every 250 ms while a reply plays, when it runs dry,
//   and right after a clear, from the worklet's exact frame counters;
// - asks for playback pauses (protocol 1.1, `playbackPause: false` to opt out): the
//   reply goes quiet the moment the caller speaks over it and resumes where it
//   stopped if that was only "mm-hmm" or a cough (`response.audio.pause`/`resume`).
// - client tools (protocol 1.2, docs/tools.md): functions the agent's model may call,
//   run here in the page. Declare them with `tools` (or `addTool` later):
//
//     new VoiceChat({ url, tools: [{
//       name: "get_cart", description: "What the caller has in their cart.",
//       parameters: { type: "object", properties: {} },
//       handler: async (args, call) => ({ items: cart.items }),
//     }] });
//
//   Each `response.tool_call` for one of them runs its handler with the parsed
//   arguments and {callId, name, signal}; its return value (a string as it is,
//   anything else as JSON) or what it throws (an error result) goes back as
//   `tool.result`. A handler still running when the server settles its call without
//   it (`session.tool_timeout_ms` passed, a barge-in cancelled it) gets its `signal`
//   aborted and its result is not sent.
//   `response.tool_call`, `response.tool_result` and `session.ended` (the agent hung
//   up; the `close` event then carries `ended: "end_call"`) are dispatched as events.
// - resume (protocol 1.3, docs/calls.md): when the connection drops (any close but
//   1000 and 4xxx), VoiceChat reconnects with the call's resume token, backing off,
//   within the server's `limits.resume_window_s` (state `reconnecting`, event
//   `reconnecting`); the call comes back with its history and settings (event
//   `resumed`, then `session.created` with `resumed: true`), the reply that was
//   playing stops where it was and is reported played. `autoResume: false` turns it
//   off; a call that does not come back ends with `close` (`resumeFailed: true`).

import { decode, encode } from "./vendor/msgpack/index.mjs";

export const PROTOCOL_VERSION = 1;
export const PROTOCOL_MINOR = 4;
const RESUME_FIRST_DELAY_MS = 100;
const RESUME_MAX_DELAY_MS = 2000;
const TOOLS_MINOR = 2; // the minor version that brought client tools
export const SUBPROTOCOL = "voiceforge.v1";
export const SUPPORTED_SAMPLE_RATES = [8000, 16000, 22050, 24000, 32000, 44100, 48000];
const INPUT_SAMPLE_RATE = 16000;
const DEFAULT_OUTPUT_SAMPLE_RATE = 24000;
const CONNECT_TIMEOUT_MS = 15000;
const REPORT_INTERVAL_MS = 250;
const DEFAULT_TOOL_TIMEOUT_MS = 10000;
// A handler's own bound is the server's plus this: the server decides when a call has
// timed out (its response.tool_result aborts the handler); this only catches a result
// that never arrives.
const TOOL_TIMEOUT_GRACE_MS = 1000;
const MAX_TOOL_OUTPUT_CHARS = 16000;
const TOOL_NAME = /^[A-Za-z0-9_-]{1,64}$/;

/** A failure the page should show; `code` says which (see ERROR_CODES). */
export class VoiceForgeError extends Error {
  constructor(code, message, { fatal = true } = {}) {
    super(message);
    this.name = "VoiceForgeError";
    this.code = code;
    this.fatal = fatal;
  }
}

export const ERROR_CODES = [
  "insecure_context", // getUserMedia needs https:// or localhost
  "microphone_denied", // the user or the browser refused the microphone
  "microphone_unavailable", // no microphone, or it is busy
  "audio_unavailable", // no AudioWorklet in this browser
  "server_unreachable", // the WebSocket did not open (down, wrong URL, or key refused)
  "connection_lost", // the WebSocket closed during the call
  "protocol_mismatch", // the server speaks another protocol version
];

/** Where the page's own server accepts the protocol. */
/**
 * The microphone as a MediaStream, with ``microphone`` constraints (echo
 * cancellation, noise suppression, automatic gain). Both transports use it, so
 * both explain a denied or missing microphone the same way.
 */
export async function openMicrophone(microphone) {
  if (!globalThis.isSecureContext || !navigator.mediaDevices?.getUserMedia) {
    throw new VoiceForgeError(
      "insecure_context",
      "The microphone needs a secure page: open it as http://localhost or http://127.0.0.1, or serve it over https.",
    );
  }
  try {
    return await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, ...microphone },
      video: false,
    });
  } catch (error) {
    if (error && (error.name === "NotAllowedError" || error.name === "SecurityError")) {
      throw new VoiceForgeError(
        "microphone_denied",
        "Microphone access was denied. Allow the microphone for this site (the icon in the address bar), then press Start again.",
      );
    }
    throw new VoiceForgeError(
      "microphone_unavailable",
      `No usable microphone (${error && error.name ? error.name : error}). Plug one in or close the app using it, then press Start again.`,
    );
  }
}

export function defaultServerUrl(location = globalThis.location) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws`;
}

/**
 * The page's client tools (protocol 1.2): their declarations and their runs.
 * `send(message)` sends a protocol message; `timeoutMs()` reads the session's
 * tool_timeout_ms. Runs are keyed by call id: a call runs once, a cancel aborts it.
 */
export class ClientTools {
  constructor(send, timeoutMs) {
    this.send = send;
    this.timeoutMs = timeoutMs;
    this.tools = new Map();
    this.runs = new Map(); // call id → AbortController
  }

  /** Add or replace a tool; throws a VoiceForgeError for a bad declaration. */
  add({ name, description = "", parameters = { type: "object", properties: {} }, handler }) {
    if (typeof name !== "string" || !TOOL_NAME.test(name)) {
      throw new VoiceForgeError("invalid_tool", `Tool name ${JSON.stringify(name)}: letters, digits, _ and - only, at most 64.`);
    }
    if (!parameters || parameters.type !== "object") {
      throw new VoiceForgeError("invalid_tool", `Tool ${name}: parameters must be a JSON schema of type object.`);
    }
    if (typeof handler !== "function") {
      throw new VoiceForgeError("invalid_tool", `Tool ${name}: handler must be a function.`);
    }
    this.tools.set(name, { name, description, parameters, handler });
  }

  remove(name) {
    return this.tools.delete(name);
  }

  get size() {
    return this.tools.size;
  }

  /** The `session.tools` list (OpenAI Realtime's flat function format). */
  definitions() {
    return [...this.tools.values()].map(({ name, description, parameters }) => ({
      type: "function",
      name,
      description,
      parameters,
    }));
  }

  /** A `response.tool_call`: run it when it is ours; the result goes back as `tool.result`. */
  async run(call) {
    const tool = this.tools.get(call.name);
    if (call.executor !== "client" || !tool || this.runs.has(call.call_id)) return;
    const controller = new AbortController();
    this.runs.set(call.call_id, controller);
    const timer = setTimeout(
      () => controller.abort(new DOMException("tool timed out", "TimeoutError")),
      this.timeoutMs() + TOOL_TIMEOUT_GRACE_MS,
    );
    const stopped = new Promise((resolve) => controller.signal.addEventListener("abort", resolve, { once: true }));
    let output;
    let isError = false;
    try {
      const args = call.arguments && call.arguments.trim() ? JSON.parse(call.arguments) : {};
      const result = await Promise.race([
        Promise.resolve().then(() => tool.handler(args, { callId: call.call_id, name: call.name, signal: controller.signal })),
        stopped,
      ]);
      // (JSON.stringify gives undefined for a function: sent as an empty result.)
      output = (typeof result === "string" ? result : JSON.stringify(result ?? null)) ?? "";
    } catch (error) {
      isError = true;
      output = error && error.name ? `${error.name}: ${error.message}` : String(error);
    } finally {
      clearTimeout(timer);
      this.runs.delete(call.call_id);
    }
    // Timed out or cancelled: the server has answered the model itself already.
    if (controller.signal.aborted) return;
    this.send({ type: "tool.result", call_id: call.call_id, output: output.slice(0, MAX_TOOL_OUTPUT_CHARS), is_error: isError });
  }

  /**
   * A `response.tool_result`. For a call still running here, the server settled it
   * without us (a barge-in cancelled it, it timed out): the handler's signal aborts
   * and its result is not sent.
   */
  settled(result) {
    this.runs.get(result.call_id)?.abort(new DOMException(`tool call ${result.status}`, "AbortError"));
  }

  abortAll() {
    for (const controller of this.runs.values()) controller.abort(new DOMException("the call ended", "AbortError"));
    this.runs.clear();
  }
}

/**
 * What both transports share: the call's lifecycle, typed input, cancel and the
 * state indicator. A transport provides openMedia(), connect(), send(message),
 * teardown() and agentAudible(), and keeps ready / stopped / userSpeaking /
 * awaitingReply / stats up to date from the server's events.
 */
export class ChatSession extends EventTarget {
  /** Session fields and client tools, for both transports: call from the constructor. */
  setUpSession(options) {
    this.sessionFields = { ...(options.session || {}) };
    this.clientTools = new ClientTools(
      (message) => this.send(message),
      () => this.session?.tool_timeout_ms ?? DEFAULT_TOOL_TIMEOUT_MS,
    );
    for (const tool of options.tools || []) this.clientTools.add(tool);
  }

  /** Change session settings (instructions, voice, ...); the server answers session.updated. */
  updateSession(fields) {
    Object.assign(this.sessionFields, fields);
    if (this.ready) this.send({ type: "session.update", session: fields });
  }

  /** Declare (or replace) a client tool: {name, description, parameters, handler}. */
  addTool(tool) {
    this.clientTools.add(tool);
    this.sendTools();
  }

  removeTool(name) {
    if (this.clientTools.remove(name)) this.sendTools();
  }

  /** The tool list replaces the session's; only servers of protocol ≥ 1.2 take it. */
  sendTools() {
    if (!this.ready || !this.created) return; // sent once the session is set up
    if ((this.created.protocol_minor || 0) < TOOLS_MINOR) {
      const message = `This server speaks protocol 1.${this.created.protocol_minor || 0}; client tools need 1.${TOOLS_MINOR}.`;
      this.stats.errors.push({ code: "tools_unsupported", message, fatal: false });
      this.emit("error", { code: "tools_unsupported", message, fatal: false, response_id: null, category: "client" });
      return;
    }
    this.send({ type: "session.update", session: { tools: this.clientTools.definitions() } });
  }

  /** `response.tool_call` and `response.tool_result`: run ours, keep the record in stats. */
  onToolEvent(message) {
    const calls = this.stats.toolCalls;
    if (message.type === "response.tool_call") {
      calls.push({
        call_id: message.call_id,
        response_id: message.response_id,
        name: message.name,
        arguments: message.arguments,
        executor: message.executor,
        status: "running",
      });
      this.clientTools.run(message);
      return;
    }
    const call = calls.find((entry) => entry.call_id === message.call_id);
    if (call) Object.assign(call, { status: message.status, output: message.output, elapsed_ms: message.elapsed_ms });
    this.clientTools.settled(message);
  }

  get state() {
    return this.currentState;
  }

  /** Open the microphone and the connection. Rejects with a VoiceForgeError. */
  async start() {
    if (!this.stopped) return;
    this.stopped = false;
    this.setState("connecting");
    try {
      await this.openMedia();
      await this.connect();
    } catch (error) {
      this.teardown();
      this.setState("idle");
      throw error;
    }
  }

  /** Hang up: close the connection and release the microphone. */
  stop() {
    if (this.stopped) return;
    this.teardown();
    this.setState("idle");
  }

  /** Typed input: interrupts a reply in progress, then answers it. */
  sendText(text) {
    if (!this.ready) return false;
    this.awaitingReply = true;
    this.send({ type: "conversation.text", text });
    this.updateState();
    return true;
  }

  /** Stop the reply in progress (the server clears its audio). */
  cancel(responseId = null) {
    if (this.ready) this.send({ type: "response.cancel", response_id: responseId });
  }

  updateState() {
    if (this.stopped) return;
    let state;
    if (!this.ready) state = this.reconnecting ? "reconnecting" : "connecting";
    else if (this.userSpeaking) state = "user_speaking";
    else if (this.agentAudible()) state = "agent_speaking";
    else if (this.agentPaused()) state = "agent_paused";
    else if (this.awaitingReply) state = "thinking";
    else state = "listening";
    this.setState(state);
  }

  /** A transport that can pause replies says so; the base cannot. */
  agentPaused() {
    return false;
  }

  setState(state) {
    if (state === this.currentState) return;
    this.currentState = state;
    this.stats.state = state;
    this.emit("state", { state });
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

export class VoiceChat extends ChatSession {
  /**
   * @param {object} options
   * @param {string} options.url           ws:// or wss:// URL of /ws
   * @param {string} [options.apiKey]      sent as the `bearer.<key>` subprotocol
   * @param {object} [options.session]     session.update fields (instructions, voice, ...)
   * @param {object} [options.microphone]  echoCancellation, noiseSuppression, autoGainControl
   * @param {string} [options.workletBase] URL of the worklets/ folder
   * @param {boolean} [options.playbackPause] ask the server to pause (not cancel) a
   *   reply the caller speaks over, and resume it after a backchannel (default true)
   * @param {object[]} [options.tools]     client tools: {name, description, parameters, handler}
   * @param {boolean} [options.autoResume] reconnect and resume the call when the
   *   connection drops (default true)
   */
  constructor(options) {
    super();
    this.url = options.url;
    this.apiKey = options.apiKey || null;
    this.setUpSession(options);
    this.microphone = {
      echoCancellation: true,
      noiseSuppression: true,
      autoGainControl: true,
      ...(options.microphone || {}),
    };
    this.workletBase = options.workletBase || new URL("./worklets/", import.meta.url).href;
    this.playbackPause = options.playbackPause ?? true;
    this.autoResume = options.autoResume ?? true;
    this.reconnecting = false;
    this.endReason = null; // session.ended: why the server ended the call
    this.ws = null;
    this.context = null;
    this.stream = null;
    this.capture = null;
    this.playback = null;
    this.created = null;
    this.session = null;
    this.reportTimer = null;
    this.ready = false; // session.updated received: audio may flow
    this.stopped = true;
    this.userSpeaking = false;
    this.awaitingReply = false;
    this.buffered = 0;
    this.audible = 0; // buffered frames that will play (none while paused)
    this.paused = new Set(); // response ids paused by the server
    this.cleared = new Set();
    this.active = new Set(); // responses with audio, neither cleared nor done
    this.reported = new Map(); // response id → frames last reported
    this.currentState = "idle";
    /** Counters for people and tests (window.voiceforge in the demo page). */
    this.stats = {
      state: "idle",
      sessionId: null,
      framesSent: 0,
      playedFrames: {}, // response id → frames the playback worklet played
      receivedMs: {}, // response id → audio ms received (and accepted)
      droppedAfterClear: 0,
      cleared: [], // response ids cleared (barge-in, cancel) or ended unfinished
      clearedAtFrames: {}, // response id → frames played when the worklet flushed it
      pausedAtFrames: {}, // response id → frames played at its last pause
      pauses: [], // response ids, once per response.audio.pause
      resumes: [], // response ids, once per response.audio.resume
      playedReports: 0,
      reconnects: 0, // times the call came back on a new connection (resume)
      responses: {}, // response id → {status, reason, text, text_heard}
      toolCalls: [], // {call_id, name, arguments, executor, status, output, elapsed_ms}
      endReason: null,
      transcripts: [],
      errors: [],
      outputSampleRate: null,
      contextSampleRate: null,
    };
  }

  // ------------------------------------------------------------------ audio

  async openMedia() {
    // (An insecure page has no AudioWorklet either: openMicrophone says why.)
    if (globalThis.isSecureContext && typeof AudioWorkletNode === "undefined") {
      throw new VoiceForgeError("audio_unavailable", "This browser has no AudioWorklet; use a current Chrome, Edge, Firefox or Safari.");
    }
    this.stream = await openMicrophone(this.microphone);
    // One context for both directions, at the device's own rate: the capture
    // worklet resamples to 16 kHz, and the server sends replies at this rate when
    // the protocol supports it (no resampling in the browser at all).
    this.context = new AudioContext({ latencyHint: "interactive" });
    const rate = this.context.sampleRate;
    this.stats.contextSampleRate = rate;
    this.outputSampleRate = SUPPORTED_SAMPLE_RATES.includes(rate) ? rate : DEFAULT_OUTPUT_SAMPLE_RATE;
    this.stats.outputSampleRate = this.outputSampleRate;
    await this.context.audioWorklet.addModule(this.workletBase + "capture.js");
    await this.context.audioWorklet.addModule(this.workletBase + "playback.js");
    const source = this.context.createMediaStreamSource(this.stream);
    this.capture = new AudioWorkletNode(this.context, "voiceforge-capture", {
      numberOfInputs: 1,
      numberOfOutputs: 0,
      channelCount: 1,
      channelCountMode: "explicit",
      channelInterpretation: "speakers",
    });
    this.capture.port.onmessage = (event) => this.onCaptureFrame(event.data);
    source.connect(this.capture);
    this.playback = new AudioWorkletNode(this.context, "voiceforge-playback", {
      numberOfInputs: 0,
      numberOfOutputs: 1,
      outputChannelCount: [1],
    });
    this.playback.port.onmessage = (event) => this.onPlaybackMessage(event.data);
    this.playback.connect(this.context.destination);
    await this.context.resume();
  }

  onCaptureFrame(message) {
    if (message.type !== "frame") return;
    this.emit("level", { level: message.level });
    if (!this.ready) return; // nothing is sent before the input rate is agreed
    this.send({ type: "input_audio.append", audio: new Uint8Array(message.pcm) });
    this.stats.framesSent += 1;
  }

  onPlaybackMessage(message) {
    if (message.type === "status") {
      Object.assign(this.stats.playedFrames, message.played);
      this.buffered = message.buffered;
      this.audible = message.audible ?? message.buffered;
      if (message.buffered === 0) this.reportPlayed(); // ran dry: tell the server now
      this.emit("played", { played: this.stats.playedFrames, buffered: message.buffered });
      this.updateState();
    } else if (message.type === "cleared") {
      // Right after a clear the server waits (≤ 400 ms) for this to settle history.
      this.stats.playedFrames[message.id] = message.frames;
      this.stats.clearedAtFrames[message.id] = message.frames;
      if (!message.flushOnly) this.sendPlayed(message.id, message.frames);
    } else if (message.type === "paused") {
      // Where the pause caught it: what the caller heard if the pause becomes a cancel.
      this.stats.playedFrames[message.id] = message.frames;
      this.stats.pausedAtFrames[message.id] = message.frames;
      this.sendPlayed(message.id, message.frames);
    } else if (message.type === "dropped") {
      this.stats.droppedAfterClear += 1;
    }
  }

  playedMs(frames) {
    return (frames * 1000) / this.context.sampleRate;
  }

  sendPlayed(responseId, frames) {
    if (!this.ready) return;
    this.reported.set(responseId, frames);
    this.send({ type: "output_audio.played", response_id: responseId, played_ms: this.playedMs(frames) });
    this.stats.playedReports += 1;
  }

  reportPlayed() {
    for (const id of this.active) {
      const frames = this.stats.playedFrames[id] || 0;
      if (frames > 0 && frames !== this.reported.get(id)) this.sendPlayed(id, frames);
    }
  }

  // ------------------------------------------------------------- connection

  connect() {
    const protocols = [SUBPROTOCOL];
    if (this.apiKey) protocols.push(`bearer.${this.apiKey}`);
    return new Promise((resolve, reject) => {
      let settled = false;
      const fail = (error) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        reject(error);
      };
      const unreachable = () =>
        new VoiceForgeError(
          "server_unreachable",
          `Cannot reach the VoiceForge server at ${this.url}. Is \`voiceforge serve\` running there?` +
            (this.apiKey ? " Check the API key too: a wrong key is refused." : " If it has an API key, enter it in Settings."),
        );
      this.abortConnect = () => fail(new VoiceForgeError("stopped", "Stopped before the call connected.", { fatal: false }));
      const timer = setTimeout(() => {
        fail(unreachable());
        if (this.ws) this.ws.close();
      }, CONNECT_TIMEOUT_MS);
      let ws;
      try {
        ws = new WebSocket(this.url, protocols);
      } catch (error) {
        fail(new VoiceForgeError("server_unreachable", `Bad server URL ${this.url}: ${error.message}`));
        return;
      }
      ws.binaryType = "arraybuffer";
      this.ws = ws;
      ws.onmessage = (event) => {
        if (typeof event.data === "string") return; // the protocol never uses text
        let message;
        try {
          message = decode(new Uint8Array(event.data));
        } catch (error) {
          console.warn("voiceforge: undecodable frame", error);
          return;
        }
        if (message.type === "session.created" && message.protocol_version !== PROTOCOL_VERSION) {
          fail(new VoiceForgeError("protocol_mismatch", `The server speaks protocol ${message.protocol_version}; this page speaks ${PROTOCOL_VERSION}.`));
          ws.close();
          return;
        }
        this.onServerMessage(message);
        if (!settled && message.type === "session.updated" && this.ready) {
          settled = true;
          this.abortConnect = null;
          clearTimeout(timer);
          resolve();
        }
      };
      ws.onclose = (event) => {
        if (!settled) {
          this.ready = false;
          fail(unreachable());
          return;
        }
        this.onSocketClosed(event);
      };
    });
  }

  onSocketClosed(event) {
    const wasReady = this.ready;
    this.ready = false;
    if (this.stopped) return;
    if (this.resumable(event)) {
      this.resume();
      return;
    }
    this.teardown();
    this.setState("idle");
    this.emit("close", { code: event.code, reason: event.reason, clean: event.wasClean, wasReady, ended: this.endReason });
  }

  /** Whether a closed connection's call may come back (docs/protocol.md §2). */
  resumable(event) {
    const created = this.created;
    const code = event.code;
    return (
      this.autoResume && !this.endReason && created && created.resume_token &&
      ((created.limits && created.limits.resume_window_s) || 0) > 0 &&
      code !== 1000 && code !== 1008 && !(code >= 4000 && code < 5000)
    );
  }

  async resume() {
    const token = this.created.resume_token;
    const deadline = Date.now() + this.created.limits.resume_window_s * 1000;
    this.reconnecting = true;
    clearInterval(this.reportTimer);
    this.emit("reconnecting", { sessionId: this.created.session_id });
    this.updateState();
    let delay = RESUME_FIRST_DELAY_MS;
    while (!this.stopped && Date.now() < deadline) {
      const outcome = await this.tryResume(token, deadline);
      if (outcome === "resumed" || this.stopped) return;
      if (outcome === "refused") break;
      await new Promise((resolve) => setTimeout(resolve, Math.max(0, Math.min(delay, deadline - Date.now()))));
      delay = Math.min(delay * 2, RESUME_MAX_DELAY_MS);
    }
    if (this.stopped) return;
    this.reconnecting = false;
    this.teardown();
    this.setState("idle");
    this.emit("close", { code: 1006, reason: "the call could not be resumed", clean: false, wasReady: true, ended: null, resumeFailed: true });
  }

  /** One try: "resumed", "refused" (the server said no: stop) or "failed" (try again). */
  tryResume(token, deadline) {
    // In a subprotocol, not the URL: URLs end up in access logs.
    const protocols = [SUBPROTOCOL, `resume.${token}`];
    if (this.apiKey) protocols.push(`bearer.${this.apiKey}`);
    return new Promise((resolve) => {
      let outcome = null;
      let ws;
      const finish = (result) => {
        if (outcome !== null) return;
        outcome = result;
        clearTimeout(timer);
        this.abortResume = null;
        resolve(result);
      };
      const timer = setTimeout(() => {
        finish("failed");
        if (ws) ws.close();
      }, Math.max(1, Math.min(CONNECT_TIMEOUT_MS, deadline - Date.now())));
      this.abortResume = () => {
        finish("refused");
        if (ws) ws.close(1000);
      };
      try {
        ws = new WebSocket(this.url, protocols);
      } catch (error) {
        finish("refused");
        return;
      }
      ws.binaryType = "arraybuffer";
      ws.onmessage = (event) => {
        if (typeof event.data === "string") return;
        let message;
        try {
          message = decode(new Uint8Array(event.data));
        } catch (error) {
          console.warn("voiceforge: undecodable frame", error);
          return;
        }
        if (outcome === null) {
          if (message.type === "session.created" && message.resumed) {
            finish("resumed");
            this.ws = ws;
            this.onResumed(message);
          } else if (message.type === "error") {
            ws.onclose = null;
            finish(message.code === "resume_busy" ? "failed" : "refused");
            this.stats.errors.push({ code: message.code, message: message.message, fatal: message.fatal });
            this.emit("error", message);
          }
          return;
        }
        this.onServerMessage(message);
      };
      ws.onclose = (event) => {
        if (outcome === null) finish("failed");
        else if (this.ws === ws) this.onSocketClosed(event);
      };
    });
  }

  onResumed(message) {
    this.created = message;
    this.session = message.session;
    this.stats.sessionId = message.session_id;
    this.stats.reconnects += 1;
    // The reply that was playing: the server cancelled it with the old connection.
    // Where it stopped is what the caller heard; it says so first thing.
    for (const id of [...this.active]) {
      const frames = this.stats.playedFrames[id] || 0;
      this.reported.set(id, frames);
      this.ws.send(encode({ type: "output_audio.played", response_id: id, played_ms: this.playedMs(frames) }));
      this.stats.playedReports += 1;
      this.clearResponse(id, { flushOnly: true });
    }
    this.reconnecting = false;
    this.ready = true; // the call's settings (rates, tools) came back with it
    this.startReporting();
    this.emit("resumed", { sessionId: message.session_id });
    this.emit("session.created", message);
    this.updateState();
  }

  send(message) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(encode(message));
  }

  onServerMessage(message) {
    const type = message.type;
    const stats = this.stats;
    switch (type) {
      case "session.created":
        this.created = message;
        this.session = message.session;
        stats.sessionId = message.session_id;
        // Rates first and alone: a bad user field must not leave them unset. A 1.0
        // server rejects playback_pause (and the update with it): ask 1.1 servers only.
        this.send({
          type: "session.update",
          session: {
            input_sample_rate: INPUT_SAMPLE_RATE,
            output_sample_rate: this.outputSampleRate,
            ...(this.playbackPause && (message.protocol_minor || 0) >= 1 ? { playback_pause: true } : {}),
          },
        });
        if (Object.keys(this.sessionFields).length) {
          this.send({ type: "session.update", session: this.sessionFields });
        }
        break;
      case "session.updated":
        this.session = message.session;
        if (!this.ready && message.session.input_sample_rate === INPUT_SAMPLE_RATE) {
          this.ready = true;
          if (this.clientTools.size) this.sendTools();
          this.startReporting();
          this.updateState();
        }
        break;
      case "input_audio.speech_started":
        this.userSpeaking = true;
        break;
      case "input_audio.speech_stopped":
        this.userSpeaking = false;
        break;
      case "input_audio.turn_ignored":
        this.userSpeaking = false;
        this.awaitingReply = false;
        break;
      case "transcript.final":
        this.userSpeaking = false;
        this.awaitingReply = true;
        stats.transcripts.push(message.text);
        break;
      case "response.created":
        this.awaitingReply = true;
        stats.responses[message.response_id] = { status: "in_progress", text: "" };
        break;
      case "response.text.delta": {
        const response = stats.responses[message.response_id];
        if (response) response.text += message.delta;
        break;
      }
      case "response.audio.delta":
        this.onAudio(message);
        return; // high rate; not re-dispatched to the page
      case "response.audio.clear":
        this.clearResponse(message.response_id);
        break;
      case "response.audio.pause":
        this.stats.pauses.push(message.response_id);
        if (!this.cleared.has(message.response_id)) {
          this.paused.add(message.response_id);
          this.audible = 0; // silent from this instant; the worklet confirms
          if (this.playback) this.playback.port.postMessage({ type: "pause", id: message.response_id });
        }
        break;
      case "response.audio.resume":
        this.stats.resumes.push(message.response_id);
        if (this.paused.delete(message.response_id) && this.playback) {
          this.playback.port.postMessage({ type: "resume", id: message.response_id });
        }
        break;
      case "response.done":
        this.awaitingReply = false;
        this.active.delete(message.response_id);
        if (message.status !== "completed") this.clearResponse(message.response_id, { flushOnly: true });
        stats.responses[message.response_id] = {
          status: message.status,
          reason: message.reason,
          text: message.text,
          text_heard: message.text_heard,
          timings: message.timings,
        };
        break;
      case "response.tool_call":
      case "response.tool_result":
        this.onToolEvent(message);
        break;
      case "session.ended":
        this.endReason = stats.endReason = message.reason; // the server closes next
        break;
      case "error":
        stats.errors.push({ code: message.code, message: message.message, fatal: message.fatal });
        if (message.response_id) this.awaitingReply = false;
        break;
      default:
        break; // future minor additions are ignored
    }
    this.emit(type, message);
    this.updateState();
  }

  onAudio(message) {
    const id = message.response_id;
    if (this.cleared.has(id)) {
      this.stats.droppedAfterClear += 1; // stale audio of a cleared response
      return;
    }
    this.active.add(id);
    this.stats.receivedMs[id] = (this.stats.receivedMs[id] || 0) + message.duration_ms;
    const audio = message.audio;
    // A copy that starts at offset 0, so the worklet can view it as Int16 (LE on every browser platform).
    const pcm = audio.buffer.slice(audio.byteOffset, audio.byteOffset + audio.byteLength);
    this.playback.port.postMessage({ type: "audio", id, pcm, rate: message.sample_rate }, [pcm]);
  }

  clearResponse(responseId, { flushOnly = false } = {}) {
    if (this.cleared.has(responseId)) return;
    this.cleared.add(responseId);
    this.paused.delete(responseId);
    this.active.delete(responseId);
    this.stats.cleared.push(responseId);
    if (this.playback) this.playback.port.postMessage({ type: "clear", id: responseId, flushOnly });
  }

  startReporting() {
    clearInterval(this.reportTimer);
    this.reportTimer = setInterval(() => this.reportPlayed(), REPORT_INTERVAL_MS);
  }

  // ------------------------------------------------------------------ state

  agentAudible() {
    return this.audible > 0;
  }

  /** A reply is paused (the caller is speaking over it); it may resume. */
  agentPaused() {
    return this.paused.size > 0;
  }

  teardown() {
    this.stopped = true;
    this.reconnecting = false;
    if (this.abortConnect) this.abortConnect();
    this.abortConnect = null;
    if (this.abortResume) this.abortResume();
    this.abortResume = null;
    this.ready = false;
    clearInterval(this.reportTimer);
    this.reportTimer = null;
    this.clientTools.abortAll();
    if (this.ws) {
      this.ws.onclose = null;
      this.ws.onmessage = null;
      if (this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000, "caller hung up");
      this.ws = null;
    }
    if (this.capture) this.capture.port.postMessage({ type: "stop" });
    if (this.stream) for (const track of this.stream.getTracks()) track.stop();
    if (this.context) this.context.close();
    this.stream = this.context = this.capture = this.playback = null;
    this.userSpeaking = this.awaitingReply = false;
    this.buffered = this.audible = 0;
    this.paused.clear();
    this.active.clear();
  }
}
