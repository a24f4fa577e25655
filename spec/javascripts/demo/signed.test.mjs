// The demo with signed subscriptions, end to end in headless Chromium: the
// page, the real Rails token endpoint (POST /backbone_sync/subscriptions in
// spec/dummy, CSRF-protected, with a policy) and the real embedded server
// started with `signed_subscriptions: true`. Nothing stands in for a part;
// the test only watches the page's traffic (playwright's request/response
// and WebSocket events) and what the page's models receive.
//
// - the members collection goes live: the server refuses its subscribe
//   without a token (403), the page gets a token from the endpoint (200)
//   and subscribes again with it, and a member created through the JSON API
//   is pushed to it;
// - a channel the app's policy refuses (/sync/member_1, through
//   BACKBONE_SYNC_DUMMY_REFUSE in spec/dummy/config/initializers/backbone_sync.rb):
//   the endpoint answers 403, the model gets `backbone_sync:forbidden`, and
//   a change published to that channel never reaches the page, while the
//   same change of an allowed member (/sync/member_2) does;
// - a wrong CSRF token (the page's meta tag tampered with before a
//   subscribe): the endpoint answers 403 and no token, the model gets
//   `backbone_sync:forbidden`; the page's real CSRF token is granted one.
//
//   bundle exec rake compile && node --test spec/javascripts/demo/signed.test.mjs

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  within, sleep, freePort, startDemo, launchBrowser, apiCreate, apiList, apiRename, hasRow, waitFor, tearDown,
} from './support/demo.mjs';

// As in demo.test.mjs: a push to a Chromium page on a loaded two-core machine.
const AT_ONCE_MS = 5000;
const TOKENS_PATH = '/backbone_sync/subscriptions';
const REFUSED = '/sync/member_1';      // Ada Lovelace, the first seed member
const BAD_CSRF = 'not-the-token-of-this-session';

const isTokenRequest = (request) => request.method() === 'POST' && new URL(request.url()).pathname === TOKENS_PATH;

// What the endpoint answered the page for `channel`: the next response to
// a token request for it, at most `ms` from now (call before the subscribe).
function tokenAnswer(page, channel, ms) {
  const answer = page.waitForResponse((response) => isTokenRequest(response.request()) &&
    response.request().postDataJSON()?.channel === channel, { timeout: ms })
    .then(async (response) => ({
      status: response.status(),
      csrf: (await response.request().allHeaders())['x-csrf-token'],
      body: await response.json().catch(() => null),
    }), (error) => {
      throw new Error(`the page asked ${TOKENS_PATH} for no token for ${channel} within ${ms} ms (${error.message})`);
    });
  answer.catch(() => {}); // awaited later, maybe after another wait failed first
  return answer;
}

// Poll `fn` (in this process) until it returns something truthy, at most `ms`.
async function until(ms, what, fn) {
  return within(ms + 1000, what, (async () => {
    const end = Date.now() + ms;
    for (;;) {
      const value = fn();
      if (value) return value;
      if (Date.now() > end) throw new Error(`${what}: not within ${ms} ms`);
      await sleep(25);
    }
  })());
}

