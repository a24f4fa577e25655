// Two headless Chromium pages on a members list made by `rails new` plus
// the install generator (spec/install/generator_spec.rb): a create in A,
// an update in B and a destroy in A each show up in the other page, and the
// saving page holds one copy. Exits 0 when they do, 1 with the reason.
//
//   node spec/install/support/two_pages.mjs http://127.0.0.1:3000

import { chromium } from 'playwright-core';
import { within } from '../../javascripts/support/harness.mjs';

const url = process.argv[2];
const WAIT_MS = 10000;

function waitFor(page, fn, arg, what) {
  return within(WAIT_MS + 2000, what, page.waitForFunction(fn, arg, { timeout: WAIT_MS, polling: 25 }));
}

let browser;
const problems = [];
try {
  browser = await within(60000, 'chromium launch', chromium.launch({
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run'],
  }));
  const open = async (label) => {
    const page = await browser.newPage();
    // How many rows of the list read `name`: 1 once a change arrived, never 2.
    await page.addInitScript(() => {
      window.rowsNamed = (name) => [...document.querySelectorAll('#members li')].filter((li) => li.textContent === name).length;
    });
    page.on('pageerror', (error) => problems.push(`${label}: ${error.message}`));
    page.on('console', (message) => { if (message.type() === 'error') problems.push(`${label} console: ${message.text()}`); });
    await within(30000, `${label} load`, page.goto(url));
    await waitFor(page, () => document.querySelector('#members[data-ready]'), null, `${label} subscribed and loaded`);
    return page;
  };
  const pageA = await open('A');
  const pageB = await open('B');

  await pageA.evaluate(() => window.members.create({ name: 'Ada Lovelace' }, { wait: true }));
  await waitFor(pageB, (name) => rowsNamed(name) === 1, 'Ada Lovelace', 'the create in B');
  await waitFor(pageA, (name) => rowsNamed(name) === 1, 'Ada Lovelace', 'the create in A');

  await pageB.evaluate(() => window.members.findWhere({ name: 'Ada Lovelace' }).save({ name: 'Ada King' }, { wait: true }));
  await waitFor(pageA, () => rowsNamed('Ada King') === 1 && rowsNamed('Ada Lovelace') === 0, null, 'the update in A');

  await pageA.evaluate(() => window.members.findWhere({ name: 'Ada King' }).destroy({ wait: true }));
  await waitFor(pageB, () => document.querySelectorAll('#members li').length === 0, null, 'the destroy in B');

  // Nothing else in either page went wrong (duplicates are checked above).
  if (problems.length) throw new Error(`errors in the pages:\n${problems.join('\n')}`);
  console.log('two pages in step: create, update, destroy');
} catch (error) {
  console.error(error.message);
  if (problems.length) console.error(problems.join('\n'));
  process.exitCode = 1;
} finally {
  await browser?.close().catch(() => {});
}
