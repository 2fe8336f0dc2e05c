// Headless Debian Chromium, driven by playwright-core, for tests/interop/60-oidc.sh.
//
// usage: node browser.mjs idp|proxy   with the environment
//   IDP_ISSUER      https://localhost:PORT of idp.mjs
//   IDP_LOG         file holding idp.mjs's stdout (its "event ..." lines are counted)
//   IDP_SECRET_FILE the client secret of "sallyport" (for the driver's own token requests)
//   IDP_AT_TTL      the IdP's access token lifetime in seconds
//   OUT_DIR         where the idp mode writes id_token.jwt
//   SP_A, SP_B      (proxy mode) the two sallyport instances, https://localhost:PORT;
//                   SP_B is configured with session_idle = "3s"
//   CHROMIUM        the browser binary (default /usr/bin/chromium)
//
// Prints one line per check, "ok NAME" or "FAIL NAME: WHY", the odd "note TEXT", and
// "done" at the very end; the shell turns those into pass/fail. Every wait is bounded.
//
// idp:   the IdP and the browser alone (no sallyport): the authorization code flow through
//        the login form and consent to a page the IdP answers itself, the token request, a
//        refresh with rotation, two logins at once, and RP-initiated logout. Writes the
//        ID token for sallyport's Bearer check.
// proxy: the sallyport checks (login through sallyport, cookies, header stripping,
//        userinfo, hostile rd, two tabs, refresh, idle expiry, logout, callback replay).
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createHash, randomBytes } from 'node:crypto';
import { chromium } from 'playwright-core';

const mode = process.argv[2];
const env = (name, fallback) => {
  const v = process.env[name];
  if (v === undefined || v === '') {
    if (fallback === undefined) throw new Error(`${name} is not set`);
    return fallback;
  }
  return v;
};
const IDP = env('IDP_ISSUER');
const IDP_LOG = env('IDP_LOG');
const SECRET = readFileSync(env('IDP_SECRET_FILE'), 'utf8').replace(/\r?\n$/, '');
const AT_TTL = Number(env('IDP_AT_TTL', '2'));
const OUT = env('OUT_DIR', '.');
const A = mode === 'proxy' ? env('SP_A') : '';
const B = mode === 'proxy' ? env('SP_B') : '';
const CAPTURE = `${IDP}/interop/callback`;
const SESSION_RE = /^__Host-sallyport_session(_\d+)?$/;
const LOGIN_RE = /^__Host-sallyport_login_[0-9a-f]{16}$/;

const sleep = (ms) => new Promise((r) => { setTimeout(r, ms); });
const oneLine = (s) => String(s).split('\n')[0].slice(0, 300);

// The whole driver gets 150 s; a hung browser must not hang the suite.
setTimeout(() => {
  console.log('FAIL browser driver finishes within 150 s');
  process.exit(2);
}, 150_000).unref();

async function check(name, fn) {
  try {
    const why = await fn();
    if (why === undefined || why === true) console.log(`ok ${name}`);
    else console.log(`FAIL ${name}: ${oneLine(why)}`);
  } catch (e) {
    console.log(`FAIL ${name}: ${oneLine(e?.message ?? e)}`);
  }
}

// "event grant.success refresh_token" lines in the IdP's log.
function idpEvents(what) {
  let text = '';
  try { text = readFileSync(IDP_LOG, 'utf8'); } catch { /* none yet */ }
  return text.split('\n').filter((l) => l === `event ${what}` || l.startsWith(`event ${what} `)).length;
}

const hostOf = (u) => { try { return new URL(u).hostname; } catch { return ''; } };
// A request to anything but loopback, apart from the web font the IdP's stock pages
// @import (which the resolver rules make fail at once).
const foreignRequest = (log) => log.find((u) => {
  const h = hostOf(u);
  return h !== '' && h !== 'localhost' && h !== '127.0.0.1' && h !== 'fonts.googleapis.com';
});
const json = (s) => { try { return JSON.parse(s); } catch { return undefined; } };

