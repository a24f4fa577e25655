// The reference server for the browser client specs: the real npm `faye`
// NodeAdapter, dressed like bin/backbone_sync so the specs can drive both the
// same way. It serves our client (not Faye's) at <mount>.js and
// <mount>/client.js, and enforces the same publish rule as our server:
// a message to a non-meta channel needs ext.secret unless the channel matches
// a --public pattern; the secret is stripped before fan-out. With
// --signed-subscriptions every subscribe needs ext.token as made by
// BackboneSync.sign ("<expires>.<hex HMAC-SHA256(secret, channel\nexpires)>").
//
//   node spec/javascripts/support/faye_server.mjs --port 0 --secret S \
//     --public '/chat/**' --timeout 10
//
// Prints `faye listening on http://127.0.0.1:PORT/faye`, runs until SIGTERM.

import http from 'node:http';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import crypto from 'node:crypto';
import { channelMatches } from './channels.mjs';

const require = createRequire(import.meta.url);
const faye = require('faye');

const here = path.dirname(fileURLToPath(import.meta.url));
const CLIENT_JS = path.resolve(here, '../../../vendor/assets/javascripts/backbone_sync/faye.js');

const opts = { port: 0, secret: null, mount: '/faye', timeout: 10, public: [], signed: false };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i += 2) {
  const key = argv[i].replace(/^--/, ''), value = argv[i + 1];
  if (key === 'signed-subscriptions') { opts.signed = true; i -= 1; }
  else if (key === 'public') opts.public.push(value);
  else if (key === 'port' || key === 'timeout') opts[key] = Number(value);
  else if (key in opts) opts[key] = value;
  else { console.error(`unknown option ${argv[i]}`); process.exit(2); }
}

const adapter = new faye.NodeAdapter({ mount: opts.mount, timeout: opts.timeout });

function validToken(channel, token) {
  const match = /^(\d+)\.([0-9a-f]{64})$/.exec(String(token || ''));
  if (!match || Number(match[1]) < Date.now() / 1000) return false;
  const want = crypto.createHmac('sha256', opts.secret || '').update(`${channel}\n${match[1]}`).digest('hex');
  return crypto.timingSafeEqual(Buffer.from(want), Buffer.from(match[2]));
}

adapter.addExtension({
  incoming(message, callback) {
    const channel = String(message.channel || '');
    if (channel === '/meta/subscribe' && opts.signed) {
      const subscription = String(message.subscription);
      if (!validToken(subscription, message.ext && message.ext.token)) {
        message.error = `403:${subscription}:Forbidden channel`;
      }
    }
    if (!channel.startsWith('/meta/')) {
      const secret = message.ext && message.ext.secret;
      const open = opts.public.some((pattern) => channelMatches(pattern, channel));
      if (!open && (opts.secret === null || secret !== opts.secret)) {
        message.error = `403:${channel}:Forbidden channel`;
      }
      if (message.ext) delete message.ext.secret;
    }
    callback(message);
  },
});

const server = http.createServer((req, res) => {
  const { pathname } = new URL(req.url, 'http://localhost');
  if (req.method === 'GET' && (pathname === `${opts.mount}.js` || pathname === `${opts.mount}/client.js`)) {
    res.writeHead(200, { 'Content-Type': 'application/javascript', 'Cache-Control': 'no-cache, no-store' });
    res.end(fs.readFileSync(CLIENT_JS));
    return;
  }
  if (adapter.check(req)) return adapter.handle(req, res);
  res.writeHead(404, { 'Content-Type': 'text/plain' });
  res.end('not found\n');
});
server.on('upgrade', (req, socket, head) => {
  if (adapter.check(req)) adapter.handleUpgrade(req, socket, head);
  else socket.destroy();
});

server.listen(opts.port, '127.0.0.1', () => {
  process.stdout.write(`faye listening on http://127.0.0.1:${server.address().port}${opts.mount}\n`);
});

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    adapter.close();
    server.close();
    process.exit(0);
  });
}
