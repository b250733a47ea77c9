// The usage dashboard: signs in (email and password at the issuer, a pasted
// token, or the issuer's own sign-in page), keeps the token in memory only,
// and shows the owner's keys and usage, or every key's usage to finance,
// from the management API of this origin. Today's figures are polled.
/* global Chart */

const POLL_MS = 3000;
const $ = (id) => document.getElementById(id);
const body = document.body;
const passwordLoginURL = body.dataset.passwordLoginUrl || '';
const issuerLoginURL = body.dataset.issuerLoginUrl || '';

const nf = new Intl.NumberFormat();
const dayFmt = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeZone: 'UTC' });
const shortDayFmt = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric', timeZone: 'UTC' });
const timeFmt = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short', timeZone: 'UTC' });
const num = (n) => nf.format(n);
const when = (iso) => (iso ? timeFmt.format(new Date(iso)) + ' UTC' : 'never');
const day = (ymd) => dayFmt.format(new Date(ymd + 'T00:00:00Z'));

const palette = ['#2563eb', '#f59e0b', '#10b981', '#ef4444', '#8b5cf6', '#06b6d4', '#ec4899', '#84cc16', '#64748b', '#d97706', '#0ea5e9'];

// state is everything the page knows; the token lives nowhere else.
// session counts sign-ins and sign-outs, so that an answer to an earlier one
// is dropped; gone holds the keys being deleted or found deleted, for which
// nothing more is asked; pending holds the requests on their way.
const state = {
  token: '', me: null, expiryTimer: 0, pollTimer: 0, view: 'owner',
  keys: [], tiers: [], selected: '', busy: false, charts: {},
  session: 0, gone: new Set(), pending: new Set(),
};

// ---- small DOM helpers (text only: no HTML is ever built from data) ----
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : String(c));
  return e;
}
function fill(tbody, rows) { tbody.replaceChildren(...rows); }
function td(v, cls) { return el('td', cls ? { class: cls } : {}, v); }
function status(msg) { $('status').textContent = msg; }
const clockFmt = new Intl.DateTimeFormat(undefined, { timeStyle: 'medium', timeZone: 'UTC' });
function updated() { $('updated').textContent = 'Live: figures of ' + clockFmt.format(new Date()) + ' UTC, refreshed every ' + POLL_MS / 1000 + ' s'; }
function showError(msg) { const e = $('error'); e.textContent = msg; e.hidden = !msg; }

// ---- dates: the API's days are UTC days ----
function utcDay(d) { return d.toISOString().slice(0, 10); }
function todayUTC() { return utcDay(new Date()); }
function addDays(ymd, n) { const d = new Date(ymd + 'T00:00:00Z'); d.setUTCDate(d.getUTCDate() + n); return utcDay(d); }
function daysBetween(from, to) {
  const out = [];
  for (let d = from; d <= to && out.length < 400; d = addDays(d, 1)) out.push(d);
  return out;
}

// ---- the management API ----
class APIError extends Error {
  constructor(status, detail) { super(detail); this.status = status; }
}
// Stale is a request not sent, or an answer dropped: it belongs to a session
// that has ended, or is about a key that is gone. Nothing to show.
class Stale extends Error {}

// keyOf is the key a management path is about ('/api-keys/ID…'), or ''.
function keyOf(path) { return /^\/api-keys\/([^/?]+)/.exec(path)?.[1] || ''; }

// api calls the management API for the session given (the current one by
// default). It sends nothing about a key that is gone but the key's DELETE
// (deleting): the gateway would answer 404, which the browser logs.
async function api(path, { method = 'GET', json, raw = false, session = state.session, deleting = false } = {}) {
  const key = keyOf(path);
  if (session !== state.session) throw new Stale('signed out');
  if (key && state.gone.has(key) && !deleting) throw new Stale('the key is gone');
  const headers = { Authorization: 'Bearer ' + state.token };
  if (json !== undefined) headers['Content-Type'] = 'application/json';
  let res;
  const sent = fetch(path, { method, headers, cache: 'no-store', body: json === undefined ? undefined : JSON.stringify(json) });
  state.pending.add(sent);
  try {
    res = await sent;
  } catch (err) {
    throw new APIError(0, 'the gateway could not be reached (' + err.message + ')');
  } finally {
    state.pending.delete(sent);
  }
  if (session !== state.session) throw new Stale('signed out');
  if (res.status === 401) {
    signOut('Your session has ended: sign in again.');
    throw new APIError(401, 'signed out');
  }
  if (!res.ok) {
    let detail = res.statusText;
    try { const p = await res.json(); detail = p.detail || p.title || detail; } catch { /* not JSON */ }
    if (res.status === 503) detail += ' (retry in ' + (res.headers.get('Retry-After') || 'a few') + ' s)';
    throw new APIError(res.status, detail);
  }
  if (raw) return res;
  return res.status === 204 ? null : res.json();
}

