// backbone_sync/pushable.js
// =========================
//
// Collections and models that follow their own channels, in the manner of
// the `pushable` gem:
//
//     var Members = Backbone.PushableCollection.extend({
//       url: '/members', channel: 'members'         // /sync/members
//     });
//     var Member = Backbone.PushableModel.extend({
//       urlRoot: '/members',
//       channel: function () { return 'member_' + this.id; }   // /sync/member_42
//     });
//
// A collection subscribes when it is made; a model once it has an id (a new
// model subscribes when its save gives it one). Both unsubscribe on
// `stopListening()` (with no arguments), `dispose()` and, for models,
// `destroy()`. A model's channel delivers `update` and `destroy`; a pushed
// destroy removes the model from every collection that holds it. A
// collection's `fetch` is gap-free (see `BackboneSync.Subscription#fetch`).
// `client`
// (on the prototype or in the options) defaults to `BackboneSync.client()`.
//
//= require backbone_sync/core
//= require extensions/backbone.collection.idempotent

(function (root) {
  'use strict';

  var Backbone     = root.Backbone,
      _            = root._,
      BackboneSync = root.BackboneSync;

  function channelOf(object) {
    var channel = typeof object.channel === 'function' ? object.channel() : object.channel;
    return channel ? BackboneSync.channelName(channel) : null;
  }

  // What both classes do with their subscription, a
  // `BackboneSync.Subscription` (as for `RailsFayeSubscriber`); `this` is
  // the collection or the model, `pushKind` says which.
  var Push = {
    subscribePush: function () {
      if (this.pushSubscription || this.pushDisposed) return this;
      var channel = channelOf(this);
      if (!channel) return this;
      var self = this,
          subscription = new BackboneSync.Subscription(this, {
            kind: this.pushKind, channel: channel, client: this.client,
            deliver: function (data) { self.receive(data); },
            outage: function () { return self.resync(); }
          });
      this.pushClient = subscription.client;
      this.pushChannel = subscription.channel;
      this.pushSubscription = subscription.open();
      return this;
    },

    unsubscribePush: function () {
      var subscription = this.pushSubscription;
      this.pushSubscription = null;
      if (subscription) subscription.close();
      return this;
    },

    // Each change in a delivery goes through the table of allowed actions.
    receive: function (data) {
      BackboneSync.dispatch(this.pushKind, this, data);
    },

    // Stop following the channel for good (Marionette and Chaplin call it).
    dispose: function () {
      this.pushDisposed = true;
      this.unsubscribePush();
      if (typeof this.stopListening === 'function') this.stopListening();
      return this;
    }
  };

  // `stopListening()` with no arguments also unsubscribes.
  function stopListening(Base) {
    return function () {
      if (arguments.length === 0) this.unsubscribePush();
      var stop = Base.prototype.stopListening;
      return stop ? stop.apply(this, arguments) : this;
    };
  }

  // Backbone.PushableCollection
  // ---------------------------

  Backbone.PushableCollection = Backbone.Collection.extend(_.extend({}, Push, {

    pushKind: 'collection',

    constructor: function (models, options) {
      if (options && options.client) this.client = options.client;
      if (options && options.channel) this.channel = options.channel;
      Backbone.Collection.apply(this, arguments);
      this.subscribePush();
    },

    // ### fetch
    //
    // The gap-free fetch (`BackboneSync.Subscription#fetch`): it waits for
    // the subscribe to be acknowledged, and what is pushed while it is in
    // flight is applied again over what it returns. While the subscribe is
    // unanswered it returns a promise rather than the request.
    // `{backboneSyncHeld: true}` is a plain fetch, which it uses itself.
    fetch: function (options) {
      var subscription = this.pushSubscription;
      if (!subscription || (options && options.backboneSyncHeld)) {
        return Backbone.Collection.prototype.fetch.apply(this, arguments);
      }
      return subscription.fetch(options);
    },

    // Called after an outage the client could not recover from: triggers
    // `backbone_sync:resync` and fetches.
    resync: function () {
      if (this.pushSubscription) return this.pushSubscription.resync();
    },

    stopListening: stopListening(Backbone.Collection)
  }));

  // Backbone.PushableModel
  // ----------------------

  Backbone.PushableModel = Backbone.Model.extend(_.extend({}, Push, {

    pushKind: 'model',

    constructor: function (attributes, options) {
      if (options && options.client) this.client = options.client;
      Backbone.Model.apply(this, arguments);
      // A new model has no channel yet: subscribe once an id arrives.
      this.on('change:' + this.idAttribute, this._idChanged, this);
      // A destroy pushed on its own channel is the channel's last word.
      this.on('destroy', this._pushedDestroy, this);
      if (!this.isNew()) this.subscribePush();
    },

    _idChanged: function () {
      if (this.isNew() || this.pushDisposed) return;
      if (this.pushSubscription && this.pushChannel === channelOf(this)) return;
      this.unsubscribePush();
      this.subscribePush();
    },

    _pushedDestroy: function (model, collection, options) {
      if (model === this && options && options.backboneSync) this.unsubscribePush();
    },

    destroy: function () {
      this.pushDisposed = true;
      this.unsubscribePush();
      return Backbone.Model.prototype.destroy.apply(this, arguments);
    },

    stopListening: stopListening(Backbone.Model)
  }));
})(typeof window !== 'undefined' ? window : this);