const browser = await chromium.launch({
  executablePath: env('CHROMIUM', '/usr/bin/chromium'),
  headless: true,
  chromiumSandbox: false,
  // Nothing but loopback resolves: a redirect to evil.example (or the fonts the IdP's
  // pages @import) fails at once and never leaves the machine.
  args: ['--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1',
    '--disable-dev-shm-usage', '--no-first-run'],
});

// A fresh context (its own cookie jar) that records every request URL, redirects included.
async function newContext() {
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  context.setDefaultTimeout(10_000);
  context.setDefaultNavigationTimeout(15_000);
  const log = [];
  context.on('request', (r) => log.push(r.url()));
  return { context, log };
}

// A page that remembers the last non-redirect document response of its main frame.
async function newPage(context) {
  const page = await context.newPage();
  page.lastDoc = null;
  page.on('response', (r) => {
    const req = r.request();
    if (req.isNavigationRequest() && req.frame() === page.mainFrame()
        && (r.status() < 300 || r.status() >= 400)) page.lastDoc = r;
  });
  return page;
}

async function docText(page) {
  if (!page.lastDoc) return '';
  try { return await page.lastDoc.text(); } catch { return ''; }
}

// Runs ACTION (a click, a form submit) and waits, bounded, for the main frame's next
// navigation to commit and load.
async function navigating(page, action) {
  const nav = page.waitForEvent('framenavigated', {
    predicate: (f) => f === page.mainFrame(), timeout: 15_000,
  });
  await action();
  await nav;
  await page.waitForLoadState('load');
}

async function goto(page, url) {
  await page.goto(url);
  await page.waitForLoadState('load');
}

// The IdP's dev interaction shown, if any: "login", "consent" or null.
async function idpPrompt(page) {
  if (!page.url().startsWith(`${IDP}/interaction/`)) return null;
  const input = page.locator('input[name=prompt]');
  if (await input.count() === 0) return null;
  return input.first().getAttribute('value');
}

// Drives the IdP's dev interactions (login form, consent) as USER until the page leaves
// them; at most a few steps. Returns the prompts it answered, e.g. ["login", "consent"].
async function throughIdp(page, user) {
  const answered = [];
  for (let i = 0; i < 5; i += 1) {
    const prompt = await idpPrompt(page);
    if (!prompt) return answered;
    if (prompt === 'login') {
      await page.fill('input[name=login]', user);
      await page.fill('input[name=password]', 'any password works');
    }
    answered.push(prompt);
    await navigating(page, () => page.click('button[type=submit]'));
  }
  throw new Error(`still at the IdP after ${answered.join(', ')} (${page.url()})`);
}

async function sessionCookies(context, base) {
  return (await context.cookies(base)).filter((c) => SESSION_RE.test(c.name));
}
async function loginCookies(context, base) {
  return (await context.cookies(base)).filter((c) => LOGIN_RE.test(c.name));
}

// fetch() from inside the page (same origin, so the session cookie goes along).
async function pageFetch(page, path, headers = {}) {
  return page.evaluate(async ([p, h]) => {
    const r = await fetch(p, { headers: h, redirect: 'manual' });
    return { status: r.status, text: await r.text() };
  }, [path, headers]);
}
const seenUser = (text) => json(text)?.headers?.['x-forwarded-user'];
const sameList = (a, b) => JSON.stringify(a) === JSON.stringify(b);

// ---------------------------------------------------------------------------------------
// idp mode: the IdP and the browser alone.

function pkce() {
  const verifier = randomBytes(32).toString('base64url');
  return { verifier, challenge: createHash('sha256').update(verifier).digest('base64url') };
}

function authUrl(discovery, { state, nonce, challenge, scope }) {
  const u = new URL(discovery.authorization_endpoint);
  u.search = new URLSearchParams({
    response_type: 'code',
    client_id: 'sallyport',
    redirect_uri: CAPTURE,
    scope: scope ?? 'openid email profile offline_access',
    state,
    nonce,
    code_challenge: challenge,
    code_challenge_method: 'S256',
  }).toString();
  return u.href;
}

async function tokenRequest(context, discovery, form) {
  const basic = Buffer.from(`sallyport:${SECRET}`).toString('base64');
  const r = await context.request.post(discovery.token_endpoint, {
    headers: { authorization: `Basic ${basic}` },
    form,
    failOnStatusCode: false,
  });
  return { status: r.status(), body: json(await r.text()) ?? {} };
}

