// The selector's web UI: trace search, the trace waterfall, force rules, a
// SQL console and the pipeline overview, all over the /admin/* JSON API.
// Plain JavaScript with no dependencies; every value from the API is put in
// the page as text (never as HTML).
'use strict';

const TOKEN_KEY = 'tss.admin-token';
const view = () => document.getElementById('view');
let stopPage = () => {};

// ---------- DOM and formatting helpers ----------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'style') Object.assign(el.style, v);
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const SVG_NS = 'http://www.w3.org/2000/svg';
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, String(v));
  }
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

function fmtMs(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return '–';
  if (ms >= 60000) return (ms / 60000).toFixed(1) + ' min';
  if (ms >= 1000) return (ms / 1000).toFixed(2) + ' s';
  if (ms >= 10) return ms.toFixed(0) + ' ms';
  return ms.toFixed(2) + ' ms';
}

function fmtTime(unixMs) {
  const d = new Date(unixMs);
  return d.toLocaleString(undefined, { hour12: false }) + '.' + String(d.getMilliseconds()).padStart(3, '0');
}

function fmtSecs(secs) {
  secs = Math.max(0, Math.round(secs));
  const hh = Math.floor(secs / 3600), mm = Math.floor((secs % 3600) / 60), ss = secs % 60;
  return (hh ? hh + 'h ' : '') + (hh || mm ? mm + 'm ' : '') + ss + 's';
}

