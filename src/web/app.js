// speedrelay web page: polls the JSON API and drives the register/remove
// forms. Plain JavaScript, no dependencies; every text from the server is
// inserted with textContent, never as HTML.
'use strict';

const API = '/api/v1';
const REFRESH_MS = 2000;
/** Seconds of history in a row's sparkline. */
const SPARK_SECONDS = 120;
const TOKEN_KEY = 'speedrelay.token';
const MAX_SCHEMA_BYTES = 2 * 1024 * 1024;
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
// Four decimal octets without leading zeros, as the relay (Rust's Ipv4Addr) reads them.
const IPV4_RE = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;
/** The destination inputs, by the `config.outputs` list they fill. */
const OUTPUTS = { full_rate: 'f-full-rate', decimated: 'f-decimated' };

const $ = (id) => document.getElementById(id);
const fmtInt = new Intl.NumberFormat();
const fmtRate = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });

/** An API answer that is not 2xx: `{error, field?, details?}`. */
class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error) || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
    this.field = this.body.field;
  }
}

// ---- Token: asked for when the API answers 401, kept for this tab only.

let tokenPrompt = null;

function askToken(refused) {
  if (tokenPrompt) return tokenPrompt;
  const dialog = $('token-dialog');
  const input = $('f-token');
  const err = $('f-token-error');
  showError(err, refused ? 'The relay refused this token. Check it and try again.' : '');
  input.setAttribute('aria-invalid', refused ? 'true' : 'false');
  input.value = '';
  const opener = document.activeElement;
  tokenPrompt = new Promise((resolve, reject) => {
    const form = $('token-form');
    const done = (ok) => {
      form.removeEventListener('submit', onSubmit);
      dialog.removeEventListener('close', onClose);
      tokenPrompt = null;
      if (opener && opener.focus && document.contains(opener)) opener.focus();
      ok ? resolve() : reject(new ApiError(401, { error: 'an API token is needed' }));
    };
    const onSubmit = (e) => {
      e.preventDefault();
      const token = input.value.trim();
      if (!token) {
        showError(err, 'Enter the token.');
        input.setAttribute('aria-invalid', 'true');
        input.focus();
        return;
      }
      sessionStorage.setItem(TOKEN_KEY, token);
      dialog.removeEventListener('close', onClose);
      dialog.close();
      done(true);
    };
    const onClose = () => done(false);
    form.addEventListener('submit', onSubmit);
    dialog.addEventListener('close', onClose);
  });
  if (!dialog.open) dialog.showModal();
  input.focus();
  return tokenPrompt;
}

/** One API call; on 401 asks for the token and tries again. */
async function api(method, path, body) {
  for (;;) {
    const headers = { Accept: 'application/json' };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = 'Bearer ' + token;
    const init = { method, headers, cache: 'no-store' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(API + path, init);
    } catch (e) {
      throw new ApiError(0, { error: 'cannot reach the relay (' + e.message + ')' });
    }
    const text = await resp.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (_) {
      data = { error: text.slice(0, 300) };
    }
    if (resp.status === 401) {
      if (token) sessionStorage.removeItem(TOKEN_KEY);
      await askToken(Boolean(token));
      continue;
    }
    if (!resp.ok) throw new ApiError(resp.status, data);
    return data;
  }
}

// ---- Small helpers.

function showError(el, message) {
  el.textContent = message || '';
  el.hidden = !message;
}

function announce(message) {
  const live = $('announce');
  // Clearing first makes a repeated message be read again.
  live.textContent = '';
  setTimeout(() => { live.textContent = message; }, 50);
}

function bytes(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return (i === 0 ? String(v) : v.toFixed(v < 10 ? 2 : 1)) + ' ' + units[i];
}

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function errorText(e) {
  let msg = e.message;
  if (e.body && e.body.used_by && !msg.includes(e.body.used_by)) msg += ` (used by channel ${e.body.used_by})`;
  if (e.body && e.body.details) {
    const d = Array.isArray(e.body.details) ? e.body.details.join('; ') : String(e.body.details);
    if (d) msg += ': ' + d;
  }
  return msg;
}

// ---- The channel table.

/** name -> {row, cells, last: {t, records}} */
const rows = new Map();
let online = null;
/** Whether the table was filled once: later new rows are highlighted. */
let rendered = false;

