// Specs for vendor/assets/javascripts/backbone_sync/faye.js, the browser
// client served at <mount>.js. Each case runs in headless Chromium against
// our server (bin/backbone_sync) and against the real npm faye NodeAdapter,
// so the client is known to speak Faye's protocol and our server is known to
// answer it the same way.
//
//   node --test spec/javascripts/client.test.mjs
//   FAYE_JS_TARGETS=faye node --test spec/javascripts/client.test.mjs   # one server only
//
// Our server needs `bundle exec rake compile` first.

import { describe, test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  SECRET, TARGET_NAMES, startServer, startPageServer, launchBrowser, openPage, inPage,
  publishOverHttp, waitForDeliveries, within, sleep, closedPort, signSubscription,
} from './support/harness.mjs';

const TARGETS = (process.env.FAYE_JS_TARGETS || 'ours,faye').split(',').map((s) => s.trim()).filter(Boolean);
for (const target of TARGETS) {
  if (!TARGET_NAMES[target]) throw new Error(`FAYE_JS_TARGETS: unknown target ${target}; use ours and/or faye`);
}

let pageServer;
before(async () => { pageServer = await startPageServer(); });
after(async () => { await pageServer?.close(); });

// In the page: make client `name` for ENDPOINT with quick retries and
// record its transport events in window.events.
function makeClient(page, name, { disableWebSocket = false } = {}) {
  return inPage(page, ({ name, disableWebSocket }) => {
    const client = new Faye.Client(ENDPOINT, { timeout: 20, retry: 1 });
    if (disableWebSocket) client.disable('websocket');
    client.on('transport:up', () => events.push(`${name}:up`));
    client.on('transport:down', () => events.push(`${name}:down`));
    clients[name] = client;
  }, { name, disableWebSocket });
}

// In the page: subscribe client `name` to `channel`, recording into
// got[label]; resolves once the server accepted the subscription.
function subscribe(page, name, channel, label) {
  return inPage(page, async ({ name, channel, label }) => {
    window.subscriptions = window.subscriptions || {};
    const subscription = clients[name].subscribe(channel, record(label));
    subscriptions[label] = subscription;
    await subscription;
  }, { name, channel, label });
}

// In the page: publish and report how the promise settled.
function publishFromPage(page, name, channel, data) {
  return inPage(page, async ({ name, channel, data }) => {
    try {
      await clients[name].publish(channel, data);
      return { ok: true };
    } catch (error) {
      return { ok: false, code: error.code, message: error.message, isError: error instanceof Error };
    }
  }, { name, channel, data });
}

async function publishWithSecret(server, channel, data) {
  const { status, replies } = await publishOverHttp(server.url, channel, data);
  assert.equal(status, 200, `publish to ${channel}: HTTP ${status} ${JSON.stringify(replies)}`);
  assert.equal(replies[0]?.successful, true, `publish to ${channel}: ${JSON.stringify(replies)}`);
}

