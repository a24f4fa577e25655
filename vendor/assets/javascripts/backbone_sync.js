// backbone_sync.js: everything the browser side needs, in load order.
// Backbone and Underscore must come first (`//= require backbone` in the
// application's manifest). The Faye client is our own; a page that loads
// the real Faye client before this file keeps `window.Faye` as it is.
//
//= require backbone_sync/faye
//= require backbone_sync/core
//= require extensions/backbone.collection.idempotent
//= require backbone_sync-rails/rails_faye_subscriber
//= require backbone_sync/pushable
