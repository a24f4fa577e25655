# frozen_string_literal: true

module BackboneSync
  module Rails
    # Rack middleware: holds the request's X-BackboneSync-Origin header
    # ("<pageToken>:<cid>", sent by the JavaScript on every Backbone.sync)
    # while the request runs, so the broadcasts its saves make carry it as
    # "origin" and the saving page can tell its own change from others'.
    # Per thread and per fiber; restored after the request.
    class OriginMiddleware
      HEADER = "HTTP_X_BACKBONESYNC_ORIGIN"
      # Printable ASCII, bounded: the value is echoed to every subscriber.
      VALID = /\A[\x21-\x7e]{1,128}\z/.freeze

      def initialize(app)
        @app = app
      end

      def call(env)
        value = env[HEADER]
        value = nil unless value.is_a?(String) && value.match?(VALID)
        BackboneSync.with_origin(value) { @app.call(env) }
      end
    end
  end

  OriginMiddleware = Rails::OriginMiddleware
end
