// backbone_sync/client.js
// =======================
//
// The page's one Faye client, and the subscription tokens it sends when the
// server requires signed subscriptions:
//
//     var client = BackboneSync.client();       // made on first use
//     BackboneSync.authorize(myOwnFayeClient);  // the same tokens on another
//
// A token comes from the Rails endpoint (`subscriptionsUrl`), is cached per
// channel until shortly before it expires, and goes in `ext.token` on
// `/meta/subscribe`.
//
//= require backbone_sync/config

(function (root) {
  'use strict';

  var BackboneSync = root.BackboneSync;

  // Ask for a new subscription token this long before the old one expires.
  var TOKEN_MARGIN_S = 30;

  var sharedClient = null;

  // ### BackboneSync.client
  //
  // Made on first use from the settings. It prefers the client the
  // backbone_sync server serves (which recovers missed messages) and falls
  // back on the real Faye client.
  BackboneSync.client = function () {
    if (sharedClient) return sharedClient;
    var server = BackboneSync.setting('server', 'backbone-sync-server'),
        Client = BackboneSync.FayeClient || (root.Faye && root.Faye.Client);
    if (!server) throw new Error('BackboneSync.client: no server URL; call BackboneSync.configure({server: ...}) or add backbone_sync_tags to the layout');
    if (!Client) throw new Error('BackboneSync.client: no Faye client loaded; require backbone_sync/faye or load <server>.js first');
    sharedClient = new Client(server, BackboneSync.setting('clientOptions') || {});
    BackboneSync.authorize(sharedClient);
    return sharedClient;
  };

  // Subscription tokens
  // -------------------

  // channel -> {token, expires}; channel -> true once the server refused it.
  var tokens = {}, refused = {};

  // ### BackboneSync.requestToken
  //
  // POST `{channel}` to the Rails endpoint; `done(token)` gets null when it
  // said no or could not be reached.
  BackboneSync.requestToken = function (channel, done) {
    var url = BackboneSync.setting('subscriptionsUrl', 'backbone-sync-subscriptions'),
        csrf = BackboneSync.setting('csrfToken', 'csrf-token'),
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
    return BackboneSync.setting('signed') === true || refused[channel] === true || !!freshToken(channel);
  }

  // ### BackboneSync.tokenRefused
  //
  // Record a refusal so that the next subscribe asks for a token first.
  // Returns true the first time for `channel`.
  BackboneSync.tokenRefused = function (channel) {
    delete tokens[channel];
    if (refused[channel]) return false;
    refused[channel] = true;
    return true;
  };

  // ### BackboneSync.authorize
  //
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
})(typeof window !== 'undefined' ? window : this);
