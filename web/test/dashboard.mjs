// The dashboard in a real browser (Debian's chromium, driven by
// playwright-core) against a running stack: sign in as the dev user, create
// a key, call the API with it over HTTP, see the gauge and the charts change
// without a reload, regenerate and delete it; sign in as finance and
// download the CSV. No error may reach the browser console, and another
// owner's key must never appear. Screenshots of each view go to
// SCREENSHOT_DIR.
//
// gateway/e2e's TestDashboardInABrowser runs it against a stack of its own;
// `cd web && node test/dashboard.mjs` runs it against `make up`.
//
// env: GATEWAY_URL (http://127.0.0.1:3030), AUTH_URL (http://127.0.0.1:3001),
//      SCREENSHOT_DIR (.data/screenshots), CHROMIUM (/usr/bin/chromium)
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const gateway = process.env.GATEWAY_URL || 'http://127.0.0.1:3030';
const auth = process.env.AUTH_URL || 'http://127.0.0.1:3001';
const shots = process.env.SCREENSHOT_DIR || '.data/screenshots';
const started = Date.now();
const step = (what) => console.log(`[${((Date.now() - started) / 1000).toFixed(1)} s] ${what}`);

async function http(method, path, { token, key, json } = {}) {
  const headers = {};
  if (token) headers.Authorization = 'Bearer ' + token;
  if (key) headers['X-API-Key'] = key;
  if (json !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(path.startsWith('http') ? path : gateway + path, { method, headers, body: json === undefined ? undefined : JSON.stringify(json) });
  const text = await res.text();
  return { status: res.status, body: text ? (res.headers.get('content-type')?.includes('json') ? JSON.parse(text) : text) : null };
}

async function login(email) {
  const r = await http('POST', auth + '/api/v1/auth/login', { json: { email, password: 'password' } });
  assert.equal(r.status, 200, 'login ' + email);
  return r.body.accessToken;
}

// until polls fn (which returns a truthy value when done) up to ms.
async function until(what, fn, ms = 60000) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try { last = await fn(); if (last) return last; } catch (err) { last = err.message; }
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms (last: ${last})`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

await mkdir(shots, { recursive: true });
const profile = await mkdtemp(join(tmpdir(), 'dashboard-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
  viewport: { width: 1360, height: 1000 },
  acceptDownloads: true,
  locale: 'en-US',
});
const problems = [];
let failed = false;
try {
  // The page may reach its own origin and the issuer's login endpoint it
  // is configured with, nothing else.
  const allowed = new Set([new URL(gateway).origin]);
  const watch = (page) => {
    page.on('console', (m) => { if (m.type() === 'error' || m.type() === 'warning') problems.push(`console ${m.type()}: ${m.text()}`); });
    page.on('pageerror', (err) => problems.push('page error: ' + err.message));
    page.on('requestfailed', (r) => problems.push('request failed: ' + r.url() + ' ' + r.failure()?.errorText));
    page.on('request', (r) => {
      const origin = new URL(r.url()).origin;
      if (!allowed.has(origin) && !r.url().startsWith('blob:')) problems.push('request elsewhere: ' + r.url());
    });
    return page;
  };
  const page = watch(context.pages()[0] || await context.newPage());

  // Another owner's key, which must never show.
  const other = await http('POST', '/api-keys', { token: await login('other@example.com'), json: { name: 'someone else’s key', tier: 'pro' } });
  assert.equal(other.status, 201);
  step('another owner made a key ' + other.body.keyPrefix);

  // Sign in with the keyboard only.
  const res = await page.goto(gateway + '/dashboard');
  assert.equal(res.status(), 200);
  assert.match(res.headers()['content-security-policy'], /default-src 'none'; script-src 'self'/);
  allowed.add(new URL(await page.getAttribute('body', 'data-password-login-url')).origin);
  await page.screenshot({ path: join(shots, 'dashboard-signin.png') });
  await page.focus('#email');
  await page.keyboard.type('user@example.com');
  await page.keyboard.press('Tab');
  await page.keyboard.type('password');
  await page.keyboard.press('Enter');
  await page.locator('#owner').waitFor({ state: 'visible' });
  assert.match(await page.locator('#who-name').innerText(), /user@example\.com/);
  assert.equal(await page.locator('#tab-finance').isVisible(), false, 'a user sees no finance tab');
  const stored = await page.evaluate(() => JSON.stringify([{ ...localStorage }, { ...sessionStorage }, document.cookie]));
  assert.ok(!/eyJ/.test(stored), 'a token is stored outside the page’s memory: ' + stored);
  step('signed in as user@example.com');

  // Create a key: the secret is shown once.
  const name = 'browser test ' + Date.now().toString(36);
  await page.fill('#create-name', name);
  await page.selectOption('#create-tier', 'pro');
  await page.click('#create-form button[type=submit]');
  await page.locator('#secret').waitFor({ state: 'visible' });
  const secret = await page.inputValue('#secret-value');
  assert.match(secret, /^sk_live_[0-9A-Za-z]{38}$/);
  const row = page.locator('#keys-table tbody tr', { hasText: name });
  await row.waitFor();
  const keyId = await row.getAttribute('data-key-id');
  assert.match(await page.locator('#secret').innerText(), /only time the full key is shown/);
  await page.click('#secret-copy');
  await until('copy feedback', async () => (await page.locator('#secret-copied').innerText()).length > 0);
  step('created key ' + secret.slice(0, 12) + '… (' + keyId + ')');
  await page.screenshot({ path: join(shots, 'dashboard-created.png'), fullPage: true });
  await page.click('#secret-close');

  const tableText = await page.locator('#keys-table').innerText();
  assert.ok(!tableText.includes(other.body.keyPrefix) && !tableText.includes('someone else'), 'another owner’s key is listed');
  assert.match(await page.locator('#gauge-text').innerText(), /0 of 5,000 credits used/);
  assert.match(await page.locator('#tier-limits').innerText(), /pro: 100 requests a minute, 5,000 credits a month/);

  // Calls over HTTP with the key; the page must show them without a reload.
  const chartSum = (id, label) => page.evaluate(([id, label]) => {
    const c = Chart.getChart(id);
    return c.data.datasets.filter((d) => d.label === label).reduce((s, d) => s + d.data[d.data.length - 1], 0);
  }, [id, label]);
  const before = await chartSum('requests-canvas', 'requests');
  assert.equal(before, 0);
  for (let i = 0; i < 3; i++) {
    const r = await http('POST', '/v1/search', { key: secret, json: { query: 'quantum computing ' + i } });
    assert.equal(r.status, 200, 'search with the new key');
  }
  const tts = await http('POST', '/v1/tts/synthesize', { key: secret, json: { text: 'x'.repeat(2500), voice: 'en-US-1' } });
  assert.equal(tts.status, 200, 'tts with the new key');
  const calledAt = Date.now();
  await until('the gauge shows 6 credits used', async () => (await page.locator('#gauge-used').innerText()) === '6');
  await until('the credits chart shows today', async () => (await chartSum('credits-canvas', '/v1/search')) === 3 && (await chartSum('credits-canvas', '/v1/tts/synthesize')) === 3);
  await until('the requests chart shows today', async () => (await chartSum('requests-canvas', 'requests')) === 4);
  step(`gauge and charts showed the 4 calls (6 credits) ${Date.now() - calledAt} ms after the last one, without a reload`);
  assert.match(await page.locator('#gauge-text').innerText(), /6 of 5,000 credits used · 4,994 left/);
  await page.screenshot({ path: join(shots, 'dashboard-owner.png'), fullPage: true });

  // Rename, deactivate (the key is refused), activate again.
  await page.fill('#rename-name', name + ', renamed');
  await page.click('#rename-form button[type=submit]');
  await until('the new name in the list', async () => (await row.innerText()).includes(name + ', renamed'));
  await page.click('#toggle-active');
  await until('the key shows inactive', async () => /\bno\b/.test(await row.innerText()));
  assert.equal((await http('GET', '/v1/key', { key: secret })).status, 403, 'a deactivated key is served');
  await page.click('#toggle-active');
  await until('the key shows active', async () => /\byes\b/.test(await row.innerText()));
  assert.equal((await http('GET', '/v1/key', { key: secret })).status, 200, 'an activated key is refused');
  step('renamed, deactivated (403) and activated (200) the key');

  // Every control has a label (or an accessible name), and at a phone's
  // width nothing runs off the side of the page.
  const unnamed = await page.evaluate(() => [...document.querySelectorAll('input, select, textarea, button')]
    .filter((e) => !(e.labels?.length || e.getAttribute('aria-label') || (e.tagName === 'BUTTON' && e.textContent.trim())))
    .map((e) => e.outerHTML.slice(0, 80)));
  assert.deepEqual(unnamed, [], 'controls without a label');
  await page.setViewportSize({ width: 390, height: 844 });
  await until('the page fits a phone', async () => page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth) || 'wider');
  await page.screenshot({ path: join(shots, 'dashboard-phone.png'), fullPage: true });
  await page.setViewportSize({ width: 1360, height: 1000 });

  // Regenerate with a grace period: both secrets work; regenerate again
  // without one: only the newest works.
  const regenerate = async (grace, old) => {
    await page.selectOption('#regen-grace', grace);
    await page.click('#regen-form button[type=submit]');
    const v = await until('the new secret', async () => {
      const v = await page.inputValue('#secret-value');
      return v && v !== old ? v : '';
    });
    await page.click('#secret-close');
    return v;
  };
  const graced = await regenerate('3600', secret);
  assert.match(await page.locator('#status').innerText(), /Key regenerated/);
  assert.equal((await http('GET', '/v1/key', { key: secret })).status, 200, 'the old secret is refused within its grace period');
  assert.equal((await http('GET', '/v1/key', { key: graced })).status, 200, 'the new secret does not work');
  const renewed = await regenerate('0', graced);
  assert.match(renewed, /^sk_live_/);
  for (const old of [secret, graced]) assert.equal((await http('GET', '/v1/key', { key: old })).status, 401, 'an old secret still works');
  assert.equal((await http('GET', '/v1/key', { key: renewed })).status, 200, 'the new secret does not work');
  step('regenerated with 1 h of grace (both served), then without (only the newest served)');

  // Delete, with a confirmation, while a poll of the key is under way: the
  // poll's request for the key's summary is held in the browser until the
  // DELETE is answered (or 2 s have passed, when the page rightly waits for
  // it). Every request for the key must be answered before the DELETE is
  // sent, and none may follow it: the gateway answers 404 to those, which
  // the browser logs.
  await page.click('#delete-key');
  await page.locator('#confirm-delete').waitFor({ state: 'visible' });
  assert.ok((await page.locator('#confirm-text').innerText()).includes(name), 'the confirmation names the key');
  await page.screenshot({ path: join(shots, 'dashboard-delete.png') });
  const keyPath = '/api-keys/' + keyId;
  const forKey = (r) => { const p = new URL(r.url()).pathname; return p === keyPath || p.startsWith(keyPath + '/'); };
  const isDelete = (r) => forKey(r) && r.method() === 'DELETE';
  const order = [];
  const onRequest = (r) => { if (forKey(r)) order.push('sent ' + r.method() + ' ' + new URL(r.url()).pathname); };
  const onResponse = (r) => { if (forKey(r.request())) order.push(r.status() + ' ' + r.request().method() + ' ' + new URL(r.url()).pathname); };
  page.on('request', onRequest);
  page.on('response', onResponse);
  const deleteAnswered = page.waitForResponse((r) => isDelete(r.request()), { timeout: 60000 });
  const summary = (u) => u.pathname === keyPath + '/usage/summary';
  await page.route(summary, async (route) => {
    await Promise.race([deleteAnswered.catch(() => {}), new Promise((r) => setTimeout(r, 2000))]);
    await route.continue();
  });
  await page.waitForRequest((r) => summary(new URL(r.url())), { timeout: 30000 });
  await page.click('#confirm-yes');
  await deleteAnswered;
  await until('the key leaves the list', async () => (await page.locator(`#keys-table tr[data-key-id="${keyId}"]`).count()) === 0);
  await page.unroute(summary);
  page.off('request', onRequest);
  page.off('response', onResponse);
  // Once the DELETE is sent, the only thing about the key is its answer: no
  // request for the key still on its way, none sent after it.
  const sentDelete = order.indexOf('sent DELETE ' + keyPath);
  assert.ok(sentDelete >= 0, 'no DELETE seen: ' + order.join(', '));
  assert.deepEqual(order.slice(sentDelete + 1), ['204 DELETE ' + keyPath], 'requests for the key around its DELETE: ' + order.join(', '));
  assert.equal((await http('GET', '/v1/key', { key: renewed })).status, 401, 'a deleted key still works');
  step('deleted the key while a poll of it was under way: ' + order.join(', ').replaceAll(keyPath, '…'));

  await page.click('#sign-out');
  await page.locator('#signin').waitFor({ state: 'visible' });

  // Finance: every key, the top keys, the CSV.
  await page.fill('#email', 'finance@example.com');
  await page.fill('#password', 'password');
  await page.click('#password-form button[type=submit]');
  await page.locator('#finance').waitFor({ state: 'visible' });
  const top = page.locator('#top-table tbody tr', { hasText: renewed.slice(0, 12) });
  await until('finance sees the key among the top keys', async () => (await top.count()) === 1);
  assert.match(await top.innerText(), /user-1/);
  assert.match(await top.innerText(), /\b6\b/);
  assert.ok((await page.locator('#fin-table').innerText()).includes(name), 'the daily table names the key');
  await page.screenshot({ path: join(shots, 'dashboard-finance.png'), fullPage: true });
  const yesterday = new Date(Date.now() - 86400000).toISOString().slice(0, 10);
  const today = new Date().toISOString().slice(0, 10);
  await page.fill('#fin-from', yesterday);
  await page.fill('#fin-to', yesterday);
  await page.click('#finance-range button[type=submit]');
  const shown = new Intl.DateTimeFormat('en-US', { dateStyle: 'medium', timeZone: 'UTC' }).format(new Date(yesterday + 'T00:00:00Z'));
  await until('an earlier range without the key', async () => (await top.count()) === 0 && (await page.locator('#fin-totals').innerText()).includes(shown + ' – ' + shown));
  await page.fill('#fin-to', today);
  await page.click('#finance-range button[type=submit]');
  await until('the range back to today', async () => (await top.count()) === 1);
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('#csv-download')]);
  assert.match(download.suggestedFilename(), /^billing-daily-\d{4}-\d\d-\d\d-\d{4}-\d\d-\d\d\.csv$/);
  const csv = await readFile(await download.path(), 'utf8');
  const lines = csv.trim().split('\n');
  assert.equal(lines[0], 'date,key_id,owner_id,endpoint,requests,credits,units,errors,granted');
  const ours = lines.filter((l) => l.includes(keyId));
  assert.equal(ours.length, 2, 'the CSV has the key’s two endpoints: ' + csv);
  assert.equal(ours.reduce((s, l) => s + Number(l.split(',')[5]), 0), 6, 'the CSV’s credits');
  step(`finance downloaded ${download.suggestedFilename()} (${lines.length - 1} rows)`);

  await page.click('#sign-out');

  // A token handed back by the issuer's sign-in page (#access_token=…),
  // accepted only with the state this tab sent there; then a pasted one.
  // On a clock the test controls, the page signs out when the token expires.
  const later = watch(await context.newPage());
  await later.clock.install();
  const token = await login('user@example.com');
  await later.goto(gateway + '/dashboard');
  const issuerLink = new URL(await later.getAttribute('#issuer-login-link', 'href'));
  assert.equal(issuerLink.searchParams.get('redirect_uri'), gateway + '/dashboard');
  const sent = issuerLink.searchParams.get('state');
  assert.match(sent, /^[0-9a-f]{32}$/);
  const comeBack = async (state) => {
    await later.goto('about:blank');
    await later.goto(gateway + '/dashboard#access_token=' + encodeURIComponent(token) + '&state=' + state);
    assert.ok(!later.url().includes('access_token'), 'the token stays in the address: ' + later.url());
  };
  await comeBack('0'.repeat(32));
  await until('a foreign state refused', async () => (await later.locator('#error').innerText()).includes('did not start on this page'));
  assert.equal(await later.locator('#owner').isVisible(), false, 'signed in with a state the page never sent');
  await comeBack(sent);
  await later.locator('#owner').waitFor({ state: 'visible' });
  await later.click('#sign-out');
  await later.locator('#signin').waitFor({ state: 'visible' });
  await later.click('#token-box summary');
  await later.fill('#token', token);
  await later.click('#token-form button[type=submit]');
  await later.locator('#owner').waitFor({ state: 'visible' });
  assert.match(await later.locator('#who-expiry').innerText(), /session ends/);
  await later.clock.fastForward('59:00');
  assert.equal(await later.locator('#owner').isVisible(), true, 'signed out before the token expired');
  await later.clock.fastForward('01:05');
  await later.locator('#signin').waitFor({ state: 'visible' });
  assert.match(await later.locator('#error').innerText(), /session expired/);
  step('a returned token taken with its state only, a pasted one too; signed out when it expired');
  await later.close();

  // The browser enforces the policy: an injected inline script does not run.
  const strict = await context.newPage();
  await strict.goto(gateway + '/dashboard');
  const blocked = await strict.evaluate(() => new Promise((resolve) => {
    document.addEventListener('securitypolicyviolation', (e) => resolve(e.violatedDirective + ' blocked; ran: ' + String(window.injected === 1)));
    const s = document.createElement('script');
    s.textContent = 'window.injected = 1';
    document.body.append(s);
  }));
  assert.equal(blocked, 'script-src-elem blocked; ran: false');
  await strict.close();
  step('an injected inline script was refused by the CSP');

  assert.deepEqual(problems, [], 'the browser reported problems');
  step('no console errors or warnings, no failed requests, none to another origin');
} catch (err) {
  failed = true;
  console.error(err);
  if (problems.length) console.error('browser problems:\n' + problems.join('\n'));
  try { await context.pages()[0]?.screenshot({ path: join(shots, 'dashboard-failure.png'), fullPage: true }); } catch { /* none */ }
} finally {
  await context.close();
  await rm(profile, { recursive: true, force: true });
}
console.log(failed ? 'dashboard browser test: FAIL' : `dashboard browser test: ok in ${((Date.now() - started) / 1000).toFixed(1)} s`);
process.exit(failed ? 1 : 0);
