// backbone_sync/sync.js
// =====================
//
// The page's origin token and the `Backbone.sync` wrapper that sends it.
// Every request says which page and which model sent it,
// `X-BackboneSync-Origin: <origin>:<cid>`, so that the broadcast the server
// makes for it can be matched with the model this page already holds
// (`BackboneSync.originModel`). Writes carry Rails' CSRF token.
//
//= require backbone_sync/config

(function (root) {
  'use strict';

  var Backbone     = root.Backbone,
      _            = root._,
      BackboneSync = root.BackboneSync;

  var ORIGIN_HEADER = 'X-BackboneSync-Origin';

  // A model whose save is answered by a broadcast long after the response
  // still counts as ours for this many saves; older entries are forgotten.
  var MAX_PENDING = 200;

  var hasOwn = Object.prototype.hasOwnProperty;

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

  // ### BackboneSync.originModel
  //
  // The model this page saved that `origin` names, or null when the change
  // came from another page (or from no page at all).
  BackboneSync.originModel = function (origin) {
    var prefix = BackboneSync.origin + ':';
    if (typeof origin !== 'string' || origin.indexOf(prefix) !== 0) return null;
    var cid = origin.slice(prefix.length);
    return hasOwn.call(pending, cid) ? pending[cid] : null;
  };

  // ### BackboneSync.forgetOrigin
  //
  // The broadcast of `model`'s create has arrived: stop matching it.
  BackboneSync.forgetOrigin = function (model) {
    if (model) forget(model.cid);
  };

  // ### Backbone.sync
  //
  // A create registers the model as pending until the request fails, or
  // until its broadcast has arrived. Writes carry Rails' CSRF token (from
  // `csrf_meta_tags`, or `configure({csrfToken})`) unless the caller set one.
  var originalSync = Backbone.sync;
  if (!originalSync.backboneSyncOrigin) {
    Backbone.sync = function (method, model, options) {
      options = options || {};
      var cid = model && model.cid ? model.cid : '',
          headers = _.extend({}, options.headers);
      headers[ORIGIN_HEADER] = BackboneSync.origin + ':' + cid;
      if (method !== 'read' && !headers['X-CSRF-Token']) {
        var csrf = BackboneSync.setting('csrfToken', 'csrf-token');
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
})(typeof window !== 'undefined' ? window : this);