function fmtNum(n, digits = 0) {
  if (n === null || n === undefined || Number.isNaN(n)) return '–';
  return Number(n).toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

// "2026-12-03T10:00:00.123456+00:00" (as the API renders timestamps) to
// Unix microseconds, keeping the digits Date.parse would drop.
function parseMicros(text) {
  const m = /^(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?(.*)$/.exec(String(text || ''));
  if (!m) return NaN;
  const base = Date.parse(m[1] + (m[3] || 'Z'));
  const frac = Number((m[2] || '').padEnd(6, '0').slice(0, 6));
  return base * 1000 + frac;
}

const PALETTE = ['#4e79a7', '#f28e2b', '#59a14f', '#b07aa1', '#76b7b2', '#edc948', '#ff9da7', '#9c755f', '#86bcb6', '#8cd17d'];
function colorOf(name) {
  let hash = 0;
  for (const ch of String(name)) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  return PALETTE[hash % PALETTE.length];
}

const REASONS = {
  error: 'A span ended with status ERROR.',
  latency: 'The trace lasted longer than the latency threshold.',
  force_rule: 'A force rule matched it.',
  baseline: 'Kept by the baseline sample rate.',
  policy: 'A sampling policy kept it.',
};

// ---------- The API, with the token ----------

class ApiError extends Error {
  constructor(status, message, field) {
    super(message);
    this.status = status;
    this.field = field;
  }
}

let tokenPrompt = null;
function askToken(message) {
  if (tokenPrompt) return tokenPrompt;
  const dialog = document.getElementById('token-dialog');
  const msg = document.getElementById('token-message');
  msg.textContent = message || '';
  msg.hidden = !message;
  tokenPrompt = new Promise((resolve) => {
    const form = document.getElementById('token-form');
    const input = document.getElementById('token-input');
    input.value = '';
    form.addEventListener('submit', function done(e) {
      e.preventDefault();
      if (!input.value) return;
      sessionStorage.setItem(TOKEN_KEY, input.value);
      form.removeEventListener('submit', done);
      dialog.close();
      tokenPrompt = null;
      updateTokenButton();
      resolve();
    });
    dialog.showModal();
    input.focus();
  });
  return tokenPrompt;
}

function updateTokenButton() {
  document.getElementById('forget-token').hidden = !sessionStorage.getItem(TOKEN_KEY);
}

async function api(method, path, body) {
  for (;;) {
    const headers = { Accept: 'application/json' };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = 'Bearer ' + token;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    if (res.status === 401) {
      await askToken(token ? 'That token was refused. Enter the admin token.' : '');
      continue;
    }
    const text = await res.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch { data = { error: text }; }
    if (!res.ok) throw new ApiError(res.status, (data && data.error) || res.statusText, data && data.field);
    return data;
  }
}

// ---------- Routing ----------

function route() {
  stopPage();
  stopPage = () => {};
  const hash = location.hash.replace(/^#/, '') || '/search';
  const [path, query] = hash.split('?');
  const params = new URLSearchParams(query || '');
  const parts = path.split('/').filter(Boolean);
  const page = parts[0] || 'search';
  for (const a of document.querySelectorAll('[data-nav]')) {
    a.classList.toggle('active', a.dataset.nav === page || (page === 'trace' && a.dataset.nav === 'search'));
  }
  const pages = { search: renderSearch, trace: () => renderTrace(parts[1] || ''), rules: renderRules, sql: renderSql, overview: renderOverview };
  (pages[page] || renderSearch)(params).catch(showFailure);
}

function showFailure(e) {
  view().replaceChildren(h('div', { class: 'panel' }, h('p', { class: 'error', id: 'page-error' }, e.status ? `${e.status}: ${e.message}` : String(e))));
}

// ---------- Trace search ----------

const RANGES = [['15m', '15 minutes', 15], ['1h', '1 hour', 60], ['6h', '6 hours', 360], ['24h', '24 hours', 1440], ['7d', '7 days', 10080], ['custom', 'custom', 0]];

function localInput(unixMs) {
  const d = new Date(unixMs - new Date(unixMs).getTimezoneOffset() * 60000);
  return d.toISOString().slice(0, 16);
}

async function renderSearch(params) {
  const field = (name, label, input) => h('label', {}, label, input, h('span', { class: 'field-error', 'data-error-for': name }));
  const select = (name, options, value) => h('select', { name, id: 'f-' + name },
    options.map(([v, text]) => h('option', { value: v, selected: v === value }, text)));
  const input = (name, attrs) => h('input', Object.assign({ name, id: 'f-' + name, value: params.get(name) || '' }, attrs));
  const range = params.get('range') || '1h';
  const now = Date.now();
  const form = h('form', { id: 'search-form', class: 'panel' },
    h('div', { class: 'form-grid' },
      field('service', 'Service', select('service', [['', 'any service']], '')),
      field('name', 'Span name', select('name', [['', 'any span name']], '')),
      field('status', 'Status', select('status', [['', 'any'], ['error', 'error'], ['ok', 'ok'], ['unset', 'unset']], params.get('status') || '')),
      field('reason', 'Sampling reason', input('reason', { list: 'reasons', placeholder: 'any' })),
      field('min_duration_ms', 'Min duration (ms)', input('min_duration_ms', { type: 'number', min: 0, step: 'any' })),
      field('max_duration_ms', 'Max duration (ms)', input('max_duration_ms', { type: 'number', min: 0, step: 'any' })),
      field('attr', 'Attribute key=value', input('attr', { placeholder: 'http.route=/checkout' })),
      field('range', 'Time range', select('range', RANGES.map(([v, text]) => [v, v === 'custom' ? 'custom' : 'last ' + text]), range)),
      field('from', 'From', h('input', { type: 'datetime-local', name: 'from', id: 'f-from', value: params.get('from') ? localInput(Number(params.get('from'))) : localInput(now - 3600e3) })),
      field('to', 'To', h('input', { type: 'datetime-local', name: 'to', id: 'f-to', value: params.get('to') ? localInput(Number(params.get('to'))) : localInput(now) })),
      field('sort', 'Sort by', select('sort', [['start', 'most recent'], ['duration', 'longest']], params.get('sort') || 'start')),
      field('limit', 'Limit', input('limit', { type: 'number', min: 1, max: 1000, placeholder: '20' }))),
    h('datalist', { id: 'reasons' }, Object.keys(REASONS).map((r) => h('option', { value: r }))),
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary', id: 'search-submit' }, 'Find traces'),
      h('span', { id: 'search-error', class: 'error' })));
  const status = h('p', { id: 'search-status', class: 'status-line muted' });
  const chart = h('div', { class: 'panel', id: 'scatter-panel' });
  const results = h('div', { class: 'panel', id: 'results-panel' });
  view().replaceChildren(h('h1', {}, 'Kept traces'), form, status, chart, results);

  const custom = () => form.range.value === 'custom';
  const toggleCustom = () => { form.from.disabled = !custom(); form.to.disabled = !custom(); };
  form.range.addEventListener('change', toggleCustom);
  toggleCustom();

  let services = [];
  const fillNames = (chosen) => {
    const svc = services.find((x) => x.service === form.service.value);
    const names = svc ? svc.names : [...new Set(services.flatMap((x) => x.names))].sort();
    form.name.replaceChildren(h('option', { value: '' }, 'any span name'), ...names.map((n) => h('option', { value: n, selected: n === chosen }, n)));
    if (chosen && !names.includes(chosen)) form.name.append(h('option', { value: chosen, selected: true }, chosen));
  };
  form.service.addEventListener('change', () => fillNames(''));
  try {
    const lookback = Math.max(24 * 3600e3, (RANGES.find(([v]) => v === range) || [0, 0, 60])[2] * 60e3);
    services = (await api('GET', '/admin/services?from=' + (Date.now() - lookback))).services;
  } catch (e) {
    form.querySelector('[data-error-for="service"]').textContent = e.message;
  }
  const wanted = params.get('service') || '';
  form.service.replaceChildren(h('option', { value: '' }, 'any service'),
    ...services.map((x) => h('option', { value: x.service, selected: x.service === wanted }, x.service)));
  if (wanted && !services.some((x) => x.service === wanted)) form.service.append(h('option', { value: wanted, selected: true }, wanted));
  fillNames(params.get('name') || '');

  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const p = new URLSearchParams();
    for (const name of ['service', 'name', 'status', 'reason', 'min_duration_ms', 'max_duration_ms', 'attr', 'sort', 'limit', 'range']) {
      const v = form[name].value.trim();
      if (v) p.set(name, v);
    }
    if (custom()) {
      p.set('from', String(new Date(form.from.value).getTime()));
      p.set('to', String(new Date(form.to.value).getTime()));
    }
    p.set('t', String(Date.now()));
    location.hash = '#/search?' + p.toString();
  });
  await runSearch(params, { form, status, chart, results });
}