function jwtPayload(jwt) {
  return json(Buffer.from(String(jwt).split('.')[1] ?? '', 'base64url').toString('utf8')) ?? {};
}

async function idpMode() {
  const { context, log } = await newContext();
  const page = await newPage(context);
  let discovery = {};
  let tokens = {};

  await check('IdP alone: discovery names the endpoints the proxy needs', async () => {
    const r = await context.request.get(`${IDP}/.well-known/openid-configuration`);
    discovery = await r.json();
    const missing = ['issuer', 'authorization_endpoint', 'token_endpoint', 'jwks_uri', 'end_session_endpoint']
      .filter((k) => !discovery[k]);
    if (discovery.issuer !== IDP) return `issuer ${discovery.issuer}`;
    return missing.length ? `missing ${missing.join(', ')}` : undefined;
  });

  await check('IdP alone: Chromium logs in as bob through the login form and consent, and gets a code', async () => {
    const p = pkce();
    const state = randomBytes(8).toString('hex');
    await goto(page, authUrl(discovery, { state, nonce: 'n-1', challenge: p.challenge }));
    if (await idpPrompt(page) !== 'login') return `no login form at ${page.url()}`;
    const answered = await throughIdp(page, 'bob');
    const u = new URL(page.url());
    if (`${u.origin}${u.pathname}` !== CAPTURE) return `ended at ${page.url()}`;
    if (u.searchParams.get('state') !== state) return `state ${u.searchParams.get('state')}`;
    if (!u.searchParams.get('code')) return `no code in ${page.url()}`;
    if (!sameList(answered, ['login', 'consent'])) return `prompts ${answered.join(',')}`;
    tokens = await tokenRequest(context, discovery, {
      grant_type: 'authorization_code', code: u.searchParams.get('code'),
      redirect_uri: CAPTURE, code_verifier: p.verifier,
    });
    if (tokens.status !== 200) return `token endpoint ${tokens.status} ${JSON.stringify(tokens.body)}`;
    return undefined;
  });

  await check('IdP alone: the code buys an ID token (bob, email, aud sallyport), a refresh token and a short access token', async () => {
    const t = tokens.body;
    const c = jwtPayload(t.id_token);
    if (c.sub !== 'bob' || c.email !== 'bob@example.com' || c.aud !== 'sallyport' || c.iss !== IDP) {
      return `id_token claims ${JSON.stringify(c)}`;
    }
    if (!t.refresh_token) return `no refresh_token (scope ${t.scope})`;
    if (t.expires_in > AT_TTL) return `expires_in ${t.expires_in}`;
    writeFileSync(join(OUT, 'id_token.jwt'), `${t.id_token}\n`);
    return undefined;
  });

  await check('IdP alone: a refresh rotates the refresh token; reusing the old one is refused', async () => {
    const before = idpEvents('grant.success refresh_token');
    const r1 = await tokenRequest(context, discovery, { grant_type: 'refresh_token', refresh_token: tokens.body.refresh_token });
    if (r1.status !== 200 || !r1.body.refresh_token) return `refresh ${r1.status} ${JSON.stringify(r1.body)}`;
    if (r1.body.refresh_token === tokens.body.refresh_token) return 'refresh token not rotated';
    const r2 = await tokenRequest(context, discovery, { grant_type: 'refresh_token', refresh_token: tokens.body.refresh_token });
    if (r2.status !== 400) return `reuse answered ${r2.status}`;
    await sleep(200);
    const counted = idpEvents('grant.success refresh_token') - before;
    return counted === 1 ? undefined : `the IdP log counts ${counted} refresh grants, want 1`;
  });

  await check('IdP alone: two logins in flight in two tabs both finish with their own state', async () => {
    const { context: c2 } = await newContext();
    try {
      const [t1, t2] = [await newPage(c2), await newPage(c2)];
      const [p1, p2] = [pkce(), pkce()];
      await goto(t1, authUrl(discovery, { state: 'tab-one', nonce: 'n-2', challenge: p1.challenge }));
      await goto(t2, authUrl(discovery, { state: 'tab-two', nonce: 'n-3', challenge: p2.challenge }));
      if (await idpPrompt(t1) !== 'login' || await idpPrompt(t2) !== 'login') return 'no login forms';
      await throughIdp(t1, 'carol');
      await throughIdp(t2, 'carol');
      const s1 = new URL(t1.url()).searchParams.get('state');
      const s2 = new URL(t2.url()).searchParams.get('state');
      return s1 === 'tab-one' && s2 === 'tab-two' ? undefined : `ended at ${t1.url()} and ${t2.url()}`;
    } finally {
      await c2.close();
    }
  });

  await check('IdP alone: RP-initiated logout asks, then ends the IdP session', async () => {
    const u = new URL(discovery.end_session_endpoint);
    u.search = new URLSearchParams({
      id_token_hint: tokens.body.id_token, client_id: 'sallyport', post_logout_redirect_uri: CAPTURE,
    }).toString();
    await goto(page, u.href);
    const yes = page.locator('button[name=logout][value=yes]');
    if (await yes.count() !== 1) return `no confirmation at ${page.url()}`;
    await navigating(page, () => yes.click());
    if (!page.url().startsWith(CAPTURE)) return `ended at ${page.url()}`;
    if (idpEvents('end_session.success') < 1) return 'no end_session.success event';
    await goto(page, authUrl(discovery, { state: 'after', nonce: 'n-4', challenge: pkce().challenge }));
    return await idpPrompt(page) === 'login' ? undefined : `after logout: ${page.url()}`;
  });

  const foreign = foreignRequest(log);
  if (foreign) console.log(`FAIL IdP alone: Chromium asked only loopback hosts (asked ${foreign})`);
  await context.close();
}

