// backbone_sync/subscription.js, the one subscription lifecycle that
// RailsFayeSubscriber, PushableCollection and PushableModel share: the 403
// retry with a token, the refetch after an outage, the table of allowed
// actions and leaving. Each behaviour is checked through every subscriber
// that has it, against a stub client the spec drives (the specs of each
// subscriber do the same against real Faye servers).
//
//   node --test spec/javascripts/backbone/subscription.test.mjs

import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { VERSIONS, loadPage } from './support/backbone_env.mjs';

const settle = () => new Promise((resolve) => setImmediate(resolve));

// A client with the face the subscribers use (subscribe, unsubscribe,
// bind, unbind, addExtension); each subscribe waits for `accept()` or
// `refuse(error)`.
function stubClient({ recovers = false } = {}) {
  const listeners = {};
  return {
    recovers,
    subscribes: [],
    addExtension() {},
    subscribe(channel, callback) {
      let accept, refuse;
      const promise = new Promise((resolve, reject) => { accept = resolve; refuse = reject; });
      promise.catch(() => {});
      const subscription = {
        channel, callback, cancelled: false, accept, refuse,
        then: (onFulfilled, onRejected) => promise.then(onFulfilled, onRejected),
        cancel() { subscription.cancelled = true; },
      };
      this.subscribes.push(subscription);
      return subscription;
    },
    unsubscribe() {},
    bind(event, fn) { (listeners[event] ||= []).push(fn); },
    unbind(event, fn) { listeners[event] = (listeners[event] || []).filter((f) => f !== fn); },
    trigger(event, ...args) { for (const fn of [...(listeners[event] || [])]) fn(...args); },
    bound() { return Object.values(listeners).reduce((n, fns) => n + fns.length, 0); },
    last() { return this.subscribes[this.subscribes.length - 1]; },
  };
}

// Each subscriber, made on `channel` with `client`: its target (what
// deliveries change and what triggers events) and how it leaves.
const HOSTS = {
  RailsFayeSubscriber(page, client, channel) {
    const users = new page.Backbone.Collection();
    users.url = '/users';
    const subscriber = new page.BackboneSync.RailsFayeSubscriber(users, { channel, client });
    return { target: users, kind: 'collection', leave: () => subscriber.leave() };
  },
  PushableCollection(page, client, channel) {
    const Users = page.Backbone.PushableCollection.extend({ url: '/users', channel, client });
    const users = new Users();
    return { target: users, kind: 'collection', leave: () => users.dispose() };
  },
  PushableModel(page, client, channel) {
    const User = page.Backbone.PushableModel.extend({ urlRoot: '/users', channel, client });
    const user = new User({ id: 1, name: 'Ann' });
    return { target: user, kind: 'model', leave: () => user.dispose() };
  },
};

const COLLECTIONS = ['RailsFayeSubscriber', 'PushableCollection'];