async function runSearch(params, ui) {
  const q = new URLSearchParams();
  for (const name of ['service', 'name', 'status', 'reason', 'min_duration_ms', 'max_duration_ms', 'attr', 'sort', 'limit']) {
    if (params.get(name)) q.set(name, params.get(name));
  }
  const range = params.get('range') || '1h';
  let from, to;
  if (range === 'custom' && params.get('from') && params.get('to')) {
    from = Number(params.get('from')); to = Number(params.get('to'));
  } else {
    to = Date.now();
    from = to - (RANGES.find(([v]) => v === range) || RANGES[1])[2] * 60e3;
  }
  q.set('from', new Date(from).toISOString());
  q.set('to', new Date(to).toISOString());
  ui.status.textContent = 'Searching…';
  let result;
  try {
    result = await api('GET', '/admin/traces?' + q.toString());
  } catch (e) {
    ui.status.textContent = '';
    const slot = e.field && ui.form.querySelector(`[data-error-for="${CSS.escape(e.field)}"]`);
    (slot || document.getElementById('search-error')).textContent = e.message;
    return;
  }
  ui.status.textContent = `${result.count} trace${result.count === 1 ? '' : 's'} in ${result.elapsed_ms} ms` +
    (result.count === result.limit ? ` (the first ${result.limit}; narrow the search or raise the limit)` : '');
  ui.chart.replaceChildren(scatter(result.traces, from, to));
  ui.results.replaceChildren(resultsTable(result.traces));
}

