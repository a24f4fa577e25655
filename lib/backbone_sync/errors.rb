# frozen_string_literal: true

# The exception classes live in Ruby; the C extension looks them up when it
# loads, so this file must be required before the extension.
module BackboneSync
  # Base class: rescue BackboneSync::Error to catch everything this gem raises.
  class Error < StandardError; end

  # The server could not bind or initialise (port taken, bad certificate, ...).
  class StartError < Error; end

  # The port is held by another socket, usually a server in another process
  # of the same app (a Rails app then publishes to it over HTTP).
  class PortInUse < StartError; end

  # A Ruby object could not be turned into JSON (invalid UTF-8, NaN, a cycle).
  class EncodeError < Error; end

  # A channel name does not follow Faye's grammar (/segment/segment).
  class ChannelError < Error; end

  # publish on a server that is not running in this process.
  class NotRunning < Error; end

  # The in-process publish queue is full; subscribers cannot keep up.
  class Overloaded < Error; end

  # Server#publish: the encoded message is over the server's
  # max_message_size (an ArgumentError in earlier versions).
  class MessageTooLarge < Error; end

  # BackboneSync::Publisher gave up: the server was unreachable or refused.
  class PublishError < Error; end

  # A PublishError because the server could not be reached or did not answer
  # in time (rather than refusing the message).
  class Unreachable < PublishError; end

  # The outbox is required (config.backbone_sync.outbox = true) but its
  # table, backbone_sync_events, is not in the database; the message says
  # which generator and migration add it.
  class OutboxMissing < Error; end

  # An outbox row older than the retention, dropped unpublished by the
  # relay (handed to BackboneSync.on_error).
  class OutboxExpired < Error; end

  # The C extension is not built for this Ruby (raised by require
  # "backbone_sync"); the message says what to run.
  class ExtensionMissing < Error
    def initialize(cause, gem_dir:)
      checkout = File.exist?(File.join(gem_dir, "Rakefile")) && File.exist?(File.join(gem_dir, "ext"))
      how = if checkout
              "build it in the gem's directory: `cd #{gem_dir} && bundle install && bundle exec rake compile` " \
                "(Bundler does not build extensions of gems used with `path:` or `git:`)"
            else
              "rebuild it: `gem pristine backbone_sync` (or `bundle pristine backbone_sync`), " \
                "needed after a Ruby upgrade"
            end
      super("backbone_sync's C extension is not built for Ruby #{RUBY_VERSION} (#{cause.message}); #{how}. " \
            "Building needs libwebsockets-dev, libyajl-dev, libssl-dev, libhiredis-dev and libev-dev.")
    end
  end
end
