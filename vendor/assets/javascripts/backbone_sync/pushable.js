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
// destroy removes the model from every collection that holds it. `client`
// (on the prototype or in the options) defaults to `BackboneSync.client()`.
//
//= require backbone_sync/core
//= require extensions/backbone.collection.idempotent

(function (root) {
  'use strict';

  var Backbone     = root.Backbone,
      _            = root._,
      BackboneSync = root.BackboneSync;

  var COLLECTION_ACTIONS = { create: true, update: true, destroy: true },
      MODEL_ACTIONS      = { update: true, destroy: true };

  function channelOf(object) {
    var channel = typeof object.channel === 'function' ? object.channel() : object.channel;
    return channel ? BackboneSync.channelName(channel) : null;
  }

  // What both classes do with their subscription; `this` is the
  // collection or the model, `apply(change)` handles one change.
  var Push = {
    subscribePush: function () {
      if (this.pushSubscription || this.pushDisposed) return this;
      var channel = channelOf(this);
      if (!channel) return this;
      var client = this.client || BackboneSync.client(),
          self = this;
      BackboneSync.authorize(client);
      this.pushClient = client;
      this.pushChannel = channel;
      this.pushSubscription = client.subscribe(channel, function (data) { self.receive(data); });
      if (this.pushSubscription && typeof this.pushSubscription.then === 'function') {
        this.pushSubscription.then(null, function (error) {
          // A 403 may mean the server wants a token: get one, try once more.
          if (self.pushSubscription && BackboneSync.isForbidden(error) && BackboneSync.tokenRefused(channel)) {
            self.pushSubscription = null;
            self.subscribePush();
          }
        });
      }
      return this;
    },

    unsubscribePush: function () {
      var subscription = this.pushSubscription;
      this.pushSubscription = null;
      if (subscription && typeof subscription.cancel === 'function') subscription.cancel();
      return this;
    },

    // Stop following the channel for good (Marionette and Chaplin call it).
    dispose: function () {
      this.pushDisposed = true;
      this.unsubscribePush();
      if (typeof this.stopListening === 'function') this.stopListening();
      return this;
    }
  };

  // Backbone.PushableCollection
  // ---------------------------

  Backbone.PushableCollection = Backbone.Collection.extend(_.extend({}, Push, {

    constructor: function (models, options) {
      if (options && options.client) this.client = options.client;
      if (options && options.channel) this.channel = options.channel;
      Backbone.Collection.apply(this, arguments);
      this.subscribePush();
      if (this.pushClient && !BackboneSync.clientRecovers(this.pushClient)) this._watchTransport();
      else if (this.pushClient) this._watchResync();
    },

    // Each change in a delivery goes through the table of allowed events.
    receive: function (data) {
      var changes = BackboneSync.changes(data), i;
      for (i = 0; i < changes.length; i++) {
        if (COLLECTION_ACTIONS[changes[i].event] === true) BackboneSync.applyToCollection(this, changes[i]);
      }
    },

    // Called after an outage the client could not recover from.
    resync: function () {
      if (!this.pushSubscription) return;
      this.trigger('backbone_sync:resync', this, this.pushChannel);
      return this.fetch();
    },

    _watchResync: function () {
      var self = this;
      this._onResync = function (channel) { if (channel === self.pushChannel) self.resync(); };
      this.pushClient.bind('resync', this._onResync);
    },

    _watchTransport: function () {
      var self = this, down = false;
      this._onDown = function () { down = true; };
      this._onUp = function () {
        if (!down) return;
        down = false;
        self.resync();
      };
      this.pushClient.bind('transport:down', this._onDown);
      this.pushClient.bind('transport:up', this._onUp);
    },

    unsubscribePush: function () {
      Push.unsubscribePush.call(this);
      if (this.pushClient) {
        if (this._onResync) this.pushClient.unbind('resync', this._onResync);
        if (this._onDown) this.pushClient.unbind('transport:down', this._onDown);
        if (this._onUp) this.pushClient.unbind('transport:up', this._onUp);
      }
      return this;
    },

    stopListening: function () {
      if (arguments.length === 0) this.unsubscribePush();
      var stop = Backbone.Collection.prototype.stopListening;
      return stop ? stop.apply(this, arguments) : this;
    }
  }));

  // Backbone.PushableModel
  // ----------------------

  Backbone.PushableModel = Backbone.Model.extend(_.extend({}, Push, {

    constructor: function (attributes, options) {
      if (options && options.client) this.client = options.client;
      Backbone.Model.apply(this, arguments);
      // A new model has no channel yet: subscribe once an id arrives.
      this.on('change:' + this.idAttribute, this._idChanged, this);
      if (!this.isNew()) this.subscribePush();
    },

    _idChanged: function () {
      if (this.isNew() || this.pushDisposed) return;
      if (this.pushSubscription && this.pushChannel === channelOf(this)) return;
      this.unsubscribePush();
      this.subscribePush();
    },

    receive: function (data) {
      var changes = BackboneSync.changes(data), i;
      for (i = 0; i < changes.length; i++) {
        if (MODEL_ACTIONS[changes[i].event] !== true) continue;
        if (changes[i].event === 'destroy') this.unsubscribePush();
        BackboneSync.applyToModel(this, changes[i]);
      }
    },

    destroy: function () {
      this.pushDisposed = true;
      this.unsubscribePush();
      return Backbone.Model.prototype.destroy.apply(this, arguments);
    },

    stopListening: function () {
      if (arguments.length === 0) this.unsubscribePush();
      var stop = Backbone.Model.prototype.stopListening;
      return stop ? stop.apply(this, arguments) : this;
    }
  }));
})(typeof window !== 'undefined' ? window : this);
