// Sampling: the live policy list, and a simulation of an edited list over
// past traffic, compared with the live list as a table and as bars per
// policy and service.
import { view, h, fmtNum, showFieldError } from './dom.js';
import { api } from './api.js';
import { followJob } from './jobs.js';

const RANGES = [['-15m', 'Last 15 minutes'], ['-1h', 'Last hour'], ['-6h', 'Last 6 hours'], ['-24h', 'Last 24 hours']];

export async function renderSampling() {
  const live = await api('GET', '/admin/sampling/policies');
  const settings = `Then: errors ${live.always_sample_errors ? 'kept' : 'not kept'}, latency over ${fmtNum(live.latency_threshold_ms, 0)} ms kept, baseline rate ${live.baseline_sample_rate}.`;
  const liveList = h('div', { class: 'panel', id: 'live-policies' },
    h('h2', {}, 'Live policies'),
    live.policies.length
      ? h('ol', {}, live.policies.map((p) => h('li', {}, h('code', {}, p.name), ` ${p.action}`, p.rate ? ` ${p.rate}` : '', ' ', h('span', { class: 'muted' }, JSON.stringify(p.match || {})))))
      : h('p', { class: 'muted' }, 'No policies: the settings below decide.'),
    h('p', { class: 'muted' }, settings));
  const form = h('form', { class: 'panel', id: 'simulate-form' },
    h('h2', {}, 'Simulate a policy list'),
    h('p', { class: 'muted' }, 'Reads the raw topic over the range again and decides every trace with this list and with the live one. Nothing is stored.'),
    h('label', {}, 'Policies ([[sampling.policies]] entries as JSON)',
      h('textarea', { name: 'policies', id: 'simulate-policies', rows: 10 }, JSON.stringify(live.policies, null, 2)),
      h('span', { class: 'field-error', 'data-error-for': 'policies' })),
    h('div', { class: 'form-grid' },
      h('label', {}, 'Range', h('select', { name: 'from', id: 'simulate-from' }, RANGES.map(([v, t]) => h('option', { value: v, selected: v === '-1h' }, t))),
        h('span', { class: 'field-error', 'data-error-for': 'from' }))),
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary', id: 'simulate-submit' }, 'Simulate'), h('span', { class: 'error', id: 'simulate-error' })),
    h('div', { id: 'simulate-status' }));
  const results = h('div', { id: 'simulate-results' });
  view().replaceChildren(h('h1', {}, 'Sampling'), liveList, form, results);

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    for (const el of form.querySelectorAll('.field-error, .error')) el.textContent = '';
    let policies;
    try {
      policies = JSON.parse(form.policies.value);
    } catch (err) {
      form.querySelector('[data-error-for="policies"]').textContent = 'Not JSON: ' + err.message;
      return;
    }
    try {
      const job = await api('POST', '/admin/sampling/simulate', { from: form.from.value, policies });
      form.querySelector('#simulate-submit').disabled = true;
      const done = await followJob(form.querySelector('#simulate-status'), job, 'simulate',
        (j) => `${fmtNum(j.traces_scanned, 0)} traces decided`, '/admin/sampling/simulations');
      form.querySelector('#simulate-submit').disabled = false;
      if (done.simulation) results.replaceChildren(comparison(done.simulation));
    } catch (err) {
      showFieldError(form, err, [], form.querySelector('#simulate-error'));
    }
  });
}

const rowKey = (r) => `${r.policy}\u0000${r.service}`;

// The two lists side by side: one row per policy and service.
function comparison(sim) {
  const keys = new Map();
  for (const side of ['candidate', 'live']) {
    for (const r of sim[side].rows) {
      const k = keys.get(rowKey(r)) || { policy: r.policy, service: r.service };
      k[side] = r;
      keys.set(rowKey(r), k);
    }
  }
  const rows = [...keys.values()].sort((a, b) => a.policy.localeCompare(b.policy) || a.service.localeCompare(b.service));
  const cells = (r) => r
    ? [h('td', { class: 'num' }, fmtNum(r.traces, 0)), h('td', { class: 'num' }, fmtNum(r.spans, 0)),
      h('td', { class: 'num' }, (r.kept_fraction * 100).toFixed(1) + '%'), h('td', { class: 'num' }, fmtNum(r.sum_sample_rate, 0)),
      h('td', { class: 'num' }, bytes(r.otlp_bytes_per_day))]
    : [h('td', { class: 'num muted', colspan: 5 }, '–')];
  const table = h('table', { class: 'results', id: 'simulate-table' },
    h('thead', {},
      h('tr', {}, h('th', { colspan: 2 }), h('th', { colspan: 5 }, 'Simulated list'), h('th', { colspan: 5 }, 'Live list')),
      h('tr', {}, ['Policy', 'Service', ...['Traces', 'Spans', 'Kept', 'Σ rate', 'OTLP/day'], ...['Traces', 'Spans', 'Kept', 'Σ rate', 'OTLP/day']].map((t) => h('th', {}, t)))),
    h('tbody', {},
      rows.map((r) => h('tr', { class: 'sim-row', 'data-policy': r.policy, 'data-service': r.service },
        h('td', {}, h('code', {}, r.policy)), h('td', {}, r.service), cells(r.candidate), cells(r.live))),
      h('tr', { class: 'sim-total' }, h('td', { colspan: 2 }, h('strong', {}, 'Total')), cells(sim.candidate.total), cells(sim.live.total))));
  const max = Math.max(1, ...rows.flatMap((r) => [r.candidate?.traces || 0, r.live?.traces || 0]));
  const bar = (r, side) => h('div', { class: `sim-bar ${side}`, style: { width: `${((r?.traces || 0) / max) * 100}%` }, title: `${side}: ${r?.traces || 0} traces` });
  const chart = h('div', { class: 'sim-bars', id: 'simulate-chart' },
    rows.flatMap((r) => [h('div', {}, h('code', {}, r.policy), ' ', r.service), h('div', {}, bar(r.candidate, 'candidate'), bar(r.live, 'live'))]));
  return h('div', { class: 'panel' },
    h('h2', {}, `Over ${fmtNum(sim.traces, 0)} traces (${fmtNum(sim.spans, 0)} spans)`),
    h('div', { class: 'results-scroll' }, table),
    h('h3', {}, 'Traces kept, per policy and service', h('span', { class: 'sim-legend' }, h('span', { class: 'candidate' }), 'simulated', h('span', { class: 'live' }), 'live')),
    chart);
}

function bytes(n) {
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}
