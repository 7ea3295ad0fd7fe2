// DOM helpers and formatting shared by every page. Every value from the
// API goes into the page as text (never as HTML).

export const view = () => document.getElementById('view');

// What the current page stops (a refresh timer) when another one opens.
let stopPage = () => {};
export function onLeave(stop) { stopPage = stop; }
export function leavePage() {
  stopPage();
  stopPage = () => {};
}

export function h(tag, attrs, ...children) {
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

export const SVG_NS = 'http://www.w3.org/2000/svg';
export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, String(v));
  }
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

export function fmtMs(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return '–';
  if (ms >= 60000) return (ms / 60000).toFixed(1) + ' min';
  if (ms >= 1000) return (ms / 1000).toFixed(2) + ' s';
  if (ms >= 10) return ms.toFixed(0) + ' ms';
  return ms.toFixed(2) + ' ms';
}

export function fmtTime(unixMs) {
  const d = new Date(unixMs);
  return d.toLocaleString(undefined, { hour12: false }) + '.' + String(d.getMilliseconds()).padStart(3, '0');
}

export function fmtSecs(secs) {
  secs = Math.max(0, Math.round(secs));
  const hh = Math.floor(secs / 3600), mm = Math.floor((secs % 3600) / 60), ss = secs % 60;
  return (hh ? hh + 'h ' : '') + (hh || mm ? mm + 'm ' : '') + ss + 's';
}

export function fmtNum(n, digits = 0) {
  if (n === null || n === undefined || Number.isNaN(n)) return '–';
  return Number(n).toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

// "2026-12-03T10:00:00.123456+00:00" (as the API renders timestamps) to
// Unix microseconds, keeping the digits Date.parse would drop.
export function parseMicros(text) {
  const m = /^(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?(.*)$/.exec(String(text || ''));
  if (!m) return NaN;
  const base = Date.parse(m[1] + (m[3] || 'Z'));
  const frac = Number((m[2] || '').padEnd(6, '0').slice(0, 6));
  return base * 1000 + frac;
}

const PALETTE = ['#4e79a7', '#f28e2b', '#59a14f', '#b07aa1', '#76b7b2', '#edc948', '#ff9da7', '#9c755f', '#86bcb6', '#8cd17d'];
export function colorOf(name) {
  let hash = 0;
  for (const ch of String(name)) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  return PALETTE[hash % PALETTE.length];
}

export const REASONS = {
  error: 'A span ended with status ERROR.',
  latency: 'The trace lasted longer than the latency threshold.',
  force_rule: 'A force rule matched it.',
  baseline: 'Kept by the baseline sample rate.',
  policy: 'A sampling policy kept it.',
  recovered: 'Dropped live, then recovered from the raw topic by a recovery job.',
};

// Puts an API error next to the field it names, or in `fallback`.
export function showFieldError(form, err, placed, fallback) {
  const field = err.field || '';
  const row = placed.find((p) => field === p.path || field.startsWith(p.path + '.'));
  const top = field.split(/[.[]/)[0];
  const slot = row ? row.err : form.querySelector(`[data-error-for="${CSS.escape(field)}"]`) || form.querySelector(`[data-error-for="${CSS.escape(top)}"]`);
  (slot || fallback).textContent = err.message + (slot || !field ? '' : ` (${field})`);
}