function scatter(traces, from, to) {
  const width = Math.max(400, view().clientWidth - 60), height = 200, pad = { l: 56, r: 12, t: 10, b: 24 };
  const maxMs = Math.max(1, ...traces.map((t) => t.duration_ms)) * 1.1;
  const x = (ms) => pad.l + ((ms - from) / Math.max(1, to - from)) * (width - pad.l - pad.r);
  const y = (ms) => height - pad.b - (ms / maxMs) * (height - pad.t - pad.b);
  const svg = s('svg', { class: 'scatter', id: 'scatter', viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': 'Duration over time' });
  svg.append(s('line', { class: 'axis', x1: pad.l, x2: width - pad.r, y1: height - pad.b, y2: height - pad.b }),
    s('line', { class: 'axis', x1: pad.l, x2: pad.l, y1: pad.t, y2: height - pad.b }));
  for (const f of [0, 0.5, 1]) {
    svg.append(s('text', { x: pad.l - 6, y: y(maxMs * f) + 4, 'text-anchor': 'end' }, fmtMs(maxMs * f)));
    const at = from + (to - from) * f;
    svg.append(s('text', { x: x(at), y: height - 6, 'text-anchor': f === 0 ? 'start' : f === 1 ? 'end' : 'middle' }, new Date(at).toLocaleTimeString(undefined, { hour12: false })));
  }
  for (const t of traces) {
    const r = 3 + Math.min(6, Math.log2(1 + t.span_count));
    const dot = s('circle', {
      class: 'dot', cx: x(t.start_unix_ms), cy: y(t.duration_ms), r,
      fill: t.error_count > 0 ? '#d92d20' : colorOf(t.root_service || ''), 'data-trace-id': t.trace_id,
      onclick: () => { location.hash = '#/trace/' + t.trace_id; },
    }, s('title', {}, `${t.root_service || '?'}: ${t.root_name || '?'} — ${fmtMs(t.duration_ms)}, ${t.span_count} spans`));
    svg.append(dot);
  }
  return svg;
}

function resultsTable(traces) {
  if (!traces.length) return h('p', { class: 'muted', id: 'no-results' }, 'No kept trace matches. Widen the time range or clear a filter.');
  return h('table', { id: 'results' },
    h('thead', {}, h('tr', {}, ['Trace', 'Start', 'Duration', 'Spans', 'Errors', 'Kept because'].map((c) => h('th', {}, c)))),
    h('tbody', {}, traces.map((t) => h('tr', {
      class: 'clickable trace-row', 'data-trace-id': t.trace_id,
      onclick: () => { location.hash = '#/trace/' + t.trace_id; },
    },
    h('td', {}, h('a', { href: '#/trace/' + t.trace_id, class: 'trace-link' }, h('strong', {}, t.root_service || '?'), ': ', t.root_name || '(no root span)'),
      h('div', { class: 'muted mono' }, t.trace_id)),
    h('td', {}, fmtTime(t.start_unix_ms)),
    h('td', { class: 'duration' }, fmtMs(t.duration_ms)),
    h('td', { class: 'span-count' }, t.span_count),
    h('td', {}, t.error_count > 0 ? h('span', { class: 'badge error error-marker' }, `${t.error_count} error${t.error_count > 1 ? 's' : ''}`) : ''),
    h('td', {}, h('span', { class: 'badge reason' }, t.sampling_reason || '?'))))));
}

// ---------- Trace view ----------

function normalise(row) {
  return {
    id: row.span_id, parent: row.parent_span_id || null, name: row.name, service: row.service_name || '?',
    kind: row.kind, startUs: parseMicros(row.start_time), durMs: Number(row.duration_ms) || 0,
    status: row.status_code, message: row.status_message, attrs: row.span_attributes || {},
    resource: row.resource_attributes || {}, events: row.events || [], scope: row.scope_name,
    reason: row.sampling_reason, rule: row.sampling_rule_id, sampleRate: row.sample_rate,
  };
}

// Spans in waterfall order: each after its parent, siblings by start. A span
// whose parent is not stored is an orphan and starts a tree of its own.
function waterfallOrder(spans) {
  const byId = new Map(spans.map((x) => [x.id, x]));
  const children = new Map();
  const roots = [];
  for (const x of spans) {
    x.orphan = Boolean(x.parent) && !byId.has(x.parent);
    if (!x.parent || x.orphan || x.parent === x.id) roots.push(x);
    else (children.get(x.parent) || children.set(x.parent, []).get(x.parent)).push(x);
  }
  const byStart = (a, b) => a.startUs - b.startUs;
  const out = [];
  const seen = new Set();
  const visit = (x, depth) => {
    if (seen.has(x.id)) return;
    seen.add(x.id);
    x.depth = depth;
    out.push(x);
    for (const c of (children.get(x.id) || []).sort(byStart)) visit(c, depth + 1);
  };
  roots.sort(byStart).forEach((r) => visit(r, 0));
  // Spans only reachable through a cycle of parents: shown, not dropped.
  for (const x of spans.sort(byStart)) if (!seen.has(x.id)) { x.orphan = true; visit(x, 0); }
  return out;
}

async function renderTrace(id) {
  view().replaceChildren(h('p', { class: 'muted' }, 'Loading trace ' + id + '…'));
  const data = await api('GET', '/admin/traces/' + encodeURIComponent(id));
  const spans = waterfallOrder(data.spans.map(normalise));
  const start = Math.min(...spans.map((x) => x.startUs));
  const end = Math.max(...spans.map((x) => x.startUs + x.durMs * 1000));
  const total = Math.max(1, end - start);
  const root = spans.find((x) => !x.parent) || spans[0];
  const services = [...new Set(spans.map((x) => x.service))];
  const errors = spans.filter((x) => x.status === 'ERROR').length;

  const detail = h('div', { class: 'panel', id: 'span-detail' }, h('p', { class: 'muted' }, 'Select a span to see its attributes, resource and events.'));
  const rows = spans.map((x) => {
    const left = ((x.startUs - start) / total) * 100;
    const width = Math.max(0.2, ((x.durMs * 1000) / total) * 100);
    const row = h('div', {
      class: 'wf-row span-row' + (x.status === 'ERROR' ? ' error' : '') + (x.orphan ? ' orphan' : ''),
      'data-span-id': x.id, 'data-parent-id': x.parent || '', 'data-depth': x.depth,
      onclick: () => {
        for (const r of document.querySelectorAll('.wf-row.selected')) r.classList.remove('selected');
        row.classList.add('selected');
        showSpan(detail, x, start, data.trace_id);
      },
    },
    h('div', { class: 'wf-label', style: { paddingLeft: 6 + x.depth * 16 + 'px' } },
      h('span', { class: 'wf-chip', style: { background: colorOf(x.service) } }),
      h('span', { class: 'svc' }, x.service), h('span', { class: 'span-name' }, x.name),
      x.status === 'ERROR' ? h('span', { class: 'wf-error', title: 'status ERROR' }, '!') : null,
      x.orphan ? h('span', { class: 'wf-orphan', title: 'parent ' + x.parent + ' is not stored' }, 'parent missing') : null),
    h('div', { class: 'wf-track' },
      h('div', { class: 'wf-bar', style: { left: left + '%', width: width + '%', background: colorOf(x.service) } }),
      h('span', { class: 'wf-bar-label', style: left + width > 85 ? { right: (100 - left + 0.5) + '%' } : { left: (left + width + 0.5) + '%' } }, fmtMs(x.durMs))));
    return row;
  });
  const ticks = [0, 0.25, 0.5, 0.75, 1].map((f) => h('span', { style: { left: f * 100 + '%' } }, fmtMs((total * f) / 1000)));
  const kept = h('div', { class: 'panel kept', id: 'kept-reason' }, keptText(root));
  view().replaceChildren(
    h('div', { class: 'panel' },
      h('div', { class: 'trace-head' },
        h('h1', {}, root.service + ': ' + root.name),
        h('span', {}, 'Trace ', h('code', { id: 'trace-id' }, data.trace_id)),
        h('span', {}, 'Start ', fmtTime(start / 1000)),
        h('span', {}, 'Duration ', h('strong', {}, fmtMs(total / 1000))),
        h('span', { id: 'span-total' }, data.span_count + ' spans'),
        h('span', {}, services.length + ' service' + (services.length > 1 ? 's' : '')),
        errors ? h('span', { class: 'badge error' }, errors + ' error span' + (errors > 1 ? 's' : '')) : null),
      data.truncated ? h('p', { class: 'error' }, 'Only the first ' + data.span_count + ' spans are shown (query.max_rows).') : null),
    kept,
    h('div', { class: 'trace-layout' },
      h('div', { class: 'panel waterfall', id: 'waterfall' },
        h('div', { class: 'wf-axis' }, h('div', { class: 'wf-label muted' }, 'Service and span'), h('div', { class: 'wf-ticks' }, ticks)),
        rows),
      detail));
  // `sampling_rule_id` names a force rule, or for `policy` the policy.
  if (root.rule && root.reason === 'force_rule') showRule(kept, root.rule);
}

function keptText(root) {
  return [
    h('h2', {}, 'Why it was kept'),
    h('p', {}, h('span', { class: 'badge reason', id: 'kept-reason-code' }, root.reason || '?'), ' ',
      root.reason === 'policy' && root.rule ? `The sampling policy \u201c${root.rule}\u201d kept it.` : REASONS[root.reason] || `Kept as \u201c${root.reason}\u201d.`,
      root.sampleRate && root.sampleRate > 1 ? ` It stands for ${fmtNum(root.sampleRate, 1)} traces of its kind.` : ''),
  ];
}

async function showRule(panel, ruleId) {
  const slot = h('div', { id: 'kept-rule' }, h('p', { class: 'muted' }, 'Force rule ', h('code', {}, ruleId), '…'));
  panel.append(slot);
  try {
    const rule = await api('GET', '/admin/force-rules/' + encodeURIComponent(ruleId));
    slot.replaceChildren(h('p', {}, 'Force rule ', h('code', {}, rule.id), rule.description ? ` \u201c${rule.description}\u201d` : '',
      ` (${rule.action}, priority ${rule.priority}, ${fmtSecs(rule.remaining_secs)} left)`),
    h('p', {}, 'Match: ', h('code', {}, JSON.stringify(rule.match))));
  } catch (e) {
    slot.replaceChildren(h('p', {}, 'Force rule ', h('code', {}, ruleId), e.status === 404 ? ' (expired or deleted since)' : ': ' + e.message));
  }
}

function kvTable(obj) {
  const entries = Object.entries(obj || {}).sort(([a], [b]) => a.localeCompare(b));
  if (!entries.length) return h('p', { class: 'muted' }, 'none');
  return h('table', { class: 'kv' }, h('tbody', {}, entries.map(([k, v]) => h('tr', {}, h('td', {}, k), h('td', {}, typeof v === 'string' ? v : JSON.stringify(v))))));
}

function showSpan(panel, x, traceStart, traceId) {
  panel.replaceChildren(
    h('h2', { id: 'detail-name' }, x.name),
    kvTable({
      service: x.service, kind: x.kind, status: x.status + (x.message ? ': ' + x.message : ''),
      start: '+' + fmtMs((x.startUs - traceStart) / 1000), duration: fmtMs(x.durMs), span_id: x.id,
      parent_span_id: x.parent ? x.parent + (x.orphan ? ' (not stored)' : '') : '(root)', scope: x.scope || '',
    }),
    h('div', { class: 'actions' }, h('button', { type: 'button', class: 'primary', id: 'keep-like-this', onclick: () => keepForm(panel, x) }, 'Keep traces like this')),
    h('h3', {}, 'Attributes'), kvTable(x.attrs),
    h('h3', {}, 'Resource'), kvTable(x.resource),
    h('h3', {}, 'Events'),
    x.events.length
      ? h('div', {}, x.events.map((ev) => h('div', {}, h('strong', {}, ev.name), ' at +', fmtMs((parseMicros(ev.time) - traceStart) / 1000), kvTable(ev.attributes))))
      : h('p', { class: 'muted' }, 'none'));
  panel.dataset.traceId = traceId;
}

const DURATIONS = [[300, '5 minutes'], [900, '15 minutes'], [3600, '1 hour'], [21600, '6 hours'], [86400, '24 hours']];

// "Keep traces like this": a force rule prefilled from the span. Each
// condition row knows where it lands in the rule, so that an API error such
// as `match.span[1].value` is shown next to that row.
function keepForm(panel, x) {
  const conds = [];
  const cond = (list, key, value, checked) => {
    const box = h('input', { type: 'checkbox', checked, 'data-key': key });
    const err = h('span', { class: 'field-error' });
    conds.push({ list, key, value, box, err });
    return h('div', { class: 'cond' }, h('label', {}, box, ' ', h('code', {}, key), ' = ', h('code', {}, String(value))), err);
  };
  const errorSlot = (name) => h('span', { class: 'field-error', 'data-error-for': name });
  const form = h('form', { class: 'keep-form panel', id: 'keep-form' },
    h('h2', {}, 'Keep traces like this'),
    h('p', { class: 'muted' }, 'Creates a force rule: traces with a span like this one are kept, whatever the other policies say.'),
    cond('resource', 'service.name', x.service, true),
    cond('span', 'name', x.name, true),
    Object.entries(x.attrs).sort(([a], [b]) => a.localeCompare(b)).map(([k, v]) => cond('span', k, v, false)),
    h('div', { class: 'form-grid' },
      h('label', {}, 'For', h('select', { name: 'duration_secs', id: 'keep-duration' }, DURATIONS.map(([v, t]) => h('option', { value: v, selected: v === 900 }, t))), errorSlot('duration_secs')),
      h('label', {}, 'Priority', h('input', { type: 'number', name: 'priority', value: 100 }), errorSlot('priority')),
      h('label', {}, 'Description', h('input', { name: 'description', value: `Keep traces like ${x.service}: ${x.name}` }), errorSlot('description'))),
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary', id: 'keep-submit' }, 'Create rule'), h('span', { class: 'error', id: 'keep-error' })),
    h('p', { id: 'keep-result' }));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    for (const el of form.querySelectorAll('.field-error, #keep-error')) el.textContent = '';
    const match = { resource: [], span: [] };
    const placed = [];
    for (const c of conds) {
      if (!c.box.checked) continue;
      placed.push({ path: `match.${c.list}[${match[c.list].length}]`, err: c.err });
      match[c.list].push({ key: c.key, op: 'eq', value: String(c.value) });
    }
    for (const list of ['resource', 'span']) if (!match[list].length) delete match[list];
    const rule = {
      description: form.description.value, duration_secs: Number(form.duration_secs.value),
      priority: form.priority.value === '' ? 0 : Number(form.priority.value), match, action: 'force_keep',
    };
    try {
      const created = await api('POST', '/admin/force-rules', rule);
      form.querySelector('#keep-result').replaceChildren('Rule ', h('code', { id: 'keep-rule-id' }, created.id), ' created; it keeps matching traces for ',
        fmtSecs(created.remaining_secs), '. ', h('a', { href: '#/rules' }, 'See force rules'));
    } catch (err) {
      showFieldError(form, err, placed, form.querySelector('#keep-error'));
    }
  });
  panel.replaceChildren(form);
}