// answered resolves once every request on its way has its answer.
async function answered() {
  while (state.pending.size) await Promise.allSettled([...state.pending]);
}

function report(err) {
  if (err instanceof Stale || (err instanceof APIError && err.status === 401)) return;
  showError(err.message);
}

// ---- sign-in ----
function jwtExpiry(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const claims = JSON.parse(atob(part + '='.repeat((4 - (part.length % 4)) % 4)));
    return typeof claims.exp === 'number' ? claims.exp * 1000 : 0;
  } catch { return 0; }
}

async function signIn(token) {
  token = token.trim();
  const exp = jwtExpiry(token);
  if (exp && exp <= Date.now()) { showError('That token has expired.'); return; }
  state.session++;
  state.token = token;
  try {
    state.me = await api('/me');
  } catch (err) {
    state.token = '';
    showError(err.status === 401 ? 'The gateway did not accept that token.' : err.message);
    return;
  }
  showError('');
  clearTimeout(state.expiryTimer);
  if (exp) state.expiryTimer = setTimeout(() => signOut('Your session expired: sign in again.'), Math.min(exp - Date.now(), 2 ** 31 - 1));
  $('who-name').textContent = 'Signed in as ' + (state.me.email || state.me.subject) + (state.me.role ? ' (' + state.me.role + ')' : '');
  $('who-expiry').textContent = exp ? '· session ends ' + when(new Date(exp).toISOString()) : '';
  $('password').value = '';
  $('token').value = '';
  $('signin').hidden = true;
  $('who').hidden = false;
  $('nav').hidden = false;
  $('tab-finance').hidden = !state.me.finance;
  try {
    state.tiers = (await api('/tiers')).data;
  } catch (err) { report(err); }
  fillTierSelect();
  await show(state.me.finance ? 'finance' : 'owner');
  clearInterval(state.pollTimer);
  state.pollTimer = setInterval(poll, POLL_MS);
}

function signOut(message) {
  state.session++;
  state.gone.clear();
  state.token = '';
  state.me = null;
  state.keys = [];
  state.selected = '';
  clearTimeout(state.expiryTimer);
  clearInterval(state.pollTimer);
  for (const c of Object.values(state.charts)) c.destroy();
  state.charts = {};
  for (const id of ['owner', 'finance', 'who', 'nav', 'detail', 'secret']) $(id).hidden = true;
  $('secret-value').value = '';
  $('signin').hidden = false;
  status('');
  $('updated').textContent = '';
  showError(message || '');
}

$('password-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  showError('');
  let res;
  try {
    res = await fetch(passwordLoginURL, {
      method: 'POST', headers: { 'Content-Type': 'application/json' }, cache: 'no-store',
      body: JSON.stringify({ email: $('email').value, password: $('password').value }),
    });
  } catch (err) {
    showError('The auth service could not be reached (' + err.message + '); paste a token instead.');
    return;
  }
  if (!res.ok) {
    showError(res.status === 401 ? 'Wrong email or password.' : 'Sign-in failed (' + res.status + ').');
    return;
  }
  const out = await res.json();
  await signIn(out.accessToken || '');
});

$('token-form').addEventListener('submit', (ev) => { ev.preventDefault(); signIn($('token').value); });
$('sign-out').addEventListener('click', () => signOut('Signed out.'));

// ---- views ----
async function show(view) {
  state.view = view;
  $('owner').hidden = view !== 'owner';
  $('finance').hidden = view !== 'finance';
  $('tab-owner').setAttribute('aria-pressed', String(view === 'owner'));
  $('tab-finance').setAttribute('aria-pressed', String(view === 'finance'));
  try {
    if (view === 'owner') await loadKeys(); else await loadFinance();
  } catch (err) { report(err); }
}
$('tab-owner').addEventListener('click', () => show('owner'));
$('tab-finance').addEventListener('click', () => show('finance'));

// poll refreshes what shows today while the page is visible.
async function poll() {
  if (!state.token || document.hidden || state.busy) return;
  state.busy = true;
  try {
    if (state.view === 'owner') {
      await loadKeys(true);
    } else if ($('fin-to').value >= todayUTC()) {
      await loadFinance();
    }
  } catch (err) { report(err); } finally { state.busy = false; }
}

