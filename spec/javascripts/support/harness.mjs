// Shared plumbing for the browser client specs: start and stop servers as
// child processes, serve the test page, drive headless Chromium. Every wait
// is bounded; every child process and browser is tracked so it is killed
// even when a spec fails.

import { spawn } from 'node:child_process';
import http from 'node:http';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import crypto from 'node:crypto';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(here, '../../..');
export const SECRET = 'S';

const children = new Set();
function killChildren() {
  for (const child of children) {
    try { child.kill('SIGKILL'); } catch { /* gone already */ }
  }
}
process.on('exit', killChildren);
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => {
    killChildren();
    process.kill(process.pid, signal);
  });
}

// Resolve `promise`, or reject after `ms` naming `what` was too slow.
export function within(ms, what, promise) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no result within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// The servers the specs can run against. `ours` is bin/backbone_sync (needs
// `bundle exec rake compile` first); `faye` is the npm faye NodeAdapter
// wrapped by support/faye_server.mjs.
const COMMANDS = {
  ours: (args) => ['ruby', ['-Ilib', 'bin/backbone_sync', ...args]],
  faye: (args) => [process.execPath, [path.join(here, 'faye_server.mjs'), ...args]],
};

export const TARGET_NAMES = { ours: 'backbone_sync (bin/backbone_sync)', faye: 'npm faye NodeAdapter' };

// Start server `kind` and resolve once it prints its URL:
// { url, port, stop(signal) }.
export async function startServer(kind, { port = 0, timeout = 10, publicChannels = ['/chat/**'], signed = false } = {}) {
  const args = ['--port', String(port), '--secret', SECRET, '--timeout', String(timeout)];
  for (const pattern of publicChannels) args.push('--public', pattern);
  if (signed) args.push('--signed-subscriptions');
  const [command, argv] = COMMANDS[kind](args);

  const child = spawn(command, argv, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  let stdout = '', stderr = '';
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => {
    children.delete(child);
    resolve({ code, signal });
  }));
  child.stderr.on('data', (chunk) => { stderr += chunk; });

  const url = await within(20000, `${kind} server start`, new Promise((resolve, reject) => {
    child.stdout.on('data', (chunk) => {
      stdout += chunk;
      const match = /listening on (http:\/\/\S+)/.exec(stdout);
      if (match) resolve(match[1]);
    });
    child.once('error', reject);
    exited.then(({ code, signal }) => reject(new Error(
      `${command} ${argv.join(' ')} exited (${code ?? signal}) before listening.\n` +
      `stdout: ${stdout}\nstderr: ${stderr}`)));
  })).catch((error) => {
    child.kill('SIGKILL');
    throw error;
  });

  return {
    kind,
    url,
    port: Number(new URL(url).port),
    child,
    stderr: () => stderr,
    // Stop the process and wait for it to be gone (SIGKILL after 5 s).
    async stop(signal = 'SIGTERM') {
      if (child.exitCode !== null || child.signalCode !== null) return exited;
      child.kill(signal);
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
      try { return await exited; } finally { clearTimeout(timer); }
    },
  };
}

// POST one message to the server as an outside publisher would.
export async function publishOverHttp(url, channel, data, { secret = SECRET } = {}) {
  const message = { channel, data };
  if (secret) message.ext = { secret };
  const response = await within(10000, `POST ${url}`, fetch(url, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify([message]),
  }));
  const body = await response.text();
  let replies;
  try { replies = JSON.parse(body); } catch { throw new Error(`POST ${url} → ${response.status} ${body}`); }
  return { status: response.status, replies };
}

// A page server on its own port, so the page and the Bayeux server are
// cross-origin as in a real Rails app talking to a separate push server.
export async function startPageServer() {
  const server = http.createServer((req, res) => {
    const endpoint = new URL(req.url, 'http://localhost').searchParams.get('endpoint') || '';
    if (!/^http:\/\/127\.0\.0\.1:\d+\/[\w/]+$/.test(endpoint)) {
      res.writeHead(400);
      res.end('endpoint?');
      return;
    }
    res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
    res.end(`<!doctype html>
<meta charset="utf-8"><title>faye.js spec</title>
<script>
  window.ENDPOINT = ${JSON.stringify(endpoint)};
  window.pageErrors = [];
  window.addEventListener('error', function (e) { pageErrors.push(String(e.message)); });
</script>
<script src="${endpoint}.js"></script>
<script>
  window.got = {};
  window.events = [];
  window.clients = {};
  window.record = function (label) {
    return function (data) { (got[label] = got[label] || []).push(data); };
  };
</script>`);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    pageUrl: (endpoint) => `http://127.0.0.1:${server.address().port}/?endpoint=${encodeURIComponent(endpoint)}`,
    close: () => new Promise((resolve) => { server.closeAllConnections(); server.close(resolve); }),
  };
}

// Headless Debian Chromium with a fresh profile directory.
export async function launchBrowser() {
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'backbone-sync-chromium-'));
  const context = await within(30000, 'chromium launch', chromium.launchPersistentContext(userDataDir, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run'],
  }));
  return {
    context,
    async close() {
      try { await within(10000, 'chromium close', context.close()); } finally {
        fs.rmSync(userDataDir, { recursive: true, force: true });
      }
    },
  };
}

// Open the test page for `endpoint` and record what crosses the network:
// every WebSocket with its frames, the POSTed bodies and the bodies of the
// POST responses.
export async function openPage(context, pageServer, endpoint, { init } = {}) {
  const page = await context.newPage();
  if (init) await init(page);
  const sockets = [];
  const postBodies = [];
  const posted = [];
  page.on('websocket', (ws) => {
    const entry = { url: ws.url(), received: [], sent: [] };
    sockets.push(entry);
    ws.on('framereceived', (frame) => entry.received.push(String(frame.payload)));
    ws.on('framesent', (frame) => entry.sent.push(String(frame.payload)));
  });
  page.on('request', (request) => {
    if (request.method() === 'POST' && request.url() === endpoint) posted.push(request.postData());
  });
  page.on('requestfinished', async (request) => {
    if (request.method() !== 'POST' || request.url() !== endpoint) return;
    try {
      const response = await request.response();
      postBodies.push(await response.text());
    } catch { /* page closed meanwhile */ }
  });
  await within(15000, 'page load', page.goto(pageServer.pageUrl(endpoint)));
  await page.waitForFunction(() => window.Faye && window.BackboneSync && window.got, null, { timeout: 5000 });
  return { page, sockets, postBodies, posted };
}

// Run `fn(arg)` in the page, bounded in time.
export function inPage(page, fn, arg, ms = 15000) {
  return within(ms, 'page.evaluate', page.evaluate(fn, arg));
}

// Wait until the page has recorded at least `count` deliveries for `label`.
export async function waitForDeliveries(page, label, count, ms = 10000) {
  await page.waitForFunction(({ label, count }) => (window.got[label] || []).length >= count,
    { label, count }, { timeout: ms, polling: 50 });
  return page.evaluate((label) => window.got[label], label);
}

// A loopback port nobody listens on (bound, then released).
export async function closedPort() {
  const server = http.createServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

// A signed subscription token, as BackboneSync.sign makes it.
export function signSubscription(channel, { expiresIn = 3600, secret = SECRET } = {}) {
  const expires = Math.floor(Date.now() / 1000) + expiresIn;
  const hex = crypto.createHmac('sha256', secret).update(`${channel}\n${expires}`).digest('hex');
  return `${expires}.${hex}`;
}