describe('the demo with signed subscriptions', { timeout: 300000 }, () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'backbone_sync-signed-'));
  const db = path.join(tmp, 'demo.sqlite3');
  const log = path.join(tmp, 'demo.log');
  let ports, demo, browser, page;
  // Every Bayeux message between the page and the push server, both ways,
  // over HTTP (the handshake, long-polling) and the WebSocket.
  const bayeux = { sent: [], received: [] };
  // Every token request the page made, as the endpoint answered it.
  const tokenRequests = [];

  const record = (list, text) => {
    try { list.push(...[].concat(JSON.parse(text))); } catch { /* not a Bayeux message */ }
  };
  const fromServer = (url) => new URL(url).port === String(ports.server);
  // The replies to the page's /meta/subscribe for `channel`, in the order
  // the page sent them: [{sent, reply}] (reply undefined until it came).
  const subscribes = (channel) => bayeux.sent
    .filter((m) => m.channel === '/meta/subscribe' && m.subscription === channel)
    .map((sent) => ({ sent, reply: bayeux.received.find((r) => r.channel === '/meta/subscribe' && r.id === sent.id) }));
  // Deliveries on `channel` that reached the page.
  const deliveries = (channel) => bayeux.received.filter((m) => m.channel === channel && 'data' in m);

  before(async () => {
    ports = { app: await freePort(), server: await freePort() };
    demo = await startDemo({
      port: ports.app, serverPort: ports.server, db, log,
      env: {
        BACKBONE_SYNC_DUMMY_CONFIG: JSON.stringify({ embedded: { signed_subscriptions: true } }),
        BACKBONE_SYNC_DUMMY_REFUSE: REFUSED,
      },
    });
    // The refused channel is the first seed member's.
    assert.deepEqual((await apiList(demo.url)).slice(0, 2).map((m) => [m.id, m.name]), [[1, 'Ada Lovelace'], [2, 'Grace Hopper']]);
    browser = await launchBrowser();
    const context = await browser.newContext({ viewport: { width: 560, height: 640 } });
    page = await context.newPage();
    page.pageErrors = [];
    page.on('pageerror', (error) => page.pageErrors.push(String(error)));
    page.on('websocket', (ws) => {
      if (!fromServer(ws.url())) return;
      ws.on('framesent', ({ payload }) => record(bayeux.sent, String(payload)));
      ws.on('framereceived', ({ payload }) => record(bayeux.received, String(payload)));
    });
    page.on('request', (request) => {
      if (fromServer(request.url()) && request.method() === 'POST') record(bayeux.sent, request.postData() || '');
    });
    page.on('response', (response) => {
      const request = response.request();
      if (fromServer(request.url()) && request.method() === 'POST') {
        response.text().then((text) => record(bayeux.received, text), () => {});
      }
      if (isTokenRequest(request)) {
        tokenRequests.push({ channel: request.postDataJSON()?.channel, status: response.status() });
      }
    });
  });

  after(() => tearDown({ browser, demo, log, tmp }));

  test('the members collection goes live through the token endpoint and gets a create by push', async () => {
    const granted = tokenAnswer(page, '/sync/members', 60000);
    await within(60000, 'the page load', page.goto(demo.url));
    // The collection fetches once its subscribe is acknowledged: ready means subscribed.
    await waitFor(page, () => document.querySelector('#members[data-ready]') &&
      document.querySelector('#status').dataset.state === 'live', null, 60000, 'the page ready and live');

    const answer = await granted;
    assert.equal(answer.status, 200, JSON.stringify(answer.body));
    assert.equal(answer.body.channel, '/sync/members');
    assert.match(answer.body.token, /^\d+\.[0-9a-f]{64}$/);
    assert.equal(answer.csrf, await page.getAttribute('meta[name="csrf-token"]', 'content'), 'the page sent its CSRF token');

    // The server refused the subscribe without a token and accepted the one
    // with the endpoint's token.
    const tries = await until(10000, 'the replies to both subscribes', () => {
      const s = subscribes('/sync/members');
      return s.length === 2 && s.every((t) => t.reply) && s;
    });
    assert.equal(tries[0].sent.ext?.token, undefined, 'the first subscribe carries no token');
    assert.equal(tries[0].reply.successful, false);
    assert.match(tries[0].reply.error, /^403:\/sync\/members:/);
    assert.equal(tries[1].sent.ext?.token, answer.body.token, 'the second carries the endpoint\'s token');
    assert.equal(tries[1].reply.successful, true, JSON.stringify(tries[1].reply));
    assert.deepEqual(tokenRequests.filter((r) => r.channel === '/sync/members'), [{ channel: '/sync/members', status: 200 }],
      'one token request for /sync/members');

    // Live: a member created by a third party appears by push (the page never polls).
    const seen = waitFor(page, hasRow, 'Signed Push', AT_ONCE_MS, 'the pushed create');
    await apiCreate(demo.url, 'Signed Push');
    await seen;
    assert.ok(deliveries('/sync/members').some((m) => m.data?.object?.name === 'Signed Push'), 'delivered on /sync/members');
  });

  test('a channel the policy refuses: 403 from the endpoint, backbone_sync:forbidden, and nothing delivered', async () => {
    await page.evaluate(() => {
      // A model per member id following its instance channel, /sync/member_<id>.
      const Member = Backbone.PushableModel.extend({ urlRoot: '/members', channel() { return `member_${this.id}`; } });
      window.forbidden = [];
      window.pushed = {};
      window.models = {};
      window.follow = (id) => {
        const model = new Member({ id });
        window.pushed[id] = [];
        model.receive = function (data) {
          window.pushed[id].push(data);
          return Member.prototype.receive.apply(this, arguments);
        };
        model.on('backbone_sync:forbidden', (channel, error) => {
          window.forbidden.push({ id, channel, error: String((error && error.message) || error) });
        });
        window.models[id] = model;
      };
    });
    const refused = tokenAnswer(page, REFUSED, 30000);
    const allowed = tokenAnswer(page, '/sync/member_2', 30000);
    await page.evaluate(() => { window.follow(1); window.follow(2); });

    await waitFor(page, (channel) => window.forbidden.some((f) => f.channel === channel), REFUSED, 30000, 'backbone_sync:forbidden');
    await waitFor(page, () => window.models[2].pushSubscription?.ready === true, null, 30000, 'the allowed model subscribed');
    const no = await refused;
    assert.equal(no.status, 403, JSON.stringify(no.body));
    assert.match(no.body.error, /not allowed to subscribe to \/sync\/member_1/);
    assert.equal(no.body.token, undefined);
    const yes = await allowed;
    assert.equal(yes.status, 200, JSON.stringify(yes.body));
    const forbidden = await page.evaluate(() => window.forbidden);
    assert.deepEqual(forbidden.map((f) => f.channel), [REFUSED], 'only the refused channel is forbidden');
    assert.match(forbidden[0].error, /^403:\/sync\/member_1:/);
    // Both subscribes to it, without and then (with no token to give) again
    // without one, refused by the server.
    const tries = await until(10000, 'the replies to the refused subscribes', () => {
      const s = subscribes(REFUSED);
      return s.length === 2 && s.every((t) => t.reply) && s;
    });
    assert.deepEqual(tries.map((t) => [t.sent.ext?.token, t.reply.successful]), [[undefined, false], [undefined, false]]);

    // Rename member 1, then member 2: the server publishes each to
    // /sync/members and the member's channel, in that order, on the page's
    // one connection. Once member 2's push is in, member 1's would be too.
    await apiRename(demo.url, 1, 'Ada Refused');
    await waitFor(page, hasRow, 'Ada Refused', AT_ONCE_MS, 'member 1 renamed in the list');
    await apiRename(demo.url, 2, 'Grace Allowed');
    await waitFor(page, () => window.pushed[2].some((d) => d.object?.name === 'Grace Allowed'), null, AT_ONCE_MS,
      'the allowed channel\'s push');
    assert.equal(await page.evaluate(() => window.models[2].get('name')), 'Grace Allowed');
    assert.deepEqual(await page.evaluate(() => window.pushed[1]), [], 'nothing reached the refused model');
    assert.deepEqual(deliveries(REFUSED), [], 'nothing on the refused channel reached the page');
    assert.equal(deliveries('/sync/member_2').length, 1);
  });

  test('a wrong CSRF token: 403 from the endpoint, no token, and backbone_sync:forbidden', async () => {
    const real = await page.getAttribute('meta[name="csrf-token"]', 'content');
    const answered = tokenAnswer(page, '/sync/member_3', 30000);
    await page.evaluate((bad) => {
      document.querySelector('meta[name="csrf-token"]').setAttribute('content', bad);
      window.follow(3);
    }, BAD_CSRF);
    await waitFor(page, () => window.forbidden.some((f) => f.channel === '/sync/member_3'), null, 30000, 'backbone_sync:forbidden');
    const answer = await answered;
    assert.equal(answer.csrf, BAD_CSRF, 'the page sent the tampered token');
    assert.equal(answer.status, 403, JSON.stringify(answer.body));
    assert.match(answer.body.error, /CSRF/);
    assert.equal(answer.body.token, undefined);

    // The channel itself is allowed: with the session's real token the
    // same request gets one.
    await page.evaluate((csrf) => document.querySelector('meta[name="csrf-token"]').setAttribute('content', csrf), real);
    const control = await within(10000, 'the token request with the real CSRF token', page.evaluate(async ({ url, csrf }) => {
      const response = await fetch(url, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Accept: 'application/json', 'X-CSRF-Token': csrf },
        body: JSON.stringify({ channel: '/sync/member_3' }),
      });
      return { status: response.status, body: await response.json() };
    }, { url: TOKENS_PATH, csrf: real }));
    assert.equal(control.status, 200, JSON.stringify(control.body));
    assert.match(control.body.token, /^\d+\.[0-9a-f]{64}$/);
    assert.deepEqual(page.pageErrors, []);
  });
});
