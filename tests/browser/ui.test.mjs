// The web UI in a real browser: Debian's chromium, driven by playwright-core,
// against a running selector with stored traces. tests/it/ui.rs starts the
// selector, stores the traces and runs this file with `node --test`; the
// settings come from its environment:
//   TSS_UI_URL            the admin address, http://127.0.0.1:PORT
//   TSS_UI_TOKEN          admin.auth_token of that selector
//   TSS_UI_SERVICE        a service with 4 kept error traces of 3 spans
//   TSS_UI_ORPHAN_TRACE   a kept trace with a span whose parent is not stored
//   TSS_UI_PRODUCE        JSON: a command that sends 3 more traces of the
//                         service without errors (dropped unless a rule keeps them)
//   TSS_UI_SCREENSHOTS    where the screenshots go
//   TSS_TEST_CHROMIUM     the browser (default /usr/bin/chromium)
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { chromium } from 'playwright-core';

function required(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: run these tests through tests/it/ui.rs (cargo test ui_)`);
  return v;
}

const URL_ = required('TSS_UI_URL');
const TOKEN = required('TSS_UI_TOKEN');
const SERVICE = required('TSS_UI_SERVICE');
const ORPHAN = required('TSS_UI_ORPHAN_TRACE');
const PRODUCE = JSON.parse(required('TSS_UI_PRODUCE'));
const SHOTS = required('TSS_UI_SCREENSHOTS');
const BROWSER = process.env.TSS_TEST_CHROMIUM || '/usr/bin/chromium';

let context, page;
const consoleErrors = [];

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  // A fresh, empty profile; no network but localhost's is needed.
  context = await chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), 'tss-ui-')), {
    executablePath: BROWSER,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
    viewport: { width: 1400, height: 900 },
    acceptDownloads: true,
  });
  page = context.pages()[0] || await context.newPage();
  page.on('pageerror', (e) => consoleErrors.push(String(e)));
  page.on('console', (m) => { if (m.type() === 'error' && !/401|400|404/.test(m.text())) consoleErrors.push(m.text()); });
});

after(async () => {
  await context?.close();
});

async function searchByService(service, extra = {}) {
  await page.goto(`${URL_}/#/search`);
  await page.locator('#f-service').selectOption(service);
  for (const [name, value] of Object.entries(extra)) {
    const el = page.locator(`#f-${name}`);
    if ((await el.evaluate((e) => e.tagName)) === 'SELECT') await el.selectOption(value);
    else await el.fill(value);
  }
  await page.locator('#search-submit').click();
  await page.locator('#search-status').filter({ hasText: /trace.* in \d+ ms/ }).waitFor();
}

test('the page asks for the token, keeps it out of the URL, and search by service finds the error traces', async () => {
  await page.goto(URL_);
  const dialog = page.locator('#token-dialog');
  await dialog.waitFor({ state: 'visible' });
  await page.locator('#token-input').fill('wrong-token');
  await page.locator('#token-submit').click();
  await page.locator('#token-message').filter({ hasText: 'refused' }).waitFor();
  await page.locator('#token-input').fill(TOKEN);
  await page.locator('#token-submit').click();
  await dialog.waitFor({ state: 'hidden' });

  await searchByService(SERVICE);
  const rows = page.locator('tr.trace-row');
  assert.equal(await rows.count(), 4, 'the 4 kept error traces of the service');
  for (let i = 0; i < 4; i++) {
    const row = rows.nth(i);
    assert.match(await row.innerText(), new RegExp(`${SERVICE}: POST /checkout`));
    assert.equal(await row.locator('.error-marker').count(), 1, 'each is marked as an error');
    assert.equal((await row.locator('.badge.reason').innerText()).trim(), 'error');
    assert.equal((await row.locator('.span-count').innerText()).trim(), '3');
  }
  assert.equal(await page.locator('#scatter .dot').count(), 4, 'one dot per trace in the scatter');
  assert.ok(!page.url().includes(TOKEN), 'the token is never in the URL');
  assert.equal(await page.evaluate(() => sessionStorage.getItem('tss.admin-token')), TOKEN, 'kept for the session');
  await page.screenshot({ path: join(SHOTS, 'search.png'), fullPage: true });
});

test('a bad search parameter shows the API error next to its field', async () => {
  await page.goto(`${URL_}/#/search?min_duration_ms=5&max_duration_ms=1`);
  const slot = page.locator('[data-error-for="min_duration_ms"]');
  await slot.filter({ hasText: 'must not exceed' }).waitFor();
});

