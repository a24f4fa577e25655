// backbone_sync/core.js
// =====================
//
// What the Backbone extensions of backbone_sync share: the page's origin
// token and the `Backbone.sync` wrapper that sends it, the shared Faye
// client and its subscription tokens, and the one function that applies a
// pushed change to a collection or a model.
//
//     BackboneSync.configure({server: 'http://127.0.0.1:9292/faye',
//                             subscriptionsUrl: '/backbone_sync/subscriptions'});
//     var client = BackboneSync.client();
//
// Without `configure`, the settings come from the `<meta>` tags that the
// Rails helper `backbone_sync_tags` writes, and the CSRF token from Rails'
// own `csrf_meta_tags`. Plain ES5, no dependency beyond Backbone and
// Underscore (or Lodash), so Sprockets can serve it as it is.

(function (root) {
  'use strict';

  var Backbone = root.Backbone,
      _        = root._;

  var BackboneSync = root.BackboneSync = root.BackboneSync || {};

  var ORIGIN_HEADER = 'X-BackboneSync-Origin';

  // A model whose save is answered by a broadcast long after the response
  // still counts as ours for this many saves; older entries are forgotten.
  var MAX_PENDING = 200;

  // How many destroyed ids a collection remembers, so that an update
  // delivered after its destroy cannot bring the record back.
  var MAX_TOMBSTONES = 1000;

  // Ask for a new subscription token this long before the old one expires.
  var TOKEN_MARGIN_S = 30;

  var hasOwn = Object.prototype.hasOwnProperty;

  // Origin
  // ------

  // 16 base-36 characters, random per page load.
  function makeToken() {
    var out = '', bytes, i,
        crypto = root.crypto || root.msCrypto;
    if (crypto && crypto.getRandomValues) {
      bytes = new Uint8Array(16);
      crypto.getRandomValues(bytes);
      for (i = 0; i < 16; i++) out += (bytes[i] % 36).toString(36);
      return out;
    }
    for (i = 0; i < 16; i++) out += Math.floor(Math.random() * 36).toString(36);
    return out;
  }

  BackboneSync.origin = BackboneSync.origin || makeToken();

  // Models whose create is in flight or recently answered, by cid, oldest
  // first. A broadcast that carries `<origin>:<cid>` belongs to one of them.
  var pending = {}, pendingOrder = [];

  function remember(model) {
    if (hasOwn.call(pending, model.cid)) return;
    pending[model.cid] = model;
    pendingOrder.push(model.cid);
    while (pendingOrder.length > MAX_PENDING) delete pending[pendingOrder.shift()];
  }

  function forget(cid) {
    delete pending[cid];
    var i = _.indexOf(pendingOrder, cid);
    if (i >= 0) pendingOrder.splice(i, 1);
  }

  // The model this page saved that `origin` names, or null when the change
  // came from another page (or from no page at all).
  BackboneSync.originModel = function (origin) {
    var prefix = BackboneSync.origin + ':';
    if (typeof origin !== 'string' || origin.indexOf(prefix) !== 0) return null;
    var cid = origin.slice(prefix.length);
    return hasOwn.call(pending, cid) ? pending[cid] : null;
  };

  // ### Backbone.sync
  //
  // Every request says which page and which model sent it, so that the
  // broadcast the server makes for it can be matched with the model this
  // page already holds: `X-BackboneSync-Origin: <origin>:<cid>`. A create
  // also registers the model as pending until the request fails, or until
  // its broadcast has arrived. Writes carry Rails' CSRF token (from
  // `csrf_meta_tags`, or `configure({csrfToken})`) unless the caller set one.
  var originalSync = Backbone.sync;
  if (!originalSync.backboneSyncOrigin) {
    Backbone.sync = function (method, model, options) {
      options = options || {};
      var cid = model && model.cid ? model.cid : '',
          headers = _.extend({}, options.headers);
      headers[ORIGIN_HEADER] = BackboneSync.origin + ':' + cid;
      if (method !== 'read' && !headers['X-CSRF-Token']) {
        var csrf = setting('csrfToken', 'csrf-token');
        if (csrf) headers['X-CSRF-Token'] = csrf;
      }
      options.headers = headers;

      if (method === 'create' && cid) {
        remember(model);
        var error = options.error;
        options.error = function () {
          forget(cid);
          if (error) return error.apply(this, arguments);
        };
      }
      return originalSync.call(this, method, model, options);
    };
    Backbone.sync.backboneSyncOrigin = true;
  }

  // Configuration and the shared client
  // -----------------------------------

  var settings = {};

  function meta(name) {
    var doc = root.document, el;
    if (!doc || !doc.querySelector) return undefined;
    el = doc.querySelector('meta[name="' + name + '"]');
    return el ? el.getAttribute('content') : undefined;
  }

  // `server` (the Faye endpoint), `subscriptionsUrl` (the Rails endpoint
  // that hands out subscription tokens), `csrfToken`, `signed: true` to
  // ask for a token before every subscribe rather than after a refusal, and
  // `clientOptions` for the shared client (e.g. `{retry: 1}`: seconds before
  // the first reconnect).
  BackboneSync.configure = function (options) {
    _.extend(settings, options);
    return BackboneSync;
  };

  function setting(name, metaName) {
    if (settings[name] !== undefined) return settings[name];
    return metaName ? meta(metaName) : undefined;
  }

  var sharedClient = null;

  // The page's one Faye client, made on first use. It prefers the client the
  // backbone_sync server serves (which recovers missed messages) and falls
  // back on the real Faye client.
  BackboneSync.client = function () {
    if (sharedClient) return sharedClient;
    var server = setting('server', 'backbone-sync-server'),
        Client = BackboneSync.FayeClient || (root.Faye && root.Faye.Client);
    if (!server) throw new Error('BackboneSync.client: no server URL; call BackboneSync.configure({server: ...}) or add backbone_sync_tags to the layout');
    if (!Client) throw new Error('BackboneSync.client: no Faye client loaded; require backbone_sync/faye or load <server>.js first');
    sharedClient = new Client(server, settings.clientOptions || {});
    BackboneSync.authorize(sharedClient);
    return sharedClient;
  };

  // Subscription tokens
  // -------------------

  // channel -> {token, expires}; channel -> true once the server refused it.
  var tokens = {}, refused = {};

  // POST `{channel}` to the Rails endpoint; `done(token)` gets null when it
  // said no or could not be reached.
  BackboneSync.requestToken = function (channel, done) {
    var url = setting('subscriptionsUrl', 'backbone-sync-subscriptions'),
        csrf = setting('csrfToken', 'csrf-token'),
        XHR = root.XMLHttpRequest;
    if (!url || !XHR) return done(null);
    var xhr = new XHR();
    xhr.open('POST', url, true);
    xhr.setRequestHeader('Content-Type', 'application/json');
    xhr.setRequestHeader('Accept', 'application/json');
    if (csrf) xhr.setRequestHeader('X-CSRF-Token', csrf);
    xhr.onreadystatechange = function () {
      if (xhr.readyState !== 4) return;
      var body = null;
      try { body = JSON.parse(xhr.responseText); } catch (e) { body = null; }
      done(xhr.status === 200 && body && typeof body.token === 'string' ? body.token : null);
    };
    xhr.send(JSON.stringify({ channel: channel }));
  };

  function freshToken(channel) {
    var t = tokens[channel];
    return t && t.expires - TOKEN_MARGIN_S > Date.now() / 1000 ? t.token : null;
  }

  // Whether a subscribe to `channel` should carry a token.
  function wantsToken(channel) {
    return settings.signed === true || refused[channel] === true || !!freshToken(channel);
  }

  // Record a refusal so that the next subscribe asks for a token first.
  // Returns true the first time, so callers retry exactly once.
  BackboneSync.tokenRefused = function (channel) {
    delete tokens[channel];
    if (refused[channel]) return false;
    refused[channel] = true;
    return true;
  };

  // Add the extension that puts `ext.token` on /meta/subscribe, to a client
  // made elsewhere. `BackboneSync.client()` does this itself.
  BackboneSync.authorize = function (client) {
    if (client.backboneSyncAuthorized) return client;
    client.backboneSyncAuthorized = true;
    client.addExtension({
      outgoing: function (message, callback) {
        var channel = message.subscription;
        if (message.channel !== '/meta/subscribe' || typeof channel !== 'string' || !wantsToken(channel)) {
          return callback(message);
        }
        var attach = function (token) {
          if (token) {
            // Keep what is there already, such as the client's ext.since.
            message.ext = message.ext || {};
            message.ext.token = token;
          }
          callback(message);
        };
        var cached = freshToken(channel);
        if (cached) return attach(cached);
        BackboneSync.requestToken(channel, function (token) {
          var expires = token ? parseInt(token.split('.')[0], 10) : NaN;
          if (token && expires > 0) tokens[channel] = { token: token, expires: expires };
          attach(token);
        });
      }
    });
    return client;
  };

  // Pushed changes
  // --------------

  // `"users"` is `/sync/users`; a name that starts with `/` is used as is.
  BackboneSync.channelName = function (channel) {
    channel = String(channel);
    return channel.charAt(0) === '/' ? channel : '/sync/' + channel;
  };

  var EVENTS = { create: true, update: true, destroy: true };

  // Turn one delivery into a list of changes `{event, object, origin,
  // version}`. It accepts the canonical payload and the legacy
  // `{"create": {"42": {...}}}` shape of backbone_sync-rails 0.0.x.
  BackboneSync.changes = function (data) {
    var out = [], event, id, object;
    if (!data || typeof data !== 'object') return out;
    if (typeof data.event === 'string') {
      if (EVENTS[data.event] === true && data.object && typeof data.object === 'object') {
        out.push({ event: data.event, object: data.object, origin: data.origin || null,
                   version: typeof data.version === 'number' ? data.version : 0 });
      }
      return out;
    }
    for (event in data) {
      if (!hasOwn.call(data, event) || EVENTS[event] !== true || !data[event]) continue;
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

  // Is a change with `version` older than what `model` already shows?
  // Version 0 means "unknown" and is never stale.
  function stale(model, version) {
    var seen = model.backboneSyncVersion;
    return version > 0 && typeof seen === 'number' && version < seen;
  }

  function saw(model, version) {
    if (version > 0 && !(model.backboneSyncVersion >= version)) model.backboneSyncVersion = version;
  }

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
  BackboneSync.applyToCollection = function (collection, change) {
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
      if (mine) forget(mine.cid);
      return null;
    }
    if (buried(collection, id, version)) return null;

    var model = null;
    _.each(targets, function (target) {
      if (stale(target, version)) return;
      target.set(parseWith(target, change.object));
      saw(target, version);
      model = model || target;
    });
    if (targets.length && !model) return null;          // every copy is newer
    if (mine) forget(mine.cid);

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
  };

  // ### BackboneSync.applyToModel
  //
  // Apply one change delivered on a model's own channel: `update` merges
  // unless it is older than the model, `destroy` announces the model as
  // destroyed, which removes it from every collection that holds it.
  BackboneSync.applyToModel = function (model, change) {
    var attrs = parseWith(model, change.object),
        id = idOfModel(model, attrs);
    if (id != null && model.id != null && String(id) !== String(model.id)) return;
    if (change.event === 'destroy') {
      model.trigger('destroy', model, model.collection, { backboneSync: true });
      return;
    }
    if (stale(model, change.version || 0)) return;
    model.set(attrs);
    saw(model, change.version || 0);
  };

  // Whether `client` recovers what it missed by itself and fires `resync`
  // only when it could not (the client backbone_sync serves); for other
  // clients, subscribers refetch after every outage.
  BackboneSync.clientRecovers = function (client) {
    return !!(client && client.recovers === true);
  };

  // Is `error` the server refusing a subscription (403)?
  BackboneSync.isForbidden = function (error) {
    var text = error && (error.message || String(error));
    return !!error && (error.code === 403 || /^403:/.test(text || ''));
  };
})(typeof window !== 'undefined' ? window : this);
