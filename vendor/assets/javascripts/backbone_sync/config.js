// backbone_sync/config.js
// =======================
//
// The `BackboneSync` namespace and its settings:
//
//     BackboneSync.configure({server: 'http://127.0.0.1:9292/faye',
//                             subscriptionsUrl: '/backbone_sync/subscriptions'});
//
// Without `configure`, each setting comes from the `<meta>` tag that the
// Rails helper `backbone_sync_tags` writes, and the CSRF token from Rails'
// own `csrf_meta_tags`. The other backbone_sync files read settings through
// `BackboneSync.setting` only, when they need them (never while loading).

(function (root) {
  'use strict';

  var _ = root._;

  var BackboneSync = root.BackboneSync = root.BackboneSync || {};

  var settings = {};

  function meta(name) {
    var doc = root.document, el;
    if (!doc || !doc.querySelector) return undefined;
    el = doc.querySelector('meta[name="' + name + '"]');
    return el ? el.getAttribute('content') : undefined;
  }

  // ### BackboneSync.configure
  //
  // `server` (the Faye endpoint), `subscriptionsUrl` (the Rails endpoint
  // that hands out subscription tokens), `csrfToken`, `signed: true` to
  // ask for a token before every subscribe rather than after a refusal, and
  // `clientOptions` for the shared client (e.g. `{retry: 1}`: seconds before
  // the first reconnect).
  BackboneSync.configure = function (options) {
    _.extend(settings, options);
    return BackboneSync;
  };

  // ### BackboneSync.setting
  //
  // The configured value of `name`, or else the content of the `<meta>`
  // tag `metaName` (when given), or undefined.
  BackboneSync.setting = function (name, metaName) {
    if (settings[name] !== undefined) return settings[name];
    return metaName ? meta(metaName) : undefined;
  };
})(typeof window !== 'undefined' ? window : this);