test('the waterfall shows every span nested under its parent, and why the trace was kept', async () => {
  await searchByService(SERVICE);
  await page.locator('tr.trace-row').first().click();
  await page.locator('#waterfall .span-row').first().waitFor();
  const rows = page.locator('#waterfall .span-row');
  assert.equal(await rows.count(), 3);
  assert.equal((await page.locator('#span-total').innerText()).trim(), '3 spans');
  const spans = await rows.evaluateAll((els) => els.map((e) => ({ id: e.dataset.spanId, parent: e.dataset.parentId, depth: Number(e.dataset.depth), error: e.classList.contains('error') })));
  const root = spans[0];
  assert.equal(root.depth, 0);
  assert.equal(root.parent, '');
  for (const child of spans.slice(1)) {
    assert.equal(child.parent, root.id, 'children follow their parent');
    assert.equal(child.depth, 1);
  }
  assert.equal(spans.filter((s) => s.error).length, 2, 'the root and the failing child are marked');
  assert.equal((await page.locator('#kept-reason-code').innerText()).trim(), 'error');
  assert.match(await page.locator('#kept-reason').innerText(), /status ERROR/);
  await rows.first().click();
  const detail = page.locator('#span-detail');
  await detail.locator('#detail-name').filter({ hasText: 'POST /checkout' }).waitFor();
  const text = await detail.innerText();
  for (const part of ['http.route', '/checkout', 'service.name', SERVICE, 'ERROR']) assert.ok(text.includes(part), `${part} in the detail panel`);
  await page.screenshot({ path: join(SHOTS, 'trace.png'), fullPage: true });
});

test('a span whose parent is missing is shown, with its own children under it', async () => {
  await page.goto(`${URL_}/#/trace/${ORPHAN}`);
  await page.locator('#waterfall .span-row').first().waitFor();
  const spans = await page.locator('#waterfall .span-row').evaluateAll((els) => els.map((e) => ({ id: e.dataset.spanId, parent: e.dataset.parentId, depth: Number(e.dataset.depth), orphan: e.classList.contains('orphan'), text: e.innerText })));
  assert.equal(spans.length, 4, 'every stored span is drawn');
  const orphans = spans.filter((s) => s.orphan);
  assert.equal(orphans.length, 1);
  assert.equal(orphans[0].depth, 0, 'an orphan starts a tree of its own');
  assert.match(orphans[0].text, /parent missing/);
  const under = spans.filter((s) => s.parent === orphans[0].id);
  assert.equal(under.length, 1);
  assert.equal(under[0].depth, 1);
  assert.equal(spans.indexOf(under[0]), spans.indexOf(orphans[0]) + 1, 'its child is drawn right under it');
  // That child's name is far wider than the label column: it is cut with an
  // ellipsis inside the column, the full name on hover, clear of the bars.
  const row = page.locator(`#waterfall .span-row[data-span-id="${under[0].id}"]`);
  const fit = await row.evaluate((el) => {
    const name = el.querySelector('.span-name');
    const label = el.querySelector('.wf-label').getBoundingClientRect();
    const track = el.querySelector('.wf-track').getBoundingClientRect();
    return {
      cut: name.scrollWidth > name.clientWidth,
      ellipsis: getComputedStyle(name).textOverflow,
      nameRight: name.getBoundingClientRect().right,
      labelRight: label.right,
      trackLeft: track.left,
      title: el.querySelector('.wf-label').title,
    };
  });
  assert.ok(fit.cut, 'the long name is cut');
  assert.equal(fit.ellipsis, 'ellipsis');
  assert.ok(fit.nameRight <= fit.labelRight + 0.5 && fit.labelRight <= fit.trackLeft + 0.5, JSON.stringify(fit));
  assert.match(fit.title, /a_long_column_name, a_long_column_name, .* FROM orders$/);
});

