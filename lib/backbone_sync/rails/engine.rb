# frozen_string_literal: true

require "rails/engine"

module BackboneSync
  module Rails
    # Wires backbone_sync into a Rails app (6.1 and newer):
    #
    # - `push`/`pushable` on every ActiveRecord model;
    # - BackboneSync::OriginMiddleware;
    # - POST /backbone_sync/subscriptions (subscription tokens) and the
    #   backbone_sync_tags view helper;
    # - vendor/assets/javascripts on the Sprockets path (the engine's own
    #   vendor/assets); `rake faye:start`;
    # - config.backbone_sync.* (root_address, secret, redis, client_url,
    #   subscriptions_path, token_ttl, embedded, queue_size, outbox and
    #   outbox_*), read before config/initializers run, so an initializer
    #   may still override them;
    # - the outbox relay (BackboneSync::Outbox::Relay) wherever the server
    #   runs with the app loaded: next to the embedded server, in `rake
    #   faye:start`, and alone in `rake backbone_sync:relay`.
    #
    # config.backbone_sync.embedded = true (or a Hash of Server options)
    # starts a BackboneSync::Server inside the web server process (`rails
    # server`, Puma); it defaults to on in development only. Every other
    # process that boots the app (runner, console, generators, rake, job
    # workers, tests) publishes to it over HTTP. With `plugin :backbone_sync`
    # in config/puma.rb the plugin decides instead (see puma/plugin/backbone_sync).
    class Engine < ::Rails::Engine
      engine_name "backbone_sync"

      config.backbone_sync = ActiveSupport::OrderedOptions.new
      config.app_middleware.use BackboneSync::Rails::OriginMiddleware

      initializer "backbone_sync.active_record" do
        ActiveSupport.on_load(:active_record) { extend BackboneSync::Pushable::Macro }
      end

      initializer "backbone_sync.configure", before: :load_config_initializers do |app|
        options = app.config.backbone_sync
        BackboneSync::Broadcaster.root_address = options.root_address if options.root_address
        BackboneSync::Broadcaster.redis = options.redis if options.key?(:redis)
        BackboneSync::Broadcaster.client_url = options.client_url if options.client_url
        BackboneSync.secret = options.secret if options.secret
        BackboneSync::Rails.subscriptions_path = options.subscriptions_path if options.key?(:subscriptions_path)
        BackboneSync::Rails.token_ttl = options.token_ttl if options.token_ttl
        BackboneSync::Broadcaster.queue_size = options.queue_size if options.queue_size
        BackboneSync::Rails::Engine.configure_outbox(options)
      end

      # The token route's controller is found when the route first needs it,
      # even when no other controller has loaded ActionController::Base yet
      # (a worker whose first request is a token POST got a 404).
      initializer "backbone_sync.controller" do
        BackboneSync::Rails.autoload(:SubscriptionsController, "backbone_sync/rails/subscriptions_controller")
      end

      initializer "backbone_sync.helpers" do
        ActiveSupport.on_load(:action_view) do
          require "backbone_sync/rails/helpers"
          include BackboneSync::Rails::Helpers
        end
      end

      # Prepended so that an app's catch-all route cannot shadow it; the path
      # is read when the routes are drawn, after the initializers.
      initializer "backbone_sync.routes" do |app|
        app.routes.prepend do
          if (path = BackboneSync::Rails.subscriptions_path)
            post path, to: "backbone_sync/rails/subscriptions#create", as: :backbone_sync_subscriptions
          end
        end
      end

      config.after_initialize do |app|
        BackboneSync::Rails::Engine.boot_server(app.config.backbone_sync.embedded)
      end

      rake_tasks do
        load File.expand_path("../tasks/faye.rake", __dir__)

        namespace :backbone_sync do
          # faye:start with the app's settings: its secret (derived from
          # secret_key_base) and root_address's port and mount.
          task defaults: :environment do
            uri = URI.parse(BackboneSync::Broadcaster.server_url)
            ENV["port"] ||= uri.port.to_s unless ENV["PORT"]
            ENV["mount"] ||= uri.path unless ENV["MOUNT"]
            # faye:start runs the outbox relay next to its server.
            BackboneSync::Rails::Engine.relay_with_server = true
          end

          desc "Publish what the outbox holds (backbone_sync_events) until INT/TERM, to the server " \
               "at root_address (or the Redis backplane); any number may run"
          task relay: :environment do
            require "backbone_sync/outbox/runner"
            BackboneSync::Outbox::Runner.run
          rescue BackboneSync::Error => e
            abort "rake backbone_sync:relay: #{e.message}"
          end
        end
        task "faye:start" => "backbone_sync:defaults"
      end

      class << self
        # Set by `rake faye:start` in an app: start the relay with the server.
        attr_accessor :relay_with_server

        OUTBOX_OPTIONS = %i[retention grace poll_interval batch_size claim_ttl].freeze

        # config.backbone_sync.outbox (nil: on when the table exists) and
        # outbox_retention, outbox_grace, outbox_poll_interval,
        # outbox_batch_size, outbox_claim_ttl.
        def configure_outbox(options)
          BackboneSync::Outbox.enabled = options.outbox if options.key?(:outbox)
          OUTBOX_OPTIONS.each do |name|
            value = options[:"outbox_#{name}"]
            BackboneSync::Outbox.public_send(:"#{name}=", value) unless value.nil?
          end
        end

        # The relay next to a server this process runs. Never fails the
        # server: a database that is not there yet is retried by the relay.
        def start_relay
          BackboneSync::Outbox::Relay.start_unless_off
        rescue StandardError => e
          announce(:warn, "backbone_sync: the outbox relay did not start (#{e.class}: #{e.message})")
          nil
        end

        # After the app booted: starts the embedded server when this process
        # should run it. +embedded+ is config.backbone_sync.embedded.
        def boot_server(embedded)
          case BackboneSync::PumaPlugin.role
          when :single then start_embedded(embedded.is_a?(Hash) ? embedded : true)
          when :cluster, :server then nil # the plugin's own process runs it
          else
            embedded = ::Rails.env.development? if embedded.nil?
            start_embedded(embedded) if embedded && serving_process?
          end
        end

        # Starts the server on root_address's port (+embedded+: true or a
        # Hash of Server options) and returns it. When another process holds
        # the port (a `rails server` in another terminal, another Puma
        # worker), warns once and returns nil: this process then publishes
        # to that server over HTTP.
        def start_embedded(embedded)
          options = embedded.is_a?(Hash) ? embedded.transform_keys(&:to_sym) : {}
          server = BackboneSync::Broadcaster.start_embedded_server(**options)
          announce(:info, "backbone_sync: embedded server listening on #{server.url}")
          start_relay
          server
        rescue BackboneSync::PortInUse => e
          announce(:warn, "backbone_sync: not starting the embedded server (#{e.message}); this process " \
                          "publishes over HTTP to #{BackboneSync::Broadcaster.server_url} instead")
          nil
        end

        # A web server process: `rails server`, or Puma (the puma command,
        # rackup). Not the console, runner, generators, rake, job workers or
        # tests, which boot the app without serving it.
        def serving_process?
          return true if defined?(::Rails::Server)

          defined?(::Puma) && ::Puma.const_defined?(:Launcher, false) && ::Puma.autoload?(:Launcher).nil? ? true : false
        end

        private

        # To the Rails log, and to the terminal the server was started from
        # unless the log already goes there.
        def announce(level, line)
          io = level == :info ? $stdout : $stderr
          logger = ::Rails.logger
          logger&.public_send(level, line)
          on_terminal = logger && ActiveSupport::Logger.respond_to?(:logger_outputs_to?) &&
                        ActiveSupport::Logger.logger_outputs_to?(logger, $stdout, $stderr, STDOUT, STDERR)
          return if on_terminal

          io.puts(line)
          io.flush
        rescue StandardError
          nil
        end
      end
    end
  end
end