function setConnection(ok, detail) {
  const dot = $('conn-dot');
  dot.className = 'dot ' + (ok ? 'live' : 'down');
  $('conn').textContent = ok ? 'Live · updated ' + new Date().toLocaleTimeString() : 'Offline · retrying';
  showError($('list-error'), ok ? '' : detail);
  if (online !== ok) {
    if (online !== null) announce(ok ? 'Connection to the relay restored.' : 'Lost the connection to the relay: ' + detail);
    online = ok;
  }
}

function makeRow(c) {
  const row = el('tr', { 'data-name': c.name });
  const name = el('th', { scope: 'row' }, c.name);
  const port = el('td', { class: 'num' });
  const status = el('td');
  const rate = el('td', { class: 'num', 'data-col': 'rate' });
  const sparkCell = el('td', { 'data-col': 'spark' });
  const spark = el('canvas', { class: 'spark', role: 'img', 'aria-label': 'No history yet' });
  sparkCell.append(spark);
  sparkObserver.observe(spark);
  const records = el('td', { class: 'num', 'data-col': 'records' });
  const invalid = el('td', { class: 'num', 'data-col': 'invalid' });
  const drops = el('td', { class: 'num', 'data-col': 'drops' });
  const archive = el('td', { class: 'num', 'data-col': 'archive' });
  const actions = el('td', { class: 'actions-cell' });
  const schemaBtn = el('button', { type: 'button', class: 'secondary small', 'aria-label': 'Show the schema of ' + c.name }, 'Schema');
  schemaBtn.addEventListener('click', () => showSchema(c.name, schemaBtn));
  const removeBtn = el('button', { type: 'button', class: 'secondary small', 'data-action': 'remove', 'aria-label': 'Remove ' + c.name }, 'Remove');
  removeBtn.addEventListener('click', () => confirmRemove(c.name, removeBtn));
  const plotBtn = el('button', { type: 'button', class: 'secondary small', 'data-action': 'plot', 'aria-label': 'Plot the live values of ' + c.name }, 'Plot');
  plotBtn.addEventListener('click', () => openPlot(c.name, plotBtn));
  actions.append(plotBtn, schemaBtn, removeBtn);
  row.append(name, port, status, rate, sparkCell, records, invalid, drops, archive, actions);
  return { row, cells: { port, status, rate, records, invalid, drops, archive }, spark, last: null };
}

function updateRow(entry, c, now) {
  const s = c.stats || {};
  const { cells } = entry;
  cells.port.textContent = String(c.port);
  cells.status.replaceChildren(el('span', { class: 'badge ' + c.status }, c.status));
  if (c.error) cells.status.append(el('span', { class: 'why' }, c.error));
  // Records: valid datagrams; the rate is from the change since the last poll.
  const valid = Math.max(0, (s.packets || 0) - (s.invalid || 0));
  let rate = '–';
  if (entry.last && valid >= entry.last.records && now > entry.last.t) {
    rate = fmtRate.format(((valid - entry.last.records) * 1000) / (now - entry.last.t));
  }
  entry.last = { t: now, records: valid };
  cells.rate.textContent = rate;
  cells.records.textContent = fmtInt.format(valid);
  cells.invalid.textContent = fmtInt.format(s.invalid || 0);
  cells.invalid.title = s.last_invalid ? 'Last: ' + s.last_invalid : '';
  cells.drops.textContent = fmtInt.format(s.kernel_drops || 0);
  cells.archive.textContent = bytes(s.archive_bytes || 0);
  cells.archive.title = fmtInt.format(s.archive_bytes || 0) + ' bytes in ' + fmtInt.format(s.archive_files || 0) + ' file(s)' +
    (s.archive_error ? '; error: ' + s.archive_error : '');
}

