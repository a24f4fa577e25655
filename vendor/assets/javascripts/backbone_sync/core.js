// backbone_sync/core.js
// =====================
//
// What the Backbone extensions of backbone_sync share, one file per concern:
//
// * `backbone_sync/config`: `BackboneSync.configure` and the settings
//   (from `configure` or the `backbone_sync_tags` meta tags);
// * `backbone_sync/sync`: the page's origin token and the `Backbone.sync`
//   wrapper that sends it, with Rails' CSRF token;
// * `backbone_sync/client`: the shared Faye client and the signed
//   subscription tokens;
// * `backbone_sync/changes`: the table of allowed actions and how a pushed
//   change is applied to a collection or a model;
// * `backbone_sync/subscription`: the life of one subscription (subscribe,
//   one retry with a token, refetch after an outage, leave), which both
//   `RailsFayeSubscriber` and the pushable classes use.
//
// `//= require backbone_sync/core` gives all of them, as it always has.
// Plain ES5, no dependency beyond Backbone and Underscore (or Lodash).
//
//= require backbone_sync/config
//= require backbone_sync/sync
//= require backbone_sync/client
//= require backbone_sync/changes
//= require backbone_sync/subscription

(function (root) {
  'use strict';

  // Loaded without its requires (a `<script>` tag rather than Sprockets):
  // say which file to load instead of failing later on a missing function.
  var BackboneSync = root.BackboneSync;
  if (!BackboneSync || typeof BackboneSync.Subscription !== 'function') {
    throw new Error('backbone_sync/core.js needs the files it requires (backbone_sync/config, sync, client, changes, subscription); without Sprockets, load backbone_sync.js instead');
  }
})(typeof window !== 'undefined' ? window : this);
