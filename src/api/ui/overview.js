// The pipeline overview: rates, buffers, lag, commits, sinks and health.
import { view, h, fmtMs, fmtNum, onLeave } from './dom.js';
import { api } from './api.js';

export async function renderOverview() {
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
  onLeave(() => clearInterval(timer));
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
