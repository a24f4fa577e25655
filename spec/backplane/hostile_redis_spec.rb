# frozen_string_literal: true

require "spec_helper"
require "socket"
require "stringio"
require "logger"
require "json"

# The backplane facing a Redis (Cluster) that lies or breaks: a fake node on
# loopback, written here by hand, answers the node's commands in RESP2 and
# misbehaves where each example says. The node must go on serving its own
# clients, say what is wrong in its log, hand its clients nothing broken,
# not crash, and stop within a bound.
RSpec.describe "the Redis backplane facing a hostile Redis" do
  # A fake Redis Cluster node. `slots` is the raw CLUSTER SLOTS reply (nil:
  # one range, all slots, on this node); `on` may override any command by
  # its upper-cased name with a lambda (conn, argv) -> raw reply, or
  # :silent for no reply at all.
  class HostileRedis
    attr_reader :port, :subscribers, :seen, :accepted

    def self.bulk(s)
      s.nil? ? "$-1\r\n" : "$#{s.bytesize}\r\n#{s.b}\r\n"
    end

    def self.arr(*items)
      "*#{items.size}\r\n#{items.join}"
    end

    def initialize(slots: nil, on: {})
      @server = TCPServer.new("127.0.0.1", 0)
      @port = @server.addr[1]
      @slots = slots
      @on = on
      @subscribers = Queue.new
      @seen = Queue.new
      @accepted = 0
      @conns = []
      @lock = Mutex.new
      @thread = Thread.new { accept_loop }
    end

    def own_slots
      b = self.class
      b.arr(b.arr(":0\r\n", ":16383\r\n", b.arr(b.bulk("127.0.0.1"), ":#{@port}\r\n")))
    end

    def url
      "redis://127.0.0.1:#{@port}/0"
    end

    def stop
      @thread.kill
      @server.close
      @lock.synchronize { @conns.each { |c| c.close rescue nil } }
    end

    # Closes every connection made so far, as a Redis that restarts would.
    def drop_all
      @lock.synchronize do
        @conns.each { |c| c.close rescue nil }
        @conns.clear
      end
    end

    def accept_loop
      loop do
        conn = @server.accept
        @lock.synchronize do
          @conns << conn
          @accepted += 1
        end
        Thread.new(conn) { |c| serve(c) }
      end
    rescue IOError, SystemCallError
      nil
    end

    def read_command(conn)
      line = conn.gets("\r\n") or return nil
      raise "inline commands are not spoken here: #{line.inspect}" unless line.start_with?("*")

      Array.new(line[1..].to_i) do
        len = conn.gets("\r\n")[1..].to_i
        arg = conn.read(len + 2)
        arg[0, len]
      end
    end

    def serve(conn)
      while (argv = read_command(conn))
        name = argv[0].upcase
        name = "#{name} #{argv[1].upcase}" if %w[CLUSTER SCRIPT].include?(name)
        @seen << argv
        reply = @on.key?(name) ? @on[name].call(conn, argv) : default(conn, name, argv)
        next if reply == :silent

        conn.write(reply)
      end
    rescue IOError, SystemCallError
      nil
    ensure
      conn.close rescue nil
    end

    def default(conn, name, argv)
      b = self.class
      case name
      when "INFO" then b.bulk("# Cluster\r\ncluster_enabled:1\r\n")
      when "CLUSTER SLOTS" then @slots || own_slots
      when "SCRIPT LOAD" then b.bulk("0" * 40)
      when "SSUBSCRIBE", "SUBSCRIBE"
        @subscribers << [conn, argv[1]]
        b.arr(b.bulk(argv[0].downcase), b.bulk(argv[1]), ":1\r\n")
      when "SUNSUBSCRIBE", "UNSUBSCRIBE" then b.arr(b.bulk(argv[0].downcase), b.bulk(argv[1]), ":0\r\n")
      when "SET", "AUTH", "SELECT" then "+OK\r\n"
      when "MGET" then b.arr(b.bulk("e" * 16), b.bulk("0"))
      when "ZRANGE" then "*0\r\n"
      when "PING" then "+PONG\r\n"
      else ":1\r\n"
      end
    end
  end

  def hostile(**kw)
    fake = HostileRedis.new(**kw)
    yield fake
  ensure
    fake&.stop
  end

  def logged_server(fake, **opts)
    log = StringIO.new
    server = BackboneSync::Server.new(host: "127.0.0.1", port: 0, timeout: 5, secret: shared_secret,
                                      redis: fake.url, logger: Logger.new(log), **opts).start
    yield server, log
  ensure
    stop_bounded(server, within: 10) if server
  end

  # The node still serves its own clients: a handshake over HTTP works.
  def serves?(server)
    BackboneSyncSpec::BayeuxHTTP::Session.new(server.url).handshake!
    true
  end

  def fds
    Dir.children("/proc/self/fd").size
  end

  def rss_kb
    File.read("/proc/self/status")[/VmRSS:\s+(\d+)/, 1].to_i
  end
  describe "CLUSTER SLOTS that lies" do
    b = HostileRedis
    node = ->(host, port) { b.arr(b.bulk(host), ":#{port}\r\n") }
    variants = {
      "an empty array" => ->(_f) { "*0\r\n" },
      "a range with from > to" => ->(f) { b.arr(b.arr(":16383\r\n", ":0\r\n", node.("127.0.0.1", f.port))) },
      "negative slots" => ->(f) { b.arr(b.arr(":-5\r\n", ":-1\r\n", node.("127.0.0.1", f.port))) },
      "slots past 16383" => ->(f) { b.arr(b.arr(":16384\r\n", ":99999\r\n", node.("127.0.0.1", f.port))) },
      "elements that are not arrays" => ->(_f) { b.arr(":1\r\n", b.bulk("x"), "$-1\r\n", "-ERR no\r\n") },
      "a primary that is not an array" => ->(_f) { b.arr(b.arr(":0\r\n", ":16383\r\n", ":7\r\n")) },
      "a primary with a 200-byte host" => ->(f) { b.arr(b.arr(":0\r\n", ":16383\r\n", node.("h" * 200, f.port))) },
      "a primary on port 0" => ->(_f) { b.arr(b.arr(":0\r\n", ":16383\r\n", node.("127.0.0.1", 0))) },
      "a primary on port 70000" => ->(_f) { b.arr(b.arr(":0\r\n", ":16383\r\n", node.("127.0.0.1", 70_000))) },
      "a primary on port -1" => ->(_f) { b.arr(b.arr(":0\r\n", ":16383\r\n", node.("127.0.0.1", -1))) },
      "a host with a NUL byte" => ->(f) { b.arr(b.arr(":0\r\n", ":16383\r\n", node.("127.0.0.1\0evil", f.port))) },
      "300 distinct primaries" => lambda do |_f|
        b.arr(*Array.new(300) { |k| b.arr(":#{k * 54}\r\n", ":#{(k * 54) + 53}\r\n", node.("127.0.0.#{(k % 200) + 2}", 1000 + k)) })
      end,
      "arrays nested 20 deep" => ->(_f) { ("*1\r\n" * 20) + ":1\r\n" },
      "an array of 2^31 elements, never sent" => ->(_f) { "*2147483647\r\n" },
      "a 100 MB bulk string announced but not sent" => ->(_f) { "$104857600\r\nabc" },
      "a reply that never comes" => ->(_f) { :silent },
    }
    # What the log must say, where the generic "unreachable" is not enough.
    reasons = {
      "a primary with a 200-byte host" => /host is too long/,
      "a primary on port 0" => /port out of 1\.\.65535/,
      "a primary on port 70000" => /port out of 1\.\.65535/,
      "a primary on port -1" => /port out of 1\.\.65535/,
      "a host with a NUL byte" => /holds a NUL/,
      "a primary that is not an array" => /not \[host, port\]/,
      "an array of 2^31 elements, never sent" => /CLUSTER SLOTS failed: Out of memory/,
      "arrays nested 20 deep" => /nested/,
      "a reply that never comes" => /CLUSTER SLOTS failed/,
    }
    variants.each do |what, reply|
      it "with #{what}: keeps serving, logs why, stops in time" do
        fake = nil
        on = { "CLUSTER SLOTS" => ->(_c, _a) { reply.(fake) } }
        hostile(on: on) do |f|
          fake = f
          logged_server(f) do |server, log|
            eventually(timeout: 4, what: "a log line saying Redis is unreachable") { log.string.include?("unreachable") }
            expect(log.string).to match(reasons[what]) if reasons[what]
            expect(serves?(server)).to be(true)
            expect(server.stats[:backplane_up]).to eq(0)
            started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
            stop_bounded(server, within: 10)
            # a connection in the middle of a 2 s timeout may finish it first
            expect(Process.clock_gettime(Process::CLOCK_MONOTONIC) - started).to be < 3
          end
        end
      end
    end
  end
  # The node's `sub` connection to the fake, once it SSUBSCRIBEd to the
  # pub/sub channel of `channel`.
  def subscription_of(fake, channel, within: 5)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + within
    loop do
      left = deadline - Process.clock_gettime(Process::CLOCK_MONOTONIC)
      raise "the node never subscribed to #{channel}" if left <= 0

      conn, name = fake.subscribers.pop(timeout: left)
      return [conn, name] if name&.end_with?("ch:#{channel}")
    end
  end

  def smessage(conn, name, payload)
    b = HostileRedis
    conn.write(b.arr(b.bulk("smessage"), b.bulk(name), b.bulk(payload)))
  end

  def frame(channel, data, offset, epoch)
    JSON.generate([{ channel: channel, data: data, ext: { offset: offset, epoch: epoch } }])
  end

  it "refuses a cluster older than Redis 7 (no sharded pub/sub), saying so" do
    info = ->(_c, _a) { HostileRedis.bulk("# Server\r\nredis_version:6.2.14\r\n# Cluster\r\ncluster_enabled:1\r\n") }
    hostile(on: { "INFO" => info }) do |fake|
      logged_server(fake) do |server, log|
        eventually(timeout: 4, what: "the log line") { log.string.include?("unreachable") }
        expect(log.string).to include("needs Redis 7 or later").and include("runs 6.2.14")
        expect(fake.seen.size.times.map { fake.seen.pop }.map(&:first)).not_to include("SSUBSCRIBE", "EVALSHA")
        expect(server.stats[:backplane_up]).to eq(0)
      end
    end
  end

  describe "smessages that lie" do
    it "hands a subscribed client only the well-formed messages of its channel" do
      hostile do |fake|
        logged_server(fake) do |server, log|
          eventually(timeout: 5, what: "the node connected to the fake") { server.stats[:backplane_up] == 1 }
          http = BackboneSyncSpec::BayeuxHTTP::Session.new(server.url)
          http.handshake!
          http.subscribe!("/a")
          conn, name = subscription_of(fake, "/a")
          ep = "e" * 16
          # Each its own offset: the node drops a copy of the message it
          # handed up last (same channel, same offset), which must not hide
          # what is checked here.
          bad = [
            ->(_k) { "no newline at all" },
            ->(k) { "/a\n#{k}\n#{ep}" },                                           # no frame
            ->(k) { "/a\nx#{k}\n#{ep}\n#{frame('/a', 'bad offset', k, ep)}" },
            ->(k) { "/a\n\n#{ep}\n#{frame('/a', 'empty offset', k, ep)}" },
            ->(k) { "/a\n-#{k}\n#{ep}\n#{frame('/a', 'negative offset', k, ep)}" },
            ->(k) { "/a\n #{k}\n#{ep}\n#{frame('/a', 'offset with a space', k, ep)}" },
            ->(k) { "/a\n0\n#{ep}\n#{frame('/a', 'offset 0', k, ep)}" },
            ->(k) { "/a\n#{k}99999999999999999999999\n#{ep}\n#{frame('/a', 'offset past 2^64', k, ep)}" },
            ->(k) { "/a\n#{k}\n#{'9' * 10_000}\n#{frame('/a', 'huge epoch', k, ep)}" },
            ->(k) { "#{'/a' * 5000}\n#{k}\n#{ep}\n#{frame('/a', 'huge channel', k, ep)}" },
            ->(k) { "/a\0x\n#{k}\n#{ep}\n#{frame('/a', 'NUL channel', k, ep)}" },
            ->(k) { "/a\n#{k}\n#{ep}\n[{\"channel\":\"/a\",\"data\":\"\xff\xfe\"}]".b },
            ->(k) { "/a\n#{k}\n#{ep}\nthis is not JSON\"}]" },
            ->(k) { "/a\n#{k}\n#{ep}\n" },
            ->(k) { "/b\n#{k}\n#{ep}\n#{frame('/b', 'not subscribed', k, ep)}" },
          ]
          bad.each_with_index { |payload, k| smessage(conn, name, payload.(k + 1)) }
          smessage(conn, name, "/a\n50\n#{ep}\n#{frame('/a', 'good', 50, ep)}")
          smessage(conn, name, "/a\n51\n#{ep}\n#{frame('/a', 'good too', 51, ep)}")
          raw = []
          got = []
          deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 3
          while Process.clock_gettime(Process::CLOCK_MONOTONIC) < deadline && got.size < 2
            res = BackboneSyncSpec::BayeuxHTTP.post_json(http.url, [{ channel: "/meta/connect", clientId: http.client_id,
                                                                       connectionType: "long-polling", id: http.next_id }],
                                                         timeout: 3)
            raw << res.body
            got.concat(JSON.parse(res.body).reject { |m| m.key?("successful") })
          end
          expect(got.map { |m| m["data"] }).to eq(["good", "good too"]), "got #{raw.inspect}"
          expect(serves?(server)).to be(true)
          expect(log.string).not_to include("resync")
        end
      end
    end
  end

  describe "epochs that are not epochs" do
    # An epoch goes into JSON as it is ("ext":{"epoch":"..."}): one with a
    # quote would break every reply that names it.
    it "never hands a client JSON broken by an epoch from Redis" do
      b = HostileRedis
      hostile(on: { "MGET" => ->(_c, _a) { b.arr(b.bulk("ab\"}]x\\"), b.bulk("3")) } }) do |fake|
        logged_server(fake, history_size: 10) do |server, _log|
          eventually(timeout: 5, what: "the node connected to the fake") { server.stats[:backplane_up] == 1 }
          http = BackboneSyncSpec::BayeuxHTTP::Session.new(server.url)
          http.handshake!
          res = BackboneSyncSpec::BayeuxHTTP.post_json(server.url, [{ channel: "/meta/subscribe", clientId: http.client_id,
                                                                       subscription: "/ep", id: "s1" }], timeout: 5)
          expect { JSON.parse(res.body) }.not_to raise_error, "the subscribe reply: #{res.body}"
          conn, name = subscription_of(fake, "/ep")
          smessage(conn, name, "/ep\n4\nq\"}]\n#{frame('/ep', 'bad epoch', 4, 'q')}")
          smessage(conn, name, "/ep\n5\n#{'e' * 16}\n#{frame('/ep', 'good', 5, 'e' * 16)}")
          other = BackboneSyncSpec::BayeuxHTTP::Session.new(server.url)
          other.handshake!
          res = BackboneSyncSpec::BayeuxHTTP.post_json(server.url, [{ channel: "/meta/subscribe", clientId: other.client_id,
                                                                       subscription: "/ep", id: "s2" }], timeout: 5)
          expect { JSON.parse(res.body) }.not_to raise_error, "the second subscribe reply: #{res.body}"
          got = http.receive(1, within: 3)
          expect(got.map { |m| m["data"] }).to eq(["good"])
        end
      end
    end
  end

  describe "a frame shaped [{...}] that is not JSON" do
    it "is not handed to a client" do
      hostile do |fake|
        logged_server(fake) do |server, _log|
          eventually(timeout: 5, what: "the node connected to the fake") { server.stats[:backplane_up] == 1 }
          http = BackboneSyncSpec::BayeuxHTTP::Session.new(server.url)
          http.handshake!
          http.subscribe!("/j")
          conn, name = subscription_of(fake, "/j")
          ep = "e" * 16
          smessage(conn, name, "/j\n1\n#{ep}\n[{\"channel\":\"/j\",\"data\":}]")
          smessage(conn, name, "/j\n2\n#{ep}\n#{frame('/j', 'good', 2, ep)}")
          # Not fixed: only the shape and UTF-8 are checked; a full JSON
          # check of each frame from Redis would cost a parse per message.
          pending "a frame from Redis is not checked to be JSON: it breaks the reply it is spliced into"
          res = BackboneSyncSpec::BayeuxHTTP.post_json(server.url, [{ channel: "/meta/connect", clientId: http.client_id,
                                                                       connectionType: "long-polling", id: "c1" }],
                                                       timeout: 5)
          expect { JSON.parse(res.body) }.not_to raise_error
        end
      end
    end
  end

  describe "history replies that lie" do
    it "survives a ZRANGE whose scores are not strings" do
      b = HostileRedis
      zrange = ->(_c, _a) { b.arr(b.bulk(frame("/h", "x", 1, "e" * 16)), ":1\r\n", b.bulk("y"), "$-1\r\n") }
      hostile(on: { "ZRANGE" => zrange }) do |fake|
        logged_server(fake, history_size: 10) do |server, _log|
          eventually(timeout: 5, what: "the node connected to the fake") { server.stats[:backplane_up] == 1 }
          http = BackboneSyncSpec::BayeuxHTTP::Session.new(server.url)
          http.handshake!
          # A recovering subscribe makes the node load the history.
          http.subscribe("/h", ext: { since: { epoch: "e" * 16, offset: 0 } })
          expect(Array.new(fake.seen.size) { fake.seen.pop.first.upcase }).to include("ZRANGE")
          expect(serves?(server)).to be(true)
        end
      end
    end
  end
  describe "a Redis that answers one byte at a time" do
    it "does not hold server.stop past a bound" do
      trickle = lambda do |conn, _argv|
        conn.write("$100000\r\n")
        Thread.new do
          loop do
            conn.write("x")
            sleep 0.5
          end
        rescue IOError, SystemCallError
          nil
        end
        :silent
      end
      # In a child: without a bound, server.stop would hold this process
      # (a C call that Timeout cannot interrupt) and the whole run with it.
      child = fork do
        hostile(on: { "CLUSTER SLOTS" => trickle }) do |fake|
          logged_server(fake) do |server, _log|
            eventually(timeout: 5, what: "the node asked for the map") do
              Array.new(fake.seen.size) { fake.seen.pop.first.upcase }.include?("CLUSTER")
            end
            sleep 2.5 # past hiredis's 2 s timeout: only the trickle keeps the read alive
            serves?(server) or exit!(3)
            started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
            server.stop
            exit!(Process.clock_gettime(Process::CLOCK_MONOTONIC) - started < 3 ? 0 : 4)
          end
        end
        exit!(5)
      end
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 20
      status = nil
      until (status = Process.wait2(child, Process::WNOHANG)&.last)
        if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
          Process.kill(:KILL, child)
          Process.wait(child)
          break
        end
        sleep 0.1
      end
      expect(status&.exitstatus).to eq(0), "the child #{status ? "exited #{status.exitstatus}" : 'was still in server.stop after 20 s'}"
    end
  end

  describe "many reconnect cycles" do
    it "leaks neither descriptors nor memory" do
      b = HostileRedis
      cycle = 0
      script_load = lambda do |_c, _a|
        cycle += 1
        cycle.odd? ? "-ERR no scripts today\r\n" : b.bulk("0" * 40)
      end
      hostile(on: { "SCRIPT LOAD" => script_load }) do |fake|
        # Up, then dropped as a restarting Redis would drop it.
        dropper = Thread.new do
          loop do
            sleep 0.3
            fake.drop_all
          end
        end
        run = lambda do |rounds|
          rounds.times do
            logged_server(fake) do |server, _log|
              http = BackboneSyncSpec::BayeuxHTTP::Session.new(server.url)
              http.handshake!
              http.subscribe!("/cyc")
              target = fake.accepted + 10 # five connects of two connections each, or more
              eventually(timeout: 10, what: "five reconnects") { fake.accepted >= target }
            end
          end
        end
        run.(2) # warm up: allocator arenas, lws, Ruby's own
        GC.start
        fds0 = fds
        rss0 = rss_kb
        accepted0 = fake.accepted
        run.(10)
        GC.start
        sleep 0.2
        expect(fake.accepted - accepted0).to be >= 100 # 50 cycles or more
        expect(fds).to be <= fds0 + 2
        expect(rss_kb - rss0).to be < 20_000
      ensure
        dropper&.kill
      end
    end
  end
  # A real Redis Cluster that misbehaves the ordinary ways: a primary stalls,
  # a primary dies and comes back, clients subscribe in a storm.
  describe "on a real Redis Cluster" do
    before(:all) do
      raise "redis-server is not on PATH" unless BackboneSyncSpec::RedisProcess.available?

      require "redis-client"
      require_relative "../support/redis_cluster"
      @cluster = BackboneSyncSpec::RedisCluster.new(primaries: 3, replicas: 0).start
    end

    after(:all) { @cluster&.stop }

    def cluster_node(prefix)
      BackboneSync::Server.new(host: "127.0.0.1", port: 0, timeout: 5, secret: shared_secret,
                               redis: @cluster.urls, redis_prefix: prefix).start
    end

    def primary_of(channel, prefix)
      key = BackboneSync._redis_names(prefix, channel, true).first.first
      @cluster.primary_port(@cluster.call(@cluster.primary_ports.first, "CLUSTER", "KEYSLOT", key))
    end

    def shard_channels(prefix)
      @cluster.primary_ports.flat_map { |port| @cluster.call(port, "PUBSUB", "SHARDCHANNELS", "#{prefix}*") }.sort
    end

    def subscribe_all(http, subscriptions)
      subscriptions.each_slice(50) do |slice|
        replies = http.post(slice.map do |c|
          { channel: "/meta/subscribe", clientId: http.client_id, subscription: c, id: http.next_id }
        end, timeout: 30)
        bad = replies.reject { |r| r["successful"] }
        raise "subscribes refused: #{bad.first(3).inspect}" unless bad.empty?
      end
    end

    def unsubscribe_all(http, subscriptions)
      subscriptions.each_slice(50) do |slice|
        http.post(slice.map do |c|
          { channel: "/meta/unsubscribe", clientId: http.client_id, subscription: c, id: http.next_id }
        end, timeout: 30)
      end
    end

    it "leaves on Redis exactly the shard subscriptions its clients still want after a storm", :load do
      prefix = "storm#{rand(1 << 30)}:"
      node = cluster_node(prefix)
      eventually(timeout: 10, what: "the node on the cluster") { node.stats[:backplane_up] == 1 }
      sessions = Array.new(20) do |i|
        http = BackboneSyncSpec::BayeuxHTTP::Session.new(node.url, timeout: 30)
        http.handshake!
        [http, Array.new(100) { |k| "/st/c#{(i * 100) + k}" }]
      end
      patterns = Array.new(50) { |k| k.even? ? "/st/p#{k}/*" : "/st/p#{k}/**" }
      pat = BackboneSyncSpec::BayeuxHTTP::Session.new(node.url, timeout: 30)
      pat.handshake!
      sessions.each { |http, channels| subscribe_all(http, channels) }
      subscribe_all(pat, patterns)
      eventually(timeout: 20, what: "every subscription on Redis") { shard_channels(prefix).size == 2000 + (50 * 64) }
      # All but a few go: unsubscribed one by one, or with their client.
      keep = sessions[0][1].first(5)
      sessions.each_with_index do |(http, channels), i|
        if i.zero? then unsubscribe_all(http, channels - keep)
        elsif i.odd? then http.disconnect
        else unsubscribe_all(http, channels)
        end
      end
      unsubscribe_all(pat, patterns.drop(2))
      expected_channels = keep.map { |c| BackboneSync._redis_names(prefix, c, true).last + "ch:#{c}" }
      eventually(timeout: 20, what: "only what is still wanted on Redis") { shard_channels(prefix).size == 5 + (2 * 64) }
      got = shard_channels(prefix)
      expect(got.grep(/ch:/)).to match_array(expected_channels)
      expect(got.grep(/kids:/).size).to eq(64)
      expect(got.grep(/kids:/).all? { |n| n.end_with?("kids:/st/p0") }).to be(true)
      expect(got.grep(/tree:/).size).to eq(64)
      expect(got.grep(/tree:/).all? { |n| n.end_with?("tree:/st/p1") }).to be(true)
      expect(node.stats[:backplane_up]).to eq(1)
    ensure
      stop_bounded(node) if node
    end
    # A stall (as DEBUG SLEEP 3 would make one: the test cluster does not
    # enable DEBUG, so the primary is stopped with SIGSTOP for 3 s) outlasts
    # hiredis's 2 s timeout while a publish is in flight.
    it "delivers each publish once when the shard of its channel stalls for 3 s" do
      prefix = "stall#{rand(1 << 30)}:"
      publisher = cluster_node(prefix)
      subscriber = cluster_node(prefix)
      eventually(timeout: 10, what: "both nodes on the cluster") do
        [publisher, subscriber].all? { |n| n.stats[:backplane_up] == 1 }
      end
      channel = "/stall/c"
      http = BackboneSyncSpec::BayeuxHTTP::Session.new(subscriber.url, timeout: 30)
      http.handshake!
      http.subscribe!(channel)
      port = primary_of(channel, prefix)
      pid = @cluster.nodes.find { |n| n.port == port }.instance_variable_get(:@pid)
      3.times { |i| publisher.publish(channel, "before #{i}") }
      expect(http.receive(3, within: 10).size).to eq(3)
      Process.kill(:STOP, pid)
      begin
        sleep 0.2
        3.times { |i| publisher.publish(channel, "during #{i}") }
        sleep 3
      ensure
        Process.kill(:CONT, pid)
      end
      3.times { |i| publisher.publish(channel, "after #{i}") }
      # The EVALSHAs that timed out were run by the shard when it woke; the
      # node, which never read their answers, sends them again on its new
      # connection, and publish.lua drops each second copy by the event id
      # the node gave it.
      got = http.receive(20, within: 12).map { |m| [m["data"], m.dig("ext", "offset")] }
      counts = got.map(&:first).tally
      expect(counts.values.uniq).to eq([1]), "delivered: #{got.inspect}"
      expect(counts.keys).to match_array(%w[during\ 0 during\ 1 during\ 2 after\ 0 after\ 1 after\ 2])
    ensure
      [publisher, subscriber].each { |n| stop_bounded(n) if n }
    end

    it "comes back whole after primaries are killed and restarted, again and again, under publishes" do
      prefix = "kill#{rand(1 << 30)}:"
      node = cluster_node(prefix)
      eventually(timeout: 10, what: "the node on the cluster") { node.stats[:backplane_up] == 1 }
      channels = Array.new(12) { |k| "/kr/c#{k}" }
      fds0 = nil
      4.times do |round|
        port = @cluster.primary_ports[round % 3]
        publishing = Thread.new do
          40.times do |i|
            node.publish(channels[i % channels.size], "r#{round} #{i}")
            sleep 0.02
          end
        end
        @cluster.kill(port)
        sleep 0.5
        @cluster.restart(port)
        publishing.join
        @cluster.wait_until_ok
        eventually(timeout: 30, what: "the node whole again, its held publishes out (round #{round})") do
          node.stats[:backplane_up] == 1 && node.stats[:backplane_queued].zero?
        end
        fds0 ||= fds
      end
      expect(fds).to be <= fds0 + 4
      expect(node.stats[:backplane_refused]).to eq(0)
      # Every shard carries messages again, to a client that came after.
      http = BackboneSyncSpec::BayeuxHTTP::Session.new(node.url, timeout: 30)
      http.handshake!
      channels.each { |c| http.subscribe!(c) }
      channels.each { |c| node.publish(c, "final #{c}") }
      got = http.receive(channels.size, within: 15)
      expect(got.map { |m| m["data"] }).to match_array(channels.map { |c| "final #{c}" })
      expect(channels.map { |c| primary_of(c, prefix) }.uniq.size).to eq(3)
    ensure
      stop_bounded(node) if node
    end
  end
end
