// Reply playback: a ring buffer of PCM fed by the page, drained by the audio thread.
//
// Every sample belongs to a response id (runs of samples are kept as segments), so
// the processor knows exactly how many frames of each response it has played.
// `clear` removes a response's unplayed samples at once, answers with the frames
// played so far (the page turns that into `output_audio.played`) and refuses any
// audio of that id that still arrives. `pause` holds a response where it is (its
// samples stay buffered and more may arrive; the output is silence) and answers with
// the frames played so far; `resume` plays on from there. Audio at another rate
// than the context's is linearly interpolated on the way in.

const INITIAL_SECONDS = 30;
const MAX_SECONDS = 300;
const STATUS_EVERY_SECONDS = 0.05;

class Ring {
  constructor(capacity) {
    this.data = new Float32Array(capacity);
    this.start = 0;
    this.length = 0;
  }

  write(samples, limit) {
    if (this.length + samples.length > this.data.length) {
      const wanted = Math.min(limit, Math.max(this.data.length * 2, this.length + samples.length));
      if (this.length + samples.length > wanted) return false;
      const grown = new Float32Array(wanted);
      this.copyOut(grown, 0, this.length);
      this.data = grown;
      this.start = 0;
    }
    const capacity = this.data.length;
    let at = (this.start + this.length) % capacity;
    const first = Math.min(samples.length, capacity - at);
    this.data.set(samples.subarray(0, first), at);
    this.data.set(samples.subarray(first), 0);
    this.length += samples.length;
    return true;
  }

  copyOut(target, offset, count) {
    const capacity = this.data.length;
    const first = Math.min(count, capacity - this.start);
    target.set(this.data.subarray(this.start, this.start + first), offset);
    target.set(this.data.subarray(0, count - first), offset + first);
  }

  read(target, offset, count) {
    this.copyOut(target, offset, count);
    this.start = (this.start + count) % this.data.length;
    this.length -= count;
  }

  drop(count) {
    this.start = (this.start + count) % this.data.length;
    this.length -= count;
  }
}

class StreamResampler {
  // Linear interpolation from `rate` to the context rate, continuous across chunks.
  constructor(rate) {
    this.step = rate / sampleRate;
    this.position = 1; // in [previous, chunk...] coordinates
    this.previous = 0;
  }

  convert(input) {
    if (this.step === 1) return input;
    const out = [];
    while (this.position <= input.length) {
      const index = Math.floor(this.position);
      const left = index === 0 ? this.previous : input[index - 1];
      const right = input[Math.min(index, input.length - 1)];
      out.push(left + (right - left) * (this.position - index));
      this.position += this.step;
    }
    this.position -= input.length;
    this.previous = input[input.length - 1];
    return Float32Array.from(out);
  }
}

class PlaybackProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.ring = new Ring(Math.round(sampleRate * INITIAL_SECONDS));
    this.limit = Math.round(sampleRate * MAX_SECONDS);
    this.segments = []; // [{id, frames}] in ring order
    this.played = new Map(); // response id → frames played
    this.cleared = new Set();
    this.paused = new Set();
    this.resamplers = new Map();
    this.overflowFrames = 0;
    this.sinceStatus = 0;
    this.statusEvery = Math.round(sampleRate * STATUS_EVERY_SECONDS);
    this.port.onmessage = (event) => this.onMessage(event.data);
  }

  onMessage(message) {
    if (message.type === "audio") this.push(message.id, message.pcm, message.rate);
    else if (message.type === "clear") this.clear(message.id, Boolean(message.flushOnly));
    else if (message.type === "pause") this.pause(message.id);
    else if (message.type === "resume") this.resume(message.id);
    else if (message.type === "reset") this.reset();
  }

  push(id, pcm, rate) {
    if (this.cleared.has(id)) {
      this.port.postMessage({ type: "dropped", id });
      return;
    }
    const ints = new Int16Array(pcm);
    let samples = new Float32Array(ints.length);
    for (let i = 0; i < ints.length; i++) samples[i] = ints[i] / 0x8000;
    if (rate !== sampleRate) {
      if (!this.resamplers.has(id)) this.resamplers.set(id, new StreamResampler(rate));
      samples = this.resamplers.get(id).convert(samples);
    }
    if (samples.length === 0) return;
    if (!this.ring.write(samples, this.limit)) {
      this.overflowFrames += samples.length;
      return;
    }
    const last = this.segments[this.segments.length - 1];
    if (last && last.id === id) last.frames += samples.length;
    else this.segments.push({ id, frames: samples.length });
    if (!this.played.has(id)) this.played.set(id, 0);
  }

  pause(id) {
    if (!this.cleared.has(id)) this.paused.add(id);
    this.port.postMessage({ type: "paused", id, frames: this.played.get(id) || 0 });
    this.postStatus();
  }

  resume(id) {
    this.paused.delete(id);
    this.postStatus();
  }

  /** Frames that will be heard: none while the response in front is paused. */
  audible() {
    return this.segments.length && !this.paused.has(this.segments[0].id) ? this.ring.length : 0;
  }

  clear(id, flushOnly) {
    this.cleared.add(id);
    this.paused.delete(id);
    this.resamplers.delete(id);
    // Keep the other responses' samples, in order (normally the cleared one is first).
    const kept = [];
    const survivors = [];
    for (const segment of this.segments) {
      const chunk = new Float32Array(segment.frames);
      this.ring.read(chunk, 0, segment.frames);
      if (segment.id !== id) {
        kept.push(chunk);
        survivors.push(segment);
      }
    }
    for (const chunk of kept) this.ring.write(chunk, this.limit);
    this.segments = survivors;
    this.port.postMessage({ type: "cleared", id, frames: this.played.get(id) || 0, flushOnly });
    this.postStatus();
  }

  reset() {
    this.ring.drop(this.ring.length);
    this.segments = [];
    this.postStatus();
  }

  postStatus() {
    this.sinceStatus = 0;
    this.port.postMessage({
      type: "status",
      played: Object.fromEntries(this.played),
      buffered: this.ring.length,
      audible: this.audible(),
      paused: [...this.paused],
      playing: this.segments.length ? this.segments[0].id : null,
      overflowFrames: this.overflowFrames,
    });
  }

  process(_inputs, outputs) {
    const output = outputs[0];
    const channel = output[0];
    const wasPlaying = this.audible() > 0;
    let written = 0;
    // A paused response in front holds everything behind it: replies play in order.
    while (written < channel.length && this.segments.length && !this.paused.has(this.segments[0].id)) {
      const segment = this.segments[0];
      const count = Math.min(channel.length - written, segment.frames);
      this.ring.read(channel, written, count);
      this.played.set(segment.id, (this.played.get(segment.id) || 0) + count);
      segment.frames -= count;
      written += count;
      if (segment.frames === 0) this.segments.shift();
    }
    channel.fill(0, written); // silence: ran dry, or paused (the buffer can be reused)
    for (let c = 1; c < output.length; c++) output[c].set(channel);
    this.sinceStatus += channel.length;
    // Report at once when the buffer runs dry, so "done playing" is not late.
    if (this.sinceStatus >= this.statusEvery || (wasPlaying && this.audible() === 0)) {
      this.postStatus();
    }
    return true;
  }
}

registerProcessor("voiceforge-playback", PlaybackProcessor);
