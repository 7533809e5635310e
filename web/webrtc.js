// VoiceForge over WebRTC: the same events as voiceforge.js's VoiceChat, carried by
// a peer connection to the server's bridge (POST /webrtc/offer, docs/telephony.md).
//
//   import { WebRTCChat } from "./webrtc.js";
//   const chat = new WebRTCChat({ offerUrl: "http://127.0.0.1:8000/webrtc/offer" });
//   chat.addEventListener("transcript.final", (e) => console.log(e.detail.text));
//   await chat.start();
//
// The microphone goes out as the peer connection's audio track (the browser's Opus,
// echo cancellation and jitter buffer do the work the worklets do over WebSocket);
// the agent's voice comes back as the remote track and plays through an <audio>
// element. Protocol events arrive as JSON text on the data channel "events", which
// this side creates; it takes response.cancel and conversation.text. Session
// settings are the server's in v1 (no session.update over WebRTC).
//
// Events dispatched, as VoiceChat does: every server message by its `type`, plus
// `state`, `level` (microphone RMS, 0..1) and `close` ({code, reason, clean}).

import { ChatSession, PROTOCOL_VERSION, VoiceForgeError, openMicrophone } from "./voiceforge.js";

const DATA_CHANNEL_LABEL = "events";
const CONNECT_TIMEOUT_MS = 30000;
const ICE_GATHERING_TIMEOUT_MS = 10000;
const DISCONNECTED_GRACE_MS = 5000;
const METER_INTERVAL_MS = 50;
const STATS_INTERVAL_MS = 500;
// The bridge sends digital silence between replies: anything above this is the agent.
const AUDIBLE_RMS = 0.002;
const SPEAKING_HANGOVER_MS = 400;

/** /ws's URL → the bridge's offer URL on the same server (ws→http, wss→https). */
export function offerUrlFor(serverUrl) {
  const url = new URL(serverUrl);
  if (url.protocol === "ws:") url.protocol = "http:";
  else if (url.protocol === "wss:") url.protocol = "https:";
  url.pathname = url.pathname.replace(/\/ws\/?$/, "").replace(/\/$/, "") + "/webrtc/offer";
  url.search = "";
  url.hash = "";
  return url.href;
}

/** "stun:a, turn:b" (commas or whitespace) → RTCIceServer entries. */
export function iceServersFrom(urls, { username = "", credential = "" } = {}) {
  return (urls || "")
    .split(/[\s,]+/)
    .filter(Boolean)
    .map((url) => (/^turns?:/.test(url) && username ? { urls: url, username, credential } : { urls: url }));
}

function rms(samples) {
  let sum = 0;
  for (let i = 0; i < samples.length; i++) sum += samples[i] * samples[i];
  return Math.sqrt(sum / samples.length);
}

export class WebRTCChat extends ChatSession {
  /**
   * @param {object} options
   * @param {string} options.offerUrl        http(s):// URL of /webrtc/offer
   * @param {string} [options.apiKey]        sent as `Authorization: Bearer <key>`
   * @param {object[]} [options.iceServers]  RTCIceServer entries (STUN/TURN); none on a LAN
   * @param {object} [options.microphone]    echoCancellation, noiseSuppression, autoGainControl
   * @param {HTMLAudioElement} [options.audioElement]  where the agent's voice plays
   * @param {object} [options.session]       session.update fields (instructions, voice, ...;
   *   not the sample rates or playback_pause, which the bridge sets)
   * @param {object[]} [options.tools]       client tools: {name, description, parameters, handler}
   */
  constructor(options) {
    super();
    this.setUpSession(options);
    this.offerUrl = options.offerUrl;
    this.apiKey = options.apiKey || null;
    this.iceServers = options.iceServers || [];
    this.microphone = {
      echoCancellation: true,
      noiseSuppression: true,
      autoGainControl: true,
      ...(options.microphone || {}),
    };
    this.audioElement = options.audioElement || null;
    this.pc = null;
    this.channel = null;
    this.stream = null;
    this.context = null;
    this.micAnalyser = null;
    this.remoteAnalyser = null;
    this.meterTimer = null;
    this.statsTimer = null;
    this.disconnectTimer = null;
    this.created = null;
    this.session = null;
    this.ready = false; // the data channel is open and session.created arrived
    this.stopped = true;
    this.userSpeaking = false;
    this.awaitingReply = false;
    this.lastAudibleAt = -Infinity;
    this.currentState = "idle";
    /** Counters for people and tests (window.voiceforge in the demo page). */
    this.stats = {
      transport: "webrtc",
      state: "idle",
      sessionId: null,
      echoCancelled: null,
      playedFrames: {}, // kept for the page's shape; WebRTC plays no per-response frames
      cleared: [], // response ids cleared (barge-in, cancel)
      responses: {}, // response id → {status, reason, text, text_heard, timings}
      transcripts: [],
      errors: [],
      toolCalls: [], // {call_id, name, arguments, executor, status, output, elapsed_ms}
      remoteAudio: { audibleMs: 0, peak: 0 }, // the agent's voice as the page received it
      inbound: { totalSamplesReceived: 0, totalAudioEnergy: 0, audioLevel: 0, packetsReceived: 0 },
      connectionState: "new",
      iceConnectionState: "new",
    };
  }