function render(channels) {
  const now = performance.now();
  const tbody = $('rows');
  const seen = new Set();
  channels.sort((a, b) => a.name.localeCompare(b.name));
  let before = null;
  for (let i = channels.length - 1; i >= 0; i--) {
    const c = channels[i];
    seen.add(c.name);
    let entry = rows.get(c.name);
    if (!entry) {
      entry = makeRow(c);
      rows.set(c.name, entry);
      if (rendered) entry.row.classList.add('fresh');
    }
    updateRow(entry, c, now);
    // Keep rows in name order without moving ones already in place, so a
    // focused button keeps its focus.
    if (entry.row.parentNode !== tbody || entry.row.nextSibling !== before) tbody.insertBefore(entry.row, before);
    before = entry.row;
  }
  for (const [name, entry] of rows) {
    if (!seen.has(name)) {
      if (plot.name === name) closePlot(false);
      sparkObserver.unobserve(entry.spark);
      sparkVisible.delete(name);
      if (entry.row.contains(document.activeElement)) $('channels-h').focus();
      entry.row.remove();
      rows.delete(name);
    }
  }
  rendered = true;
  $('empty').hidden = channels.length > 0;
  const failed = channels.filter((c) => c.status !== 'active').length;
  $('summary').textContent = `${channels.length} channel${channels.length === 1 ? '' : 's'}` +
    (failed ? `, ${failed} failed` : '');
}

let refreshTimer = null;

/** Rows on screen: only their sparklines are fetched, so a relay with
 *  many channels is not asked for every history every refresh. */
const sparkVisible = new Set();
const sparkObserver = new IntersectionObserver((entries) => {
  let appeared = false;
  for (const e of entries) {
    const name = e.target.closest('tr').dataset.name;
    if (e.isIntersecting) { appeared = appeared || !sparkVisible.has(name); sparkVisible.add(name); } else sparkVisible.delete(name);
  }
  if (appeared) refreshSparks();
});

/** Redraws the visible rows' sparklines from the channel's last 2 minutes. */
async function refreshSparks() {
  await Promise.all([...rows].filter(([name]) => sparkVisible.has(name)).map(async ([name, entry]) => {
    try {
      const h = await api('GET', '/channels/' + encodeURIComponent(name) + '/history?seconds=' + SPARK_SECONDS);
      h.span = SPARK_SECONDS;
      SpeedPlot.sparkline(entry.spark, h);
    } catch (_) {
      // Removed meanwhile, or the relay is gone: the next refresh tells.
    }
  }));
}

async function refresh() {
  clearTimeout(refreshTimer);
  try {
    const data = await api('GET', '/channels');
    render(data.channels || []);
    setConnection(true);
    await refreshSparks();
  } catch (e) {
    if (e.status === 401) {
      // The token prompt was dismissed: stop polling until asked again.
      setConnection(false, 'The relay needs an API token.');
      const again = el('button', { type: 'button', class: 'secondary small' }, 'Enter token');
      again.addEventListener('click', refresh);
      $('list-error').append(' ', again);
      return;
    }
    setConnection(false, errorText(e));
  }
  // Two refreshes may overlap (one after a registration): keep one timer.
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(refresh, REFRESH_MS);
}

// ---- Schema on demand.

async function showSchema(name, opener) {
  const dialog = $('schema-dialog');
  $('schema-title').textContent = 'Schema of ' + name;
  const pre = $('schema-text');
  pre.textContent = 'Loading…';
  showError($('schema-error'), '');
  dialog.returnFocusTo = opener;
  dialog.showModal();
  try {
    const schema = await api('GET', '/channels/' + encodeURIComponent(name) + '/schema');
    pre.textContent = JSON.stringify(schema, null, 2);
  } catch (e) {
    pre.textContent = '';
    showError($('schema-error'), errorText(e));
  }
}

// ---- The live plot of one channel.

const plot = { name: null, chart: null, abort: null, opener: null };
/** For tests and tools: the open stripchart (see plot.js `plotted()`). */
window.speedrelay = plot;

function plotHeaders() {
  const headers = { Accept: 'text/event-stream' };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = 'Bearer ' + token;
  return headers;
}

function renderPlotFields(meta) {
  const box = $('plot-fields');
  box.replaceChildren();
  const chart = plot.chart;
  meta.fields.forEach((f, i) => {
    if (i === meta.time) return;
    const id = 'plot-f-' + i;
    const input = el('input', { type: 'checkbox', id, 'data-field': f.name });
    input.checked = chart.selected.has(i);
    input.addEventListener('change', () => {
      if (input.checked) chart.selected.add(i); else chart.selected.delete(i);
      chart.draw();
      renderLatest();
    });
    const label = el('label', { class: 'choice', for: id });
    label.append(input, ' ' + f.name + (f.unit ? ` (${f.unit})` : ''));
    if (f.doc) label.title = f.doc;
    box.append(label);
  });
  if (!box.children.length) box.append(el('p', { class: 'muted' }, 'This schema has no numeric fields to plot.'));
  const tf = meta.time !== null && meta.time !== undefined ? meta.fields[meta.time] : null;
  $('plot-x').textContent = tf ? `the record's ${tf.name} field` + (tf.unit ? ` (${tf.unit})` : '') : 'arrival time at the relay';
  $('plot-source').textContent = (meta.source === 'decimated' ? 'Decimated stream' : 'Sampled stream') +
    `, at most ${meta.max_rate} points/s`;
}

