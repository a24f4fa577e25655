// extensions/backbone.collection.idempotent.js against real Backbone
// releases: adding an id that is already there passes silently, merges
// when asked, and finds the id as the collection does.
//
//   node --test spec/javascripts/backbone/
//   BACKBONE_VERSIONS=1.6.1 node --test spec/javascripts/backbone/

import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { VERSIONS, loadPage } from './support/backbone_env.mjs';

for (const version of VERSIONS) {
  describe(`idempotent add on Backbone ${version}`, () => {
    test('adding a hash, or another model, with an id already present is silent and adds nothing', () => {
      const { Backbone } = loadPage(version);
      const users = new Backbone.Collection([{ id: 1, name: 'Ann' }]);
      const first = users.get(1);
      const events = [];
      users.on('all', (name) => events.push(name));

      users.add({ id: 1, name: 'Bob' });
      users.add(new Backbone.Model({ id: 1, name: 'Cy' }));
      users.add([{ id: 1 }, { id: 2, name: 'Dee' }, { id: 2, name: 'Dee again' }]);

      assert.equal(users.length, 2);
      assert.equal(users.get(1), first);
      assert.equal(first.get('name'), 'Ann', 'not merged unless asked');
      assert.equal(users.get(2).get('name'), 'Dee');
      assert.deepEqual(events.filter((e) => e === 'add'), ['add'], 'one add event, for id 2');
    });

    test('merges into the model that is there when asked', () => {
      const { Backbone } = loadPage(version);
      const users = new Backbone.Collection([{ id: 1, name: 'Ann', age: 30 }]);
      const first = users.get(1);
      let changed = 0;
      first.on('change:name', () => { changed += 1; });

      users.add({ id: 1, name: 'Anne' }, { merge: true });
      users.add(new Backbone.Model({ id: 1, age: 31 }), { merge: true });

      assert.equal(users.length, 1);
      assert.equal(users.get(1), first);
      assert.deepEqual(first.toJSON(), { id: 1, name: 'Anne', age: 31 });
      assert.equal(changed, 1);
    });

    test('honours idAttribute for hashes and models', () => {
      const { Backbone } = loadPage(version);
      const Doc = Backbone.Model.extend({ idAttribute: '_id' });
      const Docs = Backbone.Collection.extend({ model: Doc });
      const docs = new Docs([{ _id: 'a1', title: 'One' }]);

      docs.add({ _id: 'a1', title: 'Dup' });
      docs.add(new Doc({ _id: 'a1', title: 'Dup model' }));
      docs.add({ _id: 'a1', title: 'Merged' }, { merge: true });

      assert.equal(docs.length, 1);
      assert.equal(docs.get('a1').get('title'), 'Merged');
    });

    if (version !== '0.9.2' && version !== '1.0.0') {
      test('honours a collection modelId (Backbone 1.2+)', () => {
        const { Backbone } = loadPage(version);
        const Things = Backbone.Collection.extend({
          modelId(attrs) { return `${attrs.kind}-${attrs.n}`; },
        });
        const things = new Things([{ kind: 'a', n: 1, v: 'first' }]);
        things.add({ kind: 'a', n: 1, v: 'dup' });
        things.add({ kind: 'a', n: 1, v: 'merged' }, { merge: true });
        things.add({ kind: 'b', n: 1, v: 'other' });
        assert.equal(things.length, 2);
        assert.equal(things.get('a-1').get('v'), 'merged');
      });
    }

    test('still adds new models, at a position, and create still adds once', () => {
      const { Backbone, ajax } = loadPage(version);
      const users = new Backbone.Collection([{ id: 1 }, { id: 3 }]);
      users.url = '/users';
      users.add({ id: 2 }, { at: 1 });
      assert.deepEqual(users.pluck('id'), [1, 2, 3]);

      const made = users.create({ name: 'New' });
      assert.equal(users.length, 4);
      ajax[0].respond({ id: 4, name: 'New' });
      assert.equal(users.length, 4);
      assert.equal(users.get(4), made);
    });
  });
}
