// The SQL console: read-only SQL over `spans`, results as a table or CSV.
import { view, h } from './dom.js';
import { api } from './api.js';

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

export async function renderSql() {
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