function renderLatest() {
  const chart = plot.chart;
  const body = $('plot-latest');
  if (!chart || !chart.meta) { body.replaceChildren(); return; }
  const c = getComputedStyle(document.documentElement);
  const palette = ['--accent', '--series-2', '--series-3', '--series-4', '--series-5', '--series-6'];
  const rowsOut = [];
  let colour = 0;
  for (const i of chart.selected) {
    const f = chart.fields[i];
    const v = chart.latest ? chart.latest.values[i] : null;
    const tr = el('tr', { 'data-field': f.name });
    const th = el('th', { scope: 'row' });
    const sw = el('span', { class: 'swatch', 'aria-hidden': 'true' });
    sw.style.background = c.getPropertyValue(palette[colour++ % palette.length]);
    th.append(sw, f.name);
    tr.append(th, el('td', {}, f.type), el('td', { class: 'num' }, typeof v === 'number' ? fmtRate.format(v) : '–'), el('td', {}, f.unit || ''));
    rowsOut.push(tr);
  }
  body.replaceChildren(...rowsOut);
}

async function streamPlot(name, chart, signal) {
  let backoff = 1000;
  while (!signal.aborted) {
    try {
      await SpeedPlot.readEvents(API + '/channels/' + encodeURIComponent(name) + '/live', plotHeaders(), signal, (event, data) => {
        if (event === 'meta') {
          chart.reset(data);
          renderPlotFields(data);
          showError($('plot-error'), '');
        } else {
          chart.push(data);
        }
        backoff = 1000;
      });
    } catch (e) {
      if (signal.aborted) return;
      if (e.status === 401) {
        try { await askToken(Boolean(sessionStorage.getItem(TOKEN_KEY))); continue; } catch (_) { /* dismissed */ }
      }
      showError($('plot-error'), 'Live stream: ' + e.message + (e.status === 404 ? '' : ' · retrying'));
      if (e.status === 404) return;
    }
    // The stream ended (the relay restarted, or this viewer fell behind): reconnect.
    await new Promise((r) => setTimeout(r, backoff));
    backoff = Math.min(backoff * 2, 15000);
  }
}

function openPlot(name, opener) {
  closePlot(false);
  const card = $('plot-card');
  card.hidden = false;
  $('plot-h').textContent = 'Live plot of ' + name;
  showError($('plot-error'), '');
  $('plot-fields').replaceChildren();
  $('plot-latest').replaceChildren();
  const canvas = $('plot-canvas');
  const chart = new SpeedPlot.Stripchart(canvas, (text) => {
    canvas.setAttribute('aria-label', `Live plot of ${name}. ${text}`);
    renderLatest();
  });
  chart.windowS = Number($('plot-window').value);
  setPaused(false);
  const abort = new AbortController();
  Object.assign(plot, { name, chart, abort, opener });
  streamPlot(name, chart, abort.signal);
  card.scrollIntoView({ block: 'nearest' });
  $('plot-h').focus();
  announce('Live plot of ' + name + ' opened.');
}

function closePlot(returnFocus) {
  if (plot.abort) plot.abort.abort();
  $('plot-card').hidden = true;
  const opener = plot.opener;
  Object.assign(plot, { name: null, chart: null, abort: null, opener: null });
  if (returnFocus) (opener && document.contains(opener) ? opener : $('channels-h')).focus();
}

function setPaused(paused) {
  if (plot.chart) plot.chart.paused = paused;
  const btn = $('plot-pause');
  btn.setAttribute('aria-pressed', String(paused));
  btn.textContent = paused ? 'Resume' : 'Pause';
  $('plot-status').textContent = paused ? 'Plot paused.' : '';
}

function zoom(step) {
  const select = $('plot-window');
  const i = Math.min(select.options.length - 1, Math.max(0, select.selectedIndex + step));
  if (i === select.selectedIndex) return;
  select.selectedIndex = i;
  select.dispatchEvent(new Event('change'));
  $('plot-status').textContent = 'Time window ' + select.options[i].text + '.';
}

