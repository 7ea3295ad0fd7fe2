// Cross-site requests from a real browser: a page served from another origin
// (a port of its own on 127.0.0.1) tries every way a page can send a request
// to the selector's admin API without a CORS preflight, and one that needs a
// preflight. tests/it/faults.rs starts a selector without a token (its admin
// API on loopback, where a local browser reaches it), runs this file with
// `node --test`, then checks that no rule was created. Settings:
//   TSS_XS_URL         the admin address, http://127.0.0.1:PORT
//   TSS_XS_RULE        the JSON body of a rule the page tries to create
//   TSS_TEST_CHROMIUM  the browser (default /usr/bin/chromium)
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { mkdtempSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { chromium } from 'playwright-core';

function required(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: run this file through tests/it/faults.rs`);
  return v;
}

const TARGET = required('TSS_XS_URL');
const RULE = required('TSS_XS_RULE');
const BROWSER = process.env.TSS_TEST_CHROMIUM || '/usr/bin/chromium';

// The attacker's page: a text/plain fetch, a text/plain form and a
// urlencoded form posted into hidden frames, and a JSON fetch (preflighted).
const PAGE = `<!doctype html><html><body>
<iframe name="f1"></iframe><iframe name="f2"></iframe>
<form id="plain" method="post" enctype="text/plain" target="f1" action="${TARGET}/admin/force-rules">
  <input name='${RULE.slice(0, -1)},"x":"' value='"}'></form>
<form id="urlenc" method="post" target="f2" action="${TARGET}/admin/force-rules">
  <input name="rule" value='${RULE}'></form>
<script>
window.results = {};
async function attempt(name, init) {
  try {
    const r = await fetch('${TARGET}/admin/force-rules', init);
    window.results[name] = 'status ' + r.status + ' type ' + r.type;
  } catch (e) {
    window.results[name] = 'error ' + e.name;
  }
}
window.run = async () => {
  await attempt('no-cors text/plain', { method: 'POST', mode: 'no-cors', headers: { 'Content-Type': 'text/plain' }, body: ${JSON.stringify(RULE)} });
  await attempt('cors json', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: ${JSON.stringify(RULE)} });
  document.getElementById('plain').submit();
  document.getElementById('urlenc').submit();
  return window.results;
};
</script></body></html>`;

let server, origin, context;

before(async () => {
  server = createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(PAGE);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  origin = `http://127.0.0.1:${server.address().port}`;
  context = await chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), 'tss-xs-')), {
    executablePath: BROWSER,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  await context?.close();
  server?.close();
});

test('a page of another origin cannot create a force rule', async () => {
  assert.notEqual(new URL(origin).origin, new URL(TARGET).origin);
  const page = context.pages()[0] || await context.newPage();
  const answers = [];
  page.on('response', (r) => { if (r.url().startsWith(`${TARGET}/admin/`)) answers.push([r.request().method(), r.status()]); });
  await page.goto(origin);
  const results = await page.evaluate(() => window.run());
  // The no-cors request goes out and its answer is opaque to the page; the
  // JSON request stops at its preflight.
  assert.equal(results['no-cors text/plain'], 'status 0 type opaque');
  assert.match(results['cors json'], /^error TypeError/);
  // Both forms are answered, and refused.
  for (let i = 0; i < 50 && answers.filter(([m]) => m === 'POST').length < 3; i++) {
    await page.waitForTimeout(100);
  }
  const posts = answers.filter(([m]) => m === 'POST').map(([, s]) => s);
  assert.ok(posts.length >= 3, `the text/plain fetch and both forms reached the selector: ${JSON.stringify(answers)}`);
  for (const status of posts) {
    assert.ok(status === 415 || status === 403, `refused: ${JSON.stringify(answers)}`);
  }
});
