// backbone_sync/subscription.js
// =============================
//
// The life of one subscription, the same for every subscriber
// (`RailsFayeSubscriber`, `PushableCollection`, `PushableModel`):
//
//     var subscription = new BackboneSync.Subscription(users,
//       {kind: 'collection', channel: 'users', client: fayeClient}).open();
//     ...
//     subscription.close();
//
// * `open` subscribes to the channel; each delivery goes through
//   `BackboneSync.dispatch` to the collection or the model.
// * A subscribe refused with 403 may mean the server wants a signed token:
//   the channel is marked as needing one (`BackboneSync.tokenRefused`) and
//   the subscribe is tried once more. A second refusal is final: the target
//   triggers `backbone_sync:forbidden` (channel, error).
// * A collection may miss changes during an outage. A client that recovers
//   by itself (the one backbone_sync serves) says when it could not, with
//   `resync`; for any other client an outage (`transport:down`, then
//   `transport:up`) means the same. Then the collection triggers
//   `backbone_sync:resync` (collection, channel) and is fetched again (or
//   handed to the `refetch` option).
// * `close` unsubscribes and stops listening to the client, for good.
//
// The subscription is a thenable for the client's current subscribe, so
// `await subscription` waits for the server's answer.
//
//= require backbone_sync/client
//= require backbone_sync/changes

(function (root) {
  'use strict';

  var _            = root._,
      BackboneSync = root.BackboneSync;

  // ### BackboneSync.channelName
  //
  // `"users"` is `/sync/users`; a name that starts with `/` is used as is.
  BackboneSync.channelName = function (channel) {
    channel = String(channel);
    return channel.charAt(0) === '/' ? channel : '/sync/' + channel;
  };

  // ### BackboneSync.clientRecovers
  //
  // Whether `client` recovers what it missed by itself and fires `resync`
  // only when it could not (the client backbone_sync serves); for other
  // clients, subscribers refetch after every outage.
  BackboneSync.clientRecovers = function (client) {
    return !!(client && client.recovers === true);
  };

  // ### BackboneSync.isForbidden
  //
  // Is `error` the server refusing a subscription (403)?
  BackboneSync.isForbidden = function (error) {
    var text = error && (error.message || String(error));
    return !!error && (error.code === 403 || /^403:/.test(text || ''));
  };

  // ### new BackboneSync.Subscription(target, options)
  //
  // `target` is a collection or a model. Options: `channel` (required),
  // `kind` (`'collection'`, the default, or `'model'`: which actions apply,
  // and whether outages are watched), `client` (defaults to
  // `BackboneSync.client()`), `refetch(collection)`, called instead of
  // `collection.fetch()` by `resync`, and `outage()`, called instead of
  // `resync` after an outage (a subscriber passes its own overridable
  // `resync`, which comes back here), and `deliver(data)`, called with each
  // delivery instead of `receive` (a subscriber passes its own overridable
  // `receive`, which comes back here), and `via`, whose `create`, `update`
  // and `destroy` apply the allowed changes (see `BackboneSync.dispatch`).
  function Subscription(target, options) {
    options = options || {};
    this.target  = target;
    this.kind    = options.kind || 'collection';
    this.channel = BackboneSync.channelName(options.channel);
    this.client  = options.client || BackboneSync.client();
    this.refetch = options.refetch || null;
    this.outage  = options.outage || null;
    this.deliver = options.deliver || null;
    this.via     = options.via || null;
    this.faye    = null;        // what client.subscribe returned, last
    this.closed  = false;
    this.retried = false;
    this._down   = false;
    _.bindAll(this, '_delivered', '_clientResync', '_transportDown', '_transportUp');
  }

  _.extend(Subscription.prototype, {

    // Subscribe, and follow the client's connection for a collection.
    open: function () {
      if (this.faye || this.closed) return this;
      BackboneSync.authorize(this.client);
      this._subscribe();
      if (this.kind !== 'collection') return this;
      if (BackboneSync.clientRecovers(this.client)) {
        this.client.bind('resync', this._clientResync);
      } else {
        this.client.bind('transport:down', this._transportDown);
        this.client.bind('transport:up', this._transportUp);
      }
      return this;
    },

    // Apply one delivery to the target through the table of allowed
    // actions.
    receive: function (data) {
      if (this.closed) return;
      BackboneSync.dispatch(this.kind, this.target, data, this.via);
    },

    // ### resync
    //
    // Fetch the collection again: the server is the truth after an outage.
    // With Backbone 1.x `fetch` merges, adds and removes in place.
    resync: function () {
      if (this.closed) return;
      this.target.trigger('backbone_sync:resync', this.target, this.channel);
      if (this.refetch) return this.refetch(this.target);
      return this.target.fetch();
    },

    // ### close
    //
    // Unsubscribe and stop listening to the client.
    close: function () {
      if (this.closed) return this;
      this.closed = true;
      this._cancel();
      this.client.unbind('resync', this._clientResync);
      this.client.unbind('transport:down', this._transportDown);
      this.client.unbind('transport:up', this._transportUp);
      return this;
    },

    // A thenable for the current subscribe.
    then: function (onFulfilled, onRejected) {
      var faye = this.faye;
      if (faye && typeof faye.then === 'function') return faye.then(onFulfilled, onRejected);
      return Promise.resolve().then(onFulfilled, onRejected);
    },

    cancel: function () {
      return this.close();
    },

    _subscribe: function () {
      var self = this,
          faye = this.faye = this.client.subscribe(this.channel, this._delivered);
      if (faye && typeof faye.then === 'function') {
        faye.then(null, function (error) { self._refused(faye, error); });
      }
    },

    // A 403 may mean the server wants a token: get one and try once more.
    _refused: function (faye, error) {
      if (this.closed || faye !== this.faye) return;
      if (this.retried) {
        this.target.trigger('backbone_sync:forbidden', this.channel, error);
        return;
      }
      if (!BackboneSync.isForbidden(error)) return;
      this.retried = true;
      BackboneSync.tokenRefused(this.channel);
      this._cancel();
      this._subscribe();
    },

    _cancel: function () {
      var faye = this.faye;
      this.faye = null;
      if (!faye) return;
      if (typeof faye.cancel === 'function') faye.cancel();
      else this.client.unsubscribe(this.channel, this._delivered);
    },

    // The listener on the client, until `close`.
    _delivered: function (data) {
      if (this.closed) return;
      if (this.deliver) this.deliver(data);
      else this.receive(data);
    },

    _outage: function () {
      if (this.closed) return;
      if (this.outage) this.outage();
      else this.resync();
    },

    _clientResync: function (channel) {
      if (channel === this.channel) this._outage();
    },

    _transportDown: function () {
      this._down = true;
    },

    _transportUp: function () {
      if (!this._down) return;
      this._down = false;
      this._outage();
    }
  });

  BackboneSync.Subscription = Subscription;
})(typeof window !== 'undefined' ? window : this);