test('"keep traces like this" validates with the API, creates a rule that is listed and keeps new traces', async () => {
  await searchByService(SERVICE);
  await page.locator('tr.trace-row').first().click();
  await page.locator('#waterfall .span-row').first().click();
  await page.locator('#keep-like-this').click();
  const form = page.locator('#keep-form');
  await form.waitFor();
  assert.equal(await form.locator('input[data-key="service.name"]').isChecked(), true);
  assert.equal(await form.locator('input[data-key="name"]').isChecked(), true);
  assert.equal(await form.locator('input[data-key="http.route"]').isChecked(), false);
  // Longer than rules.max_duration_secs: the API's own error, next to the field.
  await page.locator('#keep-duration').selectOption('86400');
  await page.locator('#keep-submit').click();
  await form.locator('[data-error-for="duration_secs"]').filter({ hasText: /.+/ }).waitFor();
  assert.match(await form.locator('[data-error-for="duration_secs"]').innerText(), /3600/);
  await page.locator('#keep-duration').selectOption('900');
  await page.locator('#keep-submit').click();
  const ruleId = (await page.locator('#keep-rule-id').innerText()).trim();
  assert.match(ruleId, /^[0-9a-f-]{36}$/);

  await page.goto(`${URL_}/#/rules`);
  const row = page.locator(`tr.rule-row[data-rule-id="${ruleId}"]`);
  await row.waitFor();
  assert.match(await row.innerText(), /force_keep/);
  assert.match(await row.locator('.remaining').innerText(), /1[45]m/);

  // Traces without errors: the baseline (0) drops them unless the rule keeps them.
  execFileSync(PRODUCE[0], PRODUCE.slice(1), { stdio: 'inherit' });
  const deadline = Date.now() + 60_000;
  let kept = 0;
  while (Date.now() < deadline) {
    await searchByService(SERVICE, { reason: 'force_rule' });
    kept = await page.locator('tr.trace-row').count();
    if (kept >= 3) break;
    await page.waitForTimeout(1000);
  }
  assert.equal(kept, 3, 'the 3 new traces were kept by the rule');
  const first = page.locator('tr.trace-row').first();
  assert.equal(await first.locator('.error-marker').count(), 0);
  await first.click();
  await page.locator('#kept-rule').filter({ hasText: ruleId }).waitFor();
  await page.screenshot({ path: join(SHOTS, 'kept-by-rule.png'), fullPage: true });

  await page.goto(`${URL_}/#/rules`);
  await row.waitFor();
  await page.screenshot({ path: join(SHOTS, 'rules.png'), fullPage: true });
  await row.locator('.delete-rule').click();
  await row.waitFor({ state: 'detached' });
});

