// Recovery in vendor/assets/javascripts/backbone_sync/faye.js: after a
// reconnect or a new handshake the client subscribes again with
// `ext.since` (the last offset and epoch it delivered per channel), drops
// replayed messages it already delivered, and fires `resync` when the
// server could not replay. Headless Chromium; the page's WebSocket is
// routed through Playwright so a spec can swallow frames and cut the line.
//
//   node --test spec/javascripts/recovery.test.mjs
//   FAYE_JS_TARGETS=faye node --test spec/javascripts/recovery.test.mjs
//
// Replay needs the server's history: those specs run against
// bin/backbone_sync only (`bundle exec rake compile` first). The Node Faye
// server keeps no history; against it only the resync spec runs.

import { describe, test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  TARGET_NAMES, startServer, startPageServer, launchBrowser, openPage, inPage,
  publishOverHttp, waitForDeliveries, within, sleep,
} from './support/harness.mjs';

const TARGETS = (process.env.FAYE_JS_TARGETS || 'ours,faye').split(',').map((s) => s.trim()).filter(Boolean);

let pageServer;
before(async () => { pageServer = await startPageServer(); });
after(async () => { await pageServer?.close(); });

// Route every WebSocket of the page through the spec: `line.swallow` drops
// frames both ways (a dead network the sockets have not noticed yet),
// `line.cut()` closes both ends. Frames that reach the page are recorded
// per socket, and so are the server's frames the line swallowed
// (`dropped`): a spec waits on those, not on a clock, to know a message
// went into the dead line.
function tappedLine() {
  const line = { swallow: false, routes: [], received: [], sent: [], dropped: [], log: [] };
  const t0 = Date.now();
  const note = (index, what, frame) => line.log.push(`+${Date.now() - t0}ms socket ${index} ${what} ${frame}`);
  line.install = (page) => page.routeWebSocket(/./, (ws) => {
    const server = ws.connectToServer();
    const index = line.routes.length;
    line.routes.push({ ws, server });
    line.received[index] = [];
    line.sent[index] = [];
    line.dropped[index] = [];
    note(index, 'opened', '');
    ws.onMessage((message) => {
      if (line.swallow) return;
      note(index, 'page>server', message);
      line.sent[index].push(String(message));
      server.send(message);
    });
    server.onMessage((message) => {
      if (line.swallow) {
        note(index, 'swallowed', message);
        line.dropped[index].push(String(message));
        return;
      }
      note(index, 'server>page', message);
      line.received[index].push(String(message));
      ws.send(message);
    });
  });
  line.cut = async () => {
    const { ws, server } = line.routes[line.routes.length - 1];
    note(line.routes.length - 1, 'cut', '');
    await Promise.allSettled([ws.close(), server.close()]);
    note(line.routes.length - 1, 'cut done', '');
  };
  line.note = (what) => note('-', what, '');
  return line;
}

function makeClient(page, name, { disableWebSocket = false } = {}) {
  return inPage(page, ({ name, disableWebSocket }) => {
    const client = new Faye.Client(ENDPOINT, { timeout: 20, retry: 1 });
    if (disableWebSocket) client.disable('websocket');
    client.on('transport:up', () => events.push(`${name}:up`));
    client.on('transport:down', () => events.push(`${name}:down`));
    client.bind('resync', (channel) => events.push(`${name}:resync:${channel}`));
    clients[name] = client;
  }, { name, disableWebSocket });
}

function subscribe(page, name, channel, label) {
  return inPage(page, async ({ name, channel, label }) => {
    await clients[name].subscribe(channel, record(label));
  }, { name, channel, label });
}

async function publish(server, channel, data) {
  const { status, replies } = await publishOverHttp(server.url, channel, data);
  assert.equal(status, 200);
  assert.equal(replies[0]?.successful, true, JSON.stringify(replies));
}