// ---- charts ----
Chart.defaults.animation = false;
Chart.defaults.maintainAspectRatio = false;
Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;

function chart(id, config) {
  let c = state.charts[id];
  if (!c) {
    c = state.charts[id] = new Chart($(id), config);
    return c;
  }
  c.data = config.data;
  c.update();
  return c;
}

function stackedBars(labels, datasets, yTitle) {
  return {
    type: 'bar',
    data: { labels, datasets },
    options: {
      scales: {
        x: { stacked: true },
        y: { stacked: true, beginAtZero: true, title: { display: true, text: yTitle }, ticks: { callback: (v) => num(v), precision: 0 } },
      },
      plugins: { tooltip: { callbacks: { label: (c) => c.dataset.label + ': ' + num(c.parsed.y) } } },
    },
  };
}

// ---- owner view ----
function fillTierSelect() {
  const sel = $('create-tier');
  sel.replaceChildren(...state.tiers.map((t) => el('option', { value: t.name },
    t.name + ' — ' + num(t.monthlyCredits) + ' credits a month, ' + num(t.rateLimitPerMinute) + ' requests a minute')));
}

async function loadKeys(live = false, session = state.session) {
  const keys = [];
  let cursor = '';
  for (let page = 0; page < 10; page++) {
    const out = await api('/api-keys?limit=100' + (cursor ? '&cursor=' + encodeURIComponent(cursor) : ''), { session });
    keys.push(...out.data);
    if (!out.nextCursor) break;
    cursor = out.nextCursor;
  }
  // A list answered while a key was being deleted may still have it.
  state.keys = keys.filter((k) => !state.gone.has(k.id));
  renderKeys();
  selectListed();
  if (state.selected) await loadDetail(live, session);
}

// selectListed keeps the selection on a listed key: the first if none is.
function selectListed() {
  if (state.selected && !state.keys.some((k) => k.id === state.selected)) state.selected = '';
  if (!state.selected && state.keys.length) state.selected = state.keys[0].id;
  $('detail').hidden = !state.selected;
}

// forget drops a key the gateway no longer has (deleted in another tab, or
// by an admin), so that the polls stop asking for it.
function forget(k) {
  state.gone.add(k.id);
  state.keys = state.keys.filter((x) => x.id !== k.id);
  selectListed();
  renderKeys();
  status('The key “' + k.name + '” no longer exists.');
}

function renderKeys() {
  $('keys-empty').hidden = state.keys.length > 0;
  fill($('keys-table').tBodies[0], state.keys.map((k) => {
    const sel = k.id === state.selected;
    return el('tr', { 'data-key-id': k.id, class: sel ? 'selected' : '' },
      el('td', {}, el('button', { type: 'button', class: 'link', 'aria-pressed': String(sel), title: 'Show its usage', onclick: () => select(k.id) }, k.name)),
      el('td', {}, el('code', {}, k.keyPrefix + '…')), td(k.tier),
      td(k.active ? 'yes' : 'no'), td(num(k.creditsRemaining), 'num'), td(k.lastUsedAt ? when(k.lastUsedAt) : 'never'));
  }));
}

async function select(id) {
  state.selected = id;
  renderKeys();
  try { await loadDetail(); } catch (err) { report(err); }
  $('detail-title').focus();
}

function selectedKey() { return state.keys.find((k) => k.id === state.selected); }

function ensureRange() {
  if (!$('range-to').value) $('range-to').value = todayUTC();
  if (!$('range-from').value) $('range-from').value = addDays($('range-to').value, -6);
}

async function loadDetail(live = false, session = state.session) {
  const k = selectedKey();
  if (!k || state.gone.has(k.id)) return;
  ensureRange();
  const from = $('range-from').value, to = $('range-to').value;
  if (live && to < todayUTC()) return; // nothing of today shows
  let summary, usage;
  try {
    [summary, usage] = await Promise.all([
      api('/api-keys/' + k.id + '/usage/summary', { session }),
      api('/api-keys/' + k.id + '/usage?from=' + from + '&to=' + to, { session }),
    ]);
  } catch (err) {
    if (err instanceof APIError && err.status === 404) { forget(k); return; }
    throw err;
  }
  if (k.id !== state.selected || state.gone.has(k.id)) return;
  $('detail').hidden = false;
  $('detail-title').textContent = k.name;
  $('detail-title').setAttribute('tabindex', '-1');
  $('detail-meta').textContent = k.keyPrefix + '… · ' + k.tier + ' · ' + (k.active ? 'active' : 'inactive') +
    ' · created ' + when(k.createdAt) + (k.expiresAt ? ' · expires ' + when(k.expiresAt) : '');
  $('toggle-active').textContent = k.active ? 'Deactivate' : 'Activate';
  if (!live) $('rename-name').value = k.name;
  renderGauge(summary);
  renderUsage(usage.data.filter((r) => r.endpoint !== 'credits.grant'), from, to);
  renderTier(k.tier);
  updated();
}