// Puts an API error next to the field it names, or in `fallback`.
function showFieldError(form, err, placed, fallback) {
  const field = err.field || '';
  const row = placed.find((p) => field === p.path || field.startsWith(p.path + '.'));
  const top = field.split(/[.[]/)[0];
  const slot = row ? row.err : form.querySelector(`[data-error-for="${CSS.escape(field)}"]`) || form.querySelector(`[data-error-for="${CSS.escape(top)}"]`);
  (slot || fallback).textContent = err.message + (slot || !field ? '' : ` (${field})`);
}

// ---------- Force rules ----------

async function renderRules() {
  const list = h('div', { class: 'panel', id: 'rules-panel' }, h('p', { class: 'muted' }, 'Loading…'));
  const errorSlot = (name) => h('span', { class: 'field-error', 'data-error-for': name });
  const template = { resource: [{ key: 'service.name', op: 'eq', value: 'demo-service' }], span: [{ key: 'http.route', op: 'starts_with', value: '/checkout' }] };
  const form = h('form', { class: 'panel', id: 'rule-form' },
    h('h2', {}, 'New force rule'),
    h('div', { class: 'form-grid' },
      h('label', {}, 'Description', h('input', { name: 'description', id: 'rule-description' }), errorSlot('description')),
      h('label', {}, 'Duration (s)', h('input', { name: 'duration_secs', id: 'rule-duration', type: 'number', value: 300 }), errorSlot('duration_secs')),
      h('label', {}, 'Priority', h('input', { name: 'priority', id: 'rule-priority', type: 'number', value: 100 }), errorSlot('priority')),
      h('label', {}, 'Action', h('select', { name: 'action', id: 'rule-action' }, h('option', { value: 'force_keep' }, 'force_keep'), h('option', { value: 'force_drop' }, 'force_drop')), errorSlot('action'))),
    h('label', { style: { marginTop: '10px' } }, 'Match (resource, span and trace conditions; see docs/api.md)',
      h('textarea', { name: 'match', id: 'rule-match', rows: 7 }, JSON.stringify(template, null, 2)), errorSlot('match')),
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary', id: 'rule-submit' }, 'Create rule'), h('span', { class: 'error', id: 'rule-error' })));
  view().replaceChildren(h('h1', {}, 'Force rules'), list, form);

  const refresh = async () => {
    try {
      const data = await api('GET', '/admin/force-rules');
      list.replaceChildren(rulesTable(data.rules, refresh));
    } catch (e) {
      list.replaceChildren(h('p', { class: 'error', id: 'rules-error' }, e.message));
    }
  };
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    for (const el of form.querySelectorAll('.field-error, #rule-error')) el.textContent = '';
    let match;
    try { match = JSON.parse(form.match.value); } catch (err) {
      form.querySelector('[data-error-for="match"]').textContent = 'not valid JSON: ' + err.message;
      return;
    }
    const rule = {
      description: form.description.value, duration_secs: Number(form.duration_secs.value),
      priority: Number(form.priority.value || 0), action: form.action.value, match,
    };
    try {
      await api('POST', '/admin/force-rules', rule);
      await refresh();
    } catch (err) {
      showFieldError(form, err, [], form.querySelector('#rule-error'));
    }
  });
  await refresh();
  const timer = setInterval(refresh, 5000);
  stopPage = () => clearInterval(timer);
}

