// Plumbing for the Backbone extension specs: a fresh copy of a real
// Backbone release from npm (with the Underscore it depends on), our asset
// files evaluated against it as Sprockets would serve them, a Faye server
// (the real npm `faye` NodeAdapter in this process, or BackboneSync::Server
// as a child process) with real Node Faye clients, and an ajax stand-in
// the spec controls (it stands for Rails), so that a save's
// response can be held back while a broadcast is delivered.

import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(here, '../../../..');
const ASSETS = path.join(ROOT, 'vendor/assets/javascripts');
const require = createRequire(import.meta.url);
export const faye = require('faye');

export const VERSIONS = (process.env.BACKBONE_VERSIONS || '0.9.2,1.0.0,1.4.0,1.6.1')
  .split(',').map((s) => s.trim()).filter(Boolean);

// A fresh Backbone of `version`, not shared with any other spec: the
// extensions patch prototypes and Backbone.sync.
export function loadBackbone(version) {
  const dir = path.join(ROOT, 'node_modules', `backbone-${version}`);
  const source = fs.readFileSync(path.join(dir, 'backbone.js'), 'utf8');
  const own = createRequire(path.join(dir, 'package.json'));
  const _ = own('underscore');
  const fakeRequire = (name) => {
    if (name === 'underscore') return _;
    throw new Error(`Cannot find module '${name}'`);   // jquery: Backbone copes
  };
  const module = { exports: {} };
  new Function('module', 'exports', 'require', 'define', source).call(globalThis, module, module.exports, fakeRequire, undefined);
  const Backbone = module.exports;
  if (Backbone.VERSION !== version) throw new Error(`loaded Backbone ${Backbone.VERSION}, wanted ${version}`);
  return { Backbone, _ };
}

// The files a page would get from `//= require backbone_sync`, minus the
// Faye client (the specs pass real Node Faye clients).
export const ASSET_FILES = [
  'backbone_sync/core.js',
  'extensions/backbone.collection.idempotent.js',
  'backbone_sync-rails/rails_faye_subscriber.js',
  'backbone_sync/pushable.js',
];

// `files` with what they `//= require` first, each once, in the order
// Sprockets serves them (backbone_sync/core.js is its parts, then itself).
export function assetOrder(files = ASSET_FILES) {
  const order = [];
  const visit = (file) => {
    if (order.includes(file)) return;
    const source = fs.readFileSync(path.join(ASSETS, file), 'utf8');
    for (const [, required] of source.matchAll(/^\/\/= require (\S+)\s*$/gm)) visit(`${required}.js`);
    order.push(file);
  };
  files.forEach(visit);
  return order;
}

// A page-like `window` holding Backbone, _ and our assets.
export function loadPage(version, files = ASSET_FILES) {
  const { Backbone, _ } = loadBackbone(version);
  const window = { Backbone, _ };
  for (const file of assetOrder(files)) {
    const source = fs.readFileSync(path.join(ASSETS, file), 'utf8');
    new Function('window', source)(window);
  }
  window.ajax = installAjax(Backbone);
  return window;
}

// Replace the network under Backbone.sync: each request is recorded and
// waits until the spec answers it with `respond(body)` or `fail(status)`.
export function installAjax(Backbone) {
  const requests = [];
  const ajax = (params) => {
    const request = {
      params,
      type: params.type,
      url: params.url,
      headers: params.headers || {},
      body: params.data ? JSON.parse(params.data) : null,
      done: false,
      respond(body) {
        request.done = true;
        params.success(body, 'success', { status: 200 });
      },
      fail(status = 500) {
        request.done = true;
        const xhr = { status, responseText: '' };
        params.error(xhr, 'error', 'Internal Server Error');
      },
    };
    requests.push(request);
    return { abort() {} };
  };
  if (Backbone.VERSION === '0.9.2') Backbone.setDomLibrary({ ajax });
  else Backbone.ajax = ajax;
  return requests;
}