function renderGauge(s) {
  const left = s.creditsRemaining, used = s.creditsUsed;
  // The month's allowance: the monthly grant and what credit grants added.
  const granted = s.grantedCredits || 0, allowed = s.monthlyCredits + granted;
  chart('gauge-canvas', {
    type: 'doughnut',
    data: {
      labels: ['Used', 'Left'],
      datasets: [{ data: [used, left], backgroundColor: [used > allowed * 0.9 ? '#ef4444' : '#2563eb', '#e5e7eb'], borderWidth: 0 }],
    },
    options: { rotation: -90, circumference: 180, cutout: '70%', plugins: { legend: { display: false } } },
  });
  const share = allowed > 0 ? used / allowed : 0;
  $('gauge-pct').textContent = new Intl.NumberFormat(undefined, { style: 'percent', maximumFractionDigits: share > 0 && share < 0.1 ? 1 : 0 }).format(share);
  $('gauge-canvas').setAttribute('aria-label', num(used) + ' of ' + num(allowed) + ' credits used this period');
  $('gauge-text').replaceChildren(
    el('strong', { id: 'gauge-used' }, num(used)), ' of ' + num(allowed) + ' credits used' +
      (granted > 0 ? ' (' + num(granted) + ' granted)' : '') + ' · ',
    el('strong', { id: 'gauge-left' }, num(left)), ' left · ' + num(s.requests) + ' requests this period · resets ' + when(s.period.end));
}

function renderUsage(rows, from, to) {
  const days = daysBetween(from, to);
  const labels = days.map((d) => shortDayFmt.format(new Date(d + 'T00:00:00Z')));
  const endpoints = [...new Set(rows.map((r) => r.endpoint))].sort();
  const at = new Map(rows.map((r) => [r.date + ' ' + r.endpoint, r]));
  chart('credits-canvas', stackedBars(labels, endpoints.map((ep, i) => ({
    label: ep, backgroundColor: palette[i % palette.length],
    data: days.map((d) => at.get(d + ' ' + ep)?.credits || 0),
  })), 'credits'));
  const perDay = (f) => days.map((d) => rows.filter((r) => r.date === d).reduce((s, r) => s + r[f], 0));
  chart('requests-canvas', {
    type: 'bar',
    data: { labels, datasets: [
      { label: 'requests', data: perDay('requests'), backgroundColor: '#2563eb' },
      { label: 'errors', data: perDay('errors'), backgroundColor: '#ef4444' },
    ] },
    options: { scales: { y: { beginAtZero: true, ticks: { callback: (v) => num(v), precision: 0 } } } },
  });
  fill($('usage-table').tBodies[0], rows.map((r) => el('tr', {},
    td(day(r.date)), td(r.endpoint), td(num(r.requests), 'num'), td(num(r.credits), 'num'), td(num(r.errors), 'num'))));
}

function price(e) {
  if (!e.credits) return 'free';
  const unit = { request: 'request', url: 'URL', audio_second: 'seconds of audio', character: 'characters' }[e.unit] || e.unit;
  return num(e.credits) + (e.credits === 1 ? ' credit' : ' credits') + ' per ' + (e.per === 1 ? unit : num(e.per) + ' ' + unit) + (e.per > 1 ? ', rounded up' : '');
}

function renderTier(name) {
  const t = state.tiers.find((x) => x.name === name);
  if (!t) { $('tier-limits').textContent = name; fill($('tier-table').tBodies[0], []); return; }
  $('tier-limits').textContent = t.name + ': ' + num(t.rateLimitPerMinute) + ' requests a minute, ' + num(t.monthlyCredits) + ' credits a month.';
  fill($('tier-table').tBodies[0], t.endpoints.map((e) => el('tr', {},
    el('td', {}, el('code', {}, e.method + ' ' + e.path)), td(price(e)))));
}