// ---------------------------------------------------------------------------------------
// proxy mode: sallyport between Chromium and the IdP.

async function proxyMode() {
  const { context, log } = await newContext();
  let page = await newPage(context);
  const target = `${A}/app/page?x=1`;
  let pendingLogin = [];

  await check('Chromium: /app/page?x=1 -> IdP login -> alice -> consent -> back at exactly /app/page?x=1 as alice', async () => {
    await goto(page, target);
    if (await idpPrompt(page) !== 'login') return `no IdP login form at ${page.url()}`;
    pendingLogin = await loginCookies(context, A);
    const answered = await throughIdp(page, 'alice');
    if (page.url() !== target) return `ended at ${page.url()} after ${answered.join(',')}`;
    const echo = json(await docText(page));
    if (!echo) return `not the echo JSON (status ${page.lastDoc?.status()})`;
    if (echo.path !== '/app/page' || echo.query !== 'x=1') return `upstream saw ${echo.path}?${echo.query}`;
    if (!sameList(echo.headers['x-forwarded-user'], ['alice'])) return `x-forwarded-user ${JSON.stringify(echo.headers['x-forwarded-user'])}`;
    if (!sameList(echo.headers['x-forwarded-email'], ['alice@example.com'])) return `x-forwarded-email ${JSON.stringify(echo.headers['x-forwarded-email'])}`;
    return undefined;
  });

  await check('Chromium: the login went through the IdP authorization endpoint with PKCE S256 and back to /.sallyport/callback', async () => {
    const auth = log.map((u) => new URL(u)).find((u) => u.href.startsWith(`${IDP}/auth?`));
    if (!auth) return 'no authorization request';
    const q = auth.searchParams;
    const want = { response_type: 'code', client_id: 'sallyport', redirect_uri: `${A}/.sallyport/callback`, code_challenge_method: 'S256' };
    for (const [k, v] of Object.entries(want)) if (q.get(k) !== v) return `${k}=${q.get(k)}`;
    for (const k of ['state', 'nonce', 'code_challenge']) if (!q.get(k)) return `no ${k}`;
    if (!q.get('scope')?.split(' ').includes('openid')) return `scope ${q.get('scope')}`;
    return log.some((u) => u.startsWith(`${A}/.sallyport/callback?`)) ? undefined : 'no callback request';
  });

  await check('Chromium: session cookie is Secure, HttpOnly, SameSite=Lax, Path=/, host-only; no login cookie left', async () => {
    const all = await context.cookies(A);
    const sess = all.filter((c) => SESSION_RE.test(c.name));
    if (sess.length === 0) return `no session cookie among ${all.map((c) => c.name).join(', ')}`;
    for (const c of sess) {
      if (!c.secure || !c.httpOnly || c.sameSite !== 'Lax' || c.path !== '/' || c.domain !== 'localhost') {
        return `${c.name}: ${JSON.stringify({ ...c, value: undefined })}`;
      }
    }
    const left = all.filter((c) => LOGIN_RE.test(c.name) || c.name.startsWith('__Host-sallyport_login'));
    return left.length ? `login cookie left: ${left.map((c) => c.name).join(', ')}` : undefined;
  });

  await check('Chromium: fetch with X-Forwarded-User: mallory -> upstream sees only alice', async () => {
    const r = await pageFetch(page, '/app', { 'X-Forwarded-User': 'mallory', Accept: 'application/json' });
    const u = seenUser(r.text);
    return r.status === 200 && sameList(u, ['alice']) ? undefined : `status ${r.status}, x-forwarded-user ${JSON.stringify(u)}`;
  });

  await check('Chromium: /.sallyport/userinfo shows alice with her email and scheme session', async () => {
    await goto(page, `${A}/.sallyport/userinfo`);
    const j = json(await docText(page));
    if (page.lastDoc?.status() !== 200 || !j) return `status ${page.lastDoc?.status()}: ${await docText(page)}`;
    if (j.user !== 'alice' || j.email !== 'alice@example.com' || j.scheme !== 'session') return JSON.stringify(j);
    return undefined;
  });

  for (const rd of ['//evil.example/', 'https://evil.example/', '/\\evil.example', '/%2F%2Fevil.example', 'javascript:alert(1)']) {
    await check(`Chromium: hostile rd ${JSON.stringify(rd)} ends on ${A}/, never on evil.example`, async () => {
      // A fresh tab each time, so one failure cannot spill into the next.
      await page.close();
      page = await newPage(context);
      const from = log.length;
      let err = '';
      try {
        await goto(page, `${A}/.sallyport/login?rd=${encodeURIComponent(rd)}`);
        await throughIdp(page, 'alice');
      } catch (e) {
        err = oneLine(e.message);
      }
      const evil = log.slice(from).find((u) => hostOf(u).includes('evil') || u.startsWith('javascript:'));
      if (evil) return `requested ${evil}`;
      if (!page.url().startsWith(`${A}/`)) return `ended at ${page.url()} ${err}`;
      if (err) return err;
      if (!log.slice(from).some((u) => u.startsWith(`${A}/.sallyport/callback?`))) return 'never reached the callback';
      return page.lastDoc?.status() === 200 ? undefined : `final status ${page.lastDoc?.status()}`;
    });
  }

  await check('Chromium: two tabs start two logins at once (two login cookies), both end on their own URLs', async () => {
    const { context: c2 } = await newContext();
    try {
      const [t1, t2] = [await newPage(c2), await newPage(c2)];
      const [u1, u2] = [`${A}/tab/one?t=1`, `${A}/tab/two?t=2`];
      await goto(t1, u1);
      await goto(t2, u2);
      if (await idpPrompt(t1) !== 'login' || await idpPrompt(t2) !== 'login') return `not both at the IdP login: ${t1.url()} ${t2.url()}`;
      const pending = (await loginCookies(c2, A)).length;
      await throughIdp(t1, 'alice');
      if (t1.url() !== u1) return `tab 1 ended at ${t1.url()}`;
      await throughIdp(t2, 'alice');
      if (t2.url() !== u2) return `tab 2 ended at ${t2.url()}`;
      for (const t of [t1, t2]) {
        const u = seenUser(await docText(t));
        if (!sameList(u, ['alice'])) return `${t.url()} saw ${JSON.stringify(u)}`;
      }
      if (pending !== 2) return `${pending} login cookies while both logins were pending, want 2`;
      const left = (await loginCookies(c2, A)).length;
      return left === 0 ? undefined : `${left} login cookies left`;
    } finally {
      await c2.close();
    }
  });

  await check('Chromium: a real code and state from the IdP but the login cookie gone (login CSRF) -> 400, no session', async () => {
    const { context: c4, log: log4 } = await newContext();
    try {
      const p = await newPage(c4);
      await goto(p, `${A}/app/csrf`);
      if (await idpPrompt(p) !== 'login') return `no IdP login form at ${p.url()}`;
      if ((await loginCookies(c4, A)).length !== 1) return 'no login cookie while the login is pending';
      await c4.clearCookies({ name: LOGIN_RE });
      const codes = idpEvents('grant.success authorization_code');
      await throughIdp(p, 'mallory');
      const cb = log4.find((u) => u.startsWith(`${A}/.sallyport/callback?`));
      if (!cb || !new URL(cb).searchParams.get('code')) return `no callback with a code; at ${p.url()}`;
      if (p.lastDoc?.status() !== 400) return `callback answered ${p.lastDoc?.status()} at ${p.url()}`;
      if ((await sessionCookies(c4, A)).length) return 'a session cookie was set';
      const spent = idpEvents('grant.success authorization_code') - codes;
      return spent === 0 ? undefined : 'sallyport exchanged the code anyway';
    } finally {
      await c4.close();
    }
  });

  await check(`Chromium: access token expired (TTL ${AT_TTL} s): 5 concurrent fetches all 200 as alice, one refresh at the IdP, cookie re-issued`, async () => {
    await goto(page, `${A}/app/before-refresh`);
    if (!sameList(seenUser(await docText(page)), ['alice'])) return `not logged in: ${page.url()}`;
    // Five requests at once first, so that over HTTP/1.1 the browser holds five open
    // connections and the five requests after the expiry really arrive together (over
    // HTTP/2 they share one connection anyway). Any refresh these cause is not counted.
    await page.evaluate(async () => Promise.all([1, 2, 3, 4, 5].map((i) => fetch(`/app/warm?i=${i}`, { headers: { Accept: 'application/json' } }).then((r) => r.text()))));
    const before = (await sessionCookies(context, A)).map((c) => c.value).join('');
    await sleep((AT_TTL + 1.5) * 1000);
    const c0 = idpEvents('grant.success refresh_token');
    const e0 = idpEvents('grant.error refresh_token');
    const results = await page.evaluate(async () => Promise.all([1, 2, 3, 4, 5].map(async (i) => {
      const r = await fetch(`/app/refresh?i=${i}`, { headers: { Accept: 'application/json' }, redirect: 'manual' });
      return { status: r.status, text: await r.text() };
    })));
    await sleep(300);
    const refreshes = idpEvents('grant.success refresh_token') - c0;
    const errors = idpEvents('grant.error refresh_token') - e0;
    const bad = results.filter((r) => r.status !== 200 || !sameList(seenUser(r.text), ['alice']));
    if (bad.length) return `${bad.length} of 5 failed: ${bad.map((r) => r.status).join(',')}; refreshes ${refreshes}, refresh errors ${errors}`;
    if (refreshes !== 1 || errors !== 0) return `the IdP saw ${refreshes} refresh grants and ${errors} refresh errors, want 1 and 0`;
    const after = (await sessionCookies(context, A)).map((c) => c.value).join('');
    if (after === before) return 'the session cookie was not re-issued';
    const r = await pageFetch(page, '/app/after-refresh', { Accept: 'application/json' });
    return r.status === 200 && sameList(seenUser(r.text), ['alice']) ? undefined : `next request ${r.status}`;
  });

  await check('Chromium: idle past session_idle (3 s) on the second instance: fetch 401, navigation round-trips through the IdP', async () => {
    const { context: c3, log: log3 } = await newContext();
    try {
      const p = await newPage(c3);
      const u = `${B}/idle/page`;
      await goto(p, u);
      await throughIdp(p, 'alice');
      if (p.url() !== u) return `login ended at ${p.url()}`;
      const fresh = await pageFetch(p, '/idle/api', { Accept: 'application/json' });
      if (fresh.status !== 200) return `right after login: ${fresh.status}`;
      await sleep(4500);
      const idle = await pageFetch(p, '/idle/api', { Accept: 'application/json' });
      if (idle.status !== 401) return `after 4.5 s idle: ${idle.status}, want 401`;
      const from = log3.length;
      await goto(p, u);
      await throughIdp(p, 'alice');
      if (!log3.slice(from).some((x) => x.startsWith(`${IDP}/auth?`))) return 'no authorization request after the idle expiry';
      if (p.url() !== u) return `ended at ${p.url()}`;
      return sameList(seenUser(await docText(p)), ['alice']) ? undefined : 'not alice after logging in again';
    } finally {
      await c3.close();
    }
  });

  await check('Chromium: logout?rd=/bye clears the session and goes to the IdP end_session with id_token_hint, client_id, post_logout_redirect_uri', async () => {
    const from = log.length;
    await goto(page, `${A}/.sallyport/logout?rd=/bye`);
    const es = log.slice(from).map((u) => new URL(u)).find((u) => u.href.startsWith(`${IDP}/session/end?`));
    if (!es) return `no end_session request; at ${page.url()}`;
    const q = es.searchParams;
    if (!q.get('id_token_hint')) return 'no id_token_hint';
    if (q.get('client_id') !== 'sallyport') return `client_id ${q.get('client_id')}`;
    if (q.get('post_logout_redirect_uri') !== `${A}/bye`) return `post_logout_redirect_uri ${q.get('post_logout_redirect_uri')}`;
    const left = await sessionCookies(context, A);
    if (left.length) return `session cookie still there: ${left.map((c) => c.name).join(', ')}`;
    return undefined;
  });

  await check('Chromium: confirming at the IdP ends at /bye, which sends the browser to a fresh IdP login form', async () => {
    const from = log.length;
    const yes = page.locator('button[name=logout][value=yes]');
    if (await yes.count() !== 1) return `no confirmation at ${page.url()}`;
    await navigating(page, () => yes.click());
    if (!log.slice(from).some((u) => u === `${A}/bye`)) return `never went to ${A}/bye; at ${page.url()}`;
    if (await idpPrompt(page) !== 'login') return `not at the IdP login form: ${page.url()}`;
    const left = await sessionCookies(context, A);
    return left.length ? `session cookie back: ${left.map((c) => c.name).join(', ')}` : undefined;
  });

  await check('Chromium: replaying the first callback URL with its login cookie put back -> 400, no session', async () => {
    const cb = log.find((u) => u.startsWith(`${A}/.sallyport/callback?`));
    if (!cb) return 'no callback URL recorded';
    if (pendingLogin.length !== 1) return `${pendingLogin.length} login cookies were recorded, want 1`;
    await context.addCookies(pendingLogin);
    const before = idpEvents('grant.success authorization_code') + idpEvents('grant.error authorization_code');
    const r = await context.request.get(cb, { maxRedirects: 0, failOnStatusCode: false });
    const setCookie = r.headersArray().filter((h) => h.name.toLowerCase() === 'set-cookie')
      .map((h) => h.value).filter((v) => /^__Host-sallyport_session(_\d+)?=[^;]/.test(v));
    await sleep(200);
    const after = idpEvents('grant.success authorization_code') + idpEvents('grant.error authorization_code');
    if (after !== before) console.log('note the replayed code went to the IdP token endpoint again (the IdP refused it)');
    if (r.status() !== 400) return `status ${r.status()}`;
    return setCookie.length ? `set ${setCookie[0].split(';')[0].split('=')[0]}` : undefined;
  });

  const foreign = foreignRequest(log);
  if (foreign) console.log(`FAIL Chromium asked only loopback hosts (asked ${foreign})`);
  await context.close();
}

try {
  if (mode === 'idp') await idpMode();
  else if (mode === 'proxy') await proxyMode();
  else throw new Error(`unknown mode ${mode}`);
  console.log('done');
} catch (e) {
  console.log(`FAIL browser driver: ${oneLine(e?.message ?? e)}`);
} finally {
  await browser.close().catch(() => {});
}
process.exit(0);