function rulesTable(rules, refresh) {
  if (!rules.length) return h('p', { class: 'muted', id: 'no-rules' }, 'No force rule is active.');
  rules.sort((a, b) => (b.priority - a.priority) || a.id.localeCompare(b.id));
  return h('table', { id: 'rules-table' },
    h('thead', {}, h('tr', {}, ['Rule', 'Match', 'Action', 'Priority', 'Remaining', 'Matched traces', ''].map((c) => h('th', {}, c)))),
    h('tbody', {}, rules.map((r) => h('tr', { class: 'rule-row', 'data-rule-id': r.id },
      h('td', {}, h('div', {}, r.description || h('span', { class: 'muted' }, '(no description)')), h('div', { class: 'muted mono' }, r.id)),
      h('td', {}, h('code', {}, JSON.stringify(r.match))),
      h('td', {}, r.action), h('td', {}, r.priority),
      h('td', { class: 'remaining' }, fmtSecs(r.remaining_secs)),
      h('td', { class: 'matched' }, r.matched_traces ?? '–'),
      h('td', {}, h('button', {
        type: 'button', class: 'danger delete-rule', onclick: async (e) => {
          e.target.disabled = true;
          try { await api('DELETE', '/admin/force-rules/' + encodeURIComponent(r.id)); } catch (err) { alert(err.message); }
          await refresh();
        },
      }, 'Delete'))))));
}