function showSecret(title, secret) {
  $('secret-title').textContent = title;
  $('secret-value').value = secret;
  $('secret-copied').textContent = '';
  $('secret').hidden = false;
  $('secret-value').focus();
  $('secret-value').select();
}
$('secret-copy').addEventListener('click', async () => {
  const v = $('secret-value');
  try {
    await navigator.clipboard.writeText(v.value);
    $('secret-copied').textContent = 'Copied to the clipboard.';
  } catch {
    v.select();
    $('secret-copied').textContent = 'Copying is not allowed here: the key is selected, press Ctrl+C (⌘C).';
  }
});
$('secret-close').addEventListener('click', () => { $('secret-value').value = ''; $('secret').hidden = true; });

async function mutate(what, fn) {
  showError('');
  try {
    const out = await fn();
    status(what);
    return out;
  } catch (err) { report(err); return undefined; }
}

$('create-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const k = await mutate('Key created.', () => api('/api-keys', { method: 'POST', json: { name: $('create-name').value, tier: $('create-tier').value } }));
  if (!k) return;
  $('create-name').value = '';
  state.selected = k.id;
  showSecret('Your new key “' + k.name + '”', k.key);
  await loadKeys().catch(report);
});

$('rename-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const k = selectedKey();
  if (k && await mutate('Key renamed.', () => api('/api-keys/' + k.id, { method: 'PATCH', json: { name: $('rename-name').value } }))) await loadKeys().catch(report);
});

$('toggle-active').addEventListener('click', async () => {
  const k = selectedKey();
  if (k && await mutate(k.active ? 'Key deactivated.' : 'Key activated.', () => api('/api-keys/' + k.id, { method: 'PATCH', json: { active: !k.active } }))) await loadKeys().catch(report);
});

$('regen-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const k = selectedKey();
  if (!k) return;
  const grace = Number($('regen-grace').value);
  const out = await mutate('Key regenerated.', () => api('/api-keys/' + k.id + '/regenerate', { method: 'POST', json: { gracePeriodSeconds: grace } }));
  if (!out) return;
  const until = grace ? 'the old key keeps working until ' + when(new Date(Date.now() + grace * 1000).toISOString()) : 'the old key has stopped working';
  showSecret('The new secret of “' + out.name + '” (' + until + ')', out.key);
  await loadKeys().catch(report);
});

$('delete-key').addEventListener('click', () => {
  const k = selectedKey();
  if (!k) return;
  $('confirm-text').textContent = '“' + k.name + '” (' + k.keyPrefix + '…) stops working at once, and this cannot be undone.';
  $('confirm-delete').showModal();
});
$('confirm-no').addEventListener('click', () => $('confirm-delete').close());
$('confirm-yes').addEventListener('click', async () => {
  $('confirm-delete').close();
  const k = selectedKey();
  if (!k || state.gone.has(k.id)) return;
  // From here on the page asks nothing more about the key, and it sends the
  // DELETE once every request on its way is answered: a poll's request that
  // reached the gateway after the DELETE would be answered 404. The DELETE
  // is of this session: none is sent if the user signs out meanwhile.
  const session = state.session;
  state.gone.add(k.id);
  status('Deleting the key…');
  await answered();
  if (await mutate('Key deleted.', () => api('/api-keys/' + k.id, { method: 'DELETE', deleting: true, session })) === undefined) {
    state.gone.delete(k.id); // it is still there
    status('');
    return;
  }
  state.selected = '';
  await loadKeys().catch(report);
});

$('range-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  if ($('range-from').value > $('range-to').value) { showError('“From” must not be after “To”.'); return; }
  showError('');
  loadDetail().catch(report);
});

// ---- finance view ----
function ensureFinanceRange() {
  if (!$('fin-to').value) $('fin-to').value = todayUTC();
  if (!$('fin-from').value) $('fin-from').value = addDays($('fin-to').value, -6);
}