  // ------------------------------------------------------------------ audio

  async openMedia() {
    if (typeof RTCPeerConnection === "undefined") {
      throw new VoiceForgeError("webrtc_unavailable", "This browser has no WebRTC; use the WebSocket connection mode.");
    }
    this.stream = await openMicrophone(this.microphone);
    // Analysers only: the level meter and the agent's audible time. Playback is the
    // <audio> element's (Chrome renders a remote track to Web Audio only while an
    // element plays it too).
    this.context = new AudioContext({ latencyHint: "interactive" });
    this.micAnalyser = this.context.createAnalyser();
    this.micAnalyser.fftSize = 1024;
    this.context.createMediaStreamSource(this.stream).connect(this.micAnalyser);
    await this.context.resume();
  }

  echoCancelled() {
    const track = this.stream.getAudioTracks()[0];
    const settings = track && track.getSettings ? track.getSettings() : {};
    return settings.echoCancellation ?? Boolean(this.microphone.echoCancellation);
  }

  onRemoteTrack(event) {
    const stream = event.streams[0] || new MediaStream([event.track]);
    const audio = this.audioElement || new Audio();
    this.audioElement = audio;
    audio.autoplay = true;
    audio.srcObject = stream;
    audio.play().catch((error) => console.warn("voiceforge: the agent's audio did not start", error));
    if (this.context) {
      this.remoteAnalyser = this.context.createAnalyser();
      this.remoteAnalyser.fftSize = 1024;
      this.context.createMediaStreamSource(stream).connect(this.remoteAnalyser);
    }
  }

  meter() {
    const buffer = new Float32Array(1024);
    if (this.micAnalyser) {
      this.micAnalyser.getFloatTimeDomainData(buffer);
      this.emit("level", { level: rms(buffer) });
    }
    if (this.remoteAnalyser) {
      this.remoteAnalyser.getFloatTimeDomainData(buffer);
      const level = rms(buffer);
      const remote = this.stats.remoteAudio;
      remote.peak = Math.max(remote.peak, level);
      if (level > AUDIBLE_RMS) {
        remote.audibleMs += METER_INTERVAL_MS;
        this.lastAudibleAt = performance.now();
      }
    }
    this.updateState();
  }

  async collectStats() {
    if (!this.pc) return;
    const report = await this.pc.getStats();
    report.forEach((entry) => {
      if (entry.type === "inbound-rtp" && entry.kind === "audio") {
        for (const key of Object.keys(this.stats.inbound)) {
          if (typeof entry[key] === "number") this.stats.inbound[key] = entry[key];
        }
      }
    });
  }

  // ------------------------------------------------------------- connection

