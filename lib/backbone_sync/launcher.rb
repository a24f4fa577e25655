# frozen_string_literal: true

require "securerandom"

module BackboneSync
  # Runs a server in the foreground until SIGINT or SIGTERM: shared by
  # bin/backbone_sync and `rake faye:start`.
  module Launcher
    module_function

    # Prints "backbone_sync listening on URL" (and "secret: S" when it had to
    # generate one), then blocks until a signal arrives; stops the server.
    # options are Server.new's; redis: "redis://host:port/db" joins a backplane
    # (several URLs, comma-separated: the seed nodes of a Redis Cluster).
    # on_start is called with the server once it listens.
    def run(out: $stdout, on_start: nil, **options)
      # A program's output: --verbose lines must show as they happen, also
      # when stdout is a pipe (systemd, docker logs), not when a buffer fills.
      out.sync = true if out.respond_to?(:sync=)
      $stdout.sync = true
      generated = nil
      if options[:secret].nil?
        options[:secret] = BackboneSync.secret || (generated = SecureRandom.hex(32))
      end

      server = Server.new(**options)
      # A self-pipe rather than a Queue: with no other Ruby thread alive,
      # Queue#pop would be reported as a deadlock; a blocking read is not.
      wake_r, wake_w = IO.pipe
      previous = %w[INT TERM].to_h do |sig|
        [sig, trap(sig) { wake_w.write_nonblock(sig[0], exception: false) }]
      end
      begin
        server.start
        out.puts "backbone_sync listening on #{server.url}"
        out.puts "secret: #{generated}" if generated
        out.flush
        on_start&.call(server)
        warn_if_backplane_down(server)
        wake_r.read(1)
      ensure
        server.stop
        previous.each { |sig, handler| trap(sig, handler || "DEFAULT") }
        wake_r.close
        wake_w.close
      end
      server
    end

    # With redis:, the server starts even while Redis is away and queues
    # publishes until it comes; say so rather than look like a silent node.
    def warn_if_backplane_down(server, wait: 2.0)
      return unless server.redis

      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + wait
      until server.stats[:backplane_up] == 1
        if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
          url = server.redis.map { |uri| uri.dup.tap { |u| u.password = "***" if u.password } }.join(",")
          warn "backbone_sync: Redis at #{url} is not reachable yet; publishes wait for it " \
               "(start redis-server, or check the --redis URL)"
          return
        end
        sleep 0.05
      end
    end
  end
end