function initPlot() {
  $('plot-close').addEventListener('click', () => closePlot(true));
  $('plot-pause').addEventListener('click', () => setPaused(!(plot.chart && plot.chart.paused)));
  $('plot-window').addEventListener('change', () => {
    if (!plot.chart) return;
    plot.chart.windowS = Number($('plot-window').value);
    plot.chart.draw();
  });
  $('plot-canvas').addEventListener('keydown', (e) => {
    if (e.key === '+' || e.key === '=') zoom(-1);
    else if (e.key === '-') zoom(1);
    else if (e.key === ' ') setPaused(!(plot.chart && plot.chart.paused));
    else return;
    e.preventDefault();
  });
  window.matchMedia('(prefers-color-scheme: dark)').addEventListener('change', () => {
    if (plot.chart) plot.chart.draw();
    refreshSparks();
  });
  window.addEventListener('resize', () => { if (plot.chart) plot.chart.draw(); });
}

// ---- Remove, after confirmation.

let removing = null;

function confirmRemove(name, opener) {
  removing = name;
  const entry = rows.get(name);
  const port = entry ? entry.cells.port.textContent : '?';
  $('confirm-title').textContent = 'Remove channel ' + name + '?';
  $('confirm-text').textContent = `It stops receiving on UDP port ${port} and is deleted from the registry. ` +
    'Archive files already written stay on disk.';
  showError($('confirm-error'), '');
  const dialog = $('confirm-dialog');
  dialog.returnFocusTo = opener;
  $('confirm-ok').disabled = false;
  dialog.showModal();
  // The safe choice has the focus.
  $('confirm-cancel').focus();
}

async function doRemove() {
  const name = removing;
  const dialog = $('confirm-dialog');
  const ok = $('confirm-ok');
  ok.disabled = true;
  try {
    await api('DELETE', '/channels/' + encodeURIComponent(name));
    dialog.returnFocusTo = $('channels-h');
    dialog.close();
    announce('Channel ' + name + ' removed.');
    await refresh();
  } catch (e) {
    ok.disabled = false;
    showError($('confirm-error'), errorText(e));
    ok.focus();
  }
}

// ---- Register.

const FIELD_ERRORS = {
  name: ['f-name', 'f-name-error'],
  port: ['f-port', 'f-port-error'],
  factor: ['f-factor', 'f-factor-error'],
  'outputs.full_rate': ['f-full-rate', 'f-full-rate-error'],
  'outputs.decimated': ['f-decimated', 'f-decimated-error'],
};

function schemaSource() {
  return $('src-path').checked ? 'path' : 'file';
}

function fieldFor(field) {
  if (!field) return null;
  if (field === 'schema') {
    return schemaSource() === 'path' ? ['f-schema-path', 'f-schema-path-error'] : ['f-schema-file', 'f-schema-file-error'];
  }
  if (FIELD_ERRORS[field]) return FIELD_ERRORS[field];
  if (field.startsWith('config') || field.startsWith('decimation')) return FIELD_ERRORS.factor;
  return null;
}

/** The destination list (`outputs.full_rate` or `outputs.decimated`) a 400
 *  about `config` is about, or null. The relay names it either in the
 *  message (`outputs.decimated: …`, from reading the settings) or, for a
 *  destination it cannot open (`config.outputs`), by the destination
 *  itself: `destination [fe80::1]:5000: …`, looked up in what was sent. */
function outputsFieldOf(err, sent) {
  const field = err.field || '';
  if (field !== 'config' && !field.startsWith('config.outputs')) return null;
  const named = /^(?:config\.)?outputs\.(full_rate|decimated)/.exec(field) || /^outputs\.(full_rate|decimated)/.exec(err.message);
  if (named) return 'outputs.' + named[1];
  if (field !== 'config.outputs') return null;
  const outputs = (sent && sent.config && sent.config.outputs) || {};
  const dest = (/destination (\S+?):\s/.exec(err.message) || [])[1];
  const lists = Object.keys(OUTPUTS).filter((k) => outputs[k]);
  const holder = lists.find((k) => outputs[k].some((d) => formatDestination(d) === dest));
  return 'outputs.' + (holder || lists[0] || 'full_rate');
}

/** The form field an API error about the request `sent` is about: its
 *  `field` (a destination list for `config.outputs`), or for a 409 the
 *  name or the port, whichever is taken. */
