// Microphone capture: whatever rate the AudioContext runs at → 16 kHz PCM16, 20 ms frames.
//
// Runs on the audio rendering thread. When the context is not at 16 kHz (Firefox
// always uses the device rate; Chrome usually runs at 48 kHz) the signal is
// low-passed below 8 kHz with a windowed-sinc FIR and linearly interpolated at the
// 16 kHz sample instants. Each frame goes to the page with its RMS level.

const TARGET_RATE = 16000;
const FRAME_SAMPLES = 320; // 20 ms at 16 kHz
const FILTER_TAPS = 47;

function lowpassTaps(cutoff, count) {
  // cutoff in cycles per input sample; Blackman-windowed sinc, unity DC gain.
  const taps = new Float32Array(count);
  const middle = (count - 1) / 2;
  let sum = 0;
  for (let i = 0; i < count; i++) {
    const x = i - middle;
    const sinc = x === 0 ? 2 * cutoff : Math.sin(2 * Math.PI * cutoff * x) / (Math.PI * x);
    const window =
      0.42 - 0.5 * Math.cos((2 * Math.PI * i) / (count - 1)) +
      0.08 * Math.cos((4 * Math.PI * i) / (count - 1));
    taps[i] = sinc * window;
    sum += taps[i];
  }
  for (let i = 0; i < count; i++) taps[i] /= sum;
  return taps;
}

class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / TARGET_RATE; // input samples per output sample
    this.taps = sampleRate > TARGET_RATE ? lowpassTaps((0.45 * TARGET_RATE) / sampleRate, FILTER_TAPS) : null;
    this.history = new Float32Array(FILTER_TAPS);
    this.historyAt = 0;
    this.inputIndex = 0; // index of the current input sample
    this.nextOutputAt = 0; // input-time position of the next 16 kHz sample
    this.previous = 0;
    this.frame = new Int16Array(FRAME_SAMPLES);
    this.filled = 0;
    this.sumSquares = 0;
    this.running = true;
    this.port.onmessage = (event) => {
      if (event.data && event.data.type === "stop") this.running = false;
    };
  }

  filter(sample) {
    if (this.taps === null) return sample;
    const history = this.history;
    history[this.historyAt] = sample;
    let acc = 0;
    let at = this.historyAt;
    for (let i = 0; i < FILTER_TAPS; i++) {
      acc += this.taps[i] * history[at];
      at = at === 0 ? FILTER_TAPS - 1 : at - 1;
    }
    this.historyAt = (this.historyAt + 1) % FILTER_TAPS;
    return acc;
  }

  emit(value) {
    const clipped = Math.max(-1, Math.min(1, value));
    this.frame[this.filled++] = clipped < 0 ? clipped * 0x8000 : clipped * 0x7fff;
    this.sumSquares += clipped * clipped;
    if (this.filled === FRAME_SAMPLES) {
      const pcm = this.frame.buffer;
      const level = Math.sqrt(this.sumSquares / FRAME_SAMPLES);
      this.port.postMessage({ type: "frame", pcm, level }, [pcm]);
      this.frame = new Int16Array(FRAME_SAMPLES);
      this.filled = 0;
      this.sumSquares = 0;
    }
  }

  process(inputs) {
    if (!this.running) return false;
    const channel = inputs[0] && inputs[0][0];
    if (!channel) return true;
    for (let i = 0; i < channel.length; i++) {
      const current = this.filter(channel[i]);
      // Output instants between the previous input sample and this one.
      while (this.nextOutputAt <= this.inputIndex) {
        const fraction = this.nextOutputAt - (this.inputIndex - 1);
        this.emit(this.previous + (current - this.previous) * fraction);
        this.nextOutputAt += this.step;
      }
      this.previous = current;
      this.inputIndex += 1;
    }
    return true;
  }
}

registerProcessor("voiceforge-capture", CaptureProcessor);