  async connect() {
    const pc = new RTCPeerConnection({ iceServers: this.iceServers });
    this.pc = pc;
    for (const track of this.stream.getAudioTracks()) pc.addTrack(track, this.stream);
    pc.ontrack = (event) => {
      if (event.track.kind === "audio") this.onRemoteTrack(event);
    };
    const channel = pc.createDataChannel(DATA_CHANNEL_LABEL);
    this.channel = channel;
    this.stats.echoCancelled = this.echoCancelled();

    // Settles once: resolved when session.created arrives on the open channel,
    // rejected by the first failure (refused offer, ICE, timeout, Stop).
    let settle;
    const connected = new Promise((resolve, reject) => {
      settle = { resolve, reject };
    });
    let settled = false;
    const fail = (error) => {
      if (settled) return;
      settled = true;
      settle.reject(error);
    };
    const timer = setTimeout(
      () => fail(new VoiceForgeError("connect_timeout", `The WebRTC call to ${this.offerUrl} did not connect within ${CONNECT_TIMEOUT_MS / 1000} s.`)),
      CONNECT_TIMEOUT_MS,
    );
    this.abortConnect = () => fail(new VoiceForgeError("stopped", "Stopped before the call connected.", { fatal: false }));

    channel.onmessage = (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch (error) {
        console.warn("voiceforge: undecodable event", error);
        return;
      }
      if (message.type === "session.created" && message.protocol_version !== PROTOCOL_VERSION) {
        fail(new VoiceForgeError("protocol_mismatch", `The server speaks protocol ${message.protocol_version}; this page speaks ${PROTOCOL_VERSION}.`));
        return;
      }
      this.onServerMessage(message);
      if (!settled && this.ready) {
        settled = true;
        settle.resolve();
      }
    };
    channel.onclose = () => {
      if (!settled) fail(new VoiceForgeError("connection_lost", "The call's event channel closed before the call connected."));
      else this.lost("the event channel closed");
    };
    pc.oniceconnectionstatechange = () => {
      this.stats.iceConnectionState = pc.iceConnectionState;
    };
    pc.onconnectionstatechange = () => {
      const state = pc.connectionState;
      this.stats.connectionState = state;
      clearTimeout(this.disconnectTimer);
      if (state === "failed") {
        const error = new VoiceForgeError(
          "ice_failed",
          "The WebRTC connection failed (ICE): the browser and the server found no network path. " +
            "Behind NAT or a firewall, add a TURN server in Settings.",
        );
        if (!settled) fail(error);
        else this.lost("ICE failed");
      } else if (state === "disconnected" && settled) {
        // Often transient (a network switch); ICE either recovers or fails.
        this.disconnectTimer = setTimeout(() => this.lost("the network path was lost"), DISCONNECTED_GRACE_MS);
      } else if (state === "closed" && settled) {
        this.lost("the peer connection closed");
      }
    };

    const signalling = async () => {
      await pc.setLocalDescription(await pc.createOffer());
      await this.gathered(pc);
      const answer = await this.postOffer(pc.localDescription);
      if (settled) return; // stopped or failed meanwhile
      await pc.setRemoteDescription({ type: answer.type, sdp: answer.sdp });
      this.stats.sessionId = answer.session_id || null;
      this.startTimers();
    };
    signalling().catch((error) =>
      fail(error instanceof VoiceForgeError ? error : new VoiceForgeError("webrtc_failed", `The WebRTC call could not be set up: ${error}`)),
    );
    try {
      await connected;
    } finally {
      settled = true;
      clearTimeout(timer);
      this.abortConnect = null;
    }
  }

