// The gap-free fetch (BackboneSync.Subscription#fetch, through
// PushableCollection#fetch and RailsFayeSubscriber#fetch) and the version
// rules of backbone_sync/changes.js, against real Backbone releases, a real
// Faye server (npm faye, then ours) and real Node Faye clients. The ajax
// stand-in is Rails: each request waits until the spec answers it, which is
// how a fetch is held in flight while pushes arrive.
//
//   node --test spec/javascripts/backbone/gap_free.test.mjs

import { describe, test, before, after, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  VERSIONS, TARGETS, TARGET_NAMES, loadPage, startTarget, eventually, within, goodbye,
} from './support/backbone_env.mjs';

const rows = (collection) => collection.map((m) => [m.id, m.get('name')]).sort((a, b) => a[0] - b[0]);
const requests = (page) => page.ajax.map((r) => [r.type, r.url]);

// Each subscriber that fetches a collection: the collection, how it is
// fetched and refetched, and how it leaves.
const HOSTS = {
  PushableCollection(page, client, channel) {
    const Users = page.Backbone.PushableCollection.extend({ url: '/users', channel, client });
    const users = new Users();
    return {
      users, subscription: users.pushSubscription,
      fetch: (options) => users.fetch(options), resync: () => users.resync(), leave: () => users.dispose(),
    };
  },
  RailsFayeSubscriber(page, client, channel) {
    const users = new page.Backbone.Collection();
    users.url = '/users';
    const subscriber = new page.BackboneSync.RailsFayeSubscriber(users, { channel, client });
    return {
      users, subscription: subscriber.subscription,
      fetch: (options) => subscriber.fetch(options), resync: () => subscriber.resync(), leave: () => subscriber.leave(),
    };
  },
};

