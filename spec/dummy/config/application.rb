# frozen_string_literal: true

require_relative "boot"

require "logger" # ActiveSupport 6.1 expects it loaded
require "rails"
require "active_model/railtie"
require "active_record/railtie"
require "active_job/railtie"
require "action_controller/railtie"
require "action_view/railtie"
require "sprockets/railtie"
require "rails-observers"

# What Bundler.require does for `gem "backbone_sync"` in an app's Gemfile:
# Rails is loaded, so this brings in the engine too.
require "backbone_sync"

module Dummy
  # The terminal's share of the log: errors only, whatever level Rails
  # later gives the logger (config.log_level is applied to every logger).
  class ErrorsOnly < ActiveSupport::Logger
    def add(severity, message = nil, progname = nil, &block)
      return true if severity.nil? || severity < ::Logger::ERROR

      super
    end
  end

  # A members list: the Rails side of the demo (issue: `rake demo`) and the
  # app the integration specs (spec/rails) drive.
  class Application < Rails::Application
    config.load_defaults Rails::VERSION::STRING.to_f
    config.root = File.expand_path("..", __dir__)
    config.eager_load = false
    config.secret_key_base = ENV.fetch("SECRET_KEY_BASE", "dummy-secret-key-base-for-backbone_sync-specs-only")
    config.hosts.clear if config.respond_to?(:hosts)
    # The log goes to BACKBONE_SYNC_DUMMY_LOG (or nowhere), and its errors
    # (a request answered 500, say) to the terminal as well, always.
    # A copy of stderr: to Rails and the engine this log is not the terminal,
    # so what they print there unless the log goes there (the embedded
    # server's listening line, say) is still printed.
    errors = ErrorsOnly.new($stderr.dup)
    log = ENV["BACKBONE_SYNC_DUMMY_LOG"]
    config.logger =
      if !log
        errors
      elsif defined?(ActiveSupport::BroadcastLogger)
        ActiveSupport::BroadcastLogger.new(ActiveSupport::Logger.new(log), errors)
      else
        ActiveSupport::Logger.new(log).tap { |file| file.extend(ActiveSupport::Logger.broadcast(errors)) }
      end
    config.active_support.deprecation = :stderr
    config.action_controller.allow_forgery_protection = true
    config.active_job.queue_adapter = :async

    # The 2011 observer style (rails-observers).
    config.active_record.observers = :note_observer

    # jQuery, Backbone and Underscore for the page (the app's own choice of version).
    node_modules = File.expand_path("../../../node_modules", __dir__)
    config.assets.paths << File.join(node_modules, "jquery", "dist")
    config.assets.paths << File.join(node_modules, "backbone-1.6.1")
    config.assets.paths << File.join(node_modules, "underscore")

    # Where the server listens (`rake faye:start` and the embedded server
    # use this port): BACKBONE_SYNC_ROOT_ADDRESS or the default.
    config.backbone_sync.root_address = ENV["BACKBONE_SYNC_ROOT_ADDRESS"] if ENV["BACKBONE_SYNC_ROOT_ADDRESS"]
    config.backbone_sync.embedded = ENV["BACKBONE_SYNC_EMBEDDED"] == "1" if ENV.key?("BACKBONE_SYNC_EMBEDDED")
    # spec/rails/config_spec.rb boots the app with other settings: a JSON
    # object of config.backbone_sync values (a Hash value's keys as Symbols).
    if (settings = ENV["BACKBONE_SYNC_DUMMY_CONFIG"])
      require "json"
      JSON.parse(settings).each do |key, value|
        config.backbone_sync[key] = value.is_a?(Hash) ? value.transform_keys(&:to_sym) : value
      end
    end

    # The outbox: BACKBONE_SYNC_OUTBOX=0 turns it off; the outbox specs
    # shorten the relay's timings (seconds).
    config.backbone_sync.outbox = false if ENV["BACKBONE_SYNC_OUTBOX"] == "0"
    config.backbone_sync.outbox_grace = Float(ENV["BACKBONE_SYNC_OUTBOX_GRACE"]) if ENV["BACKBONE_SYNC_OUTBOX_GRACE"]
    config.backbone_sync.outbox_claim_ttl = Float(ENV["BACKBONE_SYNC_OUTBOX_CLAIM_TTL"]) if ENV["BACKBONE_SYNC_OUTBOX_CLAIM_TTL"]
    config.backbone_sync.outbox_poll_interval = Float(ENV["BACKBONE_SYNC_OUTBOX_POLL"]) if ENV["BACKBONE_SYNC_OUTBOX_POLL"]
    config.backbone_sync.outbox_batch_size = Integer(ENV["BACKBONE_SYNC_OUTBOX_BATCH"]) if ENV["BACKBONE_SYNC_OUTBOX_BATCH"]
  end
end
