// The reference server for bin/bench: the real npm `faye` NodeAdapter on a
// plain http server, configured like our server (mount /faye, timeout 45,
// loopback only). Prints one "listening" line, as bin/backbone_sync does, so
// bin/bench reads the port the same way for both servers.
//
// Usage: node bench/faye_server.js [--port 0]
'use strict';

const http = require('http');
const faye = require('faye');

const argv = process.argv.slice(2);
const portArg = argv.indexOf('--port');
const port = portArg >= 0 ? Number(argv[portArg + 1]) : 0;

const bayeux = new faye.NodeAdapter({ mount: '/faye', timeout: 45 });
const server = http.createServer();
bayeux.attach(server);

server.on('error', (err) => {
  console.error(`faye_server: ${err.message}`);
  process.exit(1);
});
server.listen(port, '127.0.0.1', () => {
  process.stdout.write(`faye listening on http://127.0.0.1:${server.address().port}/faye\n`);
});

for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(0));