test('"recover traces like this" starts a recovery whose progress bar reaches done, and the recovered traces say so', async () => {
  // Traces without errors and no rule any more: dropped live.
  execFileSync(PRODUCE[0], PRODUCE.slice(1), { stdio: 'inherit' });
  await searchByService(SERVICE);
  await page.locator('tr.trace-row').first().click();
  await page.locator('#waterfall .span-row').first().click();
  await page.locator('#recover-like-this').click();
  const form = page.locator('#recover-form');
  await form.waitFor();
  assert.equal(await form.locator('input[data-key="service.name"]').isChecked(), true);
  // Every attribute of the span is offered as a condition row of its own.
  assert.ok(await form.locator('input[data-key="http.route"]').count() === 1, await form.innerText());
  assert.doesNotMatch(await form.innerText(), /\[object/);
  await page.locator('#recover-from').selectOption('-15m');
  await page.locator('#recover-submit').click();
  const jobId = (await page.locator('#recover-id').innerText()).trim();
  assert.match(jobId, /^rec-[0-9a-f]{32}$/);
  await page.locator('#recover-state').filter({ hasText: /^(done|failed|cancelled)$/ }).waitFor({ timeout: 120_000 });
  assert.equal(await page.locator('#recover-state').innerText(), 'done', await page.locator('#recover-counts').innerText());
  assert.equal(await page.locator('#recover-progress').evaluate((el) => el.value), 1);
  const counts = await page.locator('#recover-counts').innerText();
  const recovered = Number(/(\d+) recovered/.exec(counts)?.[1]);
  assert.ok(recovered >= 3, `the 3 traces just dropped are among those recovered: ${counts}`);
  assert.match(counts, /[1-9]\d* already stored/, 'the kept traces of the service were not stored again');
  await page.screenshot({ path: join(SHOTS, 'recovery.png'), fullPage: true });

  await searchByService(SERVICE, { reason: 'recovered' });
  assert.equal(await page.locator('tr.trace-row').count(), recovered);
  await page.locator('tr.trace-row').first().click();
  await page.locator('#kept-reason-code').filter({ hasText: 'recovered' }).waitFor();
  assert.match(await page.locator('#kept-reason-code').locator('..').innerText(), new RegExp(jobId));
});

test('the sampling page shows the live list and simulates an edited one as a table and bars', async () => {
  await page.goto(`${URL_}/#/sampling`);
  await page.locator('#live-policies').waitFor();
  assert.match(await page.locator('#live-policies').innerText(), /No policies/);
  // A rate out of range: the API's error, next to the list.
  await page.locator('#simulate-policies').fill(JSON.stringify([{ name: 'half', action: 'sample', rate: 2 }]));
  await page.locator('#simulate-submit').click();
  await page.locator('[data-error-for="policies"]').filter({ hasText: /.+/ }).waitFor();
  assert.match(await page.locator('[data-error-for="policies"]').innerText(), /at most 1/);

  const keepAll = [{ name: 'keep-all-ui', action: 'keep', match: { resource: [{ key: 'service.name', op: 'eq', value: SERVICE }] } }];
  await page.locator('#simulate-policies').fill(JSON.stringify(keepAll));
  await page.locator('#simulate-from').selectOption('-15m');
  await page.locator('#simulate-submit').click();
  await page.locator('#simulate-state').filter({ hasText: /^(done|failed|cancelled)$/ }).waitFor({ timeout: 120_000 });
  assert.equal(await page.locator('#simulate-state').innerText(), 'done', await page.locator('#simulate-counts').innerText());
  const row = page.locator(`#simulate-table tr.sim-row[data-policy="keep-all-ui"][data-service="${SERVICE}"]`);
  await row.waitFor();
  const cells = await row.locator('td').allInnerTexts();
  const simulated = Number(cells[2].replace(/,/g, ''));
  // The live list keeps the service's errors only.
  const errors = page.locator(`#simulate-table tr.sim-row[data-policy="error"][data-service="${SERVICE}"]`);
  const liveCells = await errors.locator('td').allInnerTexts();
  const liveErrors = Number(liveCells[liveCells.length - 5].replace(/,/g, ''));
  assert.ok(liveErrors >= 4, JSON.stringify(liveCells));
  assert.ok(simulated > liveErrors, `keeping every trace of the service keeps more than its errors: ${cells} vs ${liveCells}`);
  assert.equal(cells[4], '100.0%');
  assert.ok(await page.locator('#simulate-chart .sim-bar.candidate').count() >= 1);
  assert.doesNotMatch(await page.locator('#simulate-results').innerText(), /\[object/);
  await page.screenshot({ path: join(SHOTS, 'sampling.png'), fullPage: true });
});

test('the SQL console shows rows, downloads them as CSV, and shows a 400 as the API says it', async () => {
  await page.goto(`${URL_}/#/sql`);
  await page.locator('#sql-input').fill(`SELECT trace_id, name, status_code FROM spans WHERE service_name = '${SERVICE}' AND status_code = 'ERROR' ORDER BY trace_id, name`);
  await page.locator('#sql-run').click();
  await page.locator('#sql-status').filter({ hasText: /rows in/ }).waitFor();
  assert.equal(await page.locator('#sql-table tbody tr').count(), 8, 'two error spans in each of the 4 traces');
  const [download] = await Promise.all([page.waitForEvent('download'), page.locator('#sql-csv').click()]);
  const csv = readFileSync(await download.path(), 'utf8').trim().split(/\r\n/);
  assert.equal(csv[0], 'trace_id,name,status_code');
  assert.equal(csv.length, 9);
  await page.screenshot({ path: join(SHOTS, 'sql.png'), fullPage: true });

  await page.locator('#sql-input').fill('SELEC * FROM spans');
  await page.locator('#sql-run').click();
  const error = page.locator('#sql-error');
  await error.waitFor({ state: 'visible' });
  const text = await error.innerText();
  assert.match(text, /^400 /);
  assert.match(text, /SELEC/, 'the engine\'s own message');
  assert.equal(await page.locator('#sql-table').count(), 0);
});

test('the pipeline overview shows counts and, after a refresh, rates', async () => {
  await page.goto(`${URL_}/#/overview`);
  await page.locator('#ov-kept').filter({ hasText: 'error' }).waitFor();
  await page.locator('#ov-ingest').filter({ hasText: /\d\/s spans/ }).waitFor({ timeout: 10_000 });
  assert.match(await page.locator('#ov-kept').innerText(), /error \d+/);
  assert.match(await page.locator('#ov-commits').innerText(), /p99/);
  assert.match(await page.locator('#overview-health').innerText(), /Health: ready/);
  // Each sink besides the table has its card, and its row in the health table.
  await page.locator('#ov-sink-sampled-topic').filter({ hasText: /[1-9]\d* spans/ }).waitFor({ timeout: 10_000 });
  assert.match(await page.locator('#ov-sink-sampled-topic').innerText(), /Sink sampled_topic/);
  assert.match(await page.locator('#overview-health').innerText(), /sink sampled_topic/);
  await page.screenshot({ path: join(SHOTS, 'overview.png'), fullPage: true });
});

test('no script error on any page', () => {
  assert.deepEqual(consoleErrors, []);
});
