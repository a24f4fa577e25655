// What the demo's browser tests share: the demo itself (spec/dummy/bin/demo,
// what `rake demo` runs) as a child process, a plain HTTP client of its
// JSON API (the third party), headless Chromium, and reading what a page
// shows.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../..');
const READY_LINE = /backbone_sync demo: open (http:\/\/\S+) in two browsers/;

export function within(ms, what, promise) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: nothing within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Demo processes still running when this process exits are killed.
const children = new Set();
process.on('exit', () => {
  for (const child of children) child.kill('SIGKILL');
});
export const track = (child) => {
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
};

export async function freePort() {
  const server = net.createServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

// spec/dummy/bin/demo as a child process; resolves once it prints its line.
// `output()` is everything it printed (its errors go to the terminal).
// `env` adds to (or overrides) its environment, e.g. BACKBONE_SYNC_DUMMY_CONFIG.
export async function startDemo({ port, serverPort, db, log, env = {} }) {
  const child = track(spawn('ruby', ['spec/dummy/bin/demo'], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, PORT: String(port), SERVER_PORT: String(serverPort),
           BACKBONE_SYNC_DUMMY_DB: db, BACKBONE_SYNC_DUMMY_LOG: log, RAILS_ENV: 'development', ...env },
  }));
  let output = '';
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  child.stderr.on('data', (chunk) => { output += chunk; });
  const url = await within(120000, 'the demo start', new Promise((resolve, reject) => {
    child.stdout.on('data', (chunk) => {
      output += chunk;
      const match = READY_LINE.exec(output);
      if (match) resolve(match[1]);
    });
    child.once('error', reject);
    exited.then(({ code, signal }) => reject(new Error(`the demo exited (${code ?? signal}) before serving:\n${output}`)));
  })).catch((error) => {
    child.kill('SIGKILL');
    throw error;
  });
  return {
    url,
    child,
    output: () => output,
    async kill(signal = 'SIGKILL') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return within(15000, 'the demo exit', exited);
    },
  };
}

// After a file's tests: the browser closed, the demo killed, its log
// printed when DEMO_KEEP_LOG is set, and its temporary directory removed.
export async function tearDown({ browser, demo, log, tmp }) {
  try {
    await browser?.close();
  } finally {
    await demo?.kill();
    if (process.env.DEMO_KEEP_LOG && log && fs.existsSync(log)) console.log(fs.readFileSync(log, 'utf8'));
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

export function launchBrowser() {
  return within(60000, 'chromium launch', chromium.launch({
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run'],
  }));
}

// The third party: a plain HTTP client of the JSON API (with the session
// cookie and CSRF token a browser would have).
export async function apiHeaders(baseUrl) {
  const page = await within(10000, 'GET /', fetch(baseUrl));
  const html = await page.text();
  const csrf = /<meta name="csrf-token" content="([^"]+)"/.exec(html)?.[1];
  const cookie = (page.headers.getSetCookie?.() || [page.headers.get('set-cookie')]).map((c) => c.split(';')[0]).join('; ');
  assert.ok(csrf, 'the page has a CSRF token');
  return { 'Content-Type': 'application/json', Accept: 'application/json', 'X-CSRF-Token': csrf, Cookie: cookie };
}

export async function apiCreate(baseUrl, name) {
  const response = await within(10000, 'POST /members', fetch(new URL('/members', baseUrl), {
    method: 'POST', headers: await apiHeaders(baseUrl), body: JSON.stringify({ name }),
  }));
  assert.equal(response.status, 201, await response.clone().text());
  return response.json();
}

export async function apiRename(baseUrl, id, name) {
  const response = await within(10000, 'PATCH /members/:id', fetch(new URL(`/members/${id}`, baseUrl), {
    method: 'PATCH', headers: await apiHeaders(baseUrl), body: JSON.stringify({ name }),
  }));
  assert.equal(response.status, 200, await response.clone().text());
  return response.json();
}

export async function apiDestroy(baseUrl, id) {
  const response = await within(10000, 'DELETE /members/:id', fetch(new URL(`/members/${id}`, baseUrl), {
    method: 'DELETE', headers: await apiHeaders(baseUrl),
  }));
  assert.ok(response.ok, `DELETE /members/${id}: ${response.status}`);
}

export async function apiList(baseUrl) {
  const response = await within(10000, 'GET /members.json', fetch(new URL('/members', baseUrl), { headers: { Accept: 'application/json' } }));
  return (await response.json()).map((m) => ({ id: m.id, name: m.name })).sort((a, b) => a.id - b.id);
}

// What the page shows, in order: [{id, name}] (id null while pending).
export function shown(page) {
  return within(10000, 'reading the list', page.$$eval('#members li', (rows) => rows.map((li) => ({
    id: li.dataset.id ? Number(li.dataset.id) : null,
    name: li.querySelector('.name')?.textContent ?? li.querySelector('.edit')?.value,
  }))));
}

export const hasRow = (name) => [...document.querySelectorAll('#members li')]
  .some((li) => li.dataset.id && li.querySelector('.name')?.textContent === name);

export const hasNoRow = (name) => ![...document.querySelectorAll('#members .name')].some((el) => el.textContent === name);

export function waitFor(page, fn, arg, ms, what) {
  return within(ms + 2000, what, page.waitForFunction(fn, arg, { timeout: ms, polling: 25 }));
}

// Wait until the page shows exactly `list` ([{id, name}] by id), at most `ms`.
export async function waitShows(page, list, ms, what) {
  try {
    await waitFor(page, (expected) => JSON.stringify([...document.querySelectorAll('#members li')].map((li) => ({
      id: li.dataset.id ? Number(li.dataset.id) : null, name: li.querySelector('.name')?.textContent,
    }))) === expected, JSON.stringify(list), ms, what);
  } catch (error) {
    // Say which records differ.
    assert.deepEqual(await shown(page), list, `${what}: ${error.message}`);
    throw error;
  }
}

// Everything broadcast before now has reached the pages: a third party
// creates and deletes a member, and each page shows the one, then not. A
// page gets /sync/members in order on one socket, so anything broadcast
// earlier was applied before these.
export async function barrier(baseUrl, pages) {
  const name = `Barrier ${Date.now()}`;
  const { id } = await apiCreate(baseUrl, name);
  for (const page of pages) await waitFor(page, hasRow, name, 10000, 'the barrier create');
  await apiDestroy(baseUrl, id);
  for (const page of pages) await waitFor(page, hasNoRow, name, 10000, 'the barrier destroy');
}
