// speedrelay plots: the channel table's sparklines and the live stripchart,
// drawn on plain canvas (no library). Loaded before app.js, which uses
// window.SpeedPlot. Every text from the server goes in with textContent.
'use strict';

(() => {
  /** Theme colours, read from the page's CSS variables at each draw. */
  function colors() {
    const s = getComputedStyle(document.documentElement);
    const v = (name) => s.getPropertyValue(name).trim();
    return {
      text: v('--text'), muted: v('--muted'), border: v('--border'), accent: v('--accent'), bad: v('--bad'),
      series: [v('--accent'), v('--series-2'), v('--series-3'), v('--series-4'), v('--series-5'), v('--series-6')],
    };
  }

  /** Sizes the canvas's backing store to its CSS size times the pixel ratio. */
  function fit(canvas) {
    const ratio = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(canvas.clientWidth * ratio));
    const h = Math.max(1, Math.round(canvas.clientHeight * ratio));
    if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
    const ctx = canvas.getContext('2d');
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    return { ctx, w: canvas.clientWidth, h: canvas.clientHeight };
  }

  const fmt = new Intl.NumberFormat(undefined, { maximumFractionDigits: 3 });

  // ---- Sparkline: records/s per second, marks under seconds with drops or invalid records.

  /** Draws `history` (the /history answer) on `canvas` and describes it. */
  function sparkline(canvas, history) {
    const records = history.records || [];
    const marks = records.map((_, i) => ((history.invalid[i] || 0) + (history.kernel_drops[i] || 0)) > 0);
    // The page's own data, for tests and tools: what is drawn.
    canvas.dataset.records = records.join(',');
    canvas.dataset.marks = marks.map((m) => (m ? 1 : 0)).join(',');
    const { ctx, w, h } = fit(canvas);
    const c = colors();
    ctx.clearRect(0, 0, w, h);
    const n = Math.max(records.length, history.span || 0, 2);
    const peak = Math.max(1, ...records);
    const x = (i) => w - (records.length - 1 - i) * (w / (n - 1)) - 1;
    const y = (v) => h - 4 - (v / peak) * (h - 6);
    ctx.fillStyle = c.bad;
    marks.forEach((m, i) => { if (m) ctx.fillRect(x(i) - 1, h - 3, 2, 3); });
    ctx.strokeStyle = c.accent;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    records.forEach((v, i) => (i ? ctx.lineTo(x(i), y(v)) : ctx.moveTo(x(i), y(v))));
    ctx.stroke();
    const bad = marks.filter(Boolean).length;
    const now = records.length ? records[records.length - 1] : 0;
    canvas.setAttribute('aria-label', records.length
      ? `Records per second over the last ${records.length} s: now ${fmt.format(now)}, peak ${fmt.format(Math.max(0, ...records))}` +
        (bad ? `, ${bad} s with drops or invalid records` : ', no drops or invalid records')
      : 'No history yet');
  }

  // ---- Stripchart.

  /** Milliseconds per unit of an x value, when the time field's type or unit tells. */
  function msPerUnit(field) {
    const byType = { 'timestamp-millis': 1, 'timestamp-micros': 1e-3, 'timestamp-nanos': 1e-6,
      'local-timestamp-millis': 1, 'local-timestamp-micros': 1e-3, 'local-timestamp-nanos': 1e-6 };
    if (field.type in byType) return byType[field.type];
    const byUnit = { s: 1000, ms: 1, us: 1e-3, 'µs': 1e-3, ns: 1e-6 };
    return byUnit[field.unit] || null;
  }

  /** Most points kept per field: the widest window at 50 points/s. */
  const MAX_POINTS = 5 * 60 * 50 + 100;

  class Stripchart {
    /**
     * `canvas`: where to draw; `onText(label)`: called about once a
     * second with a sentence of the latest values for screen readers.
     */
    constructor(canvas, onText) {
      this.canvas = canvas;
      this.onText = onText;
      this.windowS = 30;
      this.paused = false;
      this.reset(null);
    }

    /** Starts over for a stream described by `meta` (the `meta` event). */
    reset(meta) {
      this.meta = meta;
      this.fields = meta ? meta.fields : [];
      this.timeIndex = meta && meta.time !== null && meta.time !== undefined ? meta.time : -1;
      const tf = this.timeIndex >= 0 ? this.fields[this.timeIndex] : null;
      this.xScale = tf ? msPerUnit(tf) : 1;
      /** Calendar time on the x-axis: the arrival time, or a timestamp field. */
      this.xIsDate = !tf || /timestamp/.test(tf.type);
      this.selected = new Set(this.fields.map((_, i) => i).filter((i) => i !== this.timeIndex).slice(0, 3));
      // Columns: raw x, x in ms (or raw when no scale), then one array per field.
      this.xs = [];
      this.xms = [];
      this.ys = this.fields.map(() => []);
      this.latest = null;
      this.draw();
    }

    /** Adds one data event `{at, values}`. */
    push(event) {
      if (this.paused || !this.meta) return;
      const raw = this.timeIndex >= 0 ? event.values[this.timeIndex] : event.at;
      if (typeof raw !== 'number') return;
      this.xs.push(raw);
      this.xms.push(this.xScale ? raw * this.xScale : raw);
      this.ys.forEach((col, i) => col.push(event.values[i]));
      if (this.xs.length > MAX_POINTS) {
        const cut = this.xs.length - MAX_POINTS;
        this.xs.splice(0, cut);
        this.xms.splice(0, cut);
        this.ys.forEach((col) => col.splice(0, cut));
      }
      this.latest = event;
      this.schedule();
    }

    schedule() {
      if (this.pending) return;
      this.pending = true;
      requestAnimationFrame(() => { this.pending = false; this.draw(); });
    }

    /** Index of the first point inside the time window. */
    firstVisible() {
      const n = this.xms.length;
      if (!n) return 0;
      // Without a known unit, the window is a number of points at 50/s.
      if (!this.xScale) return Math.max(0, n - this.windowS * 50);
      const from = this.xms[n - 1] - this.windowS * 1000;
      let lo = 0;
      let hi = n - 1;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (this.xms[mid] < from) lo = mid + 1; else hi = mid;
      }
      return lo;
    }

    /** What is plotted now: per selected field name, `[x, y]` with x as the stream gave it. */
    plotted() {
      const out = {};
      const first = this.firstVisible();
      for (const i of this.selected) {
        out[this.fields[i].name] = this.xs.slice(first).map((x, k) => [x, this.ys[i][first + k]]);
      }
      return out;
    }

    xLabel(v) {
      if (this.xIsDate && this.xScale) return new Date(v).toLocaleTimeString();
      return fmt.format(this.xScale ? v / this.xScale : v);
    }

    draw() {
      const { ctx, w, h } = fit(this.canvas);
      const c = colors();
      ctx.clearRect(0, 0, w, h);
      ctx.font = '12px system-ui, sans-serif';
      const left = 64;
      const right = 12;
      const top = 10;
      const bottom = 26;
      const pw = w - left - right;
      const ph = h - top - bottom;
      const first = this.firstVisible();
      const n = this.xms.length;
      ctx.strokeStyle = c.border;
      ctx.strokeRect(left, top, pw, ph);
      if (!n || !this.selected.size) {
        ctx.fillStyle = c.muted;
        ctx.fillText(this.meta ? (this.selected.size ? 'Waiting for records…' : 'Choose a field to plot.') : 'Connecting…', left + 12, top + 24);
        this.describe();
        return;
      }
      const x1 = this.xms[n - 1];
      // The window, or less while the stream is younger than it.
      const x0 = this.xScale ? Math.max(x1 - this.windowS * 1000, this.xms[0]) : this.xms[first];
      let y0 = Infinity;
      let y1 = -Infinity;
      for (const i of this.selected) {
        for (let k = first; k < n; k++) {
          const v = this.ys[i][k];
          if (typeof v === 'number') { if (v < y0) y0 = v; if (v > y1) y1 = v; }
        }
      }
      if (!Number.isFinite(y0)) { y0 = 0; y1 = 1; }
      if (y0 === y1) { y0 -= 1; y1 += 1; }
      const pad = (y1 - y0) * 0.05;
      y0 -= pad;
      y1 += pad;
      const px = (v) => left + ((v - x0) / (x1 - x0 || 1)) * pw;
      const py = (v) => top + ph - ((v - y0) / (y1 - y0)) * ph;
      // Grid and labels: 5 steps each way.
      ctx.fillStyle = c.muted;
      ctx.strokeStyle = c.border;
      ctx.lineWidth = 1;
      ctx.textAlign = 'right';
      for (let s = 0; s <= 4; s++) {
        const v = y0 + ((y1 - y0) * s) / 4;
        const yy = py(v);
        ctx.beginPath(); ctx.moveTo(left, yy); ctx.lineTo(left + pw, yy); ctx.stroke();
        ctx.fillText(fmt.format(v), left - 6, yy + 4);
      }
      ctx.textAlign = 'center';
      for (let s = 0; s <= 4; s++) {
        const v = x0 + ((x1 - x0) * s) / 4;
        ctx.fillText(this.xLabel(v), left + (pw * s) / 4, top + ph + 18);
      }
      ctx.save();
      ctx.beginPath();
      ctx.rect(left, top, pw, ph);
      ctx.clip();
      ctx.lineWidth = 1.5;
      let colour = 0;
      for (const i of this.selected) {
        ctx.strokeStyle = c.series[colour++ % c.series.length] || c.accent;
        ctx.beginPath();
        let pen = false;
        for (let k = first; k < n; k++) {
          const v = this.ys[i][k];
          if (typeof v !== 'number') { pen = false; continue; }
          if (pen) ctx.lineTo(px(this.xms[k]), py(v)); else ctx.moveTo(px(this.xms[k]), py(v));
          pen = true;
        }
        ctx.stroke();
      }
      ctx.restore();
      this.describe();
    }

    /** The latest values as a sentence, at most once a second. */
    describe() {
      const now = performance.now();
      if (this.lastText && now - this.lastText < 1000) return;
      this.lastText = now;
      if (!this.latest) {
        this.onText(this.meta ? 'No records yet.' : 'Connecting to the live stream.', null);
        return;
      }
      const parts = [...this.selected].map((i) => {
        const f = this.fields[i];
        const v = this.latest.values[i];
        return `${f.name} ${typeof v === 'number' ? fmt.format(v) : 'none'}${f.unit ? ' ' + f.unit : ''}`;
      });
      this.onText(`Latest: ${parts.join(', ')}.`, this.latest);
    }
  }

  /**
   * Reads a Server-Sent Events stream with fetch (so the API token can be
   * sent as a header, which EventSource cannot), calling `onEvent(name,
   * data)`; resolves when the stream ends. `signal` aborts it.
   */
  async function readEvents(url, headers, signal, onEvent) {
    const resp = await fetch(url, { headers, signal, cache: 'no-store' });
    if (!resp.ok) {
      let body = null;
      try { body = await resp.json(); } catch (_) { /* not JSON */ }
      const err = new Error((body && body.error) || `HTTP ${resp.status}`);
      err.status = resp.status;
      throw err;
    }
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += value;
      let end;
      while ((end = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, end);
        buf = buf.slice(end + 2);
        let name = 'message';
        let data = '';
        for (const line of block.split('\n')) {
          if (line.startsWith('event: ')) name = line.slice(7);
          else if (line.startsWith('data: ')) data += line.slice(6);
        }
        if (data) onEvent(name, JSON.parse(data));
      }
    }
  }

  window.SpeedPlot = { sparkline, Stripchart, readEvents };
})();