for (const version of VERSIONS) {
  describe(`BackboneSync.Subscription on Backbone ${version}`, () => {
    for (const name of Object.keys(HOSTS)) {
      test(`${name}: a 403 marks the channel as needing a token and is retried once; a second is final`, async () => {
        const page = loadPage(version);
        const client = stubClient();
        const { target, leave } = HOSTS[name](page, client, 'users');
        const forbidden = [];
        target.on('backbone_sync:forbidden', (channel, error) => forbidden.push([channel, error.message]));
        assert.equal(client.subscribes.length, 1);

        client.last().refuse(Object.assign(new Error('403:/sync/users:Forbidden'), { code: 403 }));
        await settle();
        assert.equal(client.subscribes.length, 2, 'subscribed once more');
        assert.ok(client.subscribes[0].cancelled, 'the refused subscription was let go');
        assert.equal(page.BackboneSync.tokenRefused('/sync/users'), false, 'the channel now asks for a token');

        client.last().refuse(Object.assign(new Error('403:/sync/users:Forbidden'), { code: 403 }));
        await settle();
        assert.equal(client.subscribes.length, 2, 'no third try');
        assert.deepEqual(forbidden, [['/sync/users', '403:/sync/users:Forbidden']]);
        leave();
      });

      test(`${name}: each delivery goes through the subscriber's own receive()`, () => {
        const page = loadPage(version);
        const client = stubClient();
        const seen = [];
        // The demo wraps the instance's method; a subclass overrides the prototype's.
        const { RailsFayeSubscriber } = page.BackboneSync;
        const original = RailsFayeSubscriber.prototype.receive;
        RailsFayeSubscriber.prototype.receive = function (data) { seen.push(data.event); return original.apply(this, arguments); };
        const { target, leave } = HOSTS[name](page, client, 'users');
        if (name !== 'RailsFayeSubscriber') {
          const receive = target.receive;
          target.receive = function (data) { seen.push(data.event); return receive.apply(this, arguments); };
        }
        client.last().callback({ event: 'update', object: { id: 1, name: 'Anne' }, origin: null, version: 2 });
        assert.deepEqual(seen, ['update']);
        assert.equal(target.get(1)?.get('name') ?? target.get('name'), 'Anne');
        leave();
      });

      test(`${name}: another refusal than 403 is not retried, and nothing is applied after leaving`, async () => {
        const page = loadPage(version);
        const client = stubClient();
        const { target, kind, leave } = HOSTS[name](page, client, 'users');
        client.last().refuse(new Error('500: server error'));
        await settle();
        assert.equal(client.subscribes.length, 1);

        const before = JSON.stringify(target.toJSON());
        leave();
        assert.ok(client.last().cancelled, 'leaving cancels the subscription');
        assert.equal(client.bound(), 0, 'and stops listening to the client');
        client.last().callback({ event: 'update', object: { id: 1, name: 'late' }, origin: null, version: 9 });
        assert.equal(JSON.stringify(target.toJSON()), before, `the ${kind} did not change`);
      });
    }

    for (const name of COLLECTIONS) {
      test(`${name}: with a plain Faye client, transport:up after transport:down refetches once`, async () => {
        const page = loadPage(version);
        const client = stubClient();
        const { target, leave } = HOSTS[name](page, client, 'users');
        const resyncs = [];
        target.on('backbone_sync:resync', (collection, channel) => resyncs.push([collection === target, channel]));
        client.last().accept();
        await settle();

        client.trigger('transport:up');
        assert.equal(page.ajax.length, 0, 'no outage, no fetch');
        client.trigger('transport:down');
        client.trigger('transport:up');
        client.trigger('transport:up');
        assert.deepEqual(resyncs, [[true, '/sync/users']]);
        assert.deepEqual(page.ajax.map((r) => [r.type, r.url]), [['GET', '/users']]);

        leave();
        client.trigger('transport:down');
        client.trigger('transport:up');
        assert.equal(page.ajax.length, 1, 'nothing after leaving');
      });

      test(`${name}: with a client that recovers, only its resync for this channel refetches`, async () => {
        const page = loadPage(version);
        const client = stubClient({ recovers: true });
        const { leave } = HOSTS[name](page, client, 'users');
        client.last().accept();
        await settle();
        client.trigger('transport:down');
        client.trigger('transport:up');
        client.trigger('resync', '/sync/other');
        assert.equal(page.ajax.length, 0, 'the client recovered, or it was another channel');
        client.trigger('resync', '/sync/users');
        assert.deepEqual(page.ajax.map((r) => [r.type, r.url]), [['GET', '/users']]);
        leave();
        assert.equal(client.bound(), 0);
      });

      test(`${name}: a collection's channel may create, update and destroy, nothing else`, () => {
        const page = loadPage(version);
        const client = stubClient();
        const { target, leave } = HOSTS[name](page, client, 'users');
        const deliver = (data) => client.last().callback(data);
        deliver({ event: 'create', object: { id: 1, name: 'Ann' }, origin: null, version: 1 });
        deliver({ create: { 2: { id: 2, name: 'Bo' } } });
        deliver({ event: 'update', object: { id: 1, name: 'Anne' }, origin: null, version: 2 });
        deliver({ event: 'truncate', object: { id: 1 }, origin: null, version: 3 });
        deliver({ event: 'toString', object: { id: 1 }, origin: null, version: 3 });
        deliver({ reset: { 1: { id: 1 } } });
        assert.deepEqual(target.toJSON(), [{ id: 1, name: 'Anne' }, { id: 2, name: 'Bo' }]);
        deliver({ event: 'destroy', object: { id: 2 }, origin: null, version: 1 });
        assert.deepEqual(target.pluck('id'), [1]);
        leave();
      });
    }

    test('PushableCollection: an outage calls the resync a subclass defines', () => {
      const page = loadPage(version);
      const client = stubClient();
      const calls = [];
      const Users = page.Backbone.PushableCollection.extend({
        url: '/users', channel: 'users', client,
        resync() { calls.push(this.pushChannel); },
      });
      const users = new Users();
      client.trigger('transport:down');
      client.trigger('transport:up');
      assert.deepEqual(calls, ['/sync/users']);
      assert.equal(page.ajax.length, 0);
      users.dispose();
    });

    test('PushableModel: its channel may update and destroy, not create; a pushed destroy ends it', () => {
      const page = loadPage(version);
      const client = stubClient();
      const { target: user } = HOSTS.PushableModel(page, client, 'user_1');
      const list = new page.Backbone.Collection([user]);
      const deliver = (data) => client.last().callback(data);
      deliver({ event: 'create', object: { id: 1, name: 'created' }, origin: null, version: 5 });
      deliver({ event: 'truncate', object: { id: 1, name: 'truncated' }, origin: null, version: 5 });
      assert.equal(user.get('name'), 'Ann');
      deliver({ event: 'update', object: { id: 1, name: 'Anne' }, origin: null, version: 5 });
      assert.equal(user.get('name'), 'Anne');
      assert.equal(client.bound(), 0, 'a model does not watch the connection');

      deliver({ event: 'destroy', object: { id: 1 }, origin: null, version: 6 });
      assert.equal(list.length, 0, 'removed from its collections');
      assert.ok(client.last().cancelled, 'unsubscribed');
      assert.equal(user.pushSubscription, null);
    });

    test('BackboneSync.dispatch is the one table: a model ignores create, a collection takes it', () => {
      const page = loadPage(version);
      const { Backbone, BackboneSync } = page;
      const model = new Backbone.Model({ id: 1, name: 'Ann' });
      const collection = new Backbone.Collection();
      BackboneSync.dispatch('model', model, { event: 'create', object: { id: 1, name: 'x' }, origin: null, version: 1 });
      BackboneSync.dispatch('collection', collection, { event: 'create', object: { id: 1, name: 'x' }, origin: null, version: 1 });
      BackboneSync.dispatch('nothing', collection, { event: 'create', object: { id: 2 }, origin: null, version: 1 });
      assert.equal(model.get('name'), 'Ann');
      assert.deepEqual(collection.pluck('id'), [1]);
      assert.deepEqual(BackboneSync.changes({ event: 'constructor', object: { id: 1 } }), []);
    });
  });
}
