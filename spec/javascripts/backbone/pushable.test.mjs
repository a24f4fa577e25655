// backbone_sync/pushable.js against real Backbone releases, a real Faye
// server (npm faye, then ours) and real Node Faye clients.
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

    const subscribed = (channel) => server.meta.filter((m) => m.channel === '/meta/subscribe' && m.subscription === channel).length;
    const unsubscribed = (channel) => server.meta.filter((m) => m.channel === '/meta/unsubscribe' && m.subscription === channel).length;

    for (const version of VERSIONS) {
      describe(`PushableCollection and PushableModel on Backbone ${version}`, () => {
        let page, Backbone, client, tag, Member, Members;

        // Publish to `/sync/control_<tag>` and wait for it: whatever was
        // published before it to this client has been delivered by then.
        async function drain() {
          const marker = Math.random().toString(36).slice(2);
          let seen = false;
          const sub = client.subscribe(`/sync/control_${tag}`, (data) => { if (data.marker === marker) seen = true; });
          await within(3000, 'control subscribe', sub);
          await server.publish(`/sync/control_${tag}`, { marker });
          await eventually(() => seen, 'the control message');
          sub.cancel();
        }

        beforeEach(() => {
          page = loadPage(version);
          ({ Backbone } = page);
          client = server.client();
          tag = Math.random().toString(36).slice(2, 10);
          Member = Backbone.PushableModel.extend({
            urlRoot: '/members',
            client,
            channel() { return `member_${tag}_${this.id}`; },
          });
          Members = Backbone.PushableCollection.extend({ model: Member, url: '/members', client, channel: `members_${tag}` });
        });

        afterEach(async () => { await goodbye(client); });

        test('a collection subscribes when made, applies changes, and unsubscribes on dispose()', async () => {
          const members = new Members();
          const channel = `/sync/members_${tag}`;
          await eventually(() => subscribed(channel) === 1, 'the collection subscribing');
          await within(3000, 'subscribed', members.pushSubscription);

          await server.publish(channel, { event: 'create', object: { id: 1, name: 'Ann' }, origin: null, version: 1 });
          await server.publish(channel, { object: { id: 2, name: 'Bo' }, event: 'create' });
          await server.publish(channel, { update: { 1: { id: 1, name: 'Anne' } } });
          await eventually(() => members.length === 2 && members.get(1).get('name') === 'Anne', 'create and update');
          assert.ok(members.get(1) instanceof Member);

          members.dispose();
          await eventually(() => unsubscribed(channel) === 1, 'the collection unsubscribing');
          await server.publish(channel, { event: 'destroy', object: { id: 1 }, origin: null, version: 1 });
          await drain();
          assert.equal(members.length, 2, 'nothing applied after dispose()');
        });

        test('the channel may be a string or a function; stopListening() unsubscribes', async () => {
          const Scoped = Backbone.PushableCollection.extend({
            client,
            channel() { return `family_${tag}_${this.familyId}_members`; },
            initialize(models, options) { this.familyId = options.familyId; },
          });
          const family = new Scoped([], { familyId: 7 });
          const channel = `/sync/family_${tag}_7_members`;
          await within(3000, 'subscribed', family.pushSubscription);
          assert.equal(family.pushChannel, channel);
          assert.equal(subscribed(channel), 1);

          family.stopListening();
          await eventually(() => unsubscribed(channel) === 1, 'unsubscribe on stopListening()');
        });

        test('a new model subscribes only once it has an id, then follows update and destroy', async () => {
          const members = new Members();
          await within(3000, 'collection subscribed', members.pushSubscription);
          const ann = members.create({ name: 'Ann' });
          assert.equal(ann.pushSubscription, undefined, 'a new model does not subscribe');
          // Any subscribe the id-less model sent went out before drain()'s
          // own, on the same client, so the server has answered it by now.
          await drain();
          const ours = () => server.meta.filter((m) => m.channel === '/meta/subscribe' &&
            m.subscription.includes(tag) && !m.subscription.includes('control'));
          assert.deepEqual(ours().map((m) => m.subscription), [`/sync/members_${tag}`], 'no subscribe before the id');

          page.ajax[0].respond({ id: 42, name: 'Ann' });
          const channel = `/sync/member_${tag}_42`;
          await within(3000, 'model subscribed', ann.pushSubscription);
          assert.equal(subscribed(channel), 1);
          assert.deepEqual(ours().map((m) => m.subscription), [`/sync/members_${tag}`, channel]);

          await server.publish(channel, { event: 'update', object: { id: 42, name: 'Anne' }, origin: null, version: 5 });
          await eventually(() => ann.get('name') === 'Anne', 'the update on the instance channel');
          await server.publish(channel, { event: 'update', object: { id: 42, name: 'stale' }, origin: null, version: 4 });
          await server.publish(channel, { event: 'create', object: { id: 42, name: 'not for models' }, origin: null, version: 9 });
          await drain();
          assert.equal(ann.get('name'), 'Anne', 'stale update and create ignored');

          const other = new Members([{ id: 42, name: 'Ann' }]);
          other.add(ann);   // the same record shown in a second list
          const mixed = new Backbone.Collection([ann]);
          let destroyed = 0;
          ann.on('destroy', () => { destroyed += 1; });
          await server.publish(channel, { event: 'destroy', object: { id: 42 }, origin: null, version: 6 });
          await eventually(() => members.length === 0, 'the destroy removing the model from its collection');
          assert.equal(mixed.length, 0, 'removed from every collection holding it');
          assert.equal(destroyed, 1);
          await eventually(() => unsubscribed(channel) === 1, 'unsubscribe after a pushed destroy');
          other.dispose();
        });

        test('destroy() and stopListening() on a model unsubscribe', async () => {
          const bo = new Member({ id: 7, name: 'Bo' });
          const cy = new Member({ id: 8, name: 'Cy' });
          await within(3000, 'subscribed', bo.pushSubscription);
          await within(3000, 'subscribed', cy.pushSubscription);

          bo.destroy();
          page.ajax[0].respond({});
          await eventually(() => unsubscribed(`/sync/member_${tag}_7`) === 1, 'unsubscribe on destroy()');
          cy.stopListening();
          await eventually(() => unsubscribed(`/sync/member_${tag}_8`) === 1, 'unsubscribe on stopListening()');

          await server.publish(`/sync/member_${tag}_8`, { event: 'update', object: { id: 8, name: 'late' }, origin: null, version: 1 });
          await drain();
          assert.equal(cy.get('name'), 'Cy');
        });

        test('the creating page keeps one model when the collection broadcast wins the race', async () => {
          const members = new Members();
          await within(3000, 'subscribed', members.pushSubscription);
          const ann = members.create({ name: 'Ann' });
          const origin = page.ajax[0].headers['X-BackboneSync-Origin'];
          await server.publish(`/sync/members_${tag}`, { event: 'create', object: { id: 9, name: 'Ann' }, origin, version: 1 });
          await eventually(() => ann.id === 9, 'the broadcast reaching the pending model');
          page.ajax[0].respond({ id: 9, name: 'Ann' });
          assert.equal(members.length, 1);
          assert.equal(members.get(9), ann);
          await within(3000, 'model subscribed', ann.pushSubscription);
          assert.equal(subscribed(`/sync/member_${tag}_9`), 1, 'subscribed once');
        });
      });
    }

    describe('PushableCollection resync after an outage (real Faye client)', () => {
      for (const version of ['0.9.2', '1.6.1'].filter((v) => VERSIONS.includes(v))) {
        test(`refetches when transport:up follows transport:down, and not after dispose() (${version})`, { timeout: 20000 }, async () => {
          const own = await startTarget(target);
          const page = loadPage(version);
          const client = own.client();
          const events = [];
          client.on('transport:down', () => events.push('down'));
          const Members = page.Backbone.PushableCollection.extend({ url: '/members', channel: 'members', client });
          const members = new Members();
          const idle = new Members();
          let replacement = null;
          try {
            await within(3000, 'subscribe', members.pushSubscription);
            await within(3000, 'subscribe', idle.pushSubscription);
            idle.dispose();
            await own.publish('/sync/members', { event: 'create', object: { id: 1 }, origin: null, version: 1 });
            await eventually(() => members.get(1), 'first delivery');

            const port = own.port;
            await own.kill();
            await eventually(() => events.includes('down'), 'transport:down', 10000);
            replacement = await startTarget(target, { port });
            await eventually(() => page.ajax.some((r) => r.type === 'GET'), 'a fetch after the outage', 15000);
            const fetches = page.ajax.filter((r) => r.type === 'GET');
            assert.equal(fetches.length, 1, 'the disposed collection did not fetch');
            fetches[0].respond([{ id: 1 }, { id: 2 }]);
            assert.deepEqual(members.pluck('id'), [1, 2]);

            for (let attempt = 0; attempt < 50 && !members.get(3); attempt++) {
              await replacement.publish('/sync/members', { event: 'create', object: { id: 3 }, origin: null, version: 1 });
              await new Promise((resolve) => setTimeout(resolve, 100));
            }
            assert.ok(members.get(3), 'a delivery after the outage');
            members.dispose();
          } finally {
            await goodbye(client);
            await replacement?.stop();
          }
        });
      }
    });
  });
}
