# frozen_string_literal: true

require "spec_helper"
require "open3"
require "rbconfig"

# bin/backbone_sync and `rake faye:start`, run as real processes.
RSpec.describe "the standalone launcher" do
  root = File.expand_path("..", __dir__)
  bin = File.join(root, "bin", "backbone_sync")

  # Starts argv, waits (bounded) for the listening line and yields
  # [pid, url, lines, stdout]; always kills the process group afterwards.
  def with_launched(argv, env: {})
    stdin, stdout, stderr, wait = Open3.popen3(env, *argv, pgroup: true)
    stdin.close
    lines = []
    deadline = monotonic + 30
    until lines.last&.start_with?("backbone_sync listening on ")
      raise "no listening line within 30s: #{lines.inspect} #{stderr.read_nonblock(10_000, exception: false)}" if monotonic > deadline
      next unless stdout.wait_readable(0.2)

      line = stdout.gets or raise "exited before listening: #{stderr.read}"
      lines << line.chomp
    end
    url = lines.last.delete_prefix("backbone_sync listening on ")
    yield wait.pid, url, lines, stdout, stderr, wait
  ensure
    begin
      Process.kill("KILL", -wait.pid) if wait&.alive?
    rescue Errno::ESRCH
      nil
    end
    wait&.join(10)
    [stdout, stderr].each { |io| io&.close }
  end

  def exit_status(wait, within: 15)
    expect(wait.join(within)).to be_truthy, "the process did not exit within #{within}s"
    wait.value
  end

  it "prints its URL and a generated secret, accepts publishes with it, and exits 0 on SIGTERM" do
    env = { "BACKBONE_SYNC_SECRET" => nil }
    with_launched([RbConfig.ruby, bin, "--port", "0"], env: env) do |pid, url, _lines, stdout, _err, wait|
      expect(url).to match(%r{\Ahttp://127\.0\.0\.1:\d+/faye\z})
      secret_line = stdout.gets.to_s.chomp
      expect(secret_line).to match(/\Asecret: [0-9a-f]{64}\z/)
      secret = secret_line.delete_prefix("secret: ")

      ws, = ws_session(url, ["/launched"])
      begin
        BackboneSync::Publisher.new(url, secret: secret).publish("/launched", { "hi" => 1 })
        expect(ws.wait_for { |m| m["channel"] == "/launched" && m.key?("data") }["data"]).to eq("hi" => 1)
        expect { BackboneSync::Publisher.new(url, secret: "wrong").publish("/launched", 2) }
          .to raise_error(BackboneSync::PublishError, /403/)
      ensure
        ws&.close
      end

      Process.kill("TERM", pid)
      expect(exit_status(wait).exitstatus).to eq(0)
    end
  end

  it "takes the secret and the other options from the command line, and exits 0 on SIGINT" do
    argv = [RbConfig.ruby, bin, "--host", "127.0.0.1", "--port", "0", "--mount", "/live", "--timeout", "5",
            "--secret", "cli-secret", "--public", "/chat/**", "--signed-subscriptions"]
    with_launched(argv) do |pid, url, lines, _out, _err, wait|
      expect(lines.size).to eq(1)
      expect(url).to end_with("/live")
      session = BackboneSyncSpec::BayeuxHTTP::Session.new(url)
      session.handshake!
      expect(session.subscribe("/secret/room").first["error"]).to eq("403:/secret/room:Forbidden channel")
      token = BackboneSync.sign("/secret/room", secret: "cli-secret")
      expect(session.subscribe("/secret/room", ext: { token: token }).first["successful"]).to be(true)
      # a public channel: a browser may publish without the secret
      expect(session.publish("/chat/x", "hello").first["successful"]).to be(true)
      Process.kill("INT", pid)
      expect(exit_status(wait).exitstatus).to eq(0)
    end
  end

  it "takes every bound from its flag" do
    argv = [RbConfig.ruby, bin, "--port", "0", "--secret", shared_secret, "--max-message-size", "2048",
            "--max-clients", "1", "--request-timeout", "1", "--allowed-origin", "https://app.example.test",
            "--max-batch", "2", "--history-size", "0"]
    with_launched(argv) do |_pid, url, _lines|
      big = post_json(url, [{ channel: "/x", data: "x" * 3000, ext: { secret: shared_secret } }])
      expect(big.json.first["error"]).to include("(2048 bytes)")
      three = post_json(url, Array.new(3) { { channel: "/meta/handshake", version: "1.0", supportedConnectionTypes: ["long-polling"] } })
      expect(three.json.first["error"]).to include("too many messages")
      hs = post_json(url, [{ channel: "/meta/handshake", version: "1.0", supportedConnectionTypes: ["long-polling"] }],
                     headers: { "Origin" => "https://app.example.test" })
      expect(hs["access-control-allow-credentials"]).to eq("true")
      client_id = hs.json.first["clientId"]
      BackboneSyncSpec::BayeuxHTTP::Session.new(url).handshake! # evicts the first: max 1, never connected
      stats = request(:get, url.sub(%r{/faye\z}, "/stats"), headers: { "Authorization" => "Bearer #{shared_secret}" }).json
      expect(stats["clients_evicted"]).to eq(1)
      sub = post_json(url, [{ channel: "/meta/subscribe", clientId: client_id, subscription: "/h" }]).json.first
      expect(sub["error"]).to start_with("401:")
      reply = BackboneSyncSpec::BayeuxHTTP::Session.new(url).tap(&:handshake!).subscribe!("/h")
      expect(reply).not_to have_key("ext") # --history-size 0: no position to report
      uri = URI(url)
      sock = TCPSocket.new(uri.host, uri.port)
      sock.write("POST /faye HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nx")
      # --request-timeout 1: closed well before lws's own 20 s.
      expect(sock.wait_readable(5)).to be_truthy
      expect(sock.read_nonblock(10, exception: false)).to be_nil # EOF
      sock.close
    end
  end

  it "prints help and the version" do
    out, status = Open3.capture2(RbConfig.ruby, bin, "--help")
    expect(status.exitstatus).to eq(0)
    expect(out).to include("Usage: backbone_sync", "--port PORT", "--public PATTERN", "--signed-subscriptions")
    out, = Open3.capture2(RbConfig.ruby, bin, "--version")
    expect(out.strip).to eq(BackboneSync::VERSION)
  end

  it "exits 1 with a message for bad options and a taken port" do
    _, err, status = Open3.capture3(RbConfig.ruby, bin, "--port", "nope")
    expect(status.exitstatus).to eq(1)
    expect(err).to match(/invalid argument: --port nope; see --help/)

    _, err, status = Open3.capture3(RbConfig.ruby, bin, "--public", "bad pattern")
    expect(status.exitstatus).to eq(1)
    expect(err).to match(/is not a channel pattern/)

    holder = TCPServer.new("127.0.0.1", 0)
    begin
      _, err, status = Open3.capture3(RbConfig.ruby, bin, "--port", holder.addr[1].to_s)
      expect(status.exitstatus).to eq(1)
      expect(err).to match(/already in use/)
    ensure
      holder.close
    end
  end

  it "rake faye:start prints the same line and stops on SIGINT" do
    rake = Gem.bin_path("rake", "rake")
    argv = [RbConfig.ruby, rake, "-f", File.join(root, "Rakefile"), "faye:start", "port=0", "secret=rake-secret",
            "mount=/rk"]
    with_launched(argv) do |pid, url, lines, _out, _err, wait|
      expect(lines.last).to match(%r{\Abackbone_sync listening on http://127\.0\.0\.1:\d+/rk\z})
      expect(BackboneSync::Publisher.new(url, secret: "rake-secret").publish("/x", 1)).to be(true)
      Process.kill("INT", pid)
      expect(exit_status(wait, within: 30).exitstatus).to eq(0)
    end
  end

  it "serves https with --key/--cert, logs publishes with --verbose, and joins a backplane with --redis" do
    redis = BackboneSyncSpec::RedisProcess.new(BackboneSyncSpec::RedisProcess.free_port).start
    Dir.mktmpdir do |dir|
      key, cert = self_signed_cert(dir)
      argv = [RbConfig.ruby, bin, "--port", "0", "--secret", shared_secret, "--key", key, "--cert", cert,
              "--verbose", "--redis", redis.url]
      with_launched(argv) do |_pid, url, _lines, stdout|
        expect(url).to start_with("https://127.0.0.1:")
        stats = eventually(what: "the backplane to connect") do
          s = request(:get, url.sub(%r{/faye\z}, "/stats"), headers: { "Authorization" => "Bearer #{shared_secret}" }).json
          s if s["backplane_up"] == 1
        end
        expect(stats["backplane_up"]).to eq(1)
        res = post_json(url, [{ channel: "/l/v", data: 1, ext: { secret: shared_secret } }])
        expect(res.json.first["successful"]).to be(true)
        logged = +""
        eventually(what: "the verbose publish line") do
          logged << stdout.read_nonblock(65_536, exception: false).to_s
          logged.include?("publish: /l/v")
        end
      end
    end
  ensure
    redis&.stop
  end

  it "rake faye:start takes redis=, and while that Redis is away says so without its password" do
    rake = Gem.bin_path("rake", "rake")
    port = BackboneSyncSpec::RedisProcess.free_port # nobody listens there
    argv = [RbConfig.ruby, rake, "-f", File.join(root, "Rakefile"), "faye:start", "port=0", "secret=rake-secret",
            "redis=redis://:hunter2@127.0.0.1:#{port}/0"]
    with_launched(argv, env: { "BACKBONE_SYNC_REDIS_URL" => nil }) do |_pid, _url, _lines, _out, stderr|
      said = +""
      eventually(timeout: 15, what: "the warning that Redis is away") do
        said << stderr.read_nonblock(65_536, exception: false).to_s
        said.include?("not reachable yet")
      end
      expect(said).to include("Redis at redis://:***@127.0.0.1:#{port}/0 is not reachable yet")
      expect(said).not_to include("hunter2")
    end
  end

  it "rake faye:start takes event_loop=ev, bin/backbone_sync --event-loop, and both refuse another loop" do
    rake = Gem.bin_path("rake", "rake")
    argv = [RbConfig.ruby, rake, "-f", File.join(root, "Rakefile"), "faye:start", "port=0", "secret=rake-secret",
            "event_loop=ev"]
    with_launched(argv) do |pid, url|
      expect(epoll_fds(pid)).to eq(1)
      expect(BackboneSync::Publisher.new(url, secret: "rake-secret").publish("/x", 1)).to be(true)
    end
    with_launched([RbConfig.ruby, bin, "--port", "0", "--secret", "s", "--event-loop", "poll"]) do |pid|
      expect(epoll_fds(pid)).to eq(0)
    end
    _, err, status = Open3.capture3(RbConfig.ruby, rake, "-f", File.join(root, "Rakefile"), "faye:start",
                                    "port=0", "event_loop=epoll")
    expect(status.exitstatus).to eq(1)
    expect(err).to include('rake faye:start: event_loop must be :poll or :ev')
    _, err, status = Open3.capture3(RbConfig.ruby, bin, "--port", "0", "--event-loop", "uv")
    expect(status.exitstatus).to eq(1)
    expect(err).to include('backbone_sync: event_loop must be :poll or :ev')
  end

  it "rake faye:start takes host=, timeout=, key=, cert= and verbose=" do
    rake = Gem.bin_path("rake", "rake")
    Dir.mktmpdir do |dir|
      key, cert = self_signed_cert(dir)
      argv = [RbConfig.ruby, rake, "-f", File.join(root, "Rakefile"), "faye:start", "port=0", "host=127.0.0.1",
              "timeout=3", "secret=rake-secret", "key=#{key}", "cert=#{cert}", "verbose=1"]
      with_launched(argv) do |_pid, url, _lines, stdout|
        expect(url).to match(%r{\Ahttps://127\.0\.0\.1:\d+/faye\z})
        http = BackboneSyncSpec::BayeuxHTTP::Session.new(url)
        reply = http.handshake!
        expect(reply["advice"]).to include("timeout" => 3000) # timeout=3
        logged = +""
        eventually(what: "a verbose line") do
          logged << stdout.read_nonblock(65_536, exception: false).to_s
          logged.include?("handshake: client")
        end
      end
    end
  end
end
