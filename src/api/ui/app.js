// The selector's web UI: trace search, the trace waterfall, force rules,
// sampling (the live policies and simulations), a SQL console and the
// pipeline overview, all over the /admin/* JSON API.
// Plain JavaScript ES modules with no dependencies and no build step; the
// binary serves each file as it is (src/api/ui.rs).

import { view, h, leavePage } from './dom.js';
import { updateTokenButton, forgetToken } from './api.js';
import { renderSearch } from './search.js';
import { renderTrace } from './trace.js';
import { renderRules } from './rules.js';
import { renderSql } from './sql.js';
import { renderOverview } from './overview.js';
import { renderSampling } from './sampling.js';

function route() {
  leavePage();
  const hash = location.hash.replace(/^#/, '') || '/search';
  const [path, query] = hash.split('?');
  const params = new URLSearchParams(query || '');
  const parts = path.split('/').filter(Boolean);
  const page = parts[0] || 'search';
  for (const a of document.querySelectorAll('[data-nav]')) {
    a.classList.toggle('active', a.dataset.nav === page || (page === 'trace' && a.dataset.nav === 'search'));
  }
  const pages = { search: renderSearch, trace: () => renderTrace(parts[1] || ''), rules: renderRules, sampling: renderSampling, sql: renderSql, overview: renderOverview };
  (pages[page] || renderSearch)(params).catch(showFailure);
}

function showFailure(e) {
  view().replaceChildren(h('div', { class: 'panel' }, h('p', { class: 'error', id: 'page-error' }, e.status ? `${e.status}: ${e.message}` : String(e))));
}

document.getElementById('forget-token').addEventListener('click', () => {
  forgetToken();
  route();
});
window.addEventListener('hashchange', route);
updateTokenButton();
route();
