# frozen_string_literal: true

require "spec_helper"
require "redis-client"
require "stringio"
require "logger"

# Several servers over one real Redis: each message reaches every subscriber
# on every node exactly once, with the same offsets everywhere; a client can
# recover on another node; Redis going away degrades and recovers.
RSpec.describe "the Redis backplane" do
  before(:all) do
    # A missing redis-server fails these examples: skipping them would report
    # a green run that never touched the backplane.
    unless BackboneSyncSpec::RedisProcess.available?
      raise "redis-server is not on PATH: the backplane specs need a real Redis (bin/setup installs redis-server)"
    end

    @redis = BackboneSyncSpec::RedisProcess.new(BackboneSyncSpec::RedisProcess.free_port).start
  end

  after(:all) { @redis&.stop }

  # Each example gets its own key prefix, so examples never see each other's history.
  def with_nodes(count, **opts)
    prefix = "spec#{rand(1 << 30)}:"
    nodes = Array.new(count) do
      BackboneSync::Server.new(host: "127.0.0.1", port: 0, timeout: 5, secret: shared_secret,
                               redis: @redis.url, redis_prefix: prefix, **opts).start
    end
    eventually(what: "every node connected to Redis") { nodes.all? { |n| n.stats[:backplane_up] == 1 } }
    yield nodes, prefix
  ensure
    nodes&.each { |n| stop_bounded(n) }
  end

  def offsets(deliveries)
    deliveries.map { |m| m.dig("ext", "offset") }
  end

  it "keeps the servers' history_size when a Ruby publisher with its own default publishes" do
    with_nodes(1, history_size: 300) do |_nodes, prefix|
      redis = BackboneSync::RedisPublisher.new(@redis.url, prefix: prefix) # history_size: 100
      250.times { |i| redis.publish("/bp/keep", i) }
      redis.close
      raw = RedisClient.new(url: @redis.url)
      # 100 would mean the publisher trimmed the servers' history to its own size.
      expect(raw.call("ZCARD", "#{prefix}history:/bp/keep")).to eq(250)
      expect(raw.call("HGET", "#{prefix}settings", "history_size")).to eq("300")
      raw.close
    end
  end

  # The next frame that carries a delivery on +channel+, as the bytes sent.
  def raw_delivery(ws, channel)
    loop do
      text = ws.read_message(timeout: 10)
      return text if Array(JSON.parse(text)).any? { |m| m["channel"] == channel && m.key?("data") }
    end
  end

  it "gives a Ruby publisher's message the bytes the C server gives its own, offset and epoch aside" do
    prefix = "spec#{rand(1 << 30)}:"
    # A long /meta/connect timeout: no connect reply may share a frame with the deliveries.
    node = BackboneSync::Server.new(host: "127.0.0.1", port: 0, timeout: 60, redis: @redis.url,
                                    redis_prefix: prefix).start
    plain = BackboneSync::Server.new(host: "127.0.0.1", port: 0, timeout: 60).start # no Redis: the engine's own path
    eventually(what: "the node connected to Redis") { node.stats[:backplane_up] == 1 }
    channel = "/bp/same-bytes_~!"
    # What one JSON encoder and another would write differently.
    data = { "s" => "Ada \u00e9 \u2028 \"q\" \\ </script> \u{1F600}", "n" => [1, 2.5, 1e-7, nil, true, 2**70],
             "t" => Time.utc(2024, 1, 2, 3, 4, 5.678r), :sym => :val }
    node_ws, = ws_session(node.url, [channel])
    plain_ws, = ws_session(plain.url, [channel])
    publisher = BackboneSync::RedisPublisher.new(@redis.url, prefix: prefix)
    begin
      publisher.publish(channel, data)
      from_ruby = raw_delivery(node_ws, channel)
      node.publish(channel, data)
      from_node = raw_delivery(node_ws, channel)
      plain.publish(channel, data)
      from_plain = raw_delivery(plain_ws, channel)

      tail = /"offset":(\d+),"epoch":"([0-9a-z]{16})"\}\}\]\z/
      [from_ruby, from_node, from_plain].each { |text| expect(text).to match(tail) }
      expect(from_ruby.sub(tail, "")).to eq(from_plain.sub(tail, ""))
      expect(from_ruby.sub(tail, "")).to eq(from_node.sub(tail, ""))
      expect(from_ruby[tail, 1]).to eq("1")
      expect(from_node[tail, 1]).to eq("2")
      expect(from_ruby[tail, 2]).to eq(from_node[tail, 2]) # one epoch in Redis for the channel
    ensure
      publisher.close
      node_ws&.close
      plain_ws&.close
      stop_bounded(node)
      stop_bounded(plain)
    end
  end

  it "drops a second publish of an event id, from Ruby, a node or HTTP, while Redis keeps the first" do
    with_nodes(2) do |nodes, prefix|
      ws, = ws_session(nodes[1].url, ["/bp/once"])
      redis = BackboneSync::RedisPublisher.new(@redis.url, prefix: prefix)
      http = BackboneSync::Publisher.new(nodes[0].url, secret: shared_secret)
      begin
        first = redis.publish("/bp/once", "a", event_id: "row-1")
        expect(redis.publish("/bp/once", "a again", event_id: "row-1")).to eq(first) # the first one's offset
        nodes[0].publish("/bp/once", "a from a node", event_id: "row-1")
        http.publish("/bp/once", "a over HTTP", event_id: "row-1")
        http.publish("/bp/once", "b", event_id: "row-2")
        nodes[0].publish("/bp/once", "b again", event_id: "row-2") # the same queue into Redis: after "b"
        got = deliveries_before_control(nodes[0], ws, "/bp/once")
        expect(got.map { |m| [m["data"], m.dig("ext", "event_id"), m.dig("ext", "offset")] })
          .to eq([["a", "row-1", 1], ["b", "row-2", 2]])
        raw = RedisClient.new(url: @redis.url)
        # Beside the publishers' ids, those a node gives a publish with none
        # (the control message): "bs-" and an epoch-like id.
        ids = raw.call("ZRANGE", "#{prefix}events:/bp/once", 0, -1)
        expect(ids.reject { |id| id.match?(/\Abs-[0-9a-z]{16}\z/) }).to eq(%w[row-1 row-2])
        raw.close
      ensure
        redis.close
        http.close
        ws.close
      end
    end
  end

  it "forgets an event id when its message leaves the history in Redis" do
    with_nodes(1, history_size: 2) do |nodes, prefix|
      redis = BackboneSync::RedisPublisher.new(@redis.url, prefix: prefix)
      begin
        expect(redis.publish("/bp/trim", 1, event_id: "x")).to eq(1)
        expect(redis.publish("/bp/trim", 2)).to eq(2)
        expect(redis.publish("/bp/trim", 3, event_id: "x")).to eq(1) # still kept
        expect(redis.publish("/bp/trim", 4)).to eq(3)                # "x" leaves
        raw = RedisClient.new(url: @redis.url)
        # The ids of the two kept messages (2 and 3, published with none:
        # the publisher gave them its own), and no other.
        kept = raw.call("ZRANGE", "#{prefix}events:/bp/trim", 0, -1, "WITHSCORES")
        expect(kept.map(&:last).map(&:to_i)).to eq([2, 3])
        expect(kept.map(&:first)).to all(match(/\Abs-[0-9a-z]{16}\z/))
        raw.close
        expect(redis.publish("/bp/trim", 5, event_id: "x")).to eq(4)
      ensure
        redis.close
      end
    end
  end

  it "delivers every publish, from any node, Ruby or HTTP, once to every subscriber on every node" do
    with_nodes(3) do |nodes, prefix|
      ws, = ws_session(nodes[0].url, ["/bp/all"])
      lp = BackboneSyncSpec::BayeuxHTTP::Session.new(nodes[1].url)
      lp.handshake!
      lp.subscribe!("/bp/all")
      wild, = ws_session(nodes[2].url, ["/bp/*"])
      begin
        nodes.each_with_index { |n, i| n.publish("/bp/all", "node #{i}") }
        BackboneSync::Publisher.new(nodes[1].url, secret: shared_secret).publish("/bp/all", "http")
        redis = BackboneSync::RedisPublisher.new(@redis.url, prefix: prefix)
        redis.publish("/bp/all", "ruby via redis")
        redis.close
        # Each node has its own queue into Redis: the marker goes last once all are in.
        eventually(what: "every node's publishes in Redis") { nodes.all? { |n| n.stats[:backplane_queued].zero? } }
        nodes[0].publish("/bp/all", { "control" => "end" })
        expected = ["node 0", "node 1", "node 2", "http", "ruby via redis"]

        from_ws = deliveries_until_marker(ws, "end", 10)
        from_wild = deliveries_until_marker(wild, "end", 10)
        from_lp = lp.receive(6, within: 10).reject { |m| m["data"] == { "control" => "end" } }
        [from_ws, from_wild, from_lp].each do |got|
          expect(got.map { |m| m["data"] }).to match_array(expected)
          expect(offsets(got)).to eq(offsets(got).sort) # in offset order
          expect(offsets(got).uniq.size).to eq(5)       # nothing twice
        end
        # One numbering, the same on every node.
        expect(offsets(from_ws)).to eq(offsets(from_lp))
        expect(offsets(from_ws)).to eq(offsets(from_wild))
        expect(offsets(from_ws)).to eq((1..5).to_a)
        expect(from_ws.map { |m| m.dig("ext", "epoch") }.uniq.size).to eq(1)
      ensure
        ws.close
        wild.close
      end
    end
  end

  # Interest: a node receives a channel's messages only while it has a
  # subscriber to it (or to a pattern matching it).
  it "sends each node only the messages of the channels its clients subscribe to" do
    with_nodes(3) do |nodes, prefix|
      sessions = nodes.each_with_index.map do |node, i|
        http = BackboneSyncSpec::BayeuxHTTP::Session.new(node.url)
        http.handshake!
        100.times { |k| http.subscribe!("/int/c#{(k * 3) + i}") } # 300 channels, each on one node
        http
      end
      redis = BackboneSync::RedisPublisher.new(@redis.url, prefix: prefix)
      300.times { |k| redis.publish("/int/c#{k}", k) }
      redis.close
      got = sessions.map { |http| http.receive(100, within: 20) }
      expect(got.map(&:size)).to eq([100, 100, 100])
      got.each_with_index { |msgs, i| expect(msgs.map { |m| m["data"] % 3 }.uniq).to eq([i]) }
      # A third of the engine's messages each (before: all 300 on every node).
      expect(nodes.map { |n| n.stats[:backplane_received] }).to eq([100, 100, 100])
      sessions.each(&:disconnect)
    end
  end

  it "stops sending a node a channel once its last subscriber leaves, and resumes on the next" do
    with_nodes(2) do |nodes, prefix|
      node, other = nodes
      raw = RedisClient.new(url: @redis.url)
      listeners = -> { raw.call("PUBSUB", "NUMSUB", "#{prefix}ch:/int/leave")[1] }
      http = BackboneSyncSpec::BayeuxHTTP::Session.new(node.url)
      http.handshake!
      http.subscribe!("/int/leave")
      other.publish("/int/leave", 1)
      expect(http.receive(1).map { |m| m["data"] }).to eq([1])
      expect(listeners.call).to eq(1)
      http.unsubscribe("/int/leave")
      # The node drops its Redis subscription after it answers the
      # unsubscribe; the five below test routing, not that race.
      eventually(what: "the node's UNSUBSCRIBE in Redis") { listeners.call.zero? }
      received = node.stats[:backplane_received]
      5.times { |i| other.publish("/int/leave", 10 + i) }
      eventually(what: "the publishes in Redis") { other.stats[:backplane_queued].zero? }
      control, = ws_session(node.url, ["/int/control"])
      other.publish("/int/control", "end") # reaches the node after the five, if they were sent to it
      control.wait_for { |m| m["channel"] == "/int/control" && m.key?("data") }
      control.close
      expect(node.stats[:backplane_received] - received).to eq(1) # the control message only
      http.subscribe!("/int/leave")
      other.publish("/int/leave", 2)
      expect(http.receive(1).map { |m| m["data"] }).to eq([2])
      expect(listeners.call).to eq(1)
    ensure
      raw&.close
    end
  end

  it "misses nothing published right after a subscribe to a channel or pattern new to the node" do
    with_nodes(1, history_size: 0) do |nodes, prefix|
      redis = BackboneSync::RedisPublisher.new(@redis.url, prefix: prefix)
      http = BackboneSyncSpec::BayeuxHTTP::Session.new(nodes[0].url)
      http.handshake!
      # Each subscribe waits behind a burst of the node's own publishes to
      # Redis; the publish leaves straight for Redis once it is answered.
      10.times do |k|
        2000.times { nodes[0].publish("/gap/busy", k) }
        name = k.even? ? "/gap/c#{k}" : "/gap/p#{k}/*"
        http.subscribe!(name)
        redis.publish(k.even? ? name : "/gap/p#{k}/x", k)
      end
      expect(http.receive(10, within: 30).map { |m| m["data"] }.sort).to eq((0...10).to_a)
      redis.close
    end
  end

  it "delivers a message once to each subscriber when a node's channel and patterns all match it" do
    with_nodes(2) do |nodes, _prefix|
      exact, = ws_session(nodes[0].url, ["/ov/x"])
      star, = ws_session(nodes[0].url, ["/ov/*"])
      glob, = ws_session(nodes[0].url, ["/ov/**"])
      begin
        nodes[1].publish("/ov/x", "once")
        nodes[1].publish("/ov/x/deep", "deep")   # /ov/** only
        nodes[1].publish("/other", "elsewhere")  # nobody on nodes[0]
        got = deliveries_before_control(nodes[1], [exact, star, glob], "/ov/x", timeout: 10)
        expect(got.map { |msgs| msgs.map { |m| m["data"] } }).to eq([["once"], ["once"], %w[once deep]])
        # "once", "deep" and the control message: each once, and nothing else
        expect(nodes[0].stats[:backplane_received]).to eq(3)
      ensure
        [exact, star, glob].each(&:close)
      end
    end
  end

  it "holds Redis subscriptions only while a client wants them: a flood of channels goes with its client" do
    with_nodes(1, max_subscriptions: 5000) do |nodes, prefix|
      raw = RedisClient.new(url: @redis.url)
      ours = -> { raw.call("PUBSUB", "CHANNELS", "#{prefix}*").size + raw.call("PUBSUB", "NUMPAT") }
      http = BackboneSyncSpec::BayeuxHTTP::Session.new(nodes[0].url)
      http.handshake!
      50.times do |k|
        subs = Array.new(100) { |j| "/flood/c#{(k * 100) + j}" }
        subs[0] = "/flood/p#{k}/*" # some patterns among them
        http.subscribe!(subs)
      end
      eventually(timeout: 20, what: "5,000 subscriptions in Redis") { ours.call == 5000 }
      http.disconnect
      eventually(timeout: 20, what: "none left in Redis") { ours.call.zero? }
      raw.close
    end
  end

  it "recovers a client on a node that stopped receiving its channel meanwhile" do
    with_nodes(2) do |nodes, _prefix|
      node, other = nodes
      http = BackboneSyncSpec::BayeuxHTTP::Session.new(node.url)
      http.handshake!
      http.subscribe!("/int/back")
      other.publish("/int/back", "seen")
      seen = http.receive(1).last
      http.disconnect # the node has no subscriber to /int/back now
      3.times { |i| other.publish("/int/back", "missed #{i}") }
      eventually(what: "the publishes in Redis") { other.stats[:backplane_queued].zero? }
      back = BackboneSyncSpec::BayeuxHTTP::Session.new(node.url)
      back.handshake!
      reply = back.subscribe!("/int/back", ext: { since: { offset: seen.dig("ext", "offset"),
                                                           epoch: seen.dig("ext", "epoch") } })
      expect(reply["ext"]).to include("recovered" => true, "offset" => 4)
      expect(back.receive(3).map { |m| m["data"] }).to eq(["missed 0", "missed 1", "missed 2"])
    end
  end

  it "lets a client of a node that dies recover everything on another node" do
    with_nodes(2) do |nodes, _prefix|
      doomed, survivor = nodes
      http = BackboneSyncSpec::BayeuxHTTP::Session.new(doomed.url)
      http.handshake!
      http.subscribe!("/bp/failover")
      2.times { |i| survivor.publish("/bp/failover", "before #{i}") }
      seen = http.receive(2)
      last = { offset: seen.last.dig("ext", "offset"), epoch: seen.last.dig("ext", "epoch") }
      stop_bounded(doomed)
      3.times { |i| survivor.publish("/bp/failover", "while down #{i}") }

      back = BackboneSyncSpec::BayeuxHTTP::Session.new(survivor.url)
      back.handshake!
      reply = back.subscribe!("/bp/failover", ext: { since: last })
      expect(reply["ext"]).to include("recovered" => true, "epoch" => last[:epoch])
      # The survivor's own publishes come back to it through Redis: it may not
      # have seen all three yet; those it has not come live, after the replay.
      expect(reply["ext"]["offset"]).to be_between(2, 5)
      got = back.receive(3)
      expect(got.map { |m| m["data"] }).to eq(["while down 0", "while down 1", "while down 2"])
      expect(back.receive(1, within: 0.5)).to eq([])
    end
  end

  it "loads a history from a slow Redis without stalling the node, and still recovers" do
    with_nodes(1) do |nodes, prefix|
      nodes[0].publish("/bp/slow", "first")
      3.times { |i| nodes[0].publish("/bp/slow", "missed #{i}") }
      eventually(what: "the publishes to reach Redis") { nodes[0].stats[:backplane_queued].zero? }
      raw = RedisClient.new(url: @redis.url)
      epoch = raw.call("GET", "#{prefix}epoch:/bp/slow")
      late = BackboneSync::Server.new(host: "127.0.0.1", port: 0, timeout: 5, redis: @redis.url,
                                      redis_prefix: prefix).start
      begin
        eventually { late.stats[:backplane_up] == 1 }
        ws, client_id = ws_session(late.url, [])
        # Redis answers nobody for 1.5 s, as a busy or failing-over Redis may.
        busy = "local s = redis.call('TIME') repeat local n = redis.call('TIME') " \
               "until (n[1] - s[1]) * 1000000 + (n[2] - s[2]) > 1500000 return 1"
        sleeper = Thread.new { RedisClient.new(url: @redis.url, read_timeout: 5).call("EVAL", busy, 0) }
        # Busy once a PING of its own waits: poll with a short timeout until one does.
        eventually(what: "Redis to be busy") do
          RedisClient.new(url: @redis.url, timeout: 0.2).call("PING") && false
        rescue RedisClient::TimeoutError, RedisClient::CannotConnectError
          true # no answer within 0.2 s (a new connection's HELLO waits too)
        end
        ws.send_json([{ channel: "/meta/subscribe", clientId: client_id, subscription: "/bp/slow", id: "s",
                        ext: { since: { offset: 1, epoch: epoch } } }])
        # Meanwhile the node answers everyone else: its thread does not wait on Redis.
        answered = monotonic
        BackboneSyncSpec::BayeuxHTTP::Session.new(late.url, timeout: 1).handshake!
        expect(monotonic - answered).to be < 1
        reply = ws.wait_for(timeout: 10) { |m| m["channel"] == "/meta/subscribe" }
        expect(reply["ext"]).to include("recovered" => true, "offset" => 4, "epoch" => epoch)
        expect(ws.wait_for(timeout: 5) { |m| m["data"] == "missed 2" }).to be_truthy
        sleeper.join
      ensure
        ws&.close
        raw&.close
        stop_bounded(late)
      end
    end
  end

  it "lets a node that starts later recover a client from the history kept in Redis" do
    with_nodes(1) do |nodes, prefix|
      http = BackboneSyncSpec::BayeuxHTTP::Session.new(nodes[0].url)
      http.handshake!
      http.subscribe!("/bp/late")
      nodes[0].publish("/bp/late", "seen")
      first = http.receive(1).first
      4.times { |i| nodes[0].publish("/bp/late", "missed #{i}") }
      eventually(what: "the publishes to reach Redis") { nodes[0].stats[:backplane_queued].zero? }

      late = BackboneSync::Server.new(host: "127.0.0.1", port: 0, timeout: 5, redis: @redis.url,
                                      redis_prefix: prefix).start
      begin
        eventually { late.stats[:backplane_up] == 1 }
        back = BackboneSyncSpec::BayeuxHTTP::Session.new(late.url)
        back.handshake!
        reply = back.subscribe!("/bp/late", ext: { since: { offset: first.dig("ext", "offset"),
                                                            epoch: first.dig("ext", "epoch") } })
        expect(reply["ext"]).to include("recovered" => true, "offset" => 5)
        expect(back.receive(4).map { |m| m["data"] }).to eq((0...4).map { |i| "missed #{i}" })
      ensure
        stop_bounded(late)
      end
    end
  end

  it "holds publishes while Redis is away, asks clients to resync when it is back, and recovers" do
    with_nodes(2) do |nodes, _prefix|
      http = BackboneSyncSpec::BayeuxHTTP::Session.new(nodes[1].url)
      http.handshake!
      http.subscribe!("/bp/outage")
      nodes[0].publish("/bp/outage", "before")
      last = http.receive(1).first

      @redis.stop
      eventually(what: "the nodes to notice") { nodes.all? { |n| n.stats[:backplane_up].zero? } }
      3.times { |i| nodes[0].publish("/bp/outage", "held #{i}") } # not lost, not raised
      expect(nodes[0].stats[:backplane_queued]).to eq(3)
      # Local sessions keep working meanwhile.
      other = BackboneSyncSpec::BayeuxHTTP::Session.new(nodes[1].url)
      expect(other.handshake!["successful"]).to be(true)

      @redis.start
      eventually(timeout: 15, what: "the nodes to reconnect") { nodes.all? { |n| n.stats[:backplane_up] == 1 } }
      eventually(what: "the held publishes to go out") { nodes[0].stats[:backplane_queued].zero? }
      # The old session is gone: the client is sent back to handshake...
      reply = http.connect.first
      expect(reply["error"]).to start_with("401:")
      expect(reply["advice"]).to include("reconnect" => "handshake")
      # ...and, since this Redis lost its history, is told to refetch.
      back = BackboneSyncSpec::BayeuxHTTP::Session.new(nodes[1].url)
      back.handshake!
      resub = back.subscribe!("/bp/outage", ext: { since: { offset: last.dig("ext", "offset"),
                                                            epoch: last.dig("ext", "epoch") } })
      expect(resub["ext"]["recovered"]).to be(false)
      nodes[0].publish("/bp/outage", "after")
      expect(back.receive(1).map { |m| m["data"] }).to eq(["after"])
    end
  end

  it "refuses publishes with Overloaded once the held ones reach their bound" do
    with_nodes(1) do |nodes, _prefix|
      @redis.stop
      eventually { nodes[0].stats[:backplane_up].zero? }
      begin
        expect { 10_001.times { |i| nodes[0].publish("/bp/full", i) } }
          .to raise_error(BackboneSync::Overloaded, /publish/)
        expect(nodes[0].stats[:backplane_queued]).to eq(10_000)
        expect(nodes[0].stats[:backplane_refused]).to eq(1)
        # A browser's publish past the bound: the 407 the README promises.
        res = post_json(nodes[0].url, [{ channel: "/bp/full", data: 1, ext: { secret: shared_secret } }])
        expect(res.json.first["error"]).to start_with("407:/bp/full:")
        expect(nodes[0].stats[:backplane_refused]).to eq(2)
      ensure
        @redis.start
      end
      eventually(timeout: 15, what: "the held publishes to go out") { nodes[0].stats[:backplane_queued].zero? }
    end
  end

  it "holds at most 16 MiB of publishes while Redis is away" do
    with_nodes(1, max_message_size: 70_000) do |nodes, _prefix|
      @redis.stop
      eventually { nodes[0].stats[:backplane_up].zero? }
      begin
        big = "x" * 60_000
        expect { 300.times { |i| nodes[0].publish("/bp/big", "#{i}#{big}") } }
          .to raise_error(BackboneSync::Overloaded)
        # 16 MiB / ~60 KB: about 279 held, far from the 10,000-message bound.
        expect(nodes[0].stats[:backplane_queued]).to be_between(270, 280)
      ensure
        @redis.start
      end
      eventually(timeout: 15, what: "the held publishes to go out") { nodes[0].stats[:backplane_queued].zero? }
    end
  end

  it "retries an unreachable Redis with a doubling backoff, and says so in the log" do
    log = StringIO.new
    server = BackboneSync::Server.new(host: "127.0.0.1", port: 0, timeout: 5, logger: Logger.new(log),
                                      redis: "redis://127.0.0.1:#{free_port}/0").start
    begin
      eventually(timeout: 10, what: "four retries") { log.string.scan(/retrying in \d+ ms/).size >= 4 }
      delays = log.string.scan(/retrying in (\d+) ms/).flatten.map(&:to_i)
      expect(delays.first(4)).to eq([100, 200, 400, 800])
      expect(server.stats[:backplane_up]).to eq(0)
    ensure
      stop_bounded(server)
    end
  end

  it "RedisPublisher#publish returns each message's offset in its channel" do
    with_nodes(1) do |_nodes, prefix|
      publisher = BackboneSync::RedisPublisher.new(@redis.url, prefix: prefix)
      expect(3.times.map { |i| publisher.publish("/bp/offsets", i) }).to eq([1, 2, 3])
      expect(publisher.publish("/bp/other", 0)).to eq(1)
      publisher.close
    end
  end

  it "takes the Redis URL from BACKBONE_SYNC_REDIS_URL, and uses it" do
    ENV["BACKBONE_SYNC_REDIS_URL"] = @redis.url
    from_env = BackboneSync::Server.new(host: "127.0.0.1", port: 0, timeout: 5).start
    ENV.delete("BACKBONE_SYNC_REDIS_URL")
    # A node given the URL outright, on the same Redis: a publish on it must
    # reach a subscriber of the node configured from ENV, through Redis.
    other = BackboneSync::Server.new(host: "127.0.0.1", port: 0, timeout: 5, redis: @redis.url).start
    eventually(what: "both nodes connected to Redis") { [from_env, other].all? { |n| n.stats[:backplane_up] == 1 } }
    http = BackboneSyncSpec::BayeuxHTTP::Session.new(from_env.url)
    http.handshake!
    http.subscribe!("/bp/env")
    other.publish("/bp/env", "through redis")
    expect(http.receive(1, within: 10).map { |m| m["data"] }).to eq(["through redis"])
  ensure
    ENV.delete("BACKBONE_SYNC_REDIS_URL")
    [from_env, other].compact.each { |n| stop_bounded(n) }
  end

  it "rejects a malformed Redis URL with a message that shows the expected form" do
    expect { BackboneSync::Server.new(port: 0, redis: "http://localhost") }
      .to raise_error(ArgumentError, %r{redis://127\.0\.0\.1:6379/0})
  end
end
