// Force rules: the active ones, and a form for a new one.
import { view, h, fmtSecs, onLeave, showFieldError } from './dom.js';
import { api } from './api.js';

export async function renderRules() {
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
  onLeave(() => clearInterval(timer));
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
