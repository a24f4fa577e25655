# frozen_string_literal: true

require "securerandom"

module BackboneSync
  # Runs a server in the foreground until SIGINT or SIGTERM: shared by
  # bin/backbone_sync and `rake faye:start`.
  module Launcher
    module_function

    # Prints "backbone_sync listening on URL" (and "secret: S" when it had to
    # generate one), then blocks until a signal arrives; stops the server.
    def run(out: $stdout, **options)
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
        wake_r.read(1)
      ensure
        server.stop
        previous.each { |sig, handler| trap(sig, handler || "DEFAULT") }
        wake_r.close
        wake_w.close
      end
      server
    end
  end
end
