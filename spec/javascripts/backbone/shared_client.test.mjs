// BackboneSync.client(), the page's one Faye client (backbone_sync/client.js),
// made from BackboneSync.configure: its `server` and its `clientOptions`
// reach the real npm Faye client, and it reaches our server
// (bin/backbone_sync) once that server is up.
//
// `clientOptions` is the README's `{retry: 1}`: the seconds before the client
// tries again after a failure. Until the server is up, the port drops every
// connection as it comes (a server restarting behind a proxy). Faye's own
// default retry is 5 s, so a client that never saw the option needs 20 s to
// try six times; with `{retry: 0.1}` it needs about half a second. The bound
// below (10 s) sits between the two with room on a loaded machine.
//
//   bundle exec rake compile && node --test spec/javascripts/backbone/shared_client.test.mjs

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { faye, loadPage, eventually, goodbye, within } from './support/backbone_env.mjs';
import { startServer, publishOverHttp } from '../support/harness.mjs';
import net from 'node:net';

const SIX_TRIES_MS = 10000;

test('configure({clientOptions}) reaches the shared client: {retry: 0.1} tries again ten times a second, then finds the server', { timeout: 60000 }, async () => {
  const page = loadPage('1.6.1');
  page.Faye = faye; // the page's Faye, as <server>.js or backbone_sync/faye would provide it
  const tries = [];
  const dropping = net.createServer((socket) => { tries.push(Date.now()); socket.destroy(); });
  await new Promise((resolve) => dropping.listen(0, '127.0.0.1', resolve));
  const { port } = dropping.address();
  page.BackboneSync.configure({ server: `http://127.0.0.1:${port}/faye`, clientOptions: { retry: 0.1, timeout: 5 } });

  const client = page.BackboneSync.client();
  assert.equal(page.BackboneSync.client(), client, 'one client per page');
  const got = [];
  const subscribed = client.subscribe('/sync/users', (data) => got.push(data));
  let server;
  try {
    await eventually(() => tries.length >= 6, 'six connections from the client', SIX_TRIES_MS);
    await new Promise((resolve) => dropping.close(resolve));

    // The server comes up on that port: the next retry finds it.
    server = await startServer('ours', { port, timeout: 5 });
    await within(20000, 'the subscribe, once the server is up', subscribed);
    const { status } = await publishOverHttp(server.url, '/sync/users', { id: 1 });
    assert.equal(status, 200);
    await eventually(() => got.length === 1, 'the message', 10000);
    assert.deepEqual(got, [{ id: 1 }]);
  } finally {
    if (dropping.listening) dropping.close();
    await goodbye(client);
    await server?.stop();
  }
});
