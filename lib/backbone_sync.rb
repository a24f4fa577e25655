# frozen_string_literal: true

require "openssl"

require_relative "backbone_sync/version"
require_relative "backbone_sync/errors"

# BACKBONE_SYNC_EXT_DIR loads the extension from another build, such as the
# sanitizer build that `rake spec:asan` makes in tmp/asan.
begin
  if (ext_dir = ENV["BACKBONE_SYNC_EXT_DIR"]) && !ext_dir.empty?
    require File.join(File.expand_path(ext_dir), "backbone_sync")
  else
    require_relative "backbone_sync/backbone_sync"
  end
rescue LoadError => e
  # Bundler does not build extensions of `gem ..., path:` or git: gems, and
  # a Ruby upgrade leaves an installed gem's build behind: say what to run.
  raise BackboneSync::ExtensionMissing.new(e, gem_dir: File.expand_path("..", __dir__))
end

require_relative "backbone_sync/server"
require_relative "backbone_sync/publisher"

module BackboneSync
  autoload :RedisPublisher, File.expand_path("backbone_sync/redis_publisher", __dir__)
end

module BackboneSync
  class << self
    attr_writer :secret

    # The secret shared by the server and the processes that publish over
    # HTTP: set explicitly, else $BACKBONE_SYNC_SECRET, else derived from the
    # Rails app's secret_key_base, else nil.
    def secret
      return @secret if defined?(@secret) && @secret

      env = ENV["BACKBONE_SYNC_SECRET"]
      return env unless env.nil? || env.empty?

      rails_secret
    end

    # $BACKBONE_SYNC_REDIS_URL, or nil when it is unset or empty: the Redis
    # URL of Server, RedisPublisher and the broadcaster when given none. It
    # is returned as it is: several comma-separated URLs are the seed nodes
    # of a Redis Cluster.
    def default_redis_url
      env = ENV["BACKBONE_SYNC_REDIS_URL"]
      env unless env.nil? || env.empty?
    end

    # The redis setting as a list of URL Strings ([] for none). The setting
    # is one URL, or the seed nodes of a Redis Cluster as an Array or as one
    # String of comma-separated URLs (as an env var, a CLI flag or a rake
    # argument gives them). A URL never holds a comma of its own: a
    # password with one is written %2C.
    def redis_urls(setting)
      Array(setting).flat_map { |url| url.to_s.split(",") }.map(&:strip).reject(&:empty?)
    end

    # +channel+ as a String fit to publish to, or ChannelError saying what a
    # channel looks like. A Symbol is taken as its name; wildcards, /meta
    # and /service are refused (BackboneSync.channel?, the C core's rule).
    def channel!(channel)
      channel = channel.to_s if channel.is_a?(Symbol)
      unless channel?(channel)
        raise ChannelError, "#{channel.inspect} is not a valid channel: use segments of letters, " \
                            "digits and - _ ! ~ ( ) $ @ such as \"/sync/family_7_members\" " \
                            "(no spaces, no wildcards, not under /meta/ or /service/)"
      end

      channel
    end

    # +id+ when it may be a message's event id (BackboneSync.event_id?: a
    # String of 1 to 128 bytes, no NUL), else raises ArgumentError.
    def event_id!(id)
      return id if event_id?(id)

      raise ArgumentError, "event_id must be a String of 1 to 128 bytes with no NUL " \
                           "(e.g. SecureRandom.uuid), got #{id.inspect}"
    end

    # A subscription token for +channel+, valid for +expires_in+ seconds:
    # "<expires>.<hex HMAC-SHA256(secret, "#{channel}\n#{expires}")>".
    # Give it to the browser, which sends it as ext.token when subscribing.
    def sign(channel, expires_in: 3600, secret: self.secret, now: Time.now)
      unless channel?(channel)
        raise ChannelError, "cannot sign #{channel.inspect}: a token is for one channel " \
                            "such as \"/sync/users\" (no wildcards)"
      end
      if secret.nil? || secret.to_s.empty?
        raise ArgumentError, "no secret to sign with: pass secret:, set BackboneSync.secret " \
                             "or the BACKBONE_SYNC_SECRET environment variable"
      end
      unless expires_in.is_a?(Integer) && expires_in.positive?
        raise ArgumentError, "expires_in must be a positive Integer (seconds), got #{expires_in.inspect}"
      end

      expires = now.to_i + expires_in
      hex = OpenSSL::HMAC.hexdigest("SHA256", secret.to_s, "#{channel}\n#{expires}")
      "#{expires}.#{hex}"
    end

    private

    def rails_secret
      return nil unless defined?(::Rails) && ::Rails.respond_to?(:application) && ::Rails.application

      base = ::Rails.application.secret_key_base
      return nil if base.nil? || base.empty?

      OpenSSL::HMAC.hexdigest("SHA256", base, "backbone_sync secret")
    end
  end
end

# The Rails integration (push macro, observer, engine) when Rails is loaded;
# without Rails, `require "backbone_sync/rails"` gives ActiveModel classes
# BackboneSync::Pushable.
require_relative "backbone_sync/rails" if defined?(::Rails::Railtie)