function fieldOf(err, sent) {
  const outputs = outputsFieldOf(err, sent);
  if (outputs) return outputs;
  if (err.field) return err.field;
  if (err.status === 409) return /channel named/.test(err.message) ? 'name' : 'port';
  return null;
}

function clearFormErrors() {
  for (const id of ['f-name', 'f-port', 'f-factor', 'f-algorithm', 'f-schema-file', 'f-schema-path', 'f-full-rate', 'f-decimated']) {
    $(id).removeAttribute('aria-invalid');
  }
  for (const id of ['f-name-error', 'f-port-error', 'f-factor-error', 'f-schema-file-error', 'f-schema-path-error',
    'f-full-rate-error', 'f-decimated-error', 'form-error']) {
    showError($(id), '');
  }
  $('form-status').textContent = '';
}

/** Shows `message` next to `field` (or above the form) and focuses it. */
function formError(field, message, focus) {
  const target = fieldFor(field);
  if (target) {
    const [input, err] = target;
    $(input).setAttribute('aria-invalid', 'true');
    if (input === 'f-factor') $('f-algorithm').setAttribute('aria-invalid', 'true');
    showError($(err), message);
    if (focus) $(input).focus();
  } else {
    showError($('form-error'), message);
    if (focus) $('submit').focus();
  }
  if (focus) announce('Not registered: ' + message);
}

/** `{address, port}` as the relay writes it: `127.0.0.1:9000`, `[::1]:9000`. */
function formatDestination(d) {
  return (d.address.includes(':') ? `[${d.address}]` : d.address) + ':' + d.port;
}

/** One `address:port` entry as `{address, port}`; throws an Error that
 *  says what is wrong with it. */
function parseDestination(entry) {
  let address = entry;
  let portText = null;
  if (entry.startsWith('[')) {
    const m = /^\[([^\]]*)\](?::(.*))?$/.exec(entry);
    if (!m) throw new Error(`${entry}: write an IPv6 destination as [address]:port, e.g. [::1]:9000.`);
    [, address, portText = null] = m;
  } else if (entry.includes(':')) {
    const colon = entry.lastIndexOf(':');
    if (entry.indexOf(':') !== colon) throw new Error(`${entry}: put an IPv6 address in brackets, e.g. [::1]:9000.`);
    address = entry.slice(0, colon);
    portText = entry.slice(colon + 1);
  }
  if (!address) throw new Error(`${entry} has no address.`);
  if (!portText) throw new Error(`${entry} has no port: write address:port, e.g. 127.0.0.1:9000.`);
  const port = Number(portText);
  if (!/^\d+$/.test(portText) || port < 1 || port > 65535) throw new Error(`${entry}: the port is a whole number from 1 to 65535.`);
  if (entry.startsWith('[')) {
    // The URL parser checks IPv6 syntax and gives the address in its usual short form.
    try {
      address = new URL(`http://[${address}]/`).hostname.slice(1, -1);
    } catch (_) {
      throw new Error(`${entry}: ${address} is not an IPv6 address.`);
    }
  } else if (!IPV4_RE.test(address)) {
    throw new Error(`${entry}: ${address} is not an IPv4 address (names are not resolved; IPv6 goes in brackets).`);
  }
  return { address, port };
}

let suggested = null;

async function suggestPort(force) {
  const input = $('f-port');
  if (!force && input.value && input.value !== String(suggested)) return;
  try {
    // The relay's own range: its configured `ports`, else 26000–27000.
    const data = await api('GET', '/ports/available');
    const range = `${data.range.start}–${data.range.end}`;
    const port = (data.available || [])[0];
    if (port === undefined) {
      $('f-port-hint').textContent = `No free port in ${range}; enter one.`;
      return;
    }
    suggested = port;
    input.value = String(port);
    $('f-port-hint').textContent = `Suggested: ${port}, the first free port in ${range}.`;
  } catch (e) {
    $('f-port-hint').textContent = 'No suggestion: ' + errorText(e);
  }
}

