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
      @lock.synchronize { @conns.each { |c| c.close rescue nil } } # rubocop:disable Style/RescueModifier
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
      conn.close rescue nil # rubocop:disable Style/RescueModifier
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
end
