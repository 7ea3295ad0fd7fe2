// A job over the raw topic (a recovery or a simulation): its progress bar
// and counts, polled every second until it ends.
import { h, fmtSecs, fmtNum } from './dom.js';
import { api } from './api.js';

const FINAL = ['done', 'failed', 'cancelled'];

// Follows `job` in `slot`; `prefix` names the elements (`recover`,
// `simulate`), `counts` words a report's counts. Resolves with the last
// report once the job has ended.
export async function followJob(slot, job, prefix, counts, path) {
  const bar = h('progress', { id: `${prefix}-progress`, class: 'job-progress', max: 1, value: 0 });
  const state = h('span', { class: 'badge', id: `${prefix}-state` });
  const text = h('p', { id: `${prefix}-counts`, class: 'muted' });
  const warnings = h('ul', { class: 'warnings' });
  slot.replaceChildren(h('p', {}, 'Job ', h('code', { id: `${prefix}-id` }, job.id), ' ', state), bar, text, warnings);
  for (;;) {
    bar.value = job.progress || 0;
    state.textContent = job.state;
    text.textContent = `${fmtNum(job.messages_read, 0)} of ${fmtNum(job.messages_total, 0)} messages read; ${counts(job)}`
      + (job.eta_secs != null ? `; about ${fmtSecs(job.eta_secs)} left` : '')
      + (job.error ? `. ${job.error}` : '');
    warnings.replaceChildren(...(job.warnings || []).map((w) => h('li', {}, w)));
    if (FINAL.includes(job.state)) return job;
    await new Promise((r) => setTimeout(r, 1000));
    try {
      job = await api('GET', `${path}/${encodeURIComponent(job.id)}`);
    } catch (err) {
      text.textContent = 'Lost track of the job: ' + err.message;
      return job;
    }
  }
}