for (const target of TARGETS) {
  describe(`faye.js against ${TARGET_NAMES[target]}`, () => {
    let server, browser, current;

    before(async () => {
      server = await startServer(target);
      browser = await launchBrowser();
    }, { timeout: 60000 });

    after(async () => {
      try { await browser?.close(); } finally { await server?.stop(); }
    }, { timeout: 30000 });

    afterEach(async () => {
      if (current) await within(10000, 'page close', current.page.close()).catch(() => {});
      current = null;
    });

    const open = async (options) => {
      current = await openPage(browser.context, pageServer, server.url, options);
      return current;
    };

    test('is served at <mount>.js and defines Faye.Client and BackboneSync.FayeClient', { timeout: 30000 }, async () => {
      const { page } = await open();
      const seen = await inPage(page, () => ({
        same: window.Faye.Client === window.BackboneSync.FayeClient,
        methods: ['subscribe', 'unsubscribe', 'publish', 'disconnect', 'addExtension', 'on', 'off',
          'bind', 'unbind', 'disable', 'getClientId'].filter((m) => typeof Faye.Client.prototype[m] !== 'function'),
        errors: pageErrors,
      }));
      assert.deepEqual(seen, { same: true, methods: [], errors: [] });
    });

    test('subscribes over a WebSocket by default and receives a message published over HTTP', { timeout: 30000 }, async () => {
      const { page, sockets } = await open();
      await makeClient(page, 'a');
      await subscribe(page, 'a', '/sync/users', 'users');

      const data = { create: { 42: { id: 42, name: 'Ada' } }, marker: 'ws-1' };
      await publishWithSecret(server, '/sync/users', data);
      assert.deepEqual(await waitForDeliveries(page, 'users', 1), [data]);

      const wsUrl = server.url.replace(/^http/, 'ws');
      assert.equal(sockets.length, 1, `one socket expected, got ${JSON.stringify(sockets.map((s) => s.url))}`);
      assert.equal(sockets[0].url, wsUrl);
      assert.ok(sockets[0].received.some((frame) => frame.includes('ws-1')), 'the delivery came over the socket');
      assert.ok(sockets[0].sent.some((frame) => frame.includes('/meta/connect') && frame.includes('"websocket"')),
        'the socket carries /meta/connect with connectionType websocket');
      assert.ok(await inPage(page, () => typeof clients.a.getClientId() === 'string'));
    });

    test('long-polls when websocket is disabled', { timeout: 30000 }, async () => {
      const { page, sockets, postBodies } = await open();
      await makeClient(page, 'a', { disableWebSocket: true });
      await subscribe(page, 'a', '/sync/polled', 'polled');

      await publishWithSecret(server, '/sync/polled', { marker: 'lp-1' });
      assert.deepEqual(await waitForDeliveries(page, 'polled', 1), [{ marker: 'lp-1' }]);

      assert.equal(sockets.length, 0, 'no WebSocket was opened');
      await within(5000, 'response body of the long-poll', (async () => {
        while (!postBodies.some((body) => body.includes('lp-1'))) await sleep(50);
      })());
      const carrier = JSON.parse(postBodies.find((body) => body.includes('lp-1')));
      assert.ok(carrier.some((m) => m.channel === '/meta/connect' && m.successful === true),
        `the delivery rode on a /meta/connect reply: ${JSON.stringify(carrier)}`);
    });

    test('falls back to long-polling when the WebSocket cannot open', { timeout: 30000 }, async () => {
      const deadUrl = `ws://127.0.0.1:${await closedPort()}/faye`;
      const { page, sockets, postBodies } = await open({
        // Point every WebSocket at a port that refuses connections.
        init: (page) => page.addInitScript((deadUrl) => {
          const Real = window.WebSocket;
          window.WebSocket = function (url, protocols) { return new Real(deadUrl, protocols); };
          window.WebSocket.prototype = Real.prototype;
        }, deadUrl),
      });
      await makeClient(page, 'a');
      await subscribe(page, 'a', '/sync/fallback', 'fallback');
      await publishWithSecret(server, '/sync/fallback', { marker: 'fb-1' });
      assert.deepEqual(await waitForDeliveries(page, 'fallback', 1), [{ marker: 'fb-1' }]);

      assert.deepEqual(sockets.map((s) => s.url), [deadUrl], 'a WebSocket was tried first');
      await within(5000, 'response body of the long-poll', (async () => {
        while (!postBodies.some((body) => body.includes('fb-1'))) await sleep(50);
      })());
      assert.deepEqual(await inPage(page, () => events), ['a:up'], 'the fallback is not an outage');
    });

    test('long-polls after a WebSocket that opens is closed before carrying anything', { timeout: 30000 }, async () => {
      const { page, postBodies } = await open({
        // Like a proxy that accepts the upgrade, then hangs up.
        init: (page) => page.routeWebSocket(/./, (ws) => { setTimeout(() => ws.close(), 50); }),
      });
      await makeClient(page, 'a');
      await subscribe(page, 'a', '/sync/hangup', 'hangup');
      await publishWithSecret(server, '/sync/hangup', { marker: 'hu-1' });
      assert.deepEqual(await waitForDeliveries(page, 'hangup', 1), [{ marker: 'hu-1' }]);
      await within(5000, 'response body of the long-poll', (async () => {
        while (!postBodies.some((body) => body.includes('hu-1'))) await sleep(50);
      })());
    });

    test('refuses invalid channel names locally', { timeout: 30000 }, async () => {
      const { page } = await open();
      await makeClient(page, 'a');
      const codes = await inPage(page, async () => {
        const code = (p) => p.then(() => 'ok', (e) => e.code);
        return [
          await code(clients.a.subscribe('no-slash', function () {})),
          await code(clients.a.subscribe('/a/**/b', function () {})),
          await code(clients.a.publish('/a/*', {})),
          await code(clients.a.publish('/a b', {})),
        ];
      });
      assert.deepEqual(codes, [405, 405, 405, 405]);
      assert.equal(await inPage(page, () => clients.a.getClientId()), null, 'nothing was sent');
    });

    test('dispatches to wildcard subscriptions /* and /** locally', { timeout: 30000 }, async () => {
      const { page } = await open();
      await makeClient(page, 'a');
      await subscribe(page, 'a', '/wild/*', 'one');
      await subscribe(page, 'a', '/wild/**', 'any');
      await subscribe(page, 'a', '/wild/x', 'exact');

      await publishWithSecret(server, '/wild/x/y', { n: 1 });
      await publishWithSecret(server, '/wild/x', { n: 2 });
      assert.deepEqual(await waitForDeliveries(page, 'any', 2), [{ n: 1 }, { n: 2 }]);
      const got = await inPage(page, () => window.got);
      assert.deepEqual(got.one, [{ n: 2 }], '/wild/* matches one segment only');
      assert.deepEqual(got.exact, [{ n: 2 }]);
    });

    test('cancel() stops deliveries and unsubscribes on the server', { timeout: 30000 }, async () => {
      const { page, sockets } = await open();
      await makeClient(page, 'a');
      await subscribe(page, 'a', '/sync/cancel', 'a');
      await makeClient(page, 'b');
      await subscribe(page, 'b', '/sync/cancel', 'b');
      assert.equal(sockets.length, 2);

      await publishWithSecret(server, '/sync/cancel', { n: 1 });
      await waitForDeliveries(page, 'a', 1);
      await waitForDeliveries(page, 'b', 1);

      await inPage(page, () => subscriptions.a.cancel());
      await publishWithSecret(server, '/sync/cancel', { n: 2 });
      await waitForDeliveries(page, 'b', 2);
      await sleep(300);
      assert.deepEqual(await inPage(page, () => got.a), [{ n: 1 }]);
      // Client a was made first, so sockets[0] is its socket.
      assert.ok(sockets[0].sent.some((f) => f.includes('/meta/unsubscribe')), 'a sent /meta/unsubscribe');
      assert.ok(!sockets[0].received.some((f) => f.includes('"n":2')), 'the server did not send a the message');
    });

    test('a publish from the browser is refused (403) unless the channel is public', { timeout: 30000 }, async () => {
      const { page } = await open();
      await makeClient(page, 'a');
      await subscribe(page, 'a', '/sync/private', 'private');
      await subscribe(page, 'a', '/chat/room', 'chat');

      const refused = await publishFromPage(page, 'a', '/sync/private', { evil: true });
      assert.equal(refused.ok, false);
      assert.equal(refused.isError, true);
      assert.equal(refused.code, 403);
      assert.equal(refused.message, '403:/sync/private:Forbidden channel');

      assert.deepEqual(await publishFromPage(page, 'a', '/chat/room', { text: 'hi' }), { ok: true });
      assert.deepEqual(await waitForDeliveries(page, 'chat', 1), [{ text: 'hi' }]);
      // A client whose first act is a publish handshakes first, then sends it.
      await makeClient(page, 'b');
      assert.deepEqual(await publishFromPage(page, 'b', '/chat/room', { text: 'first' }), { ok: true });
      assert.deepEqual(await waitForDeliveries(page, 'chat', 2), [{ text: 'hi' }, { text: 'first' }]);
      await sleep(200);
      assert.equal(await inPage(page, () => (got.private || []).length), 0, 'nobody received the refused message');

      const meta = await inPage(page, async () => {
        try { await clients.a.subscribe('/meta/secret', function () {}); return 'subscribed'; } catch (e) { return e.code; }
      });
      assert.equal(meta, 403, 'subscribing to /meta/* is refused and the subscription rejects');
    });

    test('extensions see and can change outgoing and incoming messages', { timeout: 30000 }, async () => {
      const { page, sockets } = await open();
      await makeClient(page, 'a');
      await inPage(page, (secret) => {
        window.outgoing = [];
        window.incoming = [];
        clients.a.addExtension({
          outgoing(message, callback) {
            outgoing.push(message.channel);
            window.ids = (window.ids || []).concat(message.id);
            // A push-only deployment's server-side publisher would do this;
            // here it proves that what the extension returns is what is sent.
            if (message.channel === '/sync/ext') message.ext = { secret };
            callback(message);
          },
          incoming(message, callback) {
            incoming.push(message.channel + (message.successful === undefined ? '' : ' reply'));
            callback(message);
          },
        });
      }, SECRET);
      await subscribe(page, 'a', '/sync/ext', 'ext');
      assert.deepEqual(await publishFromPage(page, 'a', '/sync/ext', { via: 'extension' }), { ok: true });
      assert.deepEqual(await waitForDeliveries(page, 'ext', 1), [{ via: 'extension' }]);

      const seen = await inPage(page, () => ({ outgoing, incoming }));
      for (const channel of ['/meta/handshake', '/meta/subscribe', '/meta/connect', '/sync/ext']) {
        assert.ok(seen.outgoing.includes(channel), `outgoing saw ${channel}: ${seen.outgoing}`);
      }
      for (const channel of ['/meta/handshake reply', '/meta/subscribe reply', '/sync/ext reply', '/sync/ext']) {
        assert.ok(seen.incoming.includes(channel), `incoming saw ${channel}: ${seen.incoming}`);
      }

      // Messages made in the same tick travel in one frame; ids count in base 36.
      const results = await inPage(page, () => Promise.all(
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12].map((n) => clients.a.publish('/chat/batch', { n }).then(() => 'ok', (e) => e.message))));
      assert.deepEqual(results, Array(12).fill('ok'));
      const ids = await inPage(page, () => window.ids);
      assert.deepEqual(ids.slice().sort((a, b) => parseInt(a, 36) - parseInt(b, 36)),
        ids.map((_, i) => (i + 1).toString(36)), `ids ${ids}`);
      const batches = sockets[0].sent.map((frame) => JSON.parse(frame))
        .filter((batch) => batch.some((m) => m.channel === '/chat/batch'));
      assert.equal(batches.length, 1, `one frame for the batch, got ${batches.length}`);
      assert.equal(batches[0].length, 12);
    });

    test('an outgoing extension can sign subscriptions; unsigned ones are refused', { timeout: 40000 }, async () => {
      const signedServer = await startServer(target, { signed: true });
      try {
        current = await openPage(browser.context, pageServer, signedServer.url);
        const { page } = current;
        await makeClient(page, 'a');
        const tokens = { '/sync/signed': signSubscription('/sync/signed'), '/sync/forged': signSubscription('/sync/forged', { secret: 'not-it' }) };
        await inPage(page, (tokens) => {
          clients.a.addExtension({
            outgoing(message, callback) {
              if (message.channel === '/meta/subscribe' && tokens[message.subscription]) {
                message.ext = { token: tokens[message.subscription] };
              }
              callback(message);
            },
          });
        }, tokens);
        await subscribe(page, 'a', '/sync/signed', 'signed');
        await publishWithSecret(signedServer, '/sync/signed', { ok: 1 });
        assert.deepEqual(await waitForDeliveries(page, 'signed', 1), [{ ok: 1 }]);

        const refused = await inPage(page, () => Promise.all(['/sync/forged', '/sync/unsigned'].map((channel) =>
          clients.a.subscribe(channel, record(channel)).then(() => 'subscribed', (e) => e.message))));
        assert.deepEqual(refused, ['403:/sync/forged:Forbidden channel', '403:/sync/unsigned:Forbidden channel']);
      } finally {
        await signedServer.stop();
      }
    });

    test('disconnect() ends the session and nothing more is sent', { timeout: 30000 }, async () => {
      const { page, sockets, posted } = await open();
      await makeClient(page, 'a');
      await subscribe(page, 'a', '/sync/bye', 'bye');
      const postsBefore = posted.length;
      await within(10000, 'disconnect', inPage(page, () => clients.a.disconnect()));
      assert.ok(sockets[0].sent.some((f) => f.includes('/meta/disconnect')), 'sent /meta/disconnect');
      const framesBefore = sockets[0].sent.length;

      await publishWithSecret(server, '/sync/bye', { n: 1 });
      await sleep(1500);
      assert.equal(await inPage(page, () => (got.bye || []).length), 0, 'no delivery after disconnect');
      assert.deepEqual(posted.slice(postsBefore), [], 'no new handshake or connect over HTTP');
      assert.equal(sockets.length, 1, 'no new socket');
      assert.equal(sockets[0].sent.length, framesBefore, 'no more frames');
      assert.equal(await inPage(page, () => clients.a.getClientId()), null);
    });

    for (const transport of ['websocket', 'long-polling']) {
      test(`keeps its session over many /meta/connect cycles (${transport}, server timeout 1 s)`, { timeout: 60000 }, async () => {
        const quick = await startServer(target, { timeout: 1 });
        try {
          current = await openPage(browser.context, pageServer, quick.url);
          const { page, sockets, posted } = current;
          await makeClient(page, 'a', { disableWebSocket: transport === 'long-polling' });
          await subscribe(page, 'a', '/sync/idle', 'idle');
          // Wait for the cycles themselves: each held connect is answered
          // at the 1 s timeout and sent again. 30 s: a loaded machine runs
          // slower cycles, not fewer; a client that lost its session would
          // show it in `events` (a second 'up') or in `sockets`.
          const connects = () => (transport === 'websocket' ? sockets.flatMap((s) => s.sent) : posted)
            .filter((body) => body.includes('"/meta/connect"')).length;
          const deadline = Date.now() + 30000;
          while (connects() < 4) {
            assert.ok(Date.now() < deadline, `4 /meta/connect cycles within 30 s; saw ${connects()}`);
            await sleep(50);
          }
          await publishWithSecret(quick, '/sync/idle', { n: 1 });
          assert.deepEqual(await waitForDeliveries(page, 'idle', 1), [{ n: 1 }]);

          assert.deepEqual(await inPage(page, () => events), ['a:up'], 'no outage');
          assert.equal(sockets.length, transport === 'websocket' ? 1 : 0);
        } finally {
          await quick.stop();
        }
      });


      test(`after the server is killed and restarted on the same port it reconnects and resubscribes (${transport})`, { timeout: 90000 }, async () => {
        const { page } = await open();
        await makeClient(page, 'a', { disableWebSocket: transport === 'long-polling' });
        await subscribe(page, 'a', '/sync/restart', 'restart');
        await publishWithSecret(server, '/sync/restart', { n: 1 });
        await waitForDeliveries(page, 'restart', 1);
        const firstId = await inPage(page, () => clients.a.getClientId());

        const port = server.port;
        await server.stop('SIGKILL');
        await page.waitForFunction(() => events.includes('a:down'), null, { timeout: 15000 });
        // Stay down across more than one reconnection attempt (retry is 1 s).
        await sleep(2500);

        server = await startServer(target, { port });
        await page.waitForFunction(() => events.lastIndexOf('a:up') > events.indexOf('a:down'), null, { timeout: 30000 });

        // transport:up means messages flow again; the resubscribe may still be
        // in flight, so publish until it lands (bounded).
        let received = false;
        for (let attempt = 0; attempt < 40 && !received; attempt++) {
          await publishWithSecret(server, '/sync/restart', { n: 2 });
          received = await page.waitForFunction(() => got.restart.some((d) => d.n === 2), null, { timeout: 500 })
            .then(() => true, () => false);
        }
        assert.ok(received, 'delivery after the restart');
        assert.deepEqual(await inPage(page, () => events), ['a:up', 'a:down', 'a:up'],
          'transport:down fired once, transport:up again after reconnecting');
        const secondId = await inPage(page, () => clients.a.getClientId());
        assert.ok(secondId && secondId !== firstId, 'handshook again for a new clientId');
      });
    }
  });
}