// Resolve once check() is truthy (polled every 20 ms), or fail after `ms`.
async function until(check, what, ms = 15000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms`);
    await sleep(20);
  }
}

// Wait until the page has delivered { n } on `label`. Anything the line
// carried before that message (a replay, a duplicate) has been delivered
// too: one socket, one order. So a check of the whole list after this
// needs no sleep.
const delivered = (page, label, n, ms = 15000) => page.waitForFunction(
  ({ label, n }) => (window.got[label] || []).some((d) => d.n === n), { label, n }, { timeout: ms, polling: 50 });

// What went over each socket of a tapped line, for a failure message.
async function lineReport(line, page) {
  const state = await inPage(page, () => ({ events, got: got.got, id: clients.a.getClientId() }), null, 5000)
    .catch((e) => `page: ${e.message}`);
  return [`page: ${JSON.stringify(state)}`, ...line.log].join('\n');
}

const offsetsIn = (frames, channel) => frames.flatMap((frame) => JSON.parse(frame))
  .filter((m) => m.channel === channel && m.ext && typeof m.ext.offset === 'number')
  .map((m) => m.ext.offset);

for (const target of TARGETS) {
  describe(`faye.js recovery against ${TARGET_NAMES[target]}`, () => {
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

    const open = async (line) => {
      current = await openPage(browser.context, pageServer, server.url, { init: line && line.install });
      return current;
    };

    const historyOnly = { skip: target !== 'ours' && 'the Node Faye server keeps no history', timeout: 60000 };

    test('messages a dying socket swallowed are replayed once, in order, after the reconnect', historyOnly, async () => {
      const line = tappedLine();
      const { page } = await open(line);
      await makeClient(page, 'a');
      await subscribe(page, 'a', '/sync/swallowed', 'got');
      for (const n of [1, 2]) await publish(server, '/sync/swallowed', { n });
      await waitForDeliveries(page, 'got', 2);
      const firstId = await inPage(page, () => clients.a.getClientId());

      // The server writes 3..5 into a line that no longer carries anything:
      // gone from its session queue, still in the channel's history.
      line.swallow = true;
      for (const n of [3, 4, 5]) await publish(server, '/sync/swallowed', { n });
      await until(() => [3, 4, 5].every((o) => offsetsIn(line.dropped.flat(), '/sync/swallowed').includes(o)),
        'offsets 3..5 written into the dead line');
      await line.cut();
      line.swallow = false;

      await page.waitForFunction(() => events.lastIndexOf('a:up') > events.indexOf('a:down'), null, { timeout: 15000 });
      await waitForDeliveries(page, 'got', 5);
      await publish(server, '/sync/swallowed', { n: 6 });
      await delivered(page, 'got', 6);

      assert.deepEqual(await inPage(page, () => got.got.map((d) => d.n)), [1, 2, 3, 4, 5, 6]);
      assert.equal(await inPage(page, () => clients.a.getClientId()), firstId, 'the same session went on');
      const resubscribe = line.sent[1].flatMap((f) => JSON.parse(f)).find((m) => m.channel === '/meta/subscribe');
      assert.equal(resubscribe?.subscription, '/sync/swallowed');
      assert.equal(resubscribe.ext?.since?.offset, 2, `since: ${JSON.stringify(resubscribe)}`);
      assert.equal(typeof resubscribe.ext.since.epoch, 'string');
      assert.ok(!(await inPage(page, () => events)).some((e) => e.includes('resync')), 'everything was recovered: no resync');
    });

    test('messages both kept by the session and replayed are delivered once', historyOnly, async () => {
      const line = tappedLine();
      const { page } = await open(line);
      await makeClient(page, 'a');
      await subscribe(page, 'a', '/sync/twice', 'got');
      await publish(server, '/sync/twice', { n: 1 });
      await waitForDeliveries(page, 'got', 1);

      // A clean close: the server knows, and queues 2..4 for the session.
      await line.cut();
      for (const n of [2, 3, 4]) {
        await publish(server, '/sync/twice', { n });
        line.note(`published n=${n}`);
      }

      try {
        await page.waitForFunction(() => events.lastIndexOf('a:up') > events.indexOf('a:down'), null, { timeout: 15000 });
        await waitForDeliveries(page, 'got', 4);
        await publish(server, '/sync/twice', { n: 5 });
        await delivered(page, 'got', 5);
      } catch (error) {
        error.message += `\n${await lineReport(line, page)}`;
        throw error;
      }

      assert.deepEqual(await inPage(page, () => got.got.map((d) => d.n)), [1, 2, 3, 4, 5]);
      // The session's queue may go out on the new socket before the
      // resubscribe with since arrives; the replay then repeats those
      // offsets, and the client drops the repeats (the assertion above).
      const wire = offsetsIn(line.received[1], '/sync/twice');
      assert.ok([2, 3, 4, 5].every((o) => wire.includes(o)), `offsets 2..5 arrived: ${wire}`);
      assert.equal(wire[wire.length - 1], 5, `the new message came after the replay: ${wire}`);
      assert.ok(!(await inPage(page, () => events)).some((e) => e.includes('resync')));
    });

    for (const transport of ['websocket', 'long-polling']) {
      test(`after the server forgot the session, the new handshake replays what was published meanwhile (${transport})`, historyOnly, async () => {
        const line = tappedLine();
        const { page } = await open(line);
        await makeClient(page, 'a', { disableWebSocket: transport === 'long-polling' });
        const channel = `/sync/forgotten_${transport.replace('-', '_')}`;
        await subscribe(page, 'a', channel, 'got');
        for (const n of [1, 2]) await publish(server, channel, { n });
        await waitForDeliveries(page, 'got', 2);
        const firstId = await inPage(page, () => clients.a.getClientId());

        // End the session from outside and publish. The client finds out
        // (401 Unknown client) when its line breaks, or at its next
        // long-poll, and handshakes again.
        const bye = await fetch(server.url, {
          method: 'POST', headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify([{ channel: '/meta/disconnect', clientId: firstId }]),
        });
        assert.equal((await bye.json())[0].successful, true);
        for (const n of [3, 4]) await publish(server, channel, { n });
        if (transport === 'websocket') await line.cut();

        await page.waitForFunction((firstId) => {
          const id = clients.a.getClientId();
          return id && id !== firstId;
        }, firstId, { timeout: 20000 });
        await delivered(page, 'got', 4);
        assert.deepEqual(await inPage(page, () => got.got.map((d) => d.n)), [1, 2, 3, 4]);
        assert.ok(!(await inPage(page, () => events)).some((e) => e.includes('resync')), 'recovered: no resync');
      });
    }

    test('a gap in the offsets of a live connection fires resync for that channel', historyOnly, async () => {
      const line = tappedLine();
      const { page } = await open(line);
      await makeClient(page, 'a');
      await subscribe(page, 'a', '/sync/gap', 'got');
      await publish(server, '/sync/gap', { n: 1 });
      await waitForDeliveries(page, 'got', 1);

      line.swallow = true;
      await publish(server, '/sync/gap', { n: 2 });
      // The proof that 2 was lost: the line swallowed its frame.
      await until(() => offsetsIn(line.dropped.flat(), '/sync/gap').includes(2), 'offset 2 swallowed');
      line.swallow = false;
      await publish(server, '/sync/gap', { n: 3 });
      await delivered(page, 'got', 3);
      assert.deepEqual(await inPage(page, () => got.got.map((d) => d.n)), [1, 3]);
      assert.deepEqual(await inPage(page, () => events), ['a:up', 'a:resync:/sync/gap']);
    });

    test('unsubscribing forgets the positions it followed: subscribing again later is no gap', historyOnly, async () => {
      const { page } = await open();
      await makeClient(page, 'a');
      // A glob: its subscribe reply carries no position to start from.
      await subscribe(page, 'a', '/again/*', 'got');
      await publish(server, '/again/x', { n: 1 });
      await waitForDeliveries(page, 'got', 1);
      await inPage(page, () => clients.a.unsubscribe('/again/*'));
      await publish(server, '/again/x', { n: 2 });
      await subscribe(page, 'a', '/again/*', 'got');
      await publish(server, '/again/x', { n: 3 });
      await delivered(page, 'got', 3);
      assert.deepEqual(await inPage(page, () => got.got.map((d) => d.n)), [1, 3]);
      assert.deepEqual(await inPage(page, () => events), ['a:up']);
    });

    test('a server restart fires resync for each subscribed channel, once', { timeout: 90000 }, async () => {
      const line = tappedLine();
      const { page } = await open(line);
      await makeClient(page, 'a');
      await subscribe(page, 'a', '/sync/restarted', 'got');
      await subscribe(page, 'a', '/sync/other', 'other');
      await publish(server, '/sync/restarted', { n: 1 });
      await waitForDeliveries(page, 'got', 1);

      const port = server.port;
      await server.stop('SIGKILL');
      await page.waitForFunction(() => events.includes('a:down'), null, { timeout: 15000 });
      server = await startServer(target, { port });
      await page.waitForFunction(() => events.filter((e) => e.includes('resync')).length >= 2, null, { timeout: 30000 });

      if (target === 'ours') {
        const resubscribe = line.sent.slice(1).flat().flatMap((f) => JSON.parse(f))
          .find((m) => m.channel === '/meta/subscribe' && m.subscription === '/sync/restarted');
        assert.equal(resubscribe?.ext?.since?.offset, 1, 'it asked, and the new server could not answer');
      }
      // Deliveries go on, counted in the new epoch.
      let received = false;
      for (let attempt = 0; attempt < 20 && !received; attempt++) {
        await publish(server, '/sync/restarted', { n: 2 });
        received = await page.waitForFunction(() => got.got.some((d) => d.n === 2), null, { timeout: 500 })
          .then(() => true, () => false);
      }
      assert.ok(received);
      // Checked once deliveries flow again, after every resubscribe was
      // answered: a second resync for a channel would have fired by then.
      const events = await inPage(page, () => events);
      assert.deepEqual(events.filter((e) => e.includes('resync')).sort(),
        ['a:resync:/sync/other', 'a:resync:/sync/restarted']);
    });
  });
}
