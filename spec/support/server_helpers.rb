# frozen_string_literal: true

require "socket"
require "openssl"
require "timeout"
require "tmpdir"
require_relative "ws_client"
require_relative "bayeux_http"
require_relative "client_process"

module BackboneSyncSpec
  # Helpers included in every example group (see the RSpec.configure below).
  module Helpers
    SECRET = "spec-secret-0123456789"

    # The publishers' secret the specs configure servers with.
    def shared_secret
      SECRET
    end

    # Starts BackboneSync::Server on 127.0.0.1, port 0, yields it, and always
    # stops it, even when the example fails or times out.
    def with_server(**opts)
      server = BackboneSync::Server.new(**{ host: "127.0.0.1", port: 0, timeout: 5 }.merge(opts))
      server.start
      yield server
    ensure
      stop_bounded(server) if server
    end

    # stop joins the service thread; a hang there must fail the spec, not the suite.
    def stop_bounded(server, within: 15)
      Timeout.timeout(within, Timeout::Error, "server.stop did not return within #{within}s") { server.stop }
    end

    # The epoll descriptors a process holds: libev's, while an event_loop: :ev
    # server runs (Ruby 3.1 and lws's poll loop make none), so they say
    # which loop runs.
    def epoll_fds(pid = "self")
      Dir.children("/proc/#{pid}/fd").count do |fd|
        File.readlink("/proc/#{pid}/fd/#{fd}") == "anon_inode:[eventpoll]"
      rescue SystemCallError
        false
      end
    end

    # Calls the block; how long it took, in seconds.
    def timed
      started = monotonic
      yield
      monotonic - started
    end

    def monotonic
      Process.clock_gettime(Process::CLOCK_MONOTONIC)
    end

    # Polls the block (bounded) until it is truthy; returns its value or fails.
    def eventually(timeout: 5, interval: 0.02, what: "the condition")
      deadline = monotonic + timeout
      loop do
        value = yield
        return value if value
        raise "#{what} did not become true within #{timeout}s" if monotonic > deadline

        sleep interval
      end
    end

    def free_port
      s = TCPServer.new("127.0.0.1", 0)
      s.addr[1]
    ensure
      s&.close
    end

    def ws_url(server)
      server.url.sub(/\Ahttp/, "ws")
    end

    # The server's origin (scheme://host:port) for /stats and friends.
    def origin(server)
      server.url[%r{\Ahttps?://[^/]+}]
    end

    def open_fds
      Dir.children("/proc/self/fd").size
    end

    def rss_kb
      File.read("/proc/self/status")[/^VmRSS:\s+(\d+)/, 1].to_i
    end

    # :asan, :valgrind or nil: what instruments this process (ENV is scrubbed
    # by spec_helper, so look at what is actually mapped).
    def instrumented_runtime
      @instrumented_runtime = File.read("/proc/self/maps")[/libasan|vgpreload/] || false if @instrumented_runtime.nil?
      { "libasan" => :asan, "vgpreload" => :valgrind }[@instrumented_runtime]
    end

    # Memory in use, in KB, by the best measure the runtime allows: RSS
    # normally, after malloc_trim (without it, freed pages glibc keeps made
    # the same example grow 0.1 or 16 MB depending on the order); under ASan the allocator's count of live bytes (RSS there
    # holds the 256 MB free quarantine and shadow memory, but live bytes are
    # exact); nil under valgrind, whose own heap and freed-block queue hide
    # both.
    def memory_in_use_kb
      case instrumented_runtime
      when :asan then asan_allocated_bytes.call / 1024
      when :valgrind then nil
      else
        malloc_trim.call(0) # hand freed heap pages back, so RSS shows what is in use
        rss_kb
      end
    end

    def malloc_trim
      require "fiddle"
      @malloc_trim ||= Fiddle::Function.new(Fiddle::Handle::DEFAULT["malloc_trim"], [Fiddle::TYPE_SIZE_T], Fiddle::TYPE_INT)
    end

    def asan_allocated_bytes
      require "fiddle"
      @asan_allocated_bytes ||= Fiddle::Function.new(
        Fiddle::Handle::DEFAULT["__sanitizer_get_current_allocated_bytes"], [], Fiddle::TYPE_SIZE_T
      )
    end

    # Memory in use may grow by at most `limit_kb` while the block runs. Where
    # no measure holds (valgrind), the check is reported as skipped, with the
    # reason, in the run's output; the rest of the example still runs.
    def expect_memory_growth_below(limit_kb)
      GC.start
      before = memory_in_use_kb
      result = yield
      GC.start
      after = memory_in_use_kb
      if before.nil? || after.nil?
        BackboneSyncSpec.skipped_memory_check(RSpec.current_example,
                                              "no memory measure under #{instrumented_runtime}")
      else
        expect(after - before).to be < limit_kb
      end
      result
    end

    # A subscription token built independently of BackboneSync.sign, from the
    # documented format "<expires>.<hex HMAC-SHA256(secret, channel\nexpires)>".
    def token_for(channel, secret: SECRET, expires: Time.now.to_i + 3600)
      "#{expires}.#{OpenSSL::HMAC.hexdigest('SHA256', secret, "#{channel}\n#{expires}")}"
    end

    # A fresh self-signed key and certificate for 127.0.0.1, written to dir.
    # Returns [key_path, cert_path].
    def self_signed_cert(dir)
      key = OpenSSL::PKey::RSA.new(2048)
      cert = OpenSSL::X509::Certificate.new
      cert.version = 2
      cert.serial = rand(1 << 64)
      cert.subject = cert.issuer = OpenSSL::X509::Name.parse("/CN=127.0.0.1")
      cert.public_key = key.public_key
      cert.not_before = Time.now - 60
      cert.not_after = Time.now + 3600
      ef = OpenSSL::X509::ExtensionFactory.new(cert, cert)
      cert.add_extension(ef.create_extension("basicConstraints", "CA:FALSE", true))
      cert.add_extension(ef.create_extension("subjectAltName", "IP:127.0.0.1,DNS:localhost"))
      cert.sign(key, OpenSSL::Digest.new("SHA256"))
      key_path = File.join(dir, "key.pem")
      cert_path = File.join(dir, "cert.pem")
      File.write(key_path, key.to_pem)
      File.write(cert_path, cert.to_pem)
      [key_path, cert_path]
    end

    # A raw WebSocket Bayeux session: handshake over HTTP (as real Faye clients
    # do), then /meta/connect and subscribes over the socket. Returns
    # [ws, client_id]; the caller closes ws (use ensure).
    def ws_session(url, subscriptions = [], timeout: 5, **ws_opts)
      http = BayeuxHTTP::Session.new(url, timeout: timeout)
      client_id = http.handshake!(types: %w[websocket long-polling])["clientId"]
      ws = WSClient.new(url, timeout: timeout, **ws_opts)
      # One held /meta/connect binds the socket to the session, as Faye's
      # client does; its reply arrives at the server's timeout and waits in
      # ws.backlog.
      ws.send_json([{ channel: "/meta/connect", clientId: client_id, connectionType: "websocket", id: "c1" }])
      subscriptions.each_with_index do |sub, i|
        ws.send_json([{ channel: "/meta/subscribe", clientId: client_id, subscription: sub, id: "s#{i}" }])
        reply = ws.wait_for(timeout: timeout) { |m| m["channel"] == "/meta/subscribe" && m["id"] == "s#{i}" }
        raise "subscribe #{sub} failed: #{reply.inspect}" unless reply["successful"]
      end
      [ws, client_id]
    rescue StandardError
      ws&.close_socket
      raise
    end
  end
end

module BackboneSyncSpec
  SKIPPED_MEMORY_CHECKS = []

  def self.skipped_memory_check(example, reason)
    line = "memory check skipped: #{example.full_description} (#{example.location}): #{reason}"
    SKIPPED_MEMORY_CHECKS << line
    RSpec.configuration.reporter.message(line)
  end
end

if defined?(RSpec) && RSpec.respond_to?(:configure)
  RSpec.configure do |config|
    config.after(:suite) do
      unless BackboneSyncSpec::SKIPPED_MEMORY_CHECKS.empty?
        RSpec.configuration.reporter.message(
          "\n#{BackboneSyncSpec::SKIPPED_MEMORY_CHECKS.size} memory check(s) skipped:\n  " +
          BackboneSyncSpec::SKIPPED_MEMORY_CHECKS.join("\n  ")
        )
      end
    end
    config.include BackboneSyncSpec::Helpers
    config.include BackboneSyncSpec::BayeuxHTTP if defined?(BackboneSyncSpec::BayeuxHTTP)
  end
end