for (const target of TARGETS) {
  describe(`gap-free fetch against ${TARGET_NAMES[target]}`, () => {
    let server;
    before(async () => { server = await startTarget(target); });
    after(async () => { await server?.stop(); });

    for (const version of VERSIONS) {
      for (const name of Object.keys(HOSTS)) {
        describe(`${name} on Backbone ${version}`, () => {
          let page, client, host, channel, users;
          const received = [];

          beforeEach(() => {
            page = loadPage(version);
            client = server.client();
            channel = `users_${Math.random().toString(36).slice(2, 10)}`;
            received.length = 0;
            client.subscribe(`/sync/${channel}`, (data) => received.push(data));  // a second listener: delivery order
            host = HOSTS[name](page, client, channel);
            ({ users } = host);
          });

          afterEach(async () => {
            host.leave();
            await goodbye(client);
          });

          // Publish, and wait until the client has delivered it to the collection.
          async function push(data) {
            const count = received.length;
            await within(3000, 'publish', server.publish(`/sync/${channel}`, data));
            await eventually(() => received.length > count, 'the delivery');
          }

          test('the first fetch starts once the subscribe is acknowledged', async () => {
            const subscribed = () => server.meta.some((m) => m.channel === '/meta/subscribe' && m.subscription === `/sync/${channel}`);
            const fetched = host.fetch();
            assert.equal(page.ajax.length, 0, 'no request before the server has answered the subscribe');
            await eventually(() => page.ajax.length === 1, 'the fetch');
            assert.ok(subscribed(), 'the server had the subscribe first');
            page.ajax[0].respond([{ id: 1, name: 'Ann', lock_version: 0 }]);
            await within(3000, 'the fetch promise', Promise.resolve(fetched));
            assert.deepEqual(rows(users), [[1, 'Ann']]);
          });

          test('a create, an update and a destroy pushed while the fetch is in flight survive its older snapshot', async () => {
            const done = [];
            host.fetch({ success: () => done.push(rows(users)) });
            await eventually(() => page.ajax.length === 1, 'the fetch');
            await push({ event: 'create', object: { id: 3, name: 'Cy', lock_version: 0 }, origin: null, version: 0 });
            await push({ event: 'update', object: { id: 1, name: 'Anne', lock_version: 2 }, origin: null, version: 2 });
            await push({ event: 'destroy', object: { id: 2, name: 'Bo', lock_version: 0 }, origin: null, version: 0 });
            assert.deepEqual(rows(users), [[1, 'Anne'], [3, 'Cy']], 'applied at once');

            // The snapshot was read before all three.
            page.ajax[0].respond([{ id: 1, name: 'Ann', lock_version: 1 }, { id: 2, name: 'Bo', lock_version: 0 }]);
            assert.deepEqual(rows(users), [[1, 'Anne'], [3, 'Cy']]);
            assert.deepEqual(done, [[[1, 'Anne'], [3, 'Cy']]], 'the caller\'s success sees the changes re-applied');
            assert.deepEqual(requests(page), [['GET', '/users']], 'nothing to read again');
          });

          test('a push older than the snapshot is not re-applied over it', async () => {
            host.fetch();
            await eventually(() => page.ajax.length === 1, 'the fetch');
            await push({ event: 'update', object: { id: 1, name: 'Old', lock_version: 2 }, origin: null, version: 2 });
            // The snapshot was read after a later save.
            page.ajax[0].respond([{ id: 1, name: 'New', lock_version: 3 }]);
            assert.deepEqual(rows(users), [[1, 'New']]);
            // The held push was dropped as stale: the model is read again, and the database says New.
            assert.deepEqual(requests(page), [['GET', '/users'], ['GET', '/users/1']]);
            page.ajax[1].respond({ id: 1, name: 'New', lock_version: 3 });
            assert.deepEqual(rows(users), [[1, 'New']]);
          });

          test('the refetch after a resync is gap-free too', async () => {
            host.fetch();
            await eventually(() => page.ajax.length === 1, 'the fetch');
            page.ajax[0].respond([{ id: 1, name: 'Ann', lock_version: 0 }, { id: 2, name: 'Bo', lock_version: 0 }]);

            host.resync();
            await eventually(() => page.ajax.length === 2, 'the refetch');
            await push({ event: 'create', object: { id: 4, name: 'Di', lock_version: 0 }, origin: null, version: 0 });
            await push({ event: 'update', object: { id: 2, name: 'Bob', lock_version: 5 }, origin: null, version: 5 });
            await push({ event: 'destroy', object: { id: 1, name: 'Ann', lock_version: 0 }, origin: null, version: 0 });
            page.ajax[1].respond([{ id: 1, name: 'Ann', lock_version: 0 }, { id: 2, name: 'Bo', lock_version: 4 }, { id: 3, name: 'Cy', lock_version: 0 }]);
            assert.deepEqual(rows(users), [[2, 'Bob'], [3, 'Cy'], [4, 'Di']]);
            assert.equal(page.ajax.length, 2);

            // Once the refetch is in, pushes are applied once, not held.
            await push({ event: 'update', object: { id: 3, name: 'Cyd', lock_version: 1 }, origin: null, version: 1 });
            assert.deepEqual(rows(users), [[2, 'Bob'], [3, 'Cyd'], [4, 'Di']]);
          });

          test('a failed fetch stops holding', async () => {
            host.fetch();
            await eventually(() => page.ajax.length === 1, 'the fetch');
            page.ajax[0].fail(500);
            await push({ event: 'create', object: { id: 9, name: 'Ida', lock_version: 0 }, origin: null, version: 0 });
            assert.deepEqual(rows(users), [[9, 'Ida']]);
          });
        });
      }
    }
  });
}

