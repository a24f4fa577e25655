// extensions/backbone.collection.idempotent.js
// ============================================
//
// `collection.add(attrs)` with an id the collection already holds passes
// silently; with `{merge: true}` the attributes are merged into the model
// that is there. The id is found as the collection finds it: through
// `modelId` (Backbone 1.2+) and the model's `idAttribute`.
//
// Backbone 0.9.2 skips duplicates but cannot merge, 1.x can do both; this
// gives every version from 0.9.2 to 1.6.1 the same behaviour, through the
// public `add`, `get` and `set` only. The race between a model's save and
// the broadcast of its own creation is closed by the origin token (see
// backbone_sync/sync.js), which this file loads with backbone_sync/core.
//
//= require backbone_sync/core

(function (root) {
  'use strict';

  var Backbone     = root.Backbone,
      _            = root._,
      BackboneSync = root.BackboneSync,
      Collection   = Backbone.Collection;

  var originalAdd = Collection.prototype.add;
  if (originalAdd.backboneSyncIdempotent) return;

  // ### add
  //
  // Each model or attributes hash whose id is already present is replaced
  // by the model that holds it (after merging, when asked), so Backbone's
  // own `add` skips it and, on 1.x, still returns it. Raw hashes that need
  // `parse` first are left to Backbone, which knows their id only then.
  Collection.prototype.add = function (models, options) {
    if (models == null) return originalAdd.apply(this, arguments);
    var single = !_.isArray(models),
        list = single ? [models] : models.slice(),
        merge = !!(options && options.merge),
        self = this,
        i, item, id, existing, attrs;

    for (i = 0; i < list.length; i++) {
      item = list[i];
      if (!item || typeof item !== 'object') continue;
      if (options && options.parse && !(item instanceof Backbone.Model)) continue;
      id = BackboneSync.idFor(self, item);
      if (id == null) continue;
      existing = self.get(id);
      if (!existing || existing === item) continue;
      if (merge) {
        attrs = item instanceof Backbone.Model ? item.attributes : item;
        existing.set(attrs, options);
      }
      list[i] = existing;
    }
    return originalAdd.call(this, single ? list[0] : list, options);
  };
  Collection.prototype.add.backboneSyncIdempotent = true;
})(typeof window !== 'undefined' ? window : this);
