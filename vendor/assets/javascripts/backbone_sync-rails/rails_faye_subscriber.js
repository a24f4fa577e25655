// backbone_sync-rails/rails_faye_subscriber.js
// ============================================
//
// Keeps a Backbone collection in step with what Rails broadcasts on
// `/sync/<channel>`:
//
//     var subscriber = new BackboneSync.RailsFayeSubscriber(users,
//       {channel: 'users', client: fayeClient});
//     subscriber.fetch();      // the first fetch, without a gap
//     ...
//     subscriber.leave();
//
// `create` adds (once), `update` merges (adding the model when it is
// missing), `destroy` removes; an update older than the model is dropped
// and the model read again.
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

  // ### new RailsFayeSubscriber(collection, options)
  //
  // Options: `channel` (required: `"users"` or `"/sync/users"`), `client`,
  // and `resync`, a function called instead of `collection.fetch()` when
  // the collection may have missed changes. The subscription itself (the
  // token retry, the refetch after an outage, `leave`) is a
  // `BackboneSync.Subscription`, as for `Backbone.PushableCollection`.
  function RailsFayeSubscriber(collection, options) {
    options = options || {};
    if (!options.channel) throw new Error('RailsFayeSubscriber needs {channel: "<plural>"}, e.g. {channel: "users"}');
    _.bindAll(this, 'receive', 'resync');
    this.collection = collection;
    this.resyncWith = options.resync || null;
    this._subscription = new BackboneSync.Subscription(collection, {
      kind: 'collection', channel: options.channel, client: options.client,
      refetch: this.resyncWith, outage: this.resync, deliver: this.receive, via: this
    });
    this.channel = this._subscription.channel;
    this.client  = this._subscription.client;
    this.subscribe();
  }

  function applyOne(change) {
    return BackboneSync.applyToCollection(this.collection, change);
  }

  _.extend(RailsFayeSubscriber.prototype, {

    // Subscribe, and follow the client's connection. `subscription` is a
    // thenable for the server's answer.
    subscribe: function () {
      this.subscription = this._subscription.open();
      return this;
    },

    // ### receive
    //
    // Apply each change in one delivery, canonical or legacy shaped.
    receive: function (data) {
      this._subscription.receive(data);
    },

    // Apply one change to the collection: every allowed change of a
    // delivery comes through here (`BackboneSync.dispatch` with `via`), so
    // an app may override them as it did with backbone_sync-rails.
    create: applyOne,
    update: applyOne,
    destroy: applyOne,

    // ### fetch
    //
    // The gap-free first fetch: call it rather than `collection.fetch()`.
    // It waits for the subscribe to be acknowledged, and what is pushed
    // while it is in flight is applied again over what it returns (see
    // `BackboneSync.Subscription#fetch`). Returns the request, or a promise
    // of it while the subscribe is unanswered.
    fetch: function (options) {
      return this._subscription.fetch(options);
    },

    // ### resync
    //
    // Fetch the whole collection again: the server is the truth after an
    // outage.
    resync: function () {
      return this._subscription.resync();
    },

    // ### leave
    //
    // Unsubscribe and stop listening to the client.
    leave: function () {
      this._subscription.close();
      this.subscription = null;
    }
  });

  BackboneSync.RailsFayeSubscriber = RailsFayeSubscriber;
})(typeof window !== 'undefined' ? window : this);
