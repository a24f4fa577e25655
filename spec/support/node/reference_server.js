// The real Faye server (npm `faye` NodeAdapter), used to check that our spec
// helpers and client scripts speak Bayeux the way Faye itself expects.
//
//   node reference_server.js [--timeout SECONDS] [--secret S] [--port N]
//                            [--mount /faye] [--public PATTERN]... [--signed]
//                            [--key KEY.pem --cert CERT.pem]
//
// Prints one JSON line {"port":N,"url":"http://127.0.0.1:N/faye"} once
// listening. With --secret it mimics backbone_sync's push rule: a non-/meta
// message needs ext.secret (removed before fan-out), else 403. POST /__publish
// with a JSON body {"channel":..,"data":..} publishes in-process, like
// BackboneSync::Server#publish. --public patterns are open to client
// publishes; --signed requires ext.token on every subscribe (the documented
// "<expires>.<hex HMAC-SHA256(secret, channel\nexpires)>"). GET /__stats
// returns {clients, subscriptions} counted from the engine's events.
// Exits on SIGTERM or when stdin closes.
'use strict';
const fs = require('fs');
const http = require('http');
const https = require('https');
const crypto = require('crypto');
const path = require('path');
const faye = require(path.join(__dirname, '..', '..', '..', 'node_modules', 'faye'));

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : dflt;
};
const timeout = Number(opt('--timeout', '45'));
const secret = opt('--secret', null);
const port = Number(opt('--port', '0'));
const mount = opt('--mount', '/faye');
const signed = args.includes('--signed');
const keyPath = opt('--key', null);
const certPath = opt('--cert', null);
const scheme = keyPath ? 'https' : 'http';
const publicPatterns = args.flatMap((a, i) => (a === '--public' ? [args[i + 1]] : []));

const bayeux = new faye.NodeAdapter({ mount: mount, timeout: timeout });

// Faye's own glob rules: /* is one segment, /** any depth.
const matches = (pattern, channel) => {
  if (pattern === channel) return true;
  if (pattern.endsWith('/**')) return channel.startsWith(pattern.slice(0, -2));
  if (pattern.endsWith('/*')) {
    const prefix = pattern.slice(0, -1);
    return channel.startsWith(prefix) && !channel.slice(prefix.length).includes('/');
  }
  return false;
};

const tokenValid = (channel, token) => {
  if (typeof token !== 'string') return false;
  const [expires, hex] = token.split('.');
  if (!/^[0-9]+$/.test(expires || '') || Number(expires) < Date.now() / 1000) return false;
  const want = crypto.createHmac('sha256', secret || '').update(channel + '\n' + expires).digest('hex');
  return hex === want;
};

if (signed) {
  bayeux.addExtension({
    incoming(message, callback) {
      if (message.channel === '/meta/subscribe') {
        const token = message.ext && message.ext.token;
        for (const ch of [].concat(message.subscription)) {
          if (!tokenValid(ch, token)) message.error = '403:' + ch + ':Forbidden channel';
        }
      }
      callback(message);
    }
  });
}

const counts = { clients: 0, subscriptions: 0 };
bayeux.on('handshake', () => { counts.clients += 1; });
bayeux.on('disconnect', () => { counts.clients -= 1; });
bayeux.on('subscribe', () => { counts.subscriptions += 1; });
bayeux.on('unsubscribe', () => { counts.subscriptions -= 1; });

if (secret) {
  bayeux.addExtension({
    incoming(message, callback) {
      if (message.channel.startsWith('/meta/')) return callback(message);
      if (publicPatterns.some((p) => matches(p, message.channel))) return callback(message);
      const given = message.ext && message.ext.secret;
      if (given !== secret) message.error = '403:' + message.channel + ':Forbidden channel';
      if (message.ext) delete message.ext.secret;
      callback(message);
    }
  });
}

// The in-process client is trusted, as server.publish is: it carries the secret.
let local = null;
const inProcessClient = () => {
  if (local) return local;
  local = bayeux.getClient();
  local.addExtension({
    outgoing(msg, cb) {
      if (secret && !msg.channel.startsWith('/meta/')) msg.ext = Object.assign({}, msg.ext, { secret: secret });
      cb(msg);
    }
  });
  return local;
};

const handler = (req, res) => {
  if (req.method === 'GET' && req.url === '/__stats') {
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify(counts));
    return;
  }
  if (req.method === 'POST' && req.url === '/__publish') {
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', () => {
      const m = JSON.parse(body);
      inProcessClient().publish(m.channel, m.data).then(
        () => { res.writeHead(200); res.end('ok'); },
        (e) => { res.writeHead(500); res.end(String(e && e.message)); });
    });
    return;
  }
  res.writeHead(404, { 'Content-Type': 'text/plain' });
  res.end('not found');
};
const server = keyPath
  ? https.createServer({ key: fs.readFileSync(keyPath), cert: fs.readFileSync(certPath) }, handler)
  : http.createServer(handler);
bayeux.attach(server);
server.listen(port, '127.0.0.1', () => {
  const bound = server.address().port;
  process.stdout.write(JSON.stringify({ port: bound, url: `${scheme}://127.0.0.1:${bound}${mount}` }) + '\n');
});

const quit = () => { bayeux.close(); server.close(); process.exit(0); };
process.on('SIGTERM', quit);
process.on('SIGINT', quit);
process.stdin.on('end', quit);
process.stdin.resume();
