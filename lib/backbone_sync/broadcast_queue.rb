# frozen_string_literal: true

module BackboneSync
  # Where a save's broadcasts wait for the network (Rails-free layer; its
  # own thread sends), so that a save never
  # waits on the push server. Bounded; drained in order by one thread per
  # process, made on the first push (a forked child makes its own), and
  # flushed at exit and by BackboneSync.flush.
  #
  # A full queue drops the new broadcast and reports it (Overloaded). When a
  # send fails because the server cannot be reached or does not answer, the
  # circuit opens: what is queued meanwhile fails at once (reported as
  # Unreachable) instead of waiting on the network, and after +cooldown+
  # seconds (doubling on each failure up to +max_cooldown+) the next
  # broadcast tries the server again.
  class BroadcastQueue
    DEFAULT_SIZE = 1000

    # +sender+ is called as sender.call(channel, data, event_id) from the
    # queue's thread and raises on failure; +on_failure+ gets (error, context).
    def initialize(sender:, on_failure:, size: DEFAULT_SIZE, cooldown: 1.0, max_cooldown: 30.0)
      unless size.is_a?(Integer) && size.positive?
        raise ArgumentError, "the broadcast queue size must be a positive Integer, got #{size.inspect}"
      end

      @sender = sender
      @on_failure = on_failure
      @size = size
      @base_cooldown = cooldown
      @max_cooldown = max_cooldown
      @dropped = 0
      reset_for_this_process
    end

    attr_reader :size

    # Queues +data+ for each channel of +channels+ (in order). Never blocks
    # and never raises: a broadcast that finds the queue full is dropped and
    # reported. Returns the number of channels queued. +event_ids+ (channel
    # => id) go to the sender; +on_sent+ is called with (channel, event_id)
    # in the queue's thread after each successful send.
    def push(channels, data, context = {}, event_ids: nil, on_sent: nil)
      channels = Array(channels)
      dropped = nil
      @lock.synchronize do
        reset_for_this_process if @pid != Process.pid
        if @items.size + channels.size > @size
          @dropped += channels.size
          dropped = @items.size
        else
          channels.each { |channel| @items << [channel, data, context, event_ids&.[](channel), on_sent] }
          start_thread
          @wake.signal
        end
      end
      return channels.size unless dropped

      channels.each do |channel|
        @on_failure.call(Overloaded.new("the broadcast queue is full (#{dropped} of #{@size} waiting: the push " \
                                        "server is slow or down); this broadcast was dropped. Check the server, " \
                                        "or raise config.backbone_sync.queue_size"),
                         context.merge(channel: channel))
      end
      0
    end

    # Waits until everything queued so far has been sent or reported, at
    # most +timeout+ seconds. Returns true when the queue is empty.
    def flush(timeout: 5)
      deadline = monotonic + timeout
      @lock.synchronize do
        return true if @pid != Process.pid

        until @items.empty? && !@busy
          left = deadline - monotonic
          return false if left <= 0 || !@thread&.alive?

          @idle.wait(@lock, left)
        end
      end
      true
    end

    # Forgets past failures (the server's address changed): the next
    # broadcast tries the server.
    def close_circuit
      @lock.synchronize do
        @open_until = nil
        @cooldown = @base_cooldown
      end
      nil
    end

    # {queued:, dropped:, circuit: :closed or :open}
    def stats
      @lock.synchronize do
        { queued: @pid == Process.pid ? @items.size : 0, dropped: @dropped,
          circuit: @open_until && monotonic < @open_until ? :open : :closed }
      end
    end

    private

    # The state of this process: after a fork the parent's thread does not
    # exist here, and what was queued is the parent's to send.
    def reset_for_this_process
      @pid = Process.pid
      @lock = Mutex.new
      @wake = ConditionVariable.new
      @idle = ConditionVariable.new
      @items = []
      @busy = false
      @thread = nil
      @cooldown = @base_cooldown
      @open_until = nil
      @last_error = nil
    end

    # Caller holds @lock.
    def start_thread
      return if @thread&.alive?

      @thread = Thread.new { run }
      @thread.name = "backbone_sync broadcasts"
      @thread.report_on_exception = false
    end

    def run
      loop do
        item = @lock.synchronize do
          @busy = false
          @idle.broadcast if @items.empty?
          @wake.wait(@lock) while @items.empty?
          @busy = true
          @items.shift
        end
        deliver(*item)
      end
    end

    def deliver(channel, data, context, event_id, on_sent)
      return unless send_one(channel, data, context, event_id)

      # Not the server's failure: it must not open the circuit.
      begin
        on_sent&.call(channel, event_id)
      rescue StandardError => e
        report(e, context.merge(after: :sent), channel)
      end
    end

    # True once sent; a failure is reported.
    def send_one(channel, data, context, event_id)
      if (error = circuit_error)
        report(error, context, channel)
        return false
      end

      @sender.call(channel, data, event_id)
      @cooldown = @base_cooldown
      @open_until = nil
      true
    rescue StandardError => e
      open_circuit(e) if unreachable?(e)
      report(e, context, channel)
      false
    end

    # The error a broadcast gets without trying while the circuit is open.
    def circuit_error
      return nil unless @open_until && monotonic < @open_until

      Unreachable.new("not sent: the push server failed #{(monotonic - @failed_at).round(1)}s ago " \
                      "(#{@last_error}); it is tried again in #{(@open_until - monotonic).round(1)}s")
    end

    def open_circuit(error)
      @failed_at = monotonic
      @open_until = @failed_at + @cooldown
      @cooldown = [@cooldown * 2, @max_cooldown].min
      @last_error = "#{error.class}: #{error.message}"
    end

    # Refusals (a bad channel, a wrong secret) say nothing about the server's health.
    def unreachable?(error)
      error.is_a?(Unreachable) || !error.is_a?(BackboneSync::Error)
    end

    def report(error, context, channel)
      @on_failure.call(error, context.merge(channel: channel))
    rescue StandardError
      nil
    end

    def monotonic
      Process.clock_gettime(Process::CLOCK_MONOTONIC)
    end
  end
end
