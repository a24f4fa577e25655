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
    #   subscriptions_path, token_ttl, embedded), read before
    #   config/initializers run, so an initializer may still override them.
    #
    # config.backbone_sync.embedded = true (or a Hash of Server options)
    # starts a BackboneSync::Server inside the app process; it defaults to on
    # in development only, and never starts under rake or the console.
    class Engine < ::Rails::Engine
      engine_name "backbone_sync"

      config.backbone_sync = ActiveSupport::OrderedOptions.new
      config.app_middleware.use BackboneSync::Rails::OriginMiddleware

      initializer "backbone_sync.active_record" do
        ActiveSupport.on_load(:active_record) { extend BackboneSync::Pushable::Macro }
      end

      initializer "backbone_sync.configure", before: :load_config_initializers do |app|
        options = app.config.backbone_sync
        Faye.root_address = options.root_address if options.root_address
        Faye.redis = options.redis if options.key?(:redis)
        Faye.client_url = options.client_url if options.client_url
        BackboneSync.secret = options.secret if options.secret
        BackboneSync::Rails.subscriptions_path = options.subscriptions_path if options.key?(:subscriptions_path)
        BackboneSync::Rails.token_ttl = options.token_ttl if options.token_ttl
        Faye.queue_size = options.queue_size if options.queue_size
      end

      initializer "backbone_sync.controller" do
        ActiveSupport.on_load(:action_controller_base) do
          require "backbone_sync/rails/subscriptions_controller"
        end
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
        embedded = app.config.backbone_sync.embedded
        embedded = ::Rails.env.development? if embedded.nil?
        BackboneSync::Rails::Engine.start_embedded(embedded) if embedded && Engine.serving_process?
      end

      rake_tasks do
        load File.expand_path("../tasks/faye.rake", __dir__)

        namespace :backbone_sync do
          # faye:start with the app's settings: its secret (derived from
          # secret_key_base) and root_address's port and mount.
          task defaults: :environment do
            uri = URI.parse(BackboneSync::Rails::Faye.server_url)
            ENV["port"] ||= uri.port.to_s unless ENV["PORT"]
            ENV["mount"] ||= uri.path unless ENV["MOUNT"]
          end
        end
        task "faye:start" => "backbone_sync:defaults"
      end

      class << self
        def start_embedded(embedded)
          options = embedded.is_a?(Hash) ? embedded.transform_keys(&:to_sym) : {}
          server = Faye.start_embedded_server(**options)
          ::Rails.logger&.info("backbone_sync: embedded server listening on #{server.url}")
          server
        end

        # A server process, not a rake task or the console.
        def serving_process?
          return false if defined?(::Rails::Console)
          return false if defined?(::Rake) && ::Rake.respond_to?(:application) &&
                          ::Rake.application.top_level_tasks.any?

          true
        end
      end
    end
  end
end
