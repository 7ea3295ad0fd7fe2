// One trace: the span waterfall, why it was kept, a span's details, and
// "Keep traces like this" and "Recover traces like this" (like.js).
import { view, h, fmtMs, fmtTime, fmtSecs, fmtNum, parseMicros, colorOf, REASONS } from './dom.js';
import { api } from './api.js';
import { keepForm, recoverForm } from './like.js';

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

export async function renderTrace(id) {
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
    h('div', { class: 'wf-label', title: x.service + ': ' + x.name, style: { paddingLeft: 6 + x.depth * 16 + 'px' } },
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
      root.reason === 'policy' && root.rule ? `The sampling policy \u201c${root.rule}\u201d kept it.`
        : root.reason === 'recovered' && root.rule ? `Dropped live, then recovered from the raw topic by the recovery job ${root.rule}.`
          : REASONS[root.reason] || `Kept as \u201c${root.reason}\u201d.`,
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
    h('div', { class: 'actions' },
      h('button', { type: 'button', class: 'primary', id: 'keep-like-this', onclick: () => keepForm(panel, x) }, 'Keep traces like this'),
      h('button', { type: 'button', id: 'recover-like-this', onclick: () => recoverForm(panel, x) }, 'Recover traces like this')),
    h('h3', {}, 'Attributes'), kvTable(x.attrs),
    h('h3', {}, 'Resource'), kvTable(x.resource),
    h('h3', {}, 'Events'),
    x.events.length
      ? h('div', {}, x.events.map((ev) => h('div', {}, h('strong', {}, ev.name), ' at +', fmtMs((parseMicros(ev.time) - traceStart) / 1000), kvTable(ev.attributes))))
      : h('p', { class: 'muted' }, 'none'));
  panel.dataset.traceId = traceId;
}