// ---------- SQL console ----------

const SQL_EXAMPLE = 'SELECT service_name, sampling_reason, count(*) AS spans\nFROM spans\nGROUP BY 1, 2\nORDER BY 3 DESC';

function csvOf(result) {
  const cell = (v) => {
    let text = v === null || v === undefined ? '' : typeof v === 'object' ? JSON.stringify(v) : String(v);
    // A spreadsheet runs a cell that starts like a formula: quote it as text.
    // Numbers (a negative one too) stay numbers.
    if (typeof v === 'string' && /^[=+\-@\t\r]/.test(text)) text = "'" + text;
    return /[",\r\n]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
  };
  return [result.columns, ...result.rows].map((row) => row.map(cell).join(',')).join('\r\n') + '\r\n';
}

async function renderSql() {
  const input = h('textarea', { id: 'sql-input', rows: 8, spellcheck: 'false' }, sessionStorage.getItem('tss.sql') || SQL_EXAMPLE);
  const status = h('span', { id: 'sql-status', class: 'muted' });
  const error = h('pre', { id: 'sql-error', class: 'error', hidden: true });
  const results = h('div', { class: 'results-scroll', id: 'sql-results' });
  let last = null;
  const csv = h('button', {
    type: 'button', id: 'sql-csv', disabled: true, onclick: () => {
      const url = URL.createObjectURL(new Blob([csvOf(last)], { type: 'text/csv' }));
      const a = h('a', { href: url, download: 'query.csv' });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 1000);
    },
  }, 'Download CSV');
  const run = async () => {
    sessionStorage.setItem('tss.sql', input.value);
    error.hidden = true;
    status.textContent = 'Running…';
    csv.disabled = true;
    try {
      last = await api('POST', '/admin/query', { sql: input.value });
    } catch (e) {
      status.textContent = '';
      error.textContent = `${e.status} ${e.message}`;
      error.hidden = false;
      results.replaceChildren();
      return;
    }
    status.textContent = `${last.row_count} row${last.row_count === 1 ? '' : 's'} in ${last.elapsed_ms} ms` + (last.truncated ? ' (truncated at query.max_rows)' : '');
    csv.disabled = false;
    results.replaceChildren(h('table', { id: 'sql-table' },
      h('thead', {}, h('tr', {}, last.columns.map((c) => h('th', {}, c)))),
      h('tbody', {}, last.rows.map((row) => h('tr', {}, row.map((v) => h('td', {}, v === null ? h('span', { class: 'muted' }, 'null') : typeof v === 'object' ? JSON.stringify(v) : String(v))))))));
  };
  input.addEventListener('keydown', (e) => { if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) { e.preventDefault(); run(); } });
  view().replaceChildren(h('h1', {}, 'SQL'),
    h('div', { class: 'panel' }, h('p', { class: 'muted' }, 'Read-only SQL over the ', h('code', {}, 'spans'), ' table (DataFusion). Ctrl+Enter runs it.'), input,
      h('div', { class: 'actions' }, h('button', { type: 'button', class: 'primary', id: 'sql-run', onclick: run }, 'Run'), csv, status), error),
    h('div', { class: 'panel' }, results));
}

// ---------- Pipeline overview ----------

