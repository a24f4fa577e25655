// backbone_sync/faye.js
// =====================
//
// A small browser client for the Bayeux protocol as Faye speaks it, served by
// the backbone_sync server at `<mount>.js` and `<mount>/client.js`. It covers
// the part of `Faye.Client` that applications use: subscribe (with `/*` and
// `/**` wildcards), unsubscribe, publish, extensions and the
// `transport:up` / `transport:down` events.
//
//     var client = new Faye.Client('http://localhost:9292/faye');
//     client.subscribe('/sync/users', function (data) { ... })
//       .then(function () { /* the server accepted the subscription */ });
//
// It handshakes over HTTP, then talks over a WebSocket at the same URL when
// the server offers one, and otherwise long-polls with JSON POSTs. Written in
// ES5 so Sprockets can ship it untranspiled; it needs a native `Promise`.
//
// It also recovers what it missed while away. The backbone_sync server
// numbers each channel's messages (`ext.offset`, within an `ext.epoch`);
// the client remembers the last one it delivered per channel and, whenever
// it subscribes again after a reconnect or a new handshake, asks for what
// came after it (`ext.since`). Replayed messages it had already delivered
// are dropped. When the server cannot replay (a restart, a gap longer than
// its history) or the client had nothing to ask from, it fires `resync`
// with the channel, and the application should reload that data:
//
//     client.bind('resync', function (channel) { users.fetch(); });
//
// `window.Faye` is defined only when the page has not loaded the real Faye
// client; `BackboneSync.FayeClient` always points at this one.