/** Reads the form; returns the request body, or null after showing why not. */
async function readForm() {
  const problems = [];
  const name = $('f-name').value.trim();
  if (!name) problems.push(['name', 'Enter a name.']);
  else if (!NAME_RE.test(name)) problems.push(['name', 'Use letters, digits, _ . - (starting with a letter or digit), up to 64.']);
  const portText = $('f-port').value.trim();
  const port = Number(portText);
  if (!portText) problems.push(['port', 'Enter a UDP port.']);
  else if (!Number.isInteger(port) || port < 1 || port > 65535) problems.push(['port', 'The port is a whole number from 1 to 65535.']);
  let schema;
  if (schemaSource() === 'path') {
    schema = $('f-schema-path').value.trim();
    if (!schema) problems.push(['schema', 'Enter the path of the schema file, relative to the config directory.']);
  } else {
    const file = $('f-schema-file').files[0];
    if (!file) problems.push(['schema', 'Choose an Avro schema file.']);
    else if (file.size > MAX_SCHEMA_BYTES) problems.push(['schema', 'The file is larger than 2 MiB.']);
    else {
      try {
        schema = JSON.parse(await file.text());
        if (typeof schema === 'string') schema = { type: schema };
        if (schema === null || typeof schema !== 'object' || Array.isArray(schema)) {
          problems.push(['schema', 'The file must hold one Avro schema object.']);
        }
      } catch (e) {
        problems.push(['schema', file.name + ' is not JSON: ' + e.message]);
      }
    }
  }
  const factorText = $('f-factor').value.trim();
  const algorithm = $('f-algorithm').value;
  const decimation = {};
  if (factorText) {
    const factor = Number(factorText);
    if (!Number.isInteger(factor) || factor < 1) problems.push(['factor', 'The factor is a whole number, at least 1.']);
    else decimation.factor = factor;
  }
  if (algorithm) decimation.algorithm = algorithm;
  // An empty list leaves the relay's defaults: no key is sent for it.
  const outputs = {};
  for (const [list, id] of Object.entries(OUTPUTS)) {
    const entries = $(id).value.split(/[\s,]+/).filter(Boolean);
    try {
      if (entries.length) outputs[list] = entries.map(parseDestination);
    } catch (e) {
      problems.push(['outputs.' + list, e.message]);
    }
  }
  if (problems.length) {
    problems.forEach(([field, msg], i) => formError(field, msg, i === 0));
    return null;
  }
  const body = { name, port, schema };
  const config = {};
  if (Object.keys(decimation).length) config.decimation = { enabled: true, ...decimation };
  if (Object.keys(outputs).length) config.outputs = outputs;
  if (Object.keys(config).length) body.config = config;
  return body;
}

async function onRegister(e) {
  e.preventDefault();
  clearFormErrors();
  const submit = $('submit');
  submit.disabled = true;
  try {
    const body = await readForm();
    if (!body) return;
    try {
      const answer = await api('POST', '/channels', body);
      const msg = `Channel ${answer.name} registered on UDP port ${answer.port}.`;
      $('form-status').textContent = msg;
      $('register').reset();
      toggleSchemaSource();
      suggested = null;
      await Promise.all([refresh(), suggestPort(true)]);
    } catch (err) {
      formError(fieldOf(err, body), errorText(err), true);
    }
  } finally {
    submit.disabled = false;
  }
}

function toggleSchemaSource() {
  const path = schemaSource() === 'path';
  $('schema-path-box').hidden = !path;
  $('schema-file-box').hidden = path;
}

// ---- Wiring.

function returnFocus(dialog) {
  const to = dialog.returnFocusTo;
  dialog.returnFocusTo = null;
  if (to && document.contains(to)) to.focus();
  else $('channels-h').focus();
}

function init() {
  for (const dialog of document.querySelectorAll('dialog')) {
    for (const btn of dialog.querySelectorAll('[data-close]')) btn.addEventListener('click', () => dialog.close());
    if (dialog.id !== 'token-dialog') dialog.addEventListener('close', () => returnFocus(dialog));
  }
  $('confirm-ok').addEventListener('click', doRemove);
  initPlot();
  $('register').addEventListener('submit', onRegister);
  $('suggest').addEventListener('click', () => suggestPort(true));
  $('src-file').addEventListener('change', toggleSchemaSource);
  $('src-path').addEventListener('change', toggleSchemaSource);
  toggleSchemaSource();
  fetch(API + '/health', { cache: 'no-store' })
    .then((r) => r.json())
    .then((h) => { $('version').textContent = 'v' + h.version; })
    .catch(() => {});
  refresh().then(() => suggestPort(false));
}

document.addEventListener('DOMContentLoaded', init);