// The version rules, through BackboneSync.applyToCollection (what every
// collection delivery goes through) with the ajax stand-in as Rails.
for (const version of VERSIONS) {
  describe(`versions and the refetch of one model on Backbone ${version}`, () => {
    let page, BackboneSync, users;
    const apply = (event, object, v) => BackboneSync.applyToCollection(users, { event, object, origin: null, version: v });

    beforeEach(() => {
      page = loadPage(version);
      ({ BackboneSync } = page);
      users = new page.Backbone.Collection();
      users.url = '/users';
    });

    test('a fetched model\'s version is its lock_version, else its updated_at in milliseconds', () => {
      assert.equal(BackboneSync.versionOf({ lock_version: 3, updated_at: '2026-12-03T10:00:00.123Z' }), 3);
      assert.equal(BackboneSync.versionOf({ lock_version: 0 }), 0);
      // What Rails renders (three decimals, any zone) and what Payload.version_of sends.
      assert.equal(BackboneSync.versionOf({ updated_at: '2026-12-03T10:00:00.123Z' }), Date.UTC(2026, 11, 3, 10, 0, 0, 123));
      assert.equal(BackboneSync.versionOf({ updated_at: '2026-12-03T11:00:00.123+01:00' }), Date.UTC(2026, 11, 3, 10, 0, 0, 123));
      assert.equal(BackboneSync.versionOf({ name: 'x' }), null);
      assert.equal(BackboneSync.versionOf({ updated_at: 'not a time' }), null);
    });

    test('a push is compared with the version the fetch returned', () => {
      users.reset([{ id: 1, name: 'Fetched', updated_at: '2026-12-03T10:00:00.500Z' }]);
      apply('update', { id: 1, name: 'Older', updated_at: '2026-12-03T10:00:00.400Z' }, Date.UTC(2026, 11, 3, 10, 0, 0, 400));
      assert.equal(users.get(1).get('name'), 'Fetched', 'older than the fetch: dropped');
      apply('update', { id: 1, name: 'Newer', updated_at: '2026-12-03T10:00:00.600Z' }, Date.UTC(2026, 11, 3, 10, 0, 0, 600));
      assert.equal(users.get(1).get('name'), 'Newer');
    });

    test('a stale push makes the page read the model again, and the database wins', () => {
      // updated_at is taken when a save starts: the save that commits last
      // (Late, the database's) can carry the older time.
      users.reset([{ id: 1, name: 'Early', updated_at: '2026-12-03T10:00:00.500Z' }]);
      apply('update', { id: 1, name: 'Late', updated_at: '2026-12-03T10:00:00.499Z' }, Date.UTC(2026, 11, 3, 10, 0, 0, 499));
      assert.equal(users.get(1).get('name'), 'Early');
      assert.deepEqual(requests(page), [['GET', '/users/1']]);
      apply('update', { id: 1, name: 'Late', updated_at: '2026-12-03T10:00:00.499Z' }, Date.UTC(2026, 11, 3, 10, 0, 0, 499));
      assert.equal(page.ajax.length, 1, 'one read at a time');
      page.ajax[0].respond({ id: 1, name: 'Late', updated_at: '2026-12-03T10:00:00.499Z' });
      assert.equal(users.get(1).get('name'), 'Late', 'what the database holds, though its version is older');
      // A drop while the read was in flight asked for one more read.
      assert.equal(page.ajax.length, 2);
      page.ajax[1].respond({ id: 1, name: 'Late', updated_at: '2026-12-03T10:00:00.499Z' });
      assert.equal(page.ajax.length, 2);
    });

    test('a tie with other data reads the model again; a tie with the same data does nothing', () => {
      users.reset([{ id: 1, name: 'Ann', lock_version: 4 }]);
      apply('update', { id: 1, name: 'Ann', lock_version: 4 }, 4);
      assert.equal(page.ajax.length, 0);
      apply('update', { id: 1, name: 'Other', lock_version: 4 }, 4);
      assert.equal(users.get(1).get('name'), 'Ann');
      assert.deepEqual(requests(page), [['GET', '/users/1']]);
      page.ajax[0].respond({ id: 1, name: 'Other', lock_version: 4 });
      assert.equal(users.get(1).get('name'), 'Other');
    });

    test('the read cannot roll back a newer push that arrived while it was in flight', () => {
      users.reset([{ id: 1, name: 'Ann', lock_version: 4 }]);
      apply('update', { id: 1, name: 'Three', lock_version: 3 }, 3);
      assert.equal(page.ajax.length, 1);
      apply('update', { id: 1, name: 'Six', lock_version: 6 }, 6);
      page.ajax[0].respond({ id: 1, name: 'Five', lock_version: 5 });   // read before Six committed
      assert.equal(users.get(1).get('name'), 'Six');
    });

    test('a model the read finds gone is removed, and stays removed', () => {
      users.reset([{ id: 1, name: 'Ann', lock_version: 4 }]);
      apply('update', { id: 1, name: 'Three', lock_version: 3 }, 3);
      page.ajax[0].fail(404);
      assert.equal(users.length, 0);
      apply('update', { id: 1, name: 'Seven', lock_version: 7 }, 7);
      assert.equal(users.length, 0);
    });

    test('a late create does not overwrite the record it created', () => {
      users.reset([{ id: 1, name: 'Renamed', lock_version: 1 }]);
      apply('create', { id: 1, name: 'Created', lock_version: 0 }, 0);
      assert.equal(users.get(1).get('name'), 'Renamed');
      assert.equal(page.ajax.length, 0);
    });
  });
}