// The real Faye server, in this process, on a free loopback port. It logs
// every /meta/subscribe and /meta/unsubscribe it receives.
export async function startFaye({ port = 0 } = {}) {
  const adapter = new faye.NodeAdapter({ mount: '/faye', timeout: 5 });
  const meta = [];
  adapter.addExtension({
    incoming(message, callback) {
      if (message.channel === '/meta/subscribe' || message.channel === '/meta/unsubscribe') {
        meta.push({ channel: message.channel, subscription: message.subscription, clientId: message.clientId });
      }
      callback(message);
    },
  });
  const server = http.createServer();
  adapter.attach(server);
  const sockets = new Set();
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', resolve);
  });
  const url = `http://127.0.0.1:${server.address().port}/faye`;
  const clients = [];
  return {
    url,
    port: server.address().port,
    meta,
    // A real Node Faye client with quick retries; disconnected by stop().
    client() {
      const client = new faye.Client(url, { retry: 0.2, timeout: 5 });
      clients.push(client);
      return client;
    },
    // Publish as the Rails side would (through the server's own client).
    publish(channel, data) {
      return adapter.getClient().publish(channel, data);
    },
    // Close the server and every connection to it, without a goodbye.
    async kill() {
      adapter.getClient().disconnect();
      adapter.close();
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
    async stop() {
      for (const client of clients) await goodbye(client);
      await this.kill();
    },
  };
}

// BackboneSync::Server itself (bin/backbone_sync, as spec/javascripts/
// support/harness.mjs starts it), with the same face as startFaye(): the
// pushable and subscriber paths must hold against the server we ship, not
// only against the npm one. Publishing goes over HTTP with the secret, as
// the Rails side does. Our server keeps no log a spec can read, so `meta`
// records the server's successful answers to each client's /meta/subscribe
// and /meta/unsubscribe: an answer means the server has done it.
export async function startOurs({ port = 0 } = {}) {
  const { startServer, publishOverHttp } = await import('../../support/harness.mjs');
  const server = await startServer('ours', { port, timeout: 5 });
  const meta = [];
  const clients = [];
  return {
    url: server.url,
    port: server.port,
    meta,
    client() {
      const client = new faye.Client(server.url, { retry: 0.2, timeout: 5 });
      client.addExtension({
        incoming(message, callback) {
          if ((message.channel === '/meta/subscribe' || message.channel === '/meta/unsubscribe') && message.successful) {
            const subscriptions = [].concat(message.subscription);
            for (const subscription of subscriptions) {
              meta.push({ channel: message.channel, subscription, clientId: message.clientId });
            }
          }
          callback(message);
        },
      });
      clients.push(client);
      return client;
    },
    async publish(channel, data) {
      const { status, replies } = await publishOverHttp(server.url, channel, data);
      if (status !== 200 || !replies[0]?.successful) {
        throw new Error(`publish to ${channel}: ${status} ${JSON.stringify(replies)}`);
      }
    },
    // The process dies without a goodbye to anyone.
    async kill() { await server.stop('SIGKILL'); },
    async stop() {
      for (const client of clients) await goodbye(client);
      await server.stop();
    },
  };
}

// The servers the Backbone extension specs run against (TARGETS=faye,ours).
export const TARGETS = (process.env.TARGETS || 'faye,ours').split(',').map((s) => s.trim()).filter(Boolean);
export const TARGET_NAMES = { faye: 'the npm faye NodeAdapter', ours: 'BackboneSync::Server (bin/backbone_sync)' };
export const startTarget = (kind, options) => (kind === 'ours' ? startOurs(options) : startFaye(options));

// Disconnect a Node Faye client and wait for the server's answer: a client
// whose goodbye is lost keeps retrying, and keeps the process alive.
export async function goodbye(client) {
  const done = client.disconnect();
  if (done && typeof done.then === 'function') {
    await within(3000, 'faye disconnect', new Promise((resolve) => done.then(resolve, resolve))).catch(() => {});
  }
}

// Poll `check` until it returns something truthy, at most `ms` ms.
export async function eventually(check, what, ms = 3000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

// Wait until `promise` settles, at most `ms` ms.
export function within(ms, what, promise) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: nothing within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