async function renderOverview() {
  const cards = h('div', { class: 'cards', id: 'overview' });
  const health = h('div', { class: 'panel', id: 'overview-health' });
  const stamp = h('p', { class: 'muted', id: 'overview-stamp' });
  view().replaceChildren(h('h1', {}, 'Pipeline'), stamp, cards, health);
  let prev = null;
  const card = (id, title, value, sub) => h('div', { class: 'card', id }, h('div', { class: 'sub' }, title), h('div', { class: 'value' }, value), h('div', { class: 'sub' }, sub || ''));
  const refresh = async () => {
    let doc;
    try { doc = await api('GET', '/admin/overview'); } catch (e) { stamp.textContent = e.message; return; }
    const secs = prev ? (doc.at_unix_ms - prev.at_unix_ms) / 1000 : 0;
    const rate = (f) => (prev && secs > 0 ? fmtNum((f(doc) - f(prev)) / secs, 1) + '/s' : '…');
    const kept = doc.decisions.kept_by_reason;
    const keptTotal = Object.values(kept).reduce((a, b) => a + b, 0);
    const commit = doc.iceberg.commit_duration || {};
    cards.replaceChildren(
      card('ov-ingest', 'Ingest', rate((d) => d.ingest.spans_total) + ' spans', `${rate((d) => d.ingest.traces_total)} traces · ${fmtNum(doc.ingest.spans_total)} spans since start`),
      card('ov-kept', 'Kept', fmtNum(keptTotal) + ' traces', Object.entries(kept).map(([r, n]) => `${r || '?'} ${fmtNum(n)}`).join(' · ') || 'none yet'),
      card('ov-dropped', 'Dropped', fmtNum(doc.decisions.dropped_total) + ' traces', rate((d) => d.decisions.dropped_total) + ' now'),
      card('ov-buffer', 'Buffered', fmtNum(doc.buffer.traces) + ' traces', `${fmtNum(doc.buffer.spans)} spans waiting for their trace to go quiet`),
      card('ov-lag', 'Consumer lag', fmtNum(doc.consumer.lag_messages) + ' messages', `consumed, not yet committed · watermark ${fmtNum(doc.consumer.watermark_lag_seconds, 1)} s behind` + (doc.consumer.paused ? ' · paused' : '')),
      card('ov-commits', 'Iceberg commits', commit.p99_seconds == null ? '–' : fmtMs(commit.p99_seconds * 1000) + ' p99',
        `p50 ${commit.p50_seconds == null ? '–' : fmtMs(commit.p50_seconds * 1000)} · ${fmtNum(doc.iceberg.commits_total)} commits, ${rate((d) => d.iceberg.commits_total)} · ${fmtNum(doc.iceberg.commit_failures_total)} failed`),
      ...sinkCards(doc, rate, card));
    const h0 = doc.health || {};
    const rows = Object.entries(h0).filter(([k]) => k !== 'ready' && k !== 'sinks')
      .concat(Object.entries(h0.sinks || {}).map(([k, v]) => ['sink ' + k, v]));
    health.replaceChildren(h('h2', {}, 'Health: ' + (h0.ready ? 'ready' : 'not ready') + (h0.degraded ? ' (degraded)' : '')),
      h('table', { class: 'kv' }, h('tbody', {}, rows.map(([k, v]) =>
        h('tr', {}, h('td', {}, k), h('td', { class: v && v.status === 'down' ? 'error' : v && v.status === 'ok' ? '' : 'muted' }, v && v.status ? v.status + (v.reason ? ': ' + v.reason : '') : JSON.stringify(v)))))));
    stamp.textContent = 'Updated ' + new Date(doc.at_unix_ms).toLocaleTimeString(undefined, { hour12: false }) + ' · every 3 s';
    prev = doc;
  };
  await refresh();
  const timer = setInterval(refresh, 3000);
  stopPage = () => clearInterval(timer);
}

// One card per sink kept traces leave through besides the table: what it
// took, how fast, what failed, and a forwarder's backlog.
function sinkCards(doc, rate, card) {
  const sinks = doc.sinks || {};
  const exported = sinks.exported_spans_by_sink || {};
  return Object.keys(exported).filter((s) => s !== 'iceberg').sort().map((sink) => {
    const failures = (sinks.failures_by_sink || {})[sink] || 0;
    const lag = (sinks.lag_messages_by_sink || {})[sink];
    const lagSecs = (sinks.lag_seconds_by_sink || {})[sink];
    const backlog = lag == null ? '' : ` · backlog ${fmtNum(lag)} records, ${fmtNum(lagSecs || 0, 1)} s`;
    return card('ov-sink-' + sink.replace(/[^a-z0-9]+/gi, '-'), 'Sink ' + sink, fmtNum(exported[sink]) + ' spans',
      `${rate((d) => ((d.sinks || {}).exported_spans_by_sink || {})[sink] || 0)} · ${fmtNum(failures)} failed attempts` + backlog);
  });
}

// ---------- Start ----------

document.getElementById('forget-token').addEventListener('click', () => {
  sessionStorage.removeItem(TOKEN_KEY);
  updateTokenButton();
  route();
});
window.addEventListener('hashchange', route);
updateTokenButton();
route();
