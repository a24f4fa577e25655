# frozen_string_literal: true

require "spec_helper"
require "logger"
require "stringio"
require "tmpdir"

# The Ruby half of BackboneSync::Server: keyword validation, the log pipe,
# error mapping and the fork rules that live in lib/backbone_sync/server.rb.
RSpec.describe BackboneSync::Server, "options and logging" do
  describe "validation" do
    def build(**opts)
      described_class.new(**opts)
    end

    it "has the documented defaults" do
      server = build
      expect(server.url).to eq("http://127.0.0.1:9292/faye")
      expect([server.host, server.port, server.mount, server.timeout]).to eq(["127.0.0.1", 9292, "/faye", 45])
      expect([server.max_message_size, server.max_depth, server.max_batch, server.max_subscriptions, server.max_queue])
        .to eq([65_536, 32, 100, 1000, 1000])
      expect(server.signed_subscriptions).to be(false)
      expect(server.public_channels).to eq([])
      expect(server.running?).to be(false)
    end

    it "explains each bad option with an ArgumentError" do
      {
        { port: 70_000 } => /port must be an Integer from 0 to 65535 \(use 0 to pick a free port\)/,
        { port: "80" } => /port must be an Integer/,
        { host: "" } => /host must be an address such as "127.0.0.1"/,
        { mount: "faye" } => /mount must be a path such as "\/faye"/,
        { mount: "/faye/" } => /no trailing slash/,
        { timeout: 0 } => /timeout must be an Integer from 1/,
        { key: "k.pem" } => /TLS needs both key: and cert:/,
        { secret: "" } => /secret must be a non-empty String/,
        { logger: Object.new } => /logger must respond to error, warn, info and debug/,
        { signed_subscriptions: true } => /signed_subscriptions needs secret:/,
        { signed_subscriptions: "yes", secret: "s" } => /signed_subscriptions must be true, false or an Array/,
        { signed_subscriptions: ["nope"], secret: "s" } => /"nope" is not a channel pattern/,
        { public_channels: "/chat/**" } => /public_channels must be an Array/,
        { public_channels: ["/chat/***"] } => /public_channels: "\/chat\/\*\*\*" is not a channel pattern/,
        { max_message_size: 10 } => /max_message_size must be an Integer from 1024/,
        { max_depth: 1000 } => /max_depth must be an Integer from 2 to 64/,
        { max_queue: 0 } => /max_queue must be an Integer from 1/
      }.each do |opts, message|
        expect { build(**opts) }.to raise_error(ArgumentError, message), "for #{opts.inspect}"
      end
      expect { build(bogus: 1) }.to raise_error(ArgumentError, /unknown keyword: :bogus/)
    end

    it "accepts channel patterns and lists of signed channels, and the running server applies them" do
      with_server(public_channels: ["/chat/**", "/room/*", "/exact"], signed_subscriptions: ["/private/**"],
                  secret: shared_secret) do |server|
        s = BackboneSyncSpec::BayeuxHTTP::Session.new(server.url)
        s.handshake!
        # Browsers (no secret) may publish where a pattern matches, and only there.
        { "/chat/a/b" => true, "/room/a" => true, "/exact" => true,
          "/room/a/b" => false, "/exact/x" => false, "/other" => false }.each do |channel, allowed|
          reply = s.publish(channel, 1).first
          expected = allowed ? { "successful" => true } : { "error" => "403:#{channel}:Forbidden channel" }
          expect(reply).to include(expected), "publish to #{channel}"
        end
        # Only the listed channels need a token.
        expect(s.subscribe("/private/x").first["error"]).to eq("403:/private/x:Forbidden channel")
        expect(s.subscribe("/private/x", ext: { token: token_for("/private/x") }).first["successful"]).to be(true)
        expect(s.subscribe("/open").first["successful"]).to be(true)
      end
    end

    it "uses https in url with key and cert, and brackets IPv6 hosts" do
      Dir.mktmpdir do |dir|
        key, cert = self_signed_cert(dir)
        expect(build(key: key, cert: cert, port: 1234).url).to eq("https://127.0.0.1:1234/faye")
      end
      expect(build(host: "::1", port: 1).url).to eq("http://[::1]:1/faye")
    end
  end

  describe "publish arguments" do
    it "maps the core's refusals to error classes with next steps" do
      with_server(max_message_size: 1024) do |server|
        expect { server.publish("/a/*", 1) }.to raise_error(BackboneSync::ChannelError, %r{invalid channel "/a/\*": use /segment/segment})
        expect { server.publish("no-slash", 1) }.to raise_error(BackboneSync::ChannelError)
        # /meta and /service themselves, not only what is below them (one rule, in channel.c).
        %w[/meta /meta/x /service /service/x].each do |reserved|
          expect { server.publish(reserved, 1) }.to raise_error(BackboneSync::ChannelError, /not under \/meta/), reserved
          expect { BackboneSync.channel!(reserved) }.to raise_error(BackboneSync::ChannelError), reserved
        end
        expect { server.publish(42, 1) }.to raise_error(BackboneSync::ChannelError, /channel must be a String/)
        expect { server.publish("/big", "x" * 2000) }.to raise_error(BackboneSync::MessageTooLarge, /larger than max_message_size/)
        expect { server.publish("/bad", { "s" => "\xFF" }) }.to raise_error(BackboneSync::EncodeError)
        expect(server.publish(:"/sym/ok", { "ok" => true })).to be_nil
        expect(server.running?).to be(true)
      end
    end

    it "delivers what encode_json produces" do
      with_server do |server|
        ws, = ws_session(server.url, ["/enc"])
        begin
          data = { "at" => Time.utc(2024, 1, 2, 3, 4, 5, 678_000), "f" => 0.1, "big" => 2**70, "sym" => :s }
          server.publish("/enc", data)
          msg = ws.wait_for { |m| m["channel"] == "/enc" && m.key?("data") }
          expect(msg["data"]).to eq(JSON.parse(BackboneSync.encode_json(data)))
          expect(msg["data"]).to eq("at" => "2024-01-02T03:04:05.678Z", "f" => 0.1, "big" => 2**70, "sym" => "s")
        ensure
          ws&.close
        end
      end
    end
  end

  describe "logging" do
    it "sends the core's log lines to the logger at their level" do
      io = StringIO.new
      logger = Logger.new(io)
      with_server(logger: logger, verbose: true) do |server|
        server.publish("/logged/channel", { "n" => 1 })
        eventually(what: "a log line naming the channel") { io.string.include?("/logged/channel") }
        expect(io.string).to match(%r{^I, .*INFO -- : .*/logged/channel})
      end
    end

    it "passes errors from libwebsockets to logger.error" do
      Dir.mktmpdir do |dir|
        key = File.join(dir, "key.pem")
        cert = File.join(dir, "cert.pem")
        File.write(key, "not a key")
        File.write(cert, "not a certificate")
        io = StringIO.new
        server = described_class.new(port: 0, key: key, cert: cert, logger: Logger.new(io))
        expect { server.start }.to raise_error(BackboneSync::StartError)
        expect(server.running?).to be(false)
        expect(io.string).to match(/^E, /)
      end
    end

    it "logs to $stdout when verbose and no logger is given" do
      out = StringIO.new
      saved = $stdout
      $stdout = out
      begin
        with_server(verbose: true) do |server|
          server.publish("/stdout/channel", 1)
          eventually(what: "a line on $stdout") { out.string.include?("/stdout/channel") }
        end
      ensure
        $stdout = saved
      end
      expect(out.string).to match(/backbone_sync: .*stdout\/channel/)
    end

    it "keeps serving when the logger raises" do
      angry = Class.new(Logger) { def add(*) = raise("logger broke") }.new(nil)
      with_server(logger: angry, verbose: true) do |server|
        ws, = ws_session(server.url, ["/angry"])
        begin
          3.times { |i| server.publish("/angry", i) }
          got = Array.new(3) { ws.wait_for { |m| m["channel"] == "/angry" && m.key?("data") }["data"] }
          expect(got).to eq([0, 1, 2])
        ensure
          ws&.close
        end
      end
    end

    def dup2(from, to)
      require "fiddle"
      Fiddle::Function.new(Fiddle::Handle::DEFAULT["dup2"], [Fiddle::TYPE_INT, Fiddle::TYPE_INT], Fiddle::TYPE_INT)
                      .call(from, to)
    end

    it "never writes log lines to the closed pipe's descriptor number after stop" do
      # lws has one log sink per process: the newest server's pipe. Here the
      # newest server stops while an older one (no logger) keeps running and
      # gets an lws error: it must not land in whatever reuses the number.
      older = described_class.new(port: 0).start
      first = described_class.new(port: 0, logger: Logger.new(nil)).start
      stale_fd = first.instance_variable_get(:@log_writer).fileno
      stop_bounded(first)
      Dir.mktmpdir do |dir|
        # Put a file at exactly the stale descriptor number (dup2), rather
        # than hoping the kernel hands it out again.
        expect(File.exist?("/proc/self/fd/#{stale_fd}")).to be(false), "descriptor #{stale_fd} still open after stop"
        opened = File.open(File.join(dir, "victim"), "w")
        expect(dup2(opened.fileno, stale_fd)).to eq(stale_fd)
        victim = IO.for_fd(stale_fd, "w", autoclose: true)
        opened.close
        # A header over lws's space makes it log "Ran out of header data
        # space" as an error (to stderr when no server has a logger).
        stderr = $stderr.dup
        begin
          $stderr.reopen(File::NULL)
          TCPSocket.open("127.0.0.1", older.port) do |sock|
            sock.write("GET /faye HTTP/1.1\r\nHost: x\r\nX-Long: #{'a' * 9000}\r\n\r\n")
            sock.wait_readable(5) # the server answers or closes once lws has given up on the header
          end
        ensure
          $stderr.reopen(stderr)
          stderr.close
        end
        victim.close
        expect(File.read(File.join(dir, "victim"))).to eq("")
      end
    ensure
      stop_bounded(older) if older
    end

    it "closes the log pipe and ends its thread on stop" do
      io = StringIO.new
      # timeout 0.4+ starts one thread of its own at its first use (stop_bounded).
      Timeout.timeout(1) { nil }
      threads = Thread.list.size
      fds = open_fds
      3.times do
        server = described_class.new(port: 0, logger: Logger.new(io), verbose: true).start
        server.publish("/cycle", 1)
        stop_bounded(server)
      end
      expect(Thread.list.size).to eq(threads)
      expect(open_fds).to be <= fds
    end
  end

  describe "restart and fork" do
    it "starts again after stop, on a fresh port when port: 0" do
      server = described_class.new(port: 0)
      begin
        server.start
        first = server.port
        expect(server.start).to be(server) # already running: no-op
        stop_bounded(server)
        server.start
        expect(server.running?).to be(true)
        # It serves Bayeux on the port it reports, and the url says that port.
        expect(server.port).to be_between(1, 65_535)
        expect(server.url).to eq("http://127.0.0.1:#{server.port}/faye")
        expect(BackboneSyncSpec::BayeuxHTTP::Session.new(server.url).handshake.first["successful"]).to be(true)
        # The first run's listener is gone (unless the kernel handed out the
        # same port again, which is then this run's).
        expect { TCPSocket.new("127.0.0.1", first) }.to raise_error(Errno::ECONNREFUSED) unless first == server.port
      ensure
        stop_bounded(server)
      end
    end

    it "refuses to restart an inherited server in a forked child, and a new one works there" do
      with_server do |server|
        r, w = IO.pipe
        pid = fork do
          r.close
          result = {}
          begin
            server.start
            result["restart"] = "started"
          rescue BackboneSync::NotRunning => e
            result["restart"] = e.message
          end
          fresh = described_class.new(port: 0).start
          result["fresh"] = fresh.running?
          fresh.stop
          result["stats"] = server.stats.reject { |_, v| v.zero? } # the counters that are not zero
          w.write(JSON.generate(result))
          w.close
          exit!(0)
        end
        w.close
        body = Timeout.timeout(20) { r.read }
        Timeout.timeout(10) { Process.wait(pid) }
        result = JSON.parse(body)
        expect(result["restart"]).to match(/before this process forked; start a new BackboneSync::Server here/)
        expect(result["fresh"]).to be(true)
        expect(result["stats"]).to eq({})
        expect(server.running?).to be(true)
      end
    end

    it "stops running servers at exit" do
      script = <<~RUBY
        $LOAD_PATH.unshift #{File.expand_path('../lib', __dir__).inspect}
        require "backbone_sync"
        s = BackboneSync::Server.new(port: 0).start
        puts s.port
        $stdout.flush
      RUBY
      out, status = Timeout.timeout(30) do
        IO.popen([RbConfig.ruby, "-e", script], &:read).then { |o| [o, $?] }
      end
      expect(status.exitstatus).to eq(0)
      port = Integer(out.strip)
      expect { TCPSocket.new("127.0.0.1", port).close }.to raise_error(Errno::ECONNREFUSED)
    end
  end
end
