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
// * `fetch` is the gap-free fetch of a collection: it waits until the
//   server has acknowledged the subscribe, then fetches; what is pushed
//   while the fetch is in flight is applied at once and held, then applied
//   again, in order, over the fetch's `set` (or `reset`), each update only
//   where it is newer than what the fetch returned. The refetch after an
//   outage is one too.
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
    this.ready   = false;       // the server has acknowledged the subscribe
    this.holds   = [];          // per fetch in flight: the changes pushed meanwhile
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
    // With Backbone 1.x `fetch` merges, adds and removes in place. It is a
    // gap-free fetch, as is a `refetch` option that returns a thenable.
    resync: function () {
      if (this.closed) return;
      this.target.trigger('backbone_sync:resync', this.target, this.channel);
      var self = this;
      if (this.refetch) return this.fetch({}, function () { return self.refetch(self.target); });
      return this.fetch();
    },

    // ### fetch
    //
    // The gap-free fetch: once the subscribe is acknowledged (at once when
    // it already is), `fetch(options)` the collection, holding the changes
    // pushed while it is in flight; after its `set`, and before the
    // caller's `success`, each held change is applied again through the
    // table, and the version rules of `BackboneSync.applyToCollection`
    // keep it from rolling back what the fetch returned newer. `run`, when
    // given, does the fetching instead (it is passed the options and
    // returns a thenable). Returns what the collection's `fetch` returns,
    // or a promise of it while the subscribe is unanswered.
    fetch: function (options, run) {
      var self = this;
      if (this.ready || this.closed) return this._fetchHeld(options, run);
      var go = function () { return self._fetchHeld(options, run); };
      return this.then(go, go);
    },

    _fetchHeld: function (options, run) {
      var self = this, target = this.target,
          hold = { changes: [] },
          opts = _.extend({}, options),
          success = opts.success, error = opts.error, released = false;
      var release = function () {
        if (released) return;
        released = true;
        var i = _.indexOf(self.holds, hold);
        if (i >= 0) self.holds.splice(i, 1);
        if (self.closed) return;
        for (var j = 0; j < hold.changes.length; j++) self.receive(hold.changes[j]);
      };
      this.holds.push(hold);
      opts.backboneSyncHeld = true;
      opts.success = function () {
        release();
        if (success) return success.apply(this, arguments);
      };
      opts.error = function () {
        release();
        if (error) return error.apply(this, arguments);
      };
      var result;
      try {
        result = run ? run(opts) : target.fetch(opts);
      } catch (e) {
        release();
        throw e;
      }
      // A `refetch` of the app's own does not call our success: release
      // when what it returned settles (or at once when it returns nothing).
      if (run) {
        if (result && typeof result.then === 'function') result.then(release, release);
        else release();
      }
      return result;
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
      this.ready = false;
      if (faye && typeof faye.then === 'function') {
        faye.then(function () { if (faye === self.faye) self.ready = true; },
                  function (error) { self._refused(faye, error); });
      } else {
        this.ready = true;
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
      for (var i = 0; i < this.holds.length; i++) this.holds[i].changes.push(data);
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