async function loadFinance(session = state.session) {
  ensureFinanceRange();
  const from = $('fin-from').value, to = $('fin-to').value;
  const q = 'from=' + from + '&to=' + to;
  const [daily, top] = await Promise.all([api('/billing/daily?' + q, { session }), api('/billing/keys?limit=10&' + q, { session })]);
  const names = new Map(top.data.map((k) => [k.keyId, k.name + ' (' + k.keyPrefix + '…)']));
  const label = (id) => names.get(id) || id.slice(0, 8) + '…';
  // Every key's daily totals (the rows are per endpoint).
  const totals = new Map();
  for (const r of daily.data) {
    const key = r.date + ' ' + r.keyId;
    const t = totals.get(key) || { date: r.date, keyId: r.keyId, ownerId: r.ownerId, requests: 0, credits: 0, errors: 0 };
    t.requests += r.requests; t.credits += r.credits; t.errors += r.errors;
    totals.set(key, t);
  }
  const rows = [...totals.values()].sort((a, b) => (a.date === b.date ? b.credits - a.credits : a.date < b.date ? 1 : -1));
  const sum = (f) => rows.reduce((s, r) => s + r[f], 0);
  const keyCount = new Set(rows.map((r) => r.keyId)).size;
  $('fin-totals').replaceChildren(
    el('strong', { id: 'fin-credits' }, num(sum('credits'))), ' credits · ', el('strong', {}, num(sum('requests'))), ' requests · ',
    el('strong', {}, num(sum('errors'))), ' errors · ' + num(keyCount) + (keyCount === 1 ? ' key · ' : ' keys · ') + day(from) + ' – ' + day(to) + ' (UTC days)');

  const days = daysBetween(from, to);
  const shown = top.data.slice(0, 6).map((k) => k.keyId);
  const series = shown.map((id, i) => ({
    label: label(id), backgroundColor: palette[i % palette.length],
    data: days.map((d) => totals.get(d + ' ' + id)?.credits || 0),
  }));
  const rest = days.map((d) => rows.filter((r) => r.date === d && !shown.includes(r.keyId)).reduce((s, r) => s + r.credits, 0));
  if (rest.some((v) => v > 0)) series.push({ label: 'other keys', backgroundColor: '#94a3b8', data: rest });
  chart('fin-canvas', stackedBars(days.map((d) => shortDayFmt.format(new Date(d + 'T00:00:00Z'))), series, 'credits'));

  fill($('top-table').tBodies[0], top.data.map((k) => el('tr', {},
    el('td', {}, k.name + ' ', el('code', {}, k.keyPrefix + '…'), k.deleted ? ' (deleted)' : ''), td(k.ownerId), td(k.tier),
    td(num(k.requests), 'num'), td(num(k.credits), 'num'), td(num(k.errors), 'num'))));
  fill($('fin-table').tBodies[0], rows.map((r) => el('tr', {},
    td(day(r.date)), td(label(r.keyId)), td(r.ownerId), td(num(r.requests), 'num'), td(num(r.credits), 'num'), td(num(r.errors), 'num'))));
  updated();
}

$('finance-range').addEventListener('submit', (ev) => {
  ev.preventDefault();
  if ($('fin-from').value > $('fin-to').value) { showError('“From” must not be after “To”.'); return; }
  showError('');
  loadFinance().catch(report);
});

$('csv-download').addEventListener('click', async () => {
  ensureFinanceRange();
  try {
    const res = await api('/billing/daily?format=csv&from=' + $('fin-from').value + '&to=' + $('fin-to').value, { raw: true });
    const blob = await res.blob();
    const name = /filename="([^"]+)"/.exec(res.headers.get('Content-Disposition') || '')?.[1] || 'billing-daily.csv';
    const url = URL.createObjectURL(blob);
    const a = el('a', { href: url, download: name });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
    status('Downloaded ' + name + '.');
  } catch (err) { report(err); }
});

// ---- start ----
if (passwordLoginURL) $('password-form').hidden = false;
else $('token-box').open = true;
// The issuer's sign-in page sends the token back in the fragment, with the
// state this tab sent it (so that no other site can sign the page in as
// someone else); the fragment is removed from the address and the history
// at once. Only the state is kept in sessionStorage, never a token.
const STATE_KEY = 'dashboard-login-state';
const returned = new URLSearchParams(location.hash.slice(1));
if (returned.has('access_token')) {
  history.replaceState(null, '', location.pathname);
  const want = sessionStorage.getItem(STATE_KEY);
  if (issuerLoginURL && want && returned.get('state') === want) {
    sessionStorage.removeItem(STATE_KEY);
    signIn(returned.get('access_token'));
  } else {
    showError('That sign-in did not start on this page; sign in again.');
  }
}
if (issuerLoginURL) {
  let st = sessionStorage.getItem(STATE_KEY);
  if (!st) {
    st = Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, '0')).join('');
    sessionStorage.setItem(STATE_KEY, st);
  }
  const u = new URL(issuerLoginURL);
  u.searchParams.set('redirect_uri', location.origin + location.pathname);
  u.searchParams.set('state', st);
  $('issuer-login-link').href = u.toString();
  $('issuer-login').hidden = false;
}
