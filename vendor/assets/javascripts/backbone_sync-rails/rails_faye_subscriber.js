// backbone_sync-rails/rails_faye_subscriber.js
// ============================================
//
// Keeps a Backbone collection in step with what Rails broadcasts on
// `/sync/<channel>`:
//
//     var subscriber = new BackboneSync.RailsFayeSubscriber(users,
//       {channel: 'users', client: fayeClient});
//     ...
//     subscriber.leave();
//
// `create` adds (once), `update` merges (adding the model when it is
// missing), `destroy` removes; an update older than the model is dropped.
// After an outage the collection is fetched again, unless the client
// recovered every missed message from the server's history. `client` may
// be the backbone_sync client or a real `Faye.Client`; it defaults to
// `BackboneSync.client()`.
//
//= require backbone_sync/core
//= require extensions/backbone.collection.idempotent

(function (root) {
  'use strict';

  var _            = root._,
      BackboneSync = root.BackboneSync;

  // The only events a delivery may trigger.
  var ACTIONS = { create: 'create', update: 'update', destroy: 'destroy' };

  // ### new RailsFayeSubscriber(collection, options)
  //
  // Options: `channel` (required: `"users"` or `"/sync/users"`), `client`,
  // and `resync`, a function called instead of `collection.fetch()` when
  // the collection may have missed changes.
  function RailsFayeSubscriber(collection, options) {
    options = options || {};
    if (!options.channel) throw new Error('RailsFayeSubscriber needs {channel: "<plural>"}, e.g. {channel: "users"}');
    this.collection = collection;
    this.channel    = BackboneSync.channelName(options.channel);
    this.client     = options.client || BackboneSync.client();
    this.resyncWith = options.resync || null;
    this._down      = false;
    this._retried   = false;
    this._left      = false;
    _.bindAll(this, 'receive', 'resync', '_transportDown', '_transportUp', '_clientResync');
    this.subscribe();
  }

  _.extend(RailsFayeSubscriber.prototype, {

    // Subscribe, and follow the client's connection: a client that recovers
    // by itself says when it could not (`resync`); for any other client,
    // an outage (`transport:down`, then `transport:up`) means a refetch.
    subscribe: function () {
      var self = this;
      BackboneSync.authorize(this.client);
      this.subscription = this.client.subscribe(this.channel, this.receive);
      if (this.subscription && typeof this.subscription.then === 'function') {
        this.subscription.then(null, function (error) { self._refused(error); });
      }
      if (BackboneSync.clientRecovers(this.client)) {
        this.client.bind('resync', this._clientResync);
      } else {
        this.client.bind('transport:down', this._transportDown);
        this.client.bind('transport:up', this._transportUp);
      }
      return this;
    },

    // A 403 may mean the server wants a token: get one and try once more.
    _refused: function (error) {
      if (this._left || this._retried || !BackboneSync.isForbidden(error)) return;
      this._retried = true;
      BackboneSync.tokenRefused(this.channel);
      this.leave({ keepBindings: true });
      this._left = false;
      this.subscription = this.client.subscribe(this.channel, this.receive);
      var self = this;
      if (this.subscription && typeof this.subscription.then === 'function') {
        this.subscription.then(null, function (e) {
          self.collection.trigger('backbone_sync:forbidden', self.channel, e);
        });
      }
    },

    // ### receive
    //
    // Apply each change in one delivery, canonical or legacy shaped.
    receive: function (data) {
      if (this._left) return;
      var changes = BackboneSync.changes(data), i, action;
      for (i = 0; i < changes.length; i++) {
        action = ACTIONS[changes[i].event];
        if (action) this[action](changes[i]);
      }
    },

    create: function (change) {
      return BackboneSync.applyToCollection(this.collection, change);
    },

    update: function (change) {
      return BackboneSync.applyToCollection(this.collection, change);
    },

    destroy: function (change) {
      return BackboneSync.applyToCollection(this.collection, change);
    },

    // ### resync
    //
    // Fetch the whole collection again: the server is the truth after an
    // outage. With Backbone 1.x `fetch` merges, adds and removes in place.
    resync: function () {
      if (this._left) return;
      this.collection.trigger('backbone_sync:resync', this.collection, this.channel);
      if (this.resyncWith) return this.resyncWith(this.collection);
      return this.collection.fetch();
    },

    _clientResync: function (channel) {
      if (channel === this.channel) this.resync();
    },

    _transportDown: function () {
      this._down = true;
    },

    _transportUp: function () {
      if (!this._down) return;
      this._down = false;
      this.resync();
    },

    // ### leave
    //
    // Unsubscribe and stop listening to the client.
    leave: function (options) {
      this._left = true;
      if (this.subscription && typeof this.subscription.cancel === 'function') {
        this.subscription.cancel();
      } else {
        this.client.unsubscribe(this.channel, this.receive);
      }
      this.subscription = null;
      if (options && options.keepBindings) return;
      this.client.unbind('resync', this._clientResync);
      this.client.unbind('transport:down', this._transportDown);
      this.client.unbind('transport:up', this._transportUp);
    }
  });

  BackboneSync.RailsFayeSubscriber = RailsFayeSubscriber;
})(typeof window !== 'undefined' ? window : this);
