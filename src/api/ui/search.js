// Trace search: the form, the duration scatter and the results table.
import { view, h, s, fmtMs, fmtTime, colorOf, REASONS } from './dom.js';
import { api } from './api.js';

const RANGES = [['15m', '15 minutes', 15], ['1h', '1 hour', 60], ['6h', '6 hours', 360], ['24h', '24 hours', 1440], ['7d', '7 days', 10080], ['custom', 'custom', 0]];

function localInput(unixMs) {
  const d = new Date(unixMs - new Date(unixMs).getTimezoneOffset() * 60000);
  return d.toISOString().slice(0, 16);
}

export async function renderSearch(params) {
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
