// The Backbone extensions in a real page: headless Chromium loads jQuery,
// Underscore, Backbone 1.6.1, the Faye client the server serves, and our
// assets, and talks to a real server. The page server plays the Rails app:
// it serves the page with the meta tags `backbone_sync_tags` writes, hands
// out subscription tokens at POST /backbone_sync/subscriptions (checking
// the CSRF header) and answers GET/POST /users.
// The real Rails endpoint and a signed server are covered by spec/javascripts/demo/signed.test.mjs.
//
//   node --test spec/javascripts/backbone/browser.test.mjs
//   FAYE_JS_TARGETS=faye node --test spec/javascripts/backbone/browser.test.mjs

import { describe, test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import {
  ROOT, TARGET_NAMES, startServer, launchBrowser, inPage, publishOverHttp, within, sleep, signSubscription,
} from '../support/harness.mjs';
import { assetOrder } from './support/backbone_env.mjs';

const TARGETS = (process.env.FAYE_JS_TARGETS || 'ours,faye').split(',').map((s) => s.trim()).filter(Boolean);
const CSRF = 'csrf-token-for-the-spec';

const SCRIPTS = {
  'jquery.js': 'node_modules/jquery/dist/jquery.js',
  'underscore.js': 'node_modules/underscore/underscore-umd.js',
  'backbone.js': 'node_modules/backbone-1.6.1/backbone.js',
};
// Our assets one by one, as Sprockets serves `//= require backbone_sync/core` and the rest.
const ASSETS = assetOrder();
for (const file of ASSETS) SCRIPTS[file] = `vendor/assets/javascripts/${file}`;

// The stand-in Rails app. `app.endpoint` is the Faye server of the test.
async function startApp() {
  const app = { endpoint: null, tokenRequests: [], saves: [], users: [] };
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://localhost');
    let body = '';
    req.on('data', (chunk) => { body += chunk; });
    req.on('end', () => {
      const json = (status, value) => {
        res.writeHead(status, { 'Content-Type': 'application/json' });
        res.end(JSON.stringify(value));
      };
      if (req.method === 'GET' && url.pathname === '/') {
        res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
        res.end(`<!doctype html><meta charset="utf-8"><title>backbone_sync spec</title>
<meta name="csrf-token" content="${CSRF}">
<meta name="backbone-sync-server" content="${app.endpoint}">
<meta name="backbone-sync-subscriptions" content="/backbone_sync/subscriptions">
<script>window.pageErrors = []; addEventListener('error', function (e) { pageErrors.push(String(e.message)); });</script>
<script src="/js/jquery.js"></script><script src="/js/underscore.js"></script><script src="/js/backbone.js"></script>
<script src="${app.endpoint}.js"></script>
${ASSETS.map((file) => `<script src="/js/${file}"></script>`).join('')}`);
        return;
      }
      const script = url.pathname.startsWith('/js/') && SCRIPTS[url.pathname.slice(4)];
      if (req.method === 'GET' && script) {
        res.writeHead(200, { 'Content-Type': 'application/javascript' });
        res.end(fs.readFileSync(path.join(ROOT, script)));
        return;
      }
      if (req.method === 'POST' && url.pathname === '/backbone_sync/subscriptions') {
        let channel = null;
        try { channel = JSON.parse(body).channel; } catch { /* not JSON */ }
        app.tokenRequests.push({ channel, csrf: req.headers['x-csrf-token'] });
        if (req.headers['x-csrf-token'] !== CSRF) return json(422, { error: 'bad CSRF token' });
        if (channel === '/sync/secret') return json(403, { error: 'not yours' });
        return json(200, { channel, token: signSubscription(channel) });
      }
      if (url.pathname === '/users' && req.method === 'GET') return json(200, app.users);
      if (url.pathname === '/users' && req.method === 'POST') {
        const attrs = JSON.parse(body);
        app.saves.push({ attrs, origin: req.headers['x-backbonesync-origin'], csrf: req.headers['x-csrf-token'] });
        const record = { ...attrs, id: 100 + app.saves.length };
        app.users.push(record);
        return json(201, record);
      }
      json(404, { error: 'not found' });
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  app.url = `http://127.0.0.1:${server.address().port}/`;
  app.close = () => new Promise((resolve) => { server.closeAllConnections(); server.close(resolve); });
  return app;
}

async function publish(server, channel, data) {
  const { replies } = await publishOverHttp(server.url, channel, data);
  assert.equal(replies[0]?.successful, true, JSON.stringify(replies));
}

for (const target of TARGETS) {
  describe(`Backbone 1.6.1 extensions in Chromium against ${TARGET_NAMES[target]}`, () => {
    let browser, app, page, servers = [];

    before(async () => {
      browser = await launchBrowser();
      app = await startApp();
    }, { timeout: 60000 });

    after(async () => {
      try { await browser?.close(); } finally { await app?.close(); }
    }, { timeout: 30000 });

    afterEach(async () => {
      if (page) await within(10000, 'page close', page.close()).catch(() => {});
      page = null;
      for (const server of servers) await server.stop();
      servers = [];
      app.tokenRequests.length = 0;
      app.saves.length = 0;
      app.users.length = 0;
    });

    const openApp = async (options = {}) => {
      const server = await startServer(target, options);
      servers.push(server);
      app.endpoint = server.url;
      page = await browser.context.newPage();
      const frames = [];
      page.on('websocket', (ws) => ws.on('framereceived', (f) => frames.push(String(f.payload))));
      await within(15000, 'page load', page.goto(app.url));
      await page.waitForFunction(() => window.BackboneSync && BackboneSync.RailsFayeSubscriber, null, { timeout: 5000 });
      return { server, frames };
    };

    test('a refused subscription gets a token from the Rails endpoint and is retried once', { timeout: 60000 }, async () => {
      const { server, frames } = await openApp({ signed: true });
      await inPage(page, () => {
        window.users = new Backbone.Collection();
        users.url = '/users';
        window.subscriber = new BackboneSync.RailsFayeSubscriber(users, { channel: 'users' });
        window.denied = [];
        window.secret = new Backbone.Collection();
        secret.on('backbone_sync:forbidden', (channel) => denied.push(channel));
        new BackboneSync.RailsFayeSubscriber(secret, { channel: 'secret' });
      });
      await page.waitForFunction(() => denied.length === 1, null, { timeout: 15000 });
      let applied = false;
      for (let attempt = 0; attempt < 40 && !applied; attempt++) {
        await publish(server, '/sync/users', { event: 'create', object: { id: 1, name: 'Ann' }, origin: null, version: 1 });
        applied = await page.waitForFunction(() => users.get(1), null, { timeout: 250 }).then(() => true, () => false);
      }
      assert.ok(applied, 'the broadcast reached the collection');
      assert.deepEqual(app.tokenRequests.map((r) => r.channel).sort(), ['/sync/secret', '/sync/users']);
      assert.ok(app.tokenRequests.every((r) => r.csrf === CSRF), 'the CSRF token from the meta tag was sent');
      const refusals = frames.flatMap((f) => JSON.parse(f)).filter((m) => m.channel === '/meta/subscribe' && m.successful === false);
      assert.deepEqual(refusals.map((m) => m.subscription).sort(), ['/sync/secret', '/sync/secret', '/sync/users'],
        'refused once each without a token; /sync/secret again, as the app denied the token');
      assert.deepEqual(await inPage(page, () => pageErrors), []);
    });

    test('with signed: true the token is fetched before the first subscribe', { timeout: 60000 }, async () => {
      const { server, frames } = await openApp({ signed: true });
      await inPage(page, () => {
        BackboneSync.configure({ signed: true });
        window.users = new Backbone.Collection();
        window.subscriber = new BackboneSync.RailsFayeSubscriber(users, { channel: '/sync/users' });
        return subscriber.subscription;
      });
      await publish(server, '/sync/users', { event: 'create', object: { id: 2 }, origin: null, version: 1 });
      await page.waitForFunction(() => users.get(2), null, { timeout: 10000 });
      const replies = frames.flatMap((f) => JSON.parse(f)).filter((m) => m.channel === '/meta/subscribe');
      assert.deepEqual(replies.map((m) => m.successful), [true], 'no refusal first');
      assert.equal(app.tokenRequests.length, 1);
    });

    test('PushableCollection and PushableModel get their tokens the same way', { timeout: 60000 }, async () => {
      const { server } = await openApp({ signed: true });
      await inPage(page, () => {
        const Member = Backbone.PushableModel.extend({ urlRoot: '/members', channel() { return `member_${this.id}`; } });
        const Members = Backbone.PushableCollection.extend({ model: Member, url: '/members', channel: 'members' });
        window.members = new Members([{ id: 4, name: 'Dee' }]);
      });
      let applied = false;
      for (let attempt = 0; attempt < 40 && !applied; attempt++) {
        await publish(server, '/sync/members', { event: 'create', object: { id: 5, name: 'Eve' }, origin: null, version: 1 });
        await publish(server, '/sync/member_4', { event: 'update', object: { id: 4, name: 'Deirdre' }, origin: null, version: 1 });
        applied = await page.waitForFunction(() => members.get(5) && members.get(4).get('name') === 'Deirdre', null, { timeout: 250 })
          .then(() => true, () => false);
      }
      assert.ok(applied, 'both channels deliver');
      assert.deepEqual(app.tokenRequests.map((r) => r.channel).sort(), ['/sync/member_4', '/sync/member_5', '/sync/members']);
    });

    test('saves carry the origin header over jQuery, and the saving page keeps one model', { timeout: 60000 }, async () => {
      const { server } = await openApp();
      await inPage(page, () => {
        window.users = new Backbone.Collection();
        users.url = '/users';
        window.subscriber = new BackboneSync.RailsFayeSubscriber(users, { channel: 'users' });
        return subscriber.subscription;
      });
      const cid = await inPage(page, () => new Promise((resolve) => {
        const made = users.create({ name: 'Ann' }, { success: () => resolve(made.cid) });
      }));
      assert.equal(app.saves.length, 1);
      assert.equal(app.saves[0].csrf, CSRF, 'the save carried the CSRF token from the meta tag');
      const origin = app.saves[0].origin;
      assert.equal(origin, `${await inPage(page, () => BackboneSync.origin)}:${cid}`);
      // The broadcast, as Rails makes it for that save, arrives after the response.
      await publish(server, '/sync/users', { event: 'create', object: { id: 101, name: 'Ann' }, origin, version: 1 });
      await publish(server, '/sync/users', { event: 'create', object: { id: 7, name: 'Other' }, origin: null, version: 1 });
      await page.waitForFunction(() => users.get(7), null, { timeout: 10000 });
      assert.deepEqual(await inPage(page, () => users.pluck('id')), [101, 7]);
    });

    test('after a server restart the collection is fetched again and deliveries go on', { timeout: 90000 }, async () => {
      const { server } = await openApp();
      await inPage(page, () => {
        window.events = [];
        window.users = new Backbone.Collection();
        users.url = '/users';
        users.on('backbone_sync:resync', () => events.push('resync'));
        window.subscriber = new BackboneSync.RailsFayeSubscriber(users, { channel: 'users' });
        BackboneSync.client().on('transport:down', () => events.push('down'));
        return subscriber.subscription;
      });
      await publish(server, '/sync/users', { event: 'create', object: { id: 1 }, origin: null, version: 1 });
      await page.waitForFunction(() => users.get(1), null, { timeout: 10000 });

      const port = server.port;
      await server.stop('SIGKILL');
      servers = [];
      await page.waitForFunction(() => events.includes('down'), null, { timeout: 20000 });
      // Records created and destroyed while the page was away.
      app.users.push({ id: 2 }, { id: 3 });
      const replacement = await startServer(target, { port });
      servers.push(replacement);
      await page.waitForFunction(() => users.length === 2 && users.get(2) && users.get(3), null, { timeout: 30000 });
      assert.deepEqual(await inPage(page, () => events), ['down', 'resync']);

      let applied = false;
      for (let attempt = 0; attempt < 40 && !applied; attempt++) {
        await publish(replacement, '/sync/users', { event: 'update', object: { id: 2, name: 'after' }, origin: null, version: 1 });
        applied = await page.waitForFunction(() => users.get(2).get('name') === 'after', null, { timeout: 250 })
          .then(() => true, () => false);
      }
      assert.ok(applied);
      await sleep(200);
      assert.deepEqual(await inPage(page, () => events), ['down', 'resync'], 'one resync per outage');
    });
  });
}
