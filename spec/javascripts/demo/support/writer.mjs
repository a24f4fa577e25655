// One writer process for the demo's load test: for `seconds`, one request
// at a time against the JSON API, it renames the shared members (which the
// other writers and the pages rename too), creates members of its own and
// deletes some of them (no one else touches those, so a 404 is a failure).
// Prints one JSON line: {ops: {create, rename, destroy}, failures: [...]}.
//
//   node spec/javascripts/demo/support/writer.mjs <baseUrl> <seconds> <tag> <sharedIds,...> [maxOps]

import { apiHeaders } from './demo.mjs';

const [baseUrl, seconds, tag, shared, maxOps = '400'] = process.argv.slice(2);
const sharedIds = shared.split(',').map(Number);
const deadline = Date.now() + Number(seconds) * 1000;
const headers = await apiHeaders(baseUrl);
const ops = { create: 0, rename: 0, destroy: 0 };
const failures = [];
const own = [];
let n = 0;

async function request(method, url, body) {
  try {
    const response = await fetch(new URL(url, baseUrl), {
      method, headers, body: body && JSON.stringify(body), signal: AbortSignal.timeout(20000),
    });
    const text = await response.text();
    if (!response.ok) failures.push(`${method} ${url}: ${response.status} ${text.slice(0, 200)}`);
    return response.ok && text ? JSON.parse(text) : null;
  } catch (error) {
    failures.push(`${method} ${url}: ${error.message}`);
    return null;
  }
}

while (Date.now() < deadline && n < Number(maxOps)) {
  n += 1;
  const roll = Math.random();
  if (roll < 0.6) {
    const id = sharedIds[Math.floor(Math.random() * sharedIds.length)];
    await request('PATCH', `/members/${id}`, { name: `${tag}-${n}` });
    ops.rename += 1;
  } else if (roll < 0.85 || own.length === 0) {
    const member = await request('POST', '/members', { name: `${tag}-new-${n}` });
    if (member) own.push(member.id);
    ops.create += 1;
  } else {
    const id = own.splice(Math.floor(Math.random() * own.length), 1)[0];
    await request('DELETE', `/members/${id}`);
    ops.destroy += 1;
  }
}
process.stdout.write(`${JSON.stringify({ ops, failures })}\n`);
