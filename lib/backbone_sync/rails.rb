# frozen_string_literal: true

# The Rails (and ActiveModel) integration: the `push` macro, the observer
# mixin, the origin middleware, the subscription endpoint and the Railtie.
# Loaded by `require "backbone_sync"` when Rails is present; without Rails it
# still gives plain ActiveModel classes BackboneSync::Pushable.
require "backbone_sync" unless defined?(BackboneSync::Server)

require_relative "broadcasting"
require_relative "payload"
require_relative "broadcast_queue"
require_relative "broadcaster"
require_relative "change_tracker"
require_relative "outbox"
require_relative "outbox/relay"
require_relative "puma_plugin"
require_relative "pushable"
require_relative "rails/observer"
require_relative "rails/faye"
require_relative "rails/origin_middleware"
require_relative "rails/authorization"
require_relative "rails/engine" if defined?(::Rails::Engine)

# What a script, a runner or a worker queued just before exiting still goes out.
at_exit { BackboneSync.flush(timeout: 5) }
