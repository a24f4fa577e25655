# frozen_string_literal: true

# backbone_sync: every committed create, update and destroy of a model that
# declares `push` reaches the Backbone collections open in the browser.
#
#   class Member < ApplicationRecord
#     push :create => :collections, :update => [:collections, :instances],
#          :destroy => [:collections, :instances]
#   end
#
# The settings below take effect from here. The same ones, as
# config.backbone_sync.<name>, may go in config/application.rb or an
# environment file instead (see the README's "Configuration").

# Where the server listens (its Bayeux endpoint is /faye under it).
# BackboneSync::Rails::Faye.root_address = "http://localhost:9292"

# Run the server inside the app process: true (the default in development
# only) or a Hash of BackboneSync::Server options, e.g. { port: 9292 }.
# In production a dedicated process is simpler: `bin/rails faye:start`.
# Rails.application.config.backbone_sync.embedded = true

# The URL browsers connect to, when it is not the server's own (a proxy).
# BackboneSync::Rails::Faye.client_url = "https://sync.example.com/faye"

# Shared by the server and every process that publishes to it over HTTP;
# derived from secret_key_base unless set ($BACKBONE_SYNC_SECRET also works).
# BackboneSync.secret = ENV["BACKBONE_SYNC_SECRET"]

# Publish through a Redis backplane shared by several servers (several
# comma-separated URLs, or an Array: the seed nodes of a Redis Cluster).
# BackboneSync::Rails::Faye.redis = ENV["BACKBONE_SYNC_REDIS_URL"]

# Subscription tokens, for a server started with signed_subscriptions: the
# route (false drops it), their lifetime in seconds, and who may subscribe.
# BackboneSync::Rails.subscriptions_path = "/backbone_sync/subscriptions"
# BackboneSync::Rails.token_ttl = 3600
# BackboneSync.authorize_subscription do |channel, request|
#   request.session[:user_id].present?
# end

# The outbox: each broadcast is written to backbone_sync_events in the
# transaction of its change (the generator added the migration) and a relay
# publishes what a dead process or an unreachable server left behind. On
# when the table exists; false turns it off, true makes the table required.
# The relay runs next to the server (embedded, faye:start) and as
# `bin/rails backbone_sync:relay`.
# BackboneSync::Outbox.enabled = false
# BackboneSync::Outbox.retention = 3600  # seconds; older rows are dropped and reported
# BackboneSync::Outbox.grace = 5         # seconds before a relay publishes a row

# Broadcasts never raise into a save; failures are logged and handed here.
# BackboneSync.on_error do |error, context|
#   Rails.logger.warn("backbone_sync: #{error.message} #{context.inspect}")
# end
