// backbone_sync/changes.js
// ========================
//
// What a delivery may do, and how a pushed change is applied to a
// collection or a model, exactly once and never backwards:
//
//     BackboneSync.dispatch('collection', users, data);   // create, update, destroy
//     BackboneSync.dispatch('model', user, data);         // update, destroy
//
// Every subscriber hands its deliveries to `dispatch`, which looks each
// change up in one table of allowed actions; nothing else reaches a model.
//
//= require backbone_sync/sync

(function (root) {
  'use strict';

  var Backbone     = root.Backbone,
      _            = root._,
      BackboneSync = root.BackboneSync;

  // How many destroyed ids a collection remembers, so that an update
  // delivered after its destroy cannot bring the record back.
  var MAX_TOMBSTONES = 1000;

  var hasOwn = Object.prototype.hasOwnProperty;

  // The table of allowed actions
  // ----------------------------

  // What a change may do, by what it is delivered to and its event. A
  // model's own channel has no `create`; any other event does nothing.
  var ACTIONS = {
    collection: { create: applyToCollection, update: applyToCollection, destroy: applyToCollection },
    model:      { update: applyToModel, destroy: applyToModel }
  };

  function actionFor(kind, event) {
    var table = hasOwn.call(ACTIONS, kind) ? ACTIONS[kind] : null;
    return table && hasOwn.call(table, event) ? table[event] : null;
  }

  // Whether some target accepts `event` at all.
  function known(event) {
    return !!(actionFor('collection', event) || actionFor('model', event));
  }

  // ### BackboneSync.dispatch
  //
  // Apply each change of one delivery to `target`, a collection (`kind`
  // `'collection'`) or a model (`'model'`), through the table. With `via`,
  // an allowed change goes to `via[event](change)` instead, as
  // backbone_sync-rails' subscriber called its own `create`, `update` and
  // `destroy`, which apps override.
  BackboneSync.dispatch = function (kind, target, data, via) {
    var changes = BackboneSync.changes(data), action, event, i;
    for (i = 0; i < changes.length; i++) {
      event = changes[i].event;
      action = actionFor(kind, event);
      if (!action) continue;
      if (via && typeof via[event] === 'function') via[event](changes[i]);
      else action(target, changes[i]);
    }
  };

  // ### BackboneSync.changes
  //
  // Turn one delivery into a list of changes `{event, object, origin,
  // version}`, keeping the events the table knows. It accepts the canonical
  // payload and the legacy `{"create": {"42": {...}}}` shape of
  // backbone_sync-rails 0.0.x.
  BackboneSync.changes = function (data) {
    var out = [], event, id, object;
    if (!data || typeof data !== 'object') return out;
    if (typeof data.event === 'string') {
      if (known(data.event) && data.object && typeof data.object === 'object') {
        out.push({ event: data.event, object: data.object, origin: data.origin || null,
                   version: typeof data.version === 'number' ? data.version : 0 });
      }
      return out;
    }
    for (event in data) {
      if (!hasOwn.call(data, event) || !known(event) || !data[event]) continue;
      for (id in data[event]) {
        if (!hasOwn.call(data[event], id)) continue;
        object = data[event][id];
        if (object && typeof object === 'object') {
          out.push({ event: event, object: object, origin: null, version: 0, id: id });
        }
      }
    }
    return out;
  };

  // Applying a change
  // -----------------

  // ### BackboneSync.idFor
  //
  // The id of `attrs` in `collection`, honouring `modelId` (Backbone 1.2+)
  // and the model's `idAttribute`.
  BackboneSync.idFor = function (collection, attrs) {
    if (attrs instanceof Backbone.Model) return attrs.id;
    if (typeof collection.modelId === 'function') return collection.modelId(attrs, collection.model && collection.model.prototype && collection.model.prototype.idAttribute);
    var idAttribute = (collection.model && collection.model.prototype && collection.model.prototype.idAttribute) || 'id';
    return attrs[idAttribute];
  };

  function idOfModel(model, attrs) {
    return attrs[model.idAttribute || 'id'];
  }

  // The broadcast object is the record's JSON, as the server renders it for
  // a fetch: it goes through the model's `parse` as a fetch's would (which
  // unwraps `include_root_in_json`, for example). `parser` is a model, or
  // the prototype of the collection's model.
  function parseWith(parser, object) {
    if (!parser || typeof parser.parse !== 'function') return object;
    var attrs = parser.parse(object, {});
    return attrs && typeof attrs === 'object' ? attrs : {};
  }

  // Versions
  // --------
  //
  // A push carries the record's `version`; a model read from the server
  // (a fetch, a save's response) carries the same number in its
  // attributes: `lock_version` when it has one, else `updated_at` in
  // milliseconds since the epoch (what Rails renders: three decimals), as
  // `BackboneSync::Payload.version_of` computes it. 0 or null means
  // "unknown", which never makes a change stale.

  // ### BackboneSync.versionOf
  //
  // The version of the record whose attributes are `attrs`, or null.
  BackboneSync.versionOf = function (attrs) {
    if (!attrs || typeof attrs !== 'object') return null;
    var lock = attrs.lock_version, at = attrs.updated_at, ms;
    if (typeof lock === 'number' && isFinite(lock)) return lock;
    if (typeof lock === 'string' && /^\d+$/.test(lock)) return Number(lock);
    if (typeof at === 'number' && isFinite(at)) return at;
    if (typeof at === 'string' && at) {
      ms = Date.parse(at);
      if (!isNaN(ms)) return ms;
    }
    return null;
  };

  // What `model` shows: the version in its attributes (a model may define
  // `pushVersion()` to say otherwise), else the last pushed one applied.
  function versionOfModel(model) {
    var version = typeof model.pushVersion === 'function' ? model.pushVersion() : BackboneSync.versionOf(model.attributes);
    if (typeof version === 'number' && version > 0) return version;
    return typeof model.backboneSyncVersion === 'number' ? model.backboneSyncVersion : null;
  }
  BackboneSync.modelVersion = versionOfModel;

  // How a change with `version` and attributes `attrs` compares with what
  // `model` shows: 'newer' (apply it), 'stale' (older: drop it), 'same'
  // (the same version and data: nothing to do) or 'tie' (the same version,
  // other data). Unknown versions are always 'newer'.
  function compare(model, version, attrs) {
    var seen = versionOfModel(model), key;
    if (!(version > 0) || !(seen > 0) || version > seen) return 'newer';
    if (version < seen) return 'stale';
    for (key in attrs) {
      if (hasOwn.call(attrs, key) && !_.isEqual(attrs[key], model.get(key))) return 'tie';
    }
    return 'same';
  }

  function saw(model, version) {
    if (version > 0) model.backboneSyncVersion = version;
  }

  // ### BackboneSync.refetchModel
  //
  // A page that dropped a change as stale, or got a tie with other data,
  // may show what the database overwrote (with `updated_at` as the
  // version, the save that commits last can carry the older time): it
  // reads the record again (GET its url). One read per model at a time; a
  // drop while one is in flight asks for one more. Its answer is applied
  // unless a push newer than it arrived while it was in flight, so it
  // cannot roll a newer push back. A 404 calls `gone()`.
  function refetchModel(model, gone) {
    var state = model.backboneSyncRefetch;
    if (state) { state.again = true; return; }
    // A model not saved yet has no record to read (its url is the collection's).
    if (typeof model.isNew === 'function' && model.isNew()) return;
    if (typeof model.url !== 'function' && !model.url) return;
    try { model.url(); } catch (e) { return; }      // no url: nothing to ask
    state = model.backboneSyncRefetch = { again: false, before: versionOfModel(model) };
    var done = function () {
      model.backboneSyncRefetch = null;
      if (state.again && !model.backboneSyncGone) refetchModel(model, gone);
    };
    model.trigger('backbone_sync:refetch', model);
    (model.sync || Backbone.sync).call(model, 'read', model, {
      success: function (resp) {
        var attrs = parseWith(model, resp),
            version = BackboneSync.versionOf(attrs) || 0,
            now = versionOfModel(model);
        // A push applied while the read was in flight, and newer than it:
        // keep the push.
        var pushedSince = now !== state.before;
        if (!(pushedSince && version > 0 && now > 0 && version < now)) {
          model.set(attrs);
          saw(model, version);
        }
        done();
      },
      error: function (xhr) {
        if (xhr && xhr.status === 404) {
          model.backboneSyncGone = true;
          if (gone) gone();
        }
        done();
      }
    });
  }
  BackboneSync.refetchModel = refetchModel;

  function contains(collection, model) {
    return _.indexOf(collection.models, model) >= 0;
  }

  // Tombstones live on the collection: ids destroyed, with their version.
  function buried(collection, id, version) {
    var graves = collection.backboneSyncTombstones;
    if (!graves || id == null || !hasOwn.call(graves.versions, id)) return false;
    var at = graves.versions[id];
    return !(version > 0 && at > 0 && version > at);
  }

  function bury(collection, id, version) {
    if (id == null) return;
    var graves = collection.backboneSyncTombstones ||
      (collection.backboneSyncTombstones = { versions: {}, order: [] });
    if (!hasOwn.call(graves.versions, id)) graves.order.push(id);
    graves.versions[id] = version;
    while (graves.order.length > MAX_TOMBSTONES) delete graves.versions[graves.order.shift()];
  }

  // A refetch found the record gone (its destroy may be the push that
  // was lost or dropped).
  function removeGone(collection, model, id) {
    bury(collection, id, 0);
    if (contains(collection, model)) collection.remove(model);
  }

  // ### BackboneSync.applyToCollection
  //
  // Apply one change to `collection`, exactly once:
  //
  // * a change this page caused (its origin names one of our pending
  //   models) is merged into that model, whether its save has been answered
  //   or not, so the collection never holds two models for one record;
  // * `create` and `update` merge into the model with the same id, or add
  //   one; a change older than what the model shows is dropped;
  // * `destroy` removes the model, and remembers the id so that a late
  //   update cannot bring it back.
  function applyToCollection(collection, change) {
    var object = parseWith(collection.model && collection.model.prototype, change.object),
        version = change.version || 0,
        id = BackboneSync.idFor(collection, object);
    if (id == null && change.id != null) id = change.id;

    var mine = BackboneSync.originModel(change.origin),
        byId = id != null ? collection.get(id) : null,
        targets = _.uniq(_.compact([mine, byId]));

    if (change.event === 'destroy') {
      bury(collection, id, version);
      _.each(targets, function (model) {
        if (contains(collection, model)) collection.remove(model);
      });
      BackboneSync.forgetOrigin(mine);
      return null;
    }
    if (buried(collection, id, version)) return null;

    var model = null;
    _.each(targets, function (target) {
      var attrs = parseWith(target, change.object);
      // A record's create is its first change: a copy already here (not
      // the one this page is saving) is as new as it, or newer (lock_version
      // 0, its create's version, says nothing).
      if (change.event === 'create' && target !== mine && !(version > 0 && version > versionOfModel(target))) {
        model = model || target;
        return;
      }
      switch (compare(target, version, attrs)) {
        case 'same':
          model = model || target;
          return;
        case 'stale':
        case 'tie':
          // What this copy shows may be what the database overwrote.
          refetchModel(target, function () { removeGone(collection, target, id); });
          return;
      }
      target.set(attrs);
      saw(target, version);
      model = model || target;
    });
    if (targets.length && !model) return null;          // every copy is newer
    BackboneSync.forgetOrigin(mine);

    if (model && !contains(collection, model)) {
      // Our pending model was saved outside this collection (or with
      // `wait: true`): it becomes the collection's copy.
      if (!collection.get(id)) collection.add(model);
    } else if (!model) {
      collection.add(object);
      model = collection.get(id);
      if (model) saw(model, version);
    }
    return model;
  }
  BackboneSync.applyToCollection = applyToCollection;

  // ### BackboneSync.applyToModel
  //
  // Apply one change delivered on a model's own channel: `update` merges
  // unless it is older than the model, `destroy` announces the model as
  // destroyed (`{backboneSync: true}`), which removes it from every
  // collection that holds it.
  function applyToModel(model, change) {
    var attrs = parseWith(model, change.object),
        id = idOfModel(model, attrs);
    if (id != null && model.id != null && String(id) !== String(model.id)) return;
    if (change.event === 'destroy') {
      model.trigger('destroy', model, model.collection, { backboneSync: true });
      return;
    }
    switch (compare(model, change.version || 0, attrs)) {
      case 'same': return;
      case 'stale':
      case 'tie':
        refetchModel(model, function () {
          model.trigger('destroy', model, model.collection, { backboneSync: true });
        });
        return;
    }
    model.set(attrs);
    saw(model, change.version || 0);
  }
  BackboneSync.applyToModel = applyToModel;
})(typeof window !== 'undefined' ? window : this);