(function (root) {
  'use strict';

  // Connection states. `DISCONNECTED` is final: the server advised
  // `reconnect: "none"`.
  var UNCONNECTED  = 1,
      CONNECTING   = 2,
      CONNECTED    = 3,
      DISCONNECTED = 4;

  var HANDSHAKE   = '/meta/handshake',
      CONNECT     = '/meta/connect',
      SUBSCRIBE   = '/meta/subscribe',
      UNSUBSCRIBE = '/meta/unsubscribe',
      DISCONNECT  = '/meta/disconnect';

  // Faye's channel grammar: segments of `[A-Za-z0-9_-!~()$@]`, and patterns
  // that end in `/*` (one segment) or `/**` (any depth).
  var SEGMENT      = '[\\w\\-!~()$@]+',
      CHANNEL_NAME = new RegExp('^(/' + SEGMENT + ')+$'),
      CHANNEL_GLOB = new RegExp('^(/' + SEGMENT + ')*/\\*{1,2}$');

  // The backoff after a transport failure doubles from `retry` up to this.
  var MAX_BACKOFF_MS = 30000;

  // How long a WebSocket may take to open before we long-poll instead.
  var SOCKET_OPEN_TIMEOUT_MS = 10000;

  // A request waits 1.2 times the server's advised timeout for its reply, as
  // Faye's client does, plus a little slack: a server may answer a held
  // /meta/connect a few hundred ms late, which matters when timeouts are short.
  var RESPONSE_TIMEOUT_FACTOR = 1.2,
      RESPONSE_TIMEOUT_SLACK_MS = 2000;

  var hasOwn = Object.prototype.hasOwnProperty;

  // Helpers
  // -------

  // Does `channel` (a plain name) match `pattern` (a name or a glob)?
  function channelMatches(pattern, channel) {
    if (pattern === channel) return true;
    var want = pattern.split('/'),
        have = channel.split('/'),
        last = want.pop(),
        i;

    if (last === '*' && have.length !== want.length + 1) return false;
    if (last === '**' && have.length <= want.length) return false;
    if (last !== '*' && last !== '**') return false;

    for (i = 0; i < want.length; i++) {
      if (want[i] !== have[i]) return false;
    }
    return true;
  }

  // Turn a Bayeux error string such as `"403:/sync/x:Forbidden channel"`
  // into an `Error` with `code` and `params`, keeping the whole string as
  // the message so it can be shown as-is.
  function bayeuxError(raw) {
    var text  = String(raw || '500::Internal server error'),
        parts = /^(\d+):([^:]*):(.*)$/.exec(text),
        error = new Error(text);

    error.code   = parts ? parseInt(parts[1], 10) : null;
    error.params = parts && parts[2] ? parts[2].split(',') : [];
    error.text   = parts ? parts[3] : text;
    return error;
  }

  // `new WebSocket` needs an absolute URL; let the DOM resolve relative ones.
  function absoluteUrl(url) {
    if (/^https?:\/\//i.test(url) || !root.document) return url;
    var a = root.document.createElement('a');
    a.href = url;
    return a.href;
  }

  // Report an exception thrown by application code without letting it break
  // the client's own bookkeeping.
  function rethrowLater(error) {
    setTimeout(function () { throw error; }, 0);
  }

  // A promise that has already failed, but does not count as unhandled.
  function rejected(error) {
    var promise = Promise.reject(error);
    promise.then(null, function () {});
    return promise;
  }

  // Subscription
  // ------------

  // What `client.subscribe()` returns: a thenable that settles when the
  // server answers the `/meta/subscribe`, and the handle to cancel it.
  function Subscription(client, channel, listener, promise) {
    this._client   = client;
    this._channel  = channel;
    this._listener = listener;
    this._promise  = promise;
    this._promise.then(null, function () {});
  }

  // Standard promise interface, so `await client.subscribe(...)` works.
  Subscription.prototype.then = function (onFulfilled, onRejected) {
    return this._promise.then(onFulfilled, onRejected);
  };

  Subscription.prototype['catch'] = function (onRejected) {
    return this._promise.then(null, onRejected);
  };

  // Stop calling this subscription's callback. When it was the channel's last
  // callback, the client unsubscribes on the server too; the returned promise
  // settles with the server's answer.
  Subscription.prototype.cancel = function () {
    if (this._cancelled) return Promise.resolve();
    this._cancelled = true;
    return this._client._removeListener(this._channel, this._listener);
  };

  Subscription.prototype.unsubscribe = Subscription.prototype.cancel;

  // Client
  // ------

  // `endpoint` is the server's mount URL, e.g. `http://host:9292/faye`.
  // Options, both in seconds as in Faye: `timeout` (60) is how long to wait
  // for a reply before the server sends its own advice, `retry` (5) is the
  // first pause before reconnecting after a failure.
  function Client(endpoint, options) {
    options = options || {};

    this._endpoint = absoluteUrl(endpoint);
    this._timeout  = options.timeout > 0 ? options.timeout : 60;
    this._retry    = options.retry > 0 ? options.retry : 5;
    this._advice   = { reconnect: 'retry', interval: 0, timeout: this._timeout * 1000 };

    this._state        = UNCONNECTED;
    this._clientId     = null;
    this._serverTypes  = [];
    this._disabled     = {};
    this._extensions   = [];
    this._listeners    = {};

    // channel or glob -> { listeners: [], waiters: [], acked: bool }
    this._channels = {};
    // exact channel -> { offset, epoch } of the last message delivered
    this._positions = {};
    // message id -> { message, wire, callback, timer }, awaiting a reply
    this._requests  = {};
    // ids of requests to send at the next flush
    this._outbox    = [];
    this._messageId = 0;

    this._transport      = null;   // 'websocket' or 'long-polling'
    this._transportReady = false;
    this._transportGen   = 0;      // bumped to ignore callbacks of old transports
    this._socket         = null;
    this._avoidWebSocket = false;
    this._xhrs           = [];
    this._up             = null;   // null until the first reply, then true/false
    this._failures       = 0;
    this._connectPending = false;
    this._timers         = {};

    var self = this;
    if (root.addEventListener) {
      root.addEventListener('beforeunload', function () {
        if (!self._disabled.autodisconnect) self.disconnect();
      });
    }
  }

  Client.prototype = {

    // Public API
    // ----------

    // Listen to `channel` (a name or a `/*` or `/**` glob). `callback` gets
    // each message's `data`. Returns a `Subscription`.
    subscribe: function (channel, callback, context) {
      var listener = { callback: callback, context: context };

      if (!CHANNEL_NAME.test(channel) && !CHANNEL_GLOB.test(channel)) {
        return new Subscription(this, channel, listener,
          rejected(bayeuxError('405:' + channel + ':Invalid channel')));
      }

      var entry = this._channels[channel], isNew = !entry;
      if (isNew) entry = this._channels[channel] = { listeners: [], waiters: [], acked: false };
      entry.listeners.push(listener);

      var promise = entry.acked ? Promise.resolve() : new Promise(function (resolve, reject) {
        entry.waiters.push({ resolve: resolve, reject: reject });
      });

      // Before the handshake completes there is nothing to send: every
      // successful handshake subscribes to all known channels.
      if (isNew && this._state === CONNECTED) this._sendSubscribe(channel, entry);
      this._ensureConnected();

      return new Subscription(this, channel, listener, promise);
    },

    // Remove `callback` from `channel`, or every callback when it is omitted.
    // Returns a promise for the server's `/meta/unsubscribe` answer.
    unsubscribe: function (channel, callback) {
      var entry = this._channels[channel];
      if (!entry) return Promise.resolve();

      if (callback === undefined) {
        entry.listeners = [];
        return this._removeListener(channel, null);
      }
      for (var i = 0; i < entry.listeners.length; i++) {
        if (entry.listeners[i].callback === callback) {
          return this._removeListener(channel, entry.listeners[i]);
        }
      }
      return Promise.resolve();
    },

    // Send `data` to everyone subscribed to `channel`. The promise resolves
    // when the server accepts the message and rejects with its error (for
    // example 403 when this channel needs the publisher's secret).
    publish: function (channel, data) {
      if (!CHANNEL_NAME.test(channel)) {
        return rejected(bayeuxError('405:' + channel + ':Invalid channel'));
      }
      var self = this;
      var promise = new Promise(function (resolve, reject) {
        self._send({ channel: channel, data: data }, function (reply) {
          if (!reply) reject(new Error('The client disconnected before ' + channel + ' was published; publish again after reconnecting'));
          else if (reply.successful) resolve();
          else reject(bayeuxError(reply.error));
        });
      });
      promise.then(null, function () {});
      this._ensureConnected();
      return promise;
    },

    // Tell the server we are leaving and forget every subscription.
    disconnect: function () {
      var self = this;
      if (this._state !== CONNECTED || !this._transportReady) {
        this._teardown();
        return Promise.resolve();
      }
      return new Promise(function (resolve) {
        var done = false;
        var finish = function () {
          if (done) return;
          done = true;
          self._teardown();
          resolve();
        };
        // Whatever the server answers the held /meta/connect with now (a
        // 401 from some servers) must not start a new session.
        self._clear('connect');
        self._connectPending = true;
        for (var id in self._requests) {
          if (hasOwn.call(self._requests, id) && self._requests[id].message.channel === CONNECT) {
            self._forget(self._requests[id]);
          }
        }
        self._send({ channel: DISCONNECT }, finish);
        // The page may be unloading: send now rather than on the next tick.
        self._flush();
        setTimeout(finish, 1000);
      });
    },

    // Extensions see every message: `outgoing(message, callback)` before it
    // is sent, `incoming(message, callback)` when it arrives. Each must call
    // `callback` with the (possibly changed) message, or with null to drop it.
    addExtension: function (extension) {
      this._extensions.push(extension);
    },

    removeExtension: function (extension) {
      var i = this._extensions.indexOf(extension);
      if (i >= 0) this._extensions.splice(i, 1);
    },

    // `disable('websocket')` forces long-polling; `disable('autodisconnect')`
    // keeps the session open when the page unloads.
    disable: function (feature) {
      this._disabled[feature] = true;
    },

    // Listen for `'transport:down'` (the connection to the server was lost;
    // fired once per outage), `'transport:up'` (it works again) and
    // `'resync'` (`fn(channel)`: messages on `channel` may have been missed
    // and could not be replayed).
    on: function (event, fn, context) {
      (this._listeners[event] = this._listeners[event] || []).push({ fn: fn, context: context });
      return this;
    },

    off: function (event, fn) {
      var list = this._listeners[event] || [];
      this._listeners[event] = fn === undefined ? [] : list.filter(function (l) { return l.fn !== fn; });
      return this;
    },

    // The session id the server gave us, or null before the handshake.
    getClientId: function () {
      return this._clientId;
    },

    // Sessions
    // --------

    // Start the handshake unless one is under way or done.
    _ensureConnected: function () {
      if (this._state === UNCONNECTED && !this._timers.recover) this._handshake();
    },

    // The handshake always goes over HTTP; its reply says which transports
    // the server offers and carries our clientId.
    _handshake: function () {
      if (this._state === CONNECTING || this._state === DISCONNECTED) return;
      var self = this;

      this._closeTransport();
      this._clear('connect');
      this._state          = CONNECTING;
      this._clientId       = null;
      this._connectPending = false;

      var types = this._wantsWebSocket(['websocket']) ? ['websocket', 'long-polling'] : ['long-polling'];
      var message = { channel: HANDSHAKE, version: '1.0', supportedConnectionTypes: types };
      var rec = this._track(message, function (reply) { self._handshakeReplied(reply); });

      this._pipe('outgoing', message, function (wire) {
        if (!wire || self._requests[message.id] !== rec || self._state !== CONNECTING) return;
        rec.wire = wire;
        self._armTimer(rec);
        self._post([wire]);
      });
    },

    _handshakeReplied: function (reply) {
      var self = this;
      if (this._state !== CONNECTING) return;

      if (!reply.successful || !reply.clientId) {
        this._state = UNCONNECTED;
        if (this._advice.reconnect === 'none') return this._stop();
        this._later('recover', this._backoff(), function () { self._handshake(); });
        return;
      }

      this._clientId    = reply.clientId;
      this._serverTypes = reply.supportedConnectionTypes || [];
      this._state       = CONNECTED;

      this._openTransport(function () {
        // A new session: the server knows none of our subscriptions, so
        // pending (un)subscribes are replaced by subscribing to everything we
        // have; other messages, such as publishes, are sent again.
        var keep = [], id, rec, channel;
        for (id in self._requests) {
          if (!hasOwn.call(self._requests, id)) continue;
          rec = self._requests[id];
          channel = rec.message.channel;
          if (channel === SUBSCRIBE || channel === UNSUBSCRIBE || channel === CONNECT || channel === HANDSHAKE) {
            self._forget(rec);
            if (channel === SUBSCRIBE || channel === UNSUBSCRIBE) rec.callback(null);
          } else {
            keep.push(rec);
          }
        }
        self._outbox = [];
        // The connect goes first: it ties the session to this transport, so
        // what a subscribe replays is sent at once rather than at the end of
        // the next long-poll.
        self._connect();
        self._flush();
        var subscribing = false;
        for (channel in self._channels) {
          if (!hasOwn.call(self._channels, channel)) continue;
          self._sendSubscribe(channel, self._channels[channel]);
          subscribing = true;
        }
        self._requeue(keep);
        // With subscriptions, the first subscribe reply marks the transport
        // up; otherwise there is nothing else to wait for.
        if (!subscribing) self._markUp();
        self._flush();
      });
    },

    // Drop the session and start a new one, as the server advised.
    _rehandshake: function () {
      if (this._state === CONNECTING || this._state === DISCONNECTED) return;
      this._state = UNCONNECTED;
      this._clientId = null;
      this._connectPending = false;
      this._clear('connect');
      this._handshake();
    },

    // `/meta/connect` keeps the session alive and, on long-polling, carries
    // deliveries; the server holds it for up to `advice.timeout`.
    _connect: function () {
      if (this._state !== CONNECTED || !this._transportReady || this._connectPending) return;
      var self = this;
      this._connectPending = true;
      this._send({ channel: CONNECT, connectionType: this._transport }, function (reply) {
        self._connectPending = false;
        if (!reply || self._state !== CONNECTED) return;
        var advice = self._advice;
        if (advice.reconnect === 'none') return self._stop();
        if (advice.reconnect === 'handshake') return self._rehandshake();
        var wait = reply.successful ? advice.interval : Math.max(advice.interval, self._retry * 1000);
        self._later('connect', wait, function () { self._connect(); });
      });
    },

    // A channel that was subscribed before (`entry.acked`) is being
    // resubscribed after an outage: it asks for what it missed, from the
    // last position it delivered when it knows one.
    // Within the same session (`again`) the server still holds the
    // subscription, so a refusal does not end it: the channel is only
    // reported for a resync.
    _sendSubscribe: function (channel, entry, again) {
      var self = this,
          resubscribe = entry.acked,
          position = resubscribe && CHANNEL_NAME.test(channel) ? this._positions[channel] : null,
          message = { channel: SUBSCRIBE, subscription: channel };

      if (position) message.ext = { since: { offset: position.offset, epoch: position.epoch } };
      this._send(message, function (reply) {
        if (again && reply && !reply.successful) {
          if (self._channels[channel] === entry) self._trigger('resync', channel);
          return;
        }
        self._subscribed(channel, entry, reply);
        if (reply && reply.successful && self._channels[channel] === entry) {
          self._resumed(channel, reply, resubscribe, !!position);
        }
      });
    },

    // Subscribe again to every channel the server already confirmed, after
    // a reconnect within the same session: the session may have outlived
    // messages the broken transport swallowed.
    _resubscribeAll: function () {
      var waiting = {}, id, rec, channel;
      for (id in this._requests) {
        if (!hasOwn.call(this._requests, id)) continue;
        rec = this._requests[id];
        if (rec.message.channel === SUBSCRIBE) waiting[rec.message.subscription] = true;
      }
      for (channel in this._channels) {
        if (hasOwn.call(this._channels, channel) && this._channels[channel].acked && !waiting[channel]) {
          this._sendSubscribe(channel, this._channels[channel], true);
        }
      }
    },

    // Make sense of a successful subscribe reply's `ext`. A first subscribe
    // starts counting from the position it reports. A resubscribe either
    // recovered (the replayed messages follow and move the position on) or
    // did not, and then the channel's data must be reloaded.
    _resumed: function (channel, reply, resubscribe, asked) {
      var ext = reply.ext || {},
          recovered = asked && ext.recovered === true;
      if (!recovered && typeof ext.epoch === 'string' && typeof ext.offset === 'number') {
        this._advance(channel, ext.epoch, ext.offset);
      }
      if (resubscribe && !recovered) this._trigger('resync', channel);
    },

    // Move a channel's position forward; a new epoch starts over.
    _advance: function (channel, epoch, offset) {
      var position = this._positions[channel];
      if (position && position.epoch === epoch && position.offset >= offset) return;
      this._positions[channel] = { offset: offset, epoch: epoch };
    },

    // Forget the positions that only `pattern` was following: subscribing
    // again later starts afresh rather than seeing a gap.
    _forgetPositions: function (pattern) {
      var channel, other, kept;
      for (channel in this._positions) {
        if (!hasOwn.call(this._positions, channel) || !channelMatches(pattern, channel)) continue;
        kept = false;
        for (other in this._channels) {
          if (hasOwn.call(this._channels, other) && channelMatches(other, channel)) kept = true;
        }
        if (!kept) delete this._positions[channel];
      }
    },

    // Settle the promises waiting on `entry` with the server's answer. A null
    // reply means the request was superseded by a resubscribe.
    _subscribed: function (channel, entry, reply) {
      var current = this._channels[channel] === entry;

      if (!reply) {
        if (!current) this._settle(entry, null);
      } else if (reply.successful) {
        entry.acked = true;
        this._settle(entry, null);
      } else {
        if (current) delete this._channels[channel];
        this._settle(entry, bayeuxError(reply.error));
      }
    },

    // Resolve (or, with an error, reject) everyone awaiting this subscription.
    _settle: function (entry, error) {
      var waiters = entry.waiters;
      entry.waiters = [];
      for (var i = 0; i < waiters.length; i++) {
        if (error) waiters[i].reject(error);
        else waiters[i].resolve();
      }
    },

    // Remove one listener (or, with null, whatever is left) and unsubscribe
    // on the server when the channel has none left.
    _removeListener: function (channel, listener) {
      var entry = this._channels[channel];
      if (!entry) return Promise.resolve();

      if (listener) {
        var i = entry.listeners.indexOf(listener);
        if (i >= 0) entry.listeners.splice(i, 1);
      }
      if (entry.listeners.length > 0) return Promise.resolve();

      delete this._channels[channel];
      this._forgetPositions(channel);
      if (this._state !== CONNECTED) return Promise.resolve();

      var self = this;
      var promise = new Promise(function (resolve, reject) {
        self._send({ channel: UNSUBSCRIBE, subscription: channel }, function (reply) {
          if (!reply || reply.successful) resolve();
          else reject(bayeuxError(reply.error));
        });
      });
      promise.then(null, function () {});
      return promise;
    },

    // Stop for good (`reconnect: "none"`).
    _stop: function () {
      this._teardown();
      this._state = DISCONNECTED;
    },

    // Forget the session and every subscription, and close the transport.
    _teardown: function () {
      var id;
      this._closeTransport();
      for (id in this._timers) {
        if (hasOwn.call(this._timers, id)) clearTimeout(this._timers[id]);
      }
      this._timers = {};
      var requests = this._requests, channels = this._channels;
      this._requests = {};
      this._outbox = [];
      this._channels = {};
      this._positions = {};
      this._clientId = null;
      this._connectPending = false;
      this._state = UNCONNECTED;
      // Settle what callers still wait for: unanswered subscribes and
      // publishes fail, unsubscribes are done.
      for (id in channels) {
        if (hasOwn.call(channels, id)) {
          this._settle(channels[id], new Error('The client disconnected before the server accepted ' +
            'the subscription to ' + id + '; subscribe again after reconnecting'));
        }
      }
      for (id in requests) {
        if (!hasOwn.call(requests, id)) continue;
        clearTimeout(requests[id].timer);
        var channel = requests[id].message.channel;
        if (channel !== CONNECT && channel !== HANDSHAKE) requests[id].callback(null);
      }
    },

    // Transports
    // ----------

    _wantsWebSocket: function (serverTypes) {
      return !this._disabled.websocket && typeof root.WebSocket === 'function' &&
        serverTypes.indexOf('websocket') >= 0;
    },

    // Choose the transport for the current session: a WebSocket when the
    // server offers one and it opens, long-polling otherwise.
    _openTransport: function (ready) {
      var self = this;
      this._closeTransport();
      var gen = this._transportGen;

      var use = function (transport) {
        if (gen !== self._transportGen) return;
        self._transport = transport;
        self._transportReady = true;
        ready();
      };

      // A socket that was closed before it carried anything (a proxy that
      // accepts the upgrade and hangs up) earns one round of long-polling.
      var avoid = this._avoidWebSocket;
      this._avoidWebSocket = false;
      if (avoid || !this._wantsWebSocket(this._serverTypes)) return use('long-polling');
      this._openSocket(gen, function (ok) { use(ok ? 'websocket' : 'long-polling'); });
    },

    _openSocket: function (gen, done) {
      var self = this, socket, settled = false, carried = false, timer;

      var settle = function (ok) {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (!ok) {
          socket.onopen = socket.onclose = socket.onerror = socket.onmessage = null;
          try { socket.close(); } catch (e) { /* never opened */ }
        }
        done(ok);
      };

      try {
        socket = new root.WebSocket(this._endpoint.replace(/^http/i, 'ws'));
      } catch (e) {
        return done(false);
      }
      timer = setTimeout(function () { settle(false); }, SOCKET_OPEN_TIMEOUT_MS);

      socket.onopen = function () {
        if (gen !== self._transportGen) return settle(false);
        self._socket = socket;
        settle(true);
      };
      socket.onclose = function () {
        if (!settled) return settle(false);
        if (self._socket === socket) {
          self._socket = null;
          if (!carried) self._avoidWebSocket = true;
          self._transportFailed();
        }
      };
      socket.onerror = function () { /* a close event follows */ };
      socket.onmessage = function (event) {
        carried = true;
        if (self._socket === socket) self._receiveText(event.data);
      };
    },

    // Close the socket and abort pending HTTP requests, silently: their
    // requests stay tracked and are sent again on the next transport.
    _closeTransport: function () {
      this._transportGen++;
      this._transportReady = false;
      if (this._socket) {
        var socket = this._socket;
        this._socket = null;
        socket.onopen = socket.onclose = socket.onerror = socket.onmessage = null;
        try { socket.close(); } catch (e) { /* already closed */ }
      }
      var xhrs = this._xhrs;
      this._xhrs = [];
      for (var i = 0; i < xhrs.length; i++) {
        xhrs[i].onreadystatechange = null;
        try { xhrs[i].abort(); } catch (e) { /* already done */ }
      }
    },

    // One long-polling request: POST a JSON array, get a JSON array back.
    // Bayeux errors come back as JSON whatever the HTTP status; anything
    // else means the transport failed.
    _post: function (messages) {
      var self = this, xhr = new root.XMLHttpRequest();
      xhr.open('POST', this._endpoint, true);
      xhr.setRequestHeader('Content-Type', 'application/json');
      xhr.onreadystatechange = function () {
        if (xhr.readyState !== 4) return;
        xhr.onreadystatechange = null;
        var i = self._xhrs.indexOf(xhr);
        if (i >= 0) self._xhrs.splice(i, 1);

        var replies = null;
        if (xhr.status) {
          try { replies = JSON.parse(xhr.responseText); } catch (e) { replies = null; }
        }
        if (replies && typeof replies === 'object') self._receive([].concat(replies));
        else self._transportFailed();
      };
      this._xhrs.push(xhr);
      xhr.send(JSON.stringify(messages));
    },

    // The transport broke (socket closed, network error, no reply in time):
    // say so once, then retry with a growing, jittered pause.
    _transportFailed: function () {
      if (this._state === DISCONNECTED || this._timers.recover) return;
      var self = this, id, rec;

      this._closeTransport();
      this._clear('connect');
      this._connectPending = false;
      if (this._state === CONNECTING) this._state = UNCONNECTED;

      // Connects and handshakes are remade by the recovery; everything else
      // is sent again once a transport works.
      for (id in this._requests) {
        if (!hasOwn.call(this._requests, id)) continue;
        rec = this._requests[id];
        clearTimeout(rec.timer);
        rec.timer = null;
        if (rec.message.channel === CONNECT || rec.message.channel === HANDSHAKE) this._forget(rec);
      }

      if (this._up !== false) {
        this._up = false;
        this._trigger('transport:down');
      }
      this._later('recover', this._backoff(), function () { self._recover(); });
    },

    // Reconnect with the session we have (a restarted server answers
    // `401 Unknown client` and we handshake again), or handshake anew.
    _recover: function () {
      if (this._state === DISCONNECTED) return;
      if (!this._clientId || this._state !== CONNECTED) {
        this._state = UNCONNECTED;
        return this._handshake();
      }
      var self = this;
      this._openTransport(function () {
        var pending = [], id;
        for (id in self._requests) {
          if (hasOwn.call(self._requests, id)) pending.push(self._requests[id]);
        }
        self._outbox = [];
        self._requeue(pending);
        self._connect();
        self._flush();
        // After the connect, as after a handshake.
        self._resubscribeAll();
        self._flush();
      });
    },

    // `retry` seconds, doubling per consecutive failure up to 30 s, with
    // +/-25% jitter so that a restarted server is not hit by every client
    // in the same instant.
    _backoff: function () {
      var base = Math.min(this._retry * 1000 * Math.pow(2, this._failures), Math.max(MAX_BACKOFF_MS, this._retry * 1000));
      this._failures++;
      return Math.round(base * (0.75 + Math.random() * 0.5));
    },

    _markUp: function () {
      this._failures = 0;
      if (this._up === true) return;
      this._up = true;
      this._trigger('transport:up');
    },

    // Sending
    // -------

    _nextId: function () {
      this._messageId += 1;
      return this._messageId.toString(36);
    },

    _track: function (message, callback) {
      message.id = this._nextId();
      var rec = { message: message, wire: null, callback: callback, timer: null, order: this._messageId };
      this._requests[message.id] = rec;
      return rec;
    },

    _forget: function (rec) {
      clearTimeout(rec.timer);
      if (this._requests[rec.message.id] === rec) delete this._requests[rec.message.id];
    },

    // Queue a message; everything queued in the same tick goes out together.
    _send: function (message, callback) {
      this._track(message, callback);
      this._outbox.push(message.id);
      var self = this;
      if (!this._timers.flush) this._later('flush', 0, function () { self._flush(); });
    },

    _requeue: function (recs) {
      recs.sort(function (a, b) { return a.order - b.order; });
      for (var i = 0; i < recs.length; i++) this._outbox.push(recs[i].message.id);
    },

    // Run the queued messages through the outgoing extensions (once per
    // message, even when it is sent again) and transmit them as one batch.
    _flush: function () {
      this._clear('flush');
      if (this._state !== CONNECTED || !this._transportReady || this._outbox.length === 0) return;

      var self = this, ids = this._outbox, gen = this._transportGen,
          batch = [], left = ids.length;
      this._outbox = [];

      var collect = function () {
        left -= 1;
        if (left > 0) return;
        // The transport changed meanwhile: the recovery sends them again.
        if (gen !== self._transportGen) return;
        self._transmit(batch.filter(function (rec) { return rec && self._requests[rec.message.id] === rec; }));
      };

      ids.forEach(function (id, index) {
        var rec = self._requests[id];
        if (!rec) return collect();
        rec.message.clientId = self._clientId;
        if (rec.wire) {
          rec.wire.clientId = self._clientId;
          batch[index] = rec;
          return collect();
        }
        self._pipe('outgoing', rec.message, function (wire) {
          if (wire) {
            rec.wire = wire;
            batch[index] = rec;
          } else {
            self._forget(rec);
          }
          collect();
        });
      });
    },

    // `/meta/connect` always goes on its own: the server holds it, and a
    // Faye server answers a batch only when every message in it is done.
    _transmit: function (recs) {
      if (recs.length === 0) return;
      var self = this, connects = [], others = [];

      recs.forEach(function (rec) {
        self._armTimer(rec);
        (rec.message.channel === CONNECT ? connects : others).push(rec.wire);
      });

      if (this._transport === 'websocket') {
        if (!this._socket || this._socket.readyState !== 1) return this._transportFailed();
        if (others.length) this._socket.send(JSON.stringify(others));
        connects.forEach(function (wire) { self._socket.send(JSON.stringify([wire])); });
        return;
      }
      if (others.length) this._post(others);
      connects.forEach(function (wire) { self._post([wire]); });
    },

    // A reply that does not arrive in time counts as a transport failure.
    _armTimer: function (rec) {
      var self = this;
      clearTimeout(rec.timer);
      rec.timer = setTimeout(function () {
        rec.timer = null;
        self._transportFailed();
      }, RESPONSE_TIMEOUT_FACTOR * this._advice.timeout + RESPONSE_TIMEOUT_SLACK_MS);
    },

    // Receiving
    // ---------

    _receiveText: function (text) {
      var messages;
      try { messages = JSON.parse(text); } catch (e) { return; }
      if (messages && typeof messages === 'object') this._receive([].concat(messages));
    },

    _receive: function (messages) {
      var self = this;
      messages.forEach(function (message) {
        if (!message || typeof message !== 'object') return;
        self._pipe('incoming', message, function (m) { if (m) self._handle(m); });
      });
    },

    // A message with `successful` answers one of ours; one with `channel`
    // and `data` is a delivery.
    _handle: function (message) {
      if (message.advice && typeof message.advice === 'object') this._takeAdvice(message.advice);
      if (message.successful !== undefined) this._handleReply(message);
      if (message.channel && message.data !== undefined && message.successful === undefined) {
        this._deliver(message);
      }
    },

    _takeAdvice: function (advice) {
      if (typeof advice.reconnect === 'string') this._advice.reconnect = advice.reconnect;
      if (typeof advice.interval === 'number') this._advice.interval = advice.interval;
      if (typeof advice.timeout === 'number' && advice.timeout > 0) this._advice.timeout = advice.timeout;
    },

    _handleReply: function (reply) {
      var rec = this._requests[reply.id];
      if (!rec) return;
      var channel = rec.message.channel;
      clearTimeout(rec.timer);
      rec.timer = null;

      if (reply.successful && channel !== HANDSHAKE) this._markUp();

      // The server forgot our session (restart, expiry): handshake again.
      // The request stays queued and is dealt with by the new session.
      var unknown = !reply.successful && channel !== HANDSHAKE && channel !== DISCONNECT &&
        (/^401:/.test(reply.error || '') || (reply.advice && reply.advice.reconnect === 'handshake'));
      if (unknown) {
        if (channel === CONNECT) this._forget(rec);
        this._rehandshake();
        return;
      }

      this._forget(rec);
      rec.callback(reply);
    },

    // Call every listener whose channel or glob matches.
    _deliver: function (message) {
      if (message.channel.indexOf('/meta/') === 0) return;
      var pattern, entry, i, listeners, gap = false,
          ext = message.ext, position = this._positions[message.channel];

      // Count what the server numbered: drop what was delivered already (a
      // replay overlapping what the session kept), notice what went missing.
      if (ext && typeof ext.offset === 'number' && typeof ext.epoch === 'string') {
        if (position && position.epoch === ext.epoch) {
          if (ext.offset <= position.offset) return;
          gap = ext.offset > position.offset + 1;
        }
        this._positions[message.channel] = { offset: ext.offset, epoch: ext.epoch };
      }

      for (pattern in this._channels) {
        if (!hasOwn.call(this._channels, pattern)) continue;
        if (!channelMatches(pattern, message.channel)) continue;
        entry = this._channels[pattern];
        listeners = entry.listeners.slice();
        for (i = 0; i < listeners.length; i++) {
          if (typeof listeners[i].callback !== 'function') continue;
          try {
            listeners[i].callback.call(listeners[i].context, message.data);
          } catch (e) {
            rethrowLater(e);
          }
        }
      }
      if (gap) this._trigger('resync', message.channel);
    },

    // Plumbing
    // --------

    // Pass `message` through each extension's `direction` hook in turn.
    _pipe: function (direction, message, done) {
      var extensions = this._extensions.slice(), i = 0;
      var step = function (m) {
        if (!m) return done(null);
        while (i < extensions.length) {
          var extension = extensions[i++];
          if (extension && typeof extension[direction] === 'function') {
            var called = false;
            return extension[direction](m, function (result) {
              if (called) return;
              called = true;
              step(result);
            });
          }
        }
        done(m);
      };
      step(message);
    },

    _trigger: function (event, arg) {
      var list = (this._listeners[event] || []).slice();
      for (var i = 0; i < list.length; i++) {
        try {
          list[i].fn.call(list[i].context, arg);
        } catch (e) {
          rethrowLater(e);
        }
      }
    },

    // One named timer per purpose, so rescheduling never doubles it.
    _later: function (name, ms, fn) {
      var self = this;
      this._clear(name);
      this._timers[name] = setTimeout(function () {
        delete self._timers[name];
        fn();
      }, ms);
    },

    _clear: function (name) {
      if (this._timers[name]) clearTimeout(this._timers[name]);
      delete this._timers[name];
    }
  };

  Client.prototype.bind   = Client.prototype.on;
  // Subscribers need not refetch after every outage: this client says when.
  Client.prototype.recovers = true;
  Client.prototype.unbind = Client.prototype.off;
  Client.prototype.constructor = Client;

  // Exports
  // -------

  root.BackboneSync = root.BackboneSync || {};
  root.BackboneSync.FayeClient = Client;
  if (!root.Faye) root.Faye = { Client: Client };
})(typeof window !== 'undefined' ? window : this);
