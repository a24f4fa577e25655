# frozen_string_literal: true

require "logger"

# What a broadcast needs that has nothing to do with Rails: turning
# broadcasts off (suppress), the origin of the request being served, where
# failures go (logger, on_error, report_broadcast_error), the "/sync/" channel
# names and flush. BackboneSync::Broadcaster (broadcaster.rb) sends what
# these allow; the push macro and the observer call both.
module BackboneSync
  class << self
    # Runs the block with broadcasts turned off in this thread (or fiber),
    # e.g. for bulk imports. Saves made inside it publish nothing, even when
    # their transaction commits after the block. Returns the block's value.
    def suppress
      previous = _sync_state[:suppressed]
      _sync_state[:suppressed] = true
      yield
    ensure
      _sync_state[:suppressed] = previous
    end

    def suppressed?
      _sync_state[:suppressed] ? true : false
    end

    # The X-BackboneSync-Origin of the request being served (set by
    # BackboneSync::OriginMiddleware), or nil.
    def origin
      _sync_state[:origin]
    end

    # Runs the block with +origin+ as the origin of its broadcasts.
    def with_origin(origin)
      previous = _sync_state[:origin]
      _sync_state[:origin] = origin
      yield
    ensure
      _sync_state[:origin] = previous
    end

    # Called with (error, context Hash) whenever a broadcast fails; publishing
    # never raises into the app's save. Set it to report to your error tracker:
    #
    #   BackboneSync.on_error { |error, context| Sentry.capture_exception(error, extra: context) }
    def on_error(&block)
      @on_error = block if block
      @on_error
    end

    attr_writer :on_error

    # Where broadcast failures are logged: Rails.logger under Rails, else $stderr.
    def logger
      @logger ||= if defined?(::Rails) && ::Rails.respond_to?(:logger) && ::Rails.logger
                    ::Rails.logger
                  else
                    Logger.new($stderr, progname: "backbone_sync")
                  end
    end

    attr_writer :logger

    # How many broadcasts failed in this process.
    def broadcast_failures
      @broadcast_failures_lock.synchronize { @broadcast_failures }
    end

    # Logs, counts and reports a failed broadcast. Never raises.
    def report_broadcast_error(error, context = {})
      @broadcast_failures_lock.synchronize { @broadcast_failures += 1 }
      begin
        logger.error("backbone_sync: broadcast failed #{context.inspect}: #{error.class}: #{error.message}")
      rescue StandardError
        nil
      end
      begin
        @on_error&.call(error, context)
      rescue StandardError => e
        warn "backbone_sync: the on_error handler raised #{e.class}: #{e.message}"
      end
      nil
    end

    # Waits until the broadcasts queued in this process have been sent (or
    # reported as failed), at most +timeout+ seconds; also done at exit.
    # Returns true when none is left.
    def flush(timeout: 5)
      BackboneSync::Broadcaster.flush(timeout: timeout)
    end

    # The outbox table's {waiting: rows not yet published, oldest_age:
    # seconds since the oldest was written}, read from the database.
    def outbox_stats
      BackboneSync::Outbox.stats
    end

    # A channel name made from +name+: "/sync/" is prepended unless it starts
    # with "/". Raises ChannelError when the result is not a publishable
    # Bayeux channel.
    def sync_channel(name)
      name = name.to_s if name.is_a?(Symbol)
      unless name.is_a?(String) && !name.empty?
        raise ChannelError, "a channel name must be a non-empty String such as \"members\" or " \
                            "\"/sync/members\", got #{name.inspect}"
      end

      channel!(name.start_with?("/") ? name : "/sync/#{name}")
    end

    private

    # Per thread and per fiber: Thread#[] is fiber-local; under Rails 7 the
    # app's isolation level decides.
    def _sync_state
      store = defined?(::ActiveSupport::IsolatedExecutionState) ? ::ActiveSupport::IsolatedExecutionState : Thread.current
      store[:backbone_sync_state] ||= {}
    end
  end

  @broadcast_failures = 0
  @broadcast_failures_lock = Mutex.new
end
