// From one span, traces like it: "Keep traces like this" creates a force
// rule for traces to come; "Recover traces like this" starts a recovery job
// for traces dropped in the past. Both build their condition from the same
// rows, and each row knows where it lands in the request, so that an API
// error such as `match.span[1].value` is shown next to that row.
import { h, fmtSecs, showFieldError } from './dom.js';
import { api } from './api.js';
import { followJob } from './jobs.js';

// Condition rows prefilled from the span: its service and name checked,
// its attributes offered.
function conditionPicker(x) {
  const conds = [];
  const cond = (list, key, value, checked) => {
    const box = h('input', { type: 'checkbox', checked, 'data-key': key });
    const err = h('span', { class: 'field-error' });
    conds.push({ list, key, value, box, err });
    return h('div', { class: 'cond' }, h('label', {}, box, ' ', h('code', {}, key), ' = ', h('code', {}, String(value))), err);
  };
  const rows = [
    cond('resource', 'service.name', x.service, true),
    cond('span', 'name', x.name, true),
    ...Object.entries(x.attrs).sort(([a], [b]) => a.localeCompare(b)).map(([k, v]) => cond('span', k, v, false)),
  ];
  // The `match` of the checked rows, and where each row's errors go.
  const build = () => {
    const match = { resource: [], span: [] };
    const placed = [];
    for (const c of conds) {
      if (!c.box.checked) continue;
      placed.push({ path: `match.${c.list}[${match[c.list].length}]`, err: c.err });
      match[c.list].push({ key: c.key, op: 'eq', value: String(c.value) });
    }
    for (const list of ['resource', 'span']) if (!match[list].length) delete match[list];
    return { match, placed };
  };
  return { rows, build };
}

const errorSlot = (name) => h('span', { class: 'field-error', 'data-error-for': name });

const clearErrors = (form) => {
  for (const el of form.querySelectorAll('.field-error, .error')) el.textContent = '';
};

const DURATIONS = [[300, '5 minutes'], [900, '15 minutes'], [3600, '1 hour'], [21600, '6 hours'], [86400, '24 hours']];

export function keepForm(panel, x) {
  const picker = conditionPicker(x);
  const form = h('form', { class: 'keep-form panel', id: 'keep-form' },
    h('h2', {}, 'Keep traces like this'),
    h('p', { class: 'muted' }, 'Creates a force rule: traces with a span like this one are kept, whatever the other policies say.'),
    picker.rows,
    h('div', { class: 'form-grid' },
      h('label', {}, 'For', h('select', { name: 'duration_secs', id: 'keep-duration' }, DURATIONS.map(([v, t]) => h('option', { value: v, selected: v === 900 }, t))), errorSlot('duration_secs')),
      h('label', {}, 'Priority', h('input', { type: 'number', name: 'priority', value: 100 }), errorSlot('priority')),
      h('label', {}, 'Description', h('input', { name: 'description', value: `Keep traces like ${x.service}: ${x.name}` }), errorSlot('description'))),
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary', id: 'keep-submit' }, 'Create rule'), h('span', { class: 'error', id: 'keep-error' })),
    h('p', { id: 'keep-result' }));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    clearErrors(form);
    const { match, placed } = picker.build();
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

const LOOKBACKS = [['-15m', '15 minutes'], ['-1h', 'hour'], ['-6h', '6 hours'], ['-24h', '24 hours']];

export function recoverForm(panel, x) {
  const picker = conditionPicker(x);
  const form = h('form', { class: 'keep-form panel', id: 'recover-form' },
    h('h2', {}, 'Recover traces like this'),
    h('p', { class: 'muted' }, 'Starts a recovery job: the raw topic is read again over the range, and traces with a span like this one that were dropped are stored, once each.'),
    picker.rows,
    h('div', { class: 'form-grid' },
      h('label', {}, 'From the last', h('select', { name: 'from', id: 'recover-from' }, LOOKBACKS.map(([v, t]) => h('option', { value: v, selected: v === '-1h' }, t))), errorSlot('from'))),
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary', id: 'recover-submit' }, 'Start recovery'), h('span', { class: 'error', id: 'recover-error' })),
    h('div', { id: 'recover-status' }));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    clearErrors(form);
    const { match, placed } = picker.build();
    try {
      const job = await api('POST', '/admin/recoveries', { from: form.from.value, match });
      form.querySelector('#recover-submit').disabled = true;
      followJob(form.querySelector('#recover-status'), job, 'recover',
        (j) => `${j.traces_matched} traces matched, ${j.traces_recovered} recovered, ${j.traces_already_stored} already stored`,
        '/admin/recoveries');
    } catch (err) {
      showFieldError(form, err, placed, form.querySelector('#recover-error'));
    }
  });
  panel.replaceChildren(form);
}
