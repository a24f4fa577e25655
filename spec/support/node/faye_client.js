// A real npm `faye` Client, driven by the interop specs.
//
//   node faye_client.js URL CHANNELS COUNT [--no-websocket] [--timeout SECONDS]
//                       [--tokens JSON] [--publish CHANNEL JSON]
//
// CHANNELS is comma-separated (patterns allowed). --tokens is a JSON object
// {channel: token} sent as ext.token on that channel's /meta/subscribe.
// Prints JSON lines on stdout:
//   {"ready":true,"transport":T}            once every subscription is acked
//   {"error":"...","channel":C}             when a subscription fails (then exits 2)
//   {"message":M,"transport":T}             for each delivery as received on the wire
//   {"done":true,"received":N}              when COUNT deliveries arrived (exit 0)
//   {"timeout":true,"received":N}           when the deadline passed first (exit 3)
//   {"published":true} or {"publish_error":"..."}  with --publish, after ready
// T is the transport the client is using at that moment (websocket, long-polling, ...).
'use strict';
const path = require('path');
const faye = require(path.join(__dirname, '..', '..', '..', 'node_modules', 'faye'));

const argv = process.argv.slice(2);
const positional = [];
const flags = {};
for (let i = 0; i < argv.length; i++) {
  const a = argv[i];
  if (a === '--no-websocket') flags.noWebsocket = true;
  else if (a === '--timeout') flags.timeout = Number(argv[++i]);
  else if (a === '--tokens') flags.tokens = JSON.parse(argv[++i]);
  else if (a === '--publish') flags.publish = [argv[++i], JSON.parse(argv[++i])];
  else positional.push(a);
}
const [url, channelList, countArg] = positional;
if (!url || !channelList || countArg === undefined) {
  process.stderr.write('usage: faye_client.js URL CHANNELS COUNT [--no-websocket] [--timeout S] [--tokens JSON]\n');
  process.exit(64);
}
const channels = channelList.split(',').filter((c) => c.length > 0);
const count = Number(countArg);
const timeoutSec = flags.timeout || 20;
const tokens = flags.tokens || {};

const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');

// Self-signed certificates in the TLS specs: this client only ever talks to 127.0.0.1.
if (url.startsWith('https:')) process.env.NODE_TLS_REJECT_UNAUTHORIZED = '0';

const client = new faye.Client(url, { timeout: 60, retry: 1 });
if (flags.noWebsocket) client.disable('websocket');

const transport = () => client._dispatcher && client._dispatcher.connectionType;
let received = 0;
let finished = false;

const finish = (code, line) => {
  if (finished) return;
  finished = true;
  out(line);
  clearTimeout(deadline);
  // disconnect() is best effort; never let it hold the process open.
  try { client.disconnect(); } catch (e) { /* exiting anyway */ }
  setTimeout(() => process.exit(code), 100);
};

client.addExtension({
  outgoing(message, callback) {
    if (message.channel === '/meta/subscribe' && tokens[message.subscription]) {
      message.ext = Object.assign({}, message.ext, { token: tokens[message.subscription] });
    }
    callback(message);
  },
  incoming(message, callback) {
    if (!message.channel.startsWith('/meta/') && 'data' in message && !('successful' in message)) {
      if (!finished) {
        received += 1;
        out({ message: message, transport: transport() });
        if (received >= count) finish(0, { done: true, received: received });
      }
    }
    callback(message);
  }
});

const deadline = setTimeout(() => finish(3, { timeout: true, received: received }), timeoutSec * 1000);

Promise.all(channels.map((ch) => client.subscribe(ch, () => {}))).then(
  () => {
    out({ ready: true, transport: transport() });
    if (flags.publish) {
      client.publish(flags.publish[0], flags.publish[1]).then(
        () => out({ published: true }),
        (err) => out({ publish_error: err && err.message }));
    }
    if (count === 0 && !flags.publish) finish(0, { done: true, received: 0 });
  },
  (err) => finish(2, { error: err && err.message, code: err && err.code })
);

process.on('SIGTERM', () => process.exit(143));