  /** One round trip: the offer carries every candidate (no trickle ICE). */
  gathered(pc) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        if (pc.iceGatheringState !== "complete") return;
        clearTimeout(timer);
        pc.removeEventListener("icegatheringstatechange", done);
        resolve();
      };
      // A STUN/TURN server that never answers must not hang the call: send what we have.
      const timer = setTimeout(() => {
        pc.removeEventListener("icegatheringstatechange", done);
        resolve();
      }, ICE_GATHERING_TIMEOUT_MS);
      pc.addEventListener("icegatheringstatechange", done);
    });
  }

  async postOffer(offer) {
    const headers = { "Content-Type": "application/json" };
    if (this.apiKey) headers.Authorization = `Bearer ${this.apiKey}`;
    let response;
    try {
      response = await fetch(this.offerUrl, {
        method: "POST",
        headers,
        body: JSON.stringify({ sdp: offer.sdp, type: offer.type, echo_cancelled: this.stats.echoCancelled }),
      });
    } catch (error) {
      throw new VoiceForgeError(
        "server_unreachable",
        `Cannot reach the VoiceForge server at ${this.offerUrl} (${error.message}). Is \`voiceforge serve\` running there?`,
      );
    }
    let body = {};
    try {
      body = await response.json();
    } catch {
      body = {};
    }
    if (response.ok) return body;
    const why = body.error || response.statusText || "no reason given";
    if (response.status === 401 || response.status === 403) {
      throw new VoiceForgeError(
        "offer_refused",
        `The server refused the WebRTC call (${response.status} ${why}). ` +
          (this.apiKey ? "Check the API key: a wrong key is refused." : "It has an API key: enter it in Settings."),
      );
    }
    throw new VoiceForgeError("offer_refused", `The server refused the WebRTC call (${response.status}): ${why}`);
  }

  send(message) {
    if (this.channel && this.channel.readyState === "open") this.channel.send(JSON.stringify(message));
  }

  onServerMessage(message) {
    const type = message.type;
    const stats = this.stats;
    switch (type) {
      case "session.created":
        this.created = message;
        this.session = message.session;
        stats.sessionId = message.session_id;
        this.ready = true;
        if (Object.keys(this.sessionFields).length) {
          this.send({ type: "session.update", session: this.sessionFields });
        }
        if (this.clientTools.size) this.sendTools();
        break;
      case "session.updated":
        this.session = message.session;
        break;
      case "response.tool_call":
      case "response.tool_result":
        this.onToolEvent(message);
        break;
      case "session.ended":
        this.endReason = message.reason; // the agent hung up: the close that follows is not a loss
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
      case "response.audio.clear":
        stats.cleared.push(message.response_id);
        this.lastAudibleAt = -Infinity; // the track went quiet at the server already
        break;
      case "response.done":
        this.awaitingReply = false;
        stats.responses[message.response_id] = {
          status: message.status,
          reason: message.reason,
          text: message.text,
          text_heard: message.text_heard,
          timings: message.timings,
        };
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

  startTimers() {
    this.meterTimer = setInterval(() => this.meter(), METER_INTERVAL_MS);
    this.statsTimer = setInterval(() => {
      this.collectStats().catch(() => {});
    }, STATS_INTERVAL_MS);
  }

  lost(reason) {
    if (this.stopped) return;
    this.teardown();
    this.setState("idle");
    this.emit("close", { code: 0, reason, clean: false, ended: this.endReason || null });
  }

  // ------------------------------------------------------------------ state

  agentAudible() {
    // No playback buffer to read on this transport: the received level decides.
    return performance.now() - this.lastAudibleAt < SPEAKING_HANGOVER_MS;
  }

  teardown() {
    this.stopped = true;
    if (this.abortConnect) this.abortConnect();
    this.abortConnect = null;
    this.ready = false;
    clearInterval(this.meterTimer);
    clearInterval(this.statsTimer);
    clearTimeout(this.disconnectTimer);
    this.meterTimer = this.statsTimer = this.disconnectTimer = null;
    this.clientTools.abortAll();
    if (this.channel) {
      this.channel.onmessage = this.channel.onclose = null;
      this.channel.close();
    }
    if (this.pc) {
      this.pc.onconnectionstatechange = this.pc.oniceconnectionstatechange = this.pc.ontrack = null;
      this.pc.close();
    }
    if (this.audioElement) {
      this.audioElement.pause();
      this.audioElement.srcObject = null;
    }
    if (this.stream) for (const track of this.stream.getTracks()) track.stop();
    if (this.context) this.context.close();
    this.pc = this.channel = this.stream = this.context = this.micAnalyser = this.remoteAnalyser = null;
    this.userSpeaking = this.awaitingReply = false;
  }
}
