// backbone_sync-rails/rails_faye_subscriber.js against real Backbone
// releases, real Faye servers (npm faye and ours) and real Node Faye clients: both payload
// shapes, stale updates, both orders of the create/broadcast race (forced
// by holding the save's response), leave() and resync after an outage.
//
//   node --test spec/javascripts/backbone/

import { describe, test, before, after, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  VERSIONS, TARGETS, TARGET_NAMES, loadPage, startTarget, eventually, within, goodbye,
} from './support/backbone_env.mjs';

for (const target of TARGETS) {
  describe(`against ${TARGET_NAMES[target]}`, () => {
    let server;
    before(async () => { server = await startTarget(target); });
    after(async () => { await server?.stop(); });

    // Publish a canonical payload and wait until `check()` holds.
    async function deliver(channel, data, check, what) {
      await within(3000, `publish to ${channel}`, server.publish(channel, data));
      if (check) await eventually(check, what);
    }

    // Publish to /sync/control and wait for it: everything published before it
    // to the same client has been delivered by then (Faye keeps order per client).
    async function drain(page, client) {
      const marker = Math.random().toString(36).slice(2);
      let seen = false;
      const sub = client.subscribe('/sync/control', (data) => { if (data.marker === marker) seen = true; });
      await within(3000, 'control subscribe', sub);
      await server.publish('/sync/control', { marker });
      await eventually(() => seen, 'the control message');
      sub.cancel();
    }

    for (const version of VERSIONS) {
      describe(`RailsFayeSubscriber on Backbone ${version}`, () => {
        let page, Backbone, BackboneSync, client, users, subscriber, channel;

        beforeEach(async () => {
          page = loadPage(version);
          ({ Backbone, BackboneSync } = page);
          client = server.client();
          users = new Backbone.Collection();
          users.url = '/users';
          channel = `users_${Math.random().toString(36).slice(2, 10)}`;
          subscriber = new BackboneSync.RailsFayeSubscriber(users, { channel, client });
          await within(3000, 'subscribe', subscriber.subscription);
        });

        afterEach(async () => {
          subscriber.leave();
          await goodbye(client);
        });

        const sync = () => `/sync/${channel}`;

        test('subscribes to /sync/<channel>, or to a full channel name as given', async () => {
          assert.equal(subscriber.channel, sync());
          assert.ok(server.meta.some((m) => m.channel === '/meta/subscribe' && m.subscription === sync()));
          const other = new BackboneSync.RailsFayeSubscriber(new Backbone.Collection(), { channel: '/sync/family_7_members', client });
          assert.equal(other.channel, '/sync/family_7_members');
          other.leave();
        });

        test('canonical create adds once, update merges (adding if absent), destroy removes', async () => {
          await deliver(sync(), { event: 'create', object: { id: 1, name: 'Ann' }, origin: null, version: 1 },
            () => users.get(1), 'create');
          await deliver(sync(), { event: 'create', object: { id: 1, name: 'Ann' }, origin: null, version: 1 });
          await deliver(sync(), { event: 'update', object: { id: 1, name: 'Anne' }, origin: null, version: 2 },
            () => users.get(1).get('name') === 'Anne', 'update');
          await deliver(sync(), { event: 'update', object: { id: 2, name: 'Bo' }, origin: 'elsewhere:c1', version: 5 },
            () => users.get(2), 'update of a model not in the collection');
          assert.equal(users.length, 2);
          await deliver(sync(), { event: 'destroy', object: { id: 1, name: 'Anne' }, origin: null, version: 2 },
            () => !users.get(1), 'destroy');
          await deliver(sync(), { event: 'destroy', object: { id: 99 }, origin: null, version: 1 });
          await drain(page, client);
          assert.deepEqual(users.toJSON(), [{ id: 2, name: 'Bo' }]);
        });

        test('accepts the legacy {"create": {"42": {...}}} shape', async () => {
          await deliver(sync(), { create: { 42: { id: 42, name: 'Ann' }, 43: { id: 43, name: 'Bea' } } },
            () => users.length === 2, 'legacy create');
          await deliver(sync(), { create: { 42: { id: 42, name: 'Ann' } } });
          await deliver(sync(), { update: { 42: { id: 42, name: 'Anne' } } },
            () => users.get(42).get('name') === 'Anne', 'legacy update');
          await deliver(sync(), { update: { 44: { id: 44, name: 'Cy' } } }, () => users.get(44), 'legacy update adds');
          await deliver(sync(), { destroy: { 43: { id: 43 } } }, () => !users.get(43), 'legacy destroy');
          await drain(page, client);
          assert.deepEqual(users.pluck('id').sort(), [42, 44]);
        });

        test('calls its own create, update and destroy, so an app may override them (backbone_sync-rails)', async () => {
          const seen = [];
          const original = subscriber.update;
          subscriber.update = function (change) {
            seen.push([change.event, change.object.id]);
            return original.call(this, change);
          };
          subscriber.destroy = function (change) { seen.push([change.event, change.object.id]); };
          await deliver(sync(), { event: 'create', object: { id: 9, name: 'a' }, origin: null, version: 1 },
            () => users.get(9), 'create');
          await deliver(sync(), { event: 'update', object: { id: 9, name: 'b' }, origin: null, version: 2 },
            () => users.get(9).get('name') === 'b', 'update, through the override');
          await deliver(sync(), { event: 'destroy', object: { id: 9 }, origin: null, version: 3 });
          await deliver(sync(), { event: 'launch', object: { id: 9 }, origin: null, version: 4 });
          await drain(page, client);
          assert.deepEqual(seen, [['update', 9], ['destroy', 9]]);
          assert.ok(users.get(9), 'the overriding destroy kept the model');
        });

        test('ignores an update older than the model, and an update after its destroy', async () => {
          await deliver(sync(), { event: 'create', object: { id: 7, name: 'v1' }, origin: null, version: 100 },
            () => users.get(7), 'create');
          await deliver(sync(), { event: 'update', object: { id: 7, name: 'v3' }, origin: null, version: 300 },
            () => users.get(7).get('name') === 'v3', 'newer update');
          await deliver(sync(), { event: 'update', object: { id: 7, name: 'v2' }, origin: null, version: 200 });
          await deliver(sync(), { event: 'create', object: { id: 7, name: 'v1 again' }, origin: null, version: 100 });
          await drain(page, client);
          assert.equal(users.get(7).get('name'), 'v3', 'out-of-order delivery did not roll the model back');

          await deliver(sync(), { event: 'destroy', object: { id: 7, name: 'v3' }, origin: null, version: 300 },
            () => !users.get(7), 'destroy');
          await deliver(sync(), { event: 'update', object: { id: 7, name: 'v2' }, origin: null, version: 200 });
          await drain(page, client);
          assert.equal(users.get(7), undefined, 'a late update did not bring it back');
        });

        test('the object goes through the model parse, as a fetch would (include_root_in_json)', async () => {
          const User = Backbone.Model.extend({ parse(resp) { return resp.user || resp; } });
          const rooted = new Backbone.Collection([], { model: User });
          const rootedSubscriber = new BackboneSync.RailsFayeSubscriber(rooted, { channel: `${channel}_rooted`, client });
          await within(3000, 'subscribe', rootedSubscriber.subscription);
          const publishRooted = (data) => server.publish(`/sync/${channel}_rooted`, data);
          await publishRooted({ event: 'create', object: { user: { id: 5, name: 'Ann' } }, origin: null, version: 1 });
          await publishRooted({ event: 'update', object: { user: { id: 5, name: 'Anne' } }, origin: null, version: 2 });
          await eventually(() => rooted.get(5) && rooted.get(5).get('name') === 'Anne', 'parsed create and update');
          assert.deepEqual(rooted.toJSON(), [{ id: 5, name: 'Anne' }]);
          rootedSubscriber.leave();
        });

        for (const order of ['broadcast first', 'response first']) {
          test(`the saving page ends with one model, its own, when the ${order}`, async () => {
            const created = users.create({ name: 'Ann' });
            const request = page.ajax[0];
            assert.equal(request.type, 'POST');
            assert.equal(request.headers['X-BackboneSync-Origin'], `${BackboneSync.origin}:${created.cid}`);
            assert.match(BackboneSync.origin, /^[0-9a-z]{16}$/);
            const broadcast = { event: 'create', object: { id: 42, name: 'Ann' },
              origin: request.headers['X-BackboneSync-Origin'], version: 1 };

            if (order === 'broadcast first') {
              await deliver(sync(), broadcast, () => created.id === 42, 'the broadcast reaching the pending model');
              assert.equal(users.length, 1);
              request.respond({ id: 42, name: 'Ann' });
            } else {
              request.respond({ id: 42, name: 'Ann' });
              await deliver(sync(), broadcast);
              await drain(page, client);
            }
            assert.equal(users.length, 1, `models: ${JSON.stringify(users.toJSON())}`);
            assert.equal(users.get(42), created);
            assert.equal(users.at(0), created);
          });
        }

        test('without the origin, plain Backbone duplicates the model when the broadcast wins (the race is real)', async () => {
          const created = users.create({ name: 'Ann' });
          await deliver(sync(), { event: 'create', object: { id: 42, name: 'Ann' }, origin: null, version: 1 },
            () => users.length === 2, 'the broadcast adding a second model');
          page.ajax[0].respond({ id: 42, name: 'Ann' });
          assert.equal(created.id, 42);
          assert.deepEqual(users.pluck('id'), [42, 42], 'this is what the origin token prevents');
        });

        test('a create saved with wait: true, broadcast first, is added once as the saving model', async () => {
          const created = users.create({ name: 'Wai' }, { wait: true });
          const origin = page.ajax[0].headers['X-BackboneSync-Origin'];
          await deliver(sync(), { event: 'create', object: { id: 5, name: 'Wai' }, origin, version: 1 },
            () => users.length === 1, 'the broadcast');
          page.ajax[0].respond({ id: 5, name: 'Wai' });
          assert.equal(users.length, 1);
          assert.equal(users.get(5), created);
        });

        test('leave() unsubscribes: nothing is applied afterwards', async () => {
          subscriber.leave();
          await eventually(() => server.meta.some((m) => m.channel === '/meta/unsubscribe' && m.subscription === sync()),
            'a /meta/unsubscribe');
          await deliver(sync(), { event: 'create', object: { id: 1 }, origin: null, version: 1 });
          await drain(page, client);
          assert.equal(users.length, 0);
        });
      });
    }

    describe('RailsFayeSubscriber resync after an outage (real Faye client, Backbone 1.6.1 and 0.9.2)', () => {
      for (const version of ['0.9.2', '1.6.1'].filter((v) => VERSIONS.includes(v))) {
        test(`refetches the collection when transport:up follows transport:down (${version})`, { timeout: 20000 }, async () => {
          const own = await startTarget(target);
          const page = loadPage(version);
          const client = new (await import('./support/backbone_env.mjs')).faye.Client(own.url, { retry: 0.2, timeout: 2 });
          const users = new page.Backbone.Collection();
          users.url = '/users';
          const events = [];
          client.on('transport:down', () => events.push('down'));
          client.on('transport:up', () => events.push('up'));
          const subscriber = new page.BackboneSync.RailsFayeSubscriber(users, { channel: 'users', client });
          let replacement = null;
          try {
            await within(3000, 'subscribe', subscriber.subscription);
            await own.publish('/sync/users', { event: 'create', object: { id: 1 }, origin: null, version: 1 });
            await eventually(() => users.get(1), 'first delivery');
            assert.equal(page.ajax.length, 0, 'no fetch while connected');

            const port = own.port;
            await own.kill();
            await eventually(() => events.includes('down'), 'transport:down', 10000);
            replacement = await startTarget(target, { port });
            // While it was away, record 2 was created: only a fetch can tell.
            await eventually(() => page.ajax.some((r) => r.type === 'GET'), 'a fetch after the outage', 15000);
            const fetch = page.ajax.find((r) => r.type === 'GET');
            assert.equal(fetch.url, '/users');
            fetch.respond([{ id: 1 }, { id: 2 }]);
            assert.deepEqual(users.pluck('id'), [1, 2]);

            // Deliveries resume once the client has handshaken and resubscribed.
            for (let attempt = 0; attempt < 50 && !users.get(3); attempt++) {
              await replacement.publish('/sync/users', { event: 'create', object: { id: 3 }, origin: null, version: 1 });
              await new Promise((resolve) => setTimeout(resolve, 100));
            }
            assert.ok(users.get(3), 'a delivery after the outage');

            subscriber.leave();
          } finally {
            await goodbye(client);
            await replacement?.stop();
          }
        });
      }
    });
  });
}
