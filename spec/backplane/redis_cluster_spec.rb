# frozen_string_literal: true

require "spec_helper"
require "redis-client"
require_relative "../support/redis_cluster"

# Several servers over a real Redis Cluster (three primaries, each with a
# replica): every channel lives in one partition, on one shard; a node
# listens only on the shards of the channels its clients want, and follows
# a failover or a moved slot without a restart.
RSpec.describe "the Redis backplane on a Redis Cluster" do
  before(:all) do
    unless BackboneSyncSpec::RedisProcess.available?
      raise "redis-server is not on PATH: the backplane specs need a real Redis (bin/setup installs redis-server)"
    end

    @cluster = BackboneSyncSpec::RedisCluster.new(primaries: 3, replicas: 1).start
  end

  after(:all) { @cluster&.stop }

  def with_nodes(count, **opts)
    prefix = "spec#{rand(1 << 30)}:"
    nodes = Array.new(count) do
      BackboneSync::Server.new(host: "127.0.0.1", port: 0, timeout: 5, secret: shared_secret,
                               redis: @cluster.urls, redis_prefix: prefix, **opts).start
    end
    eventually(timeout: 10, what: "every node connected to the cluster") { nodes.all? { |n| n.stats[:backplane_up] == 1 } }
    yield nodes, prefix
  ensure
    nodes&.each { |n| stop_bounded(n) }
  end

  # The primary that holds a channel's partition, asked of Redis itself.
  def primary_of(channel, prefix)
    settings_key = BackboneSync._redis_names(prefix, channel, true).first.first
    @cluster.primary_port(@cluster.call(@cluster.primary_ports.first, "CLUSTER", "KEYSLOT", settings_key))
  end

  def session(node, channels, **kw)
    http = BackboneSyncSpec::BayeuxHTTP::Session.new(node.url)
    http.handshake!
    channels.each { |c| http.subscribe!(c, **kw) }
    http
  end

  it "delivers every message once, in order, with the same offsets on every node, from every shard" do
    with_nodes(3) do |nodes, prefix|
      channels = Array.new(30) { |k| "/cl/c#{k}" }
      # The 30 channels land on all three primaries, by Redis's own KEYSLOT.
      expect(channels.map { |c| primary_of(c, prefix) }.uniq.size).to eq(3)
      sessions = nodes.map { |node| session(node, channels) }
      5.times { |round| channels.each_with_index { |c, k| nodes[(round + k) % 3].publish(c, "#{c} #{round}") } }
      # Three nodes publish to each channel: Redis orders them, and every
      # node delivers that one order.
      orders = sessions.map do |http|
        got = http.receive(150, within: 20)
        expect(got.size).to eq(150)
        expect(http.receive(1, within: 0.3)).to eq([])
        channels.to_h do |c|
          mine = got.select { |m| m["channel"] == c }
          expect(mine.map { |m| m["data"] }.sort).to eq((0...5).map { |r| "#{c} #{r}" })
          expect(mine.map { |m| m.dig("ext", "offset") }).to eq([1, 2, 3, 4, 5])
          [c, mine.map { |m| m["data"] }]
        end
      end
      expect(orders.uniq.size).to eq(1)
    end
  end

  it "sends each node only the messages of its channels, and subscribes only on the shards that hold them" do
    with_nodes(3) do |nodes, prefix|
      sessions = nodes.each_with_index.map do |node, i|
        session(node, Array.new(100) { |k| "/int/c#{(k * 3) + i}" }) # 300 channels, each on one node
      end
      300.times { |k| nodes[k % 3].publish("/int/c#{k}", k) }
      got = sessions.map { |http| http.receive(100, within: 20) }
      expect(got.map(&:size)).to eq([100, 100, 100])
      got.each_with_index { |msgs, i| expect(msgs.map { |m| m["data"] % 3 }.uniq).to eq([i]) }
      expect(nodes.map { |n| n.stats[:backplane_received] }).to eq([100, 100, 100])
      # Each channel's sharded subscription is on its own primary, once.
      [0, 1, 2, 150, 299].each do |k|
        name = BackboneSync._redis_names(prefix, "/int/c#{k}", true).last + "ch:/int/c#{k}"
        expect(@cluster.call(primary_of("/int/c#{k}", prefix), "PUBSUB", "SHARDNUMSUB", name)).to eq([name, 1])
      end
    end
  end

  it "delivers what a pattern matches from every partition, once, beside an exact subscription" do
    with_nodes(2) do |nodes, _prefix|
      http = session(nodes[0], ["/pw/*", "/pw/**", "/pw/a0"])
      names = Array.new(20) { |k| "/pw/a#{k}" } + Array.new(20) { |k| "/pw/deep/b#{k}" }
      names.each { |c| nodes[1].publish(c, c) }
      got = http.receive(40, within: 20)
      expect(got.map { |m| m["data"] }.sort).to eq(names.sort)
      expect(http.receive(1, within: 0.3)).to eq([])
    end
  end

  it "lets a client recover on another node from the history the cluster keeps" do
    with_nodes(2) do |nodes, _prefix|
      first, other = nodes
      http = session(first, ["/bp/recover"])
      2.times { |i| other.publish("/bp/recover", "before #{i}") }
      last = http.receive(2).last
      3.times { |i| other.publish("/bp/recover", "missed #{i}") }
      eventually(what: "the publishes in Redis") { other.stats[:backplane_queued].zero? }
      back = session(other, [])
      reply = back.subscribe!("/bp/recover", ext: { since: { offset: last.dig("ext", "offset"),
                                                             epoch: last.dig("ext", "epoch") } })
      expect(reply["ext"]).to include("recovered" => true, "epoch" => last.dig("ext", "epoch"))
      got = back.receive(3)
      expect(got.map { |m| m["data"] }).to eq(["missed 0", "missed 1", "missed 2"])
      expect(got.map { |m| m.dig("ext", "offset") }).to eq([3, 4, 5])
    end
  end

  it "follows a slot moved to another primary, with its keys, without a restart" do
    with_nodes(2) do |nodes, prefix|
      channel = "/bp/moved"
      http = session(nodes[0], [channel])
      nodes[1].publish(channel, "before")
      last = http.receive(1).first
      slot = @cluster.call(@cluster.primary_ports.first, "CLUSTER", "KEYSLOT",
                           BackboneSync._redis_names(prefix, channel, true).first.first)
      to = (@cluster.primary_ports - [@cluster.primary_port(slot)]).first
      @cluster.move_slot(slot, to)
      nodes[1].publish(channel, "after")
      # The nodes read the map again (the moved slot unsubscribed them; the
      # publish got MOVED) and ask their clients to resync.
      eventually(timeout: 10, what: "the publish on the new primary") { nodes[1].stats[:backplane_queued].zero? }
      expect(primary_of(channel, prefix)).to eq(to)
      eventually(timeout: 10, what: "the subscriber's node back") { nodes[0].stats[:backplane_up] == 1 }
      expect(http.connect.first["error"]).to start_with("401:")
      back = session(nodes[0], [])
      reply = back.subscribe!(channel, ext: { since: { offset: last.dig("ext", "offset"),
                                                        epoch: last.dig("ext", "epoch") } })
      expect(reply["ext"]).to include("recovered" => true)
      got = back.receive(1)
      expect(got.map { |m| [m["data"], m.dig("ext", "offset")] }).to eq([["after", 2]])
      nodes[1].publish(channel, "later")
      expect(back.receive(1).map { |m| [m["data"], m.dig("ext", "offset")] }).to eq([["later", 3]])
    end
  end

  it "follows a new primary that a slot moves to, opening connections to it" do
    with_nodes(1) do |nodes, prefix|
      node = nodes.first
      channel = "/bp/new-shard"
      http = session(node, [channel, "/bp/*"])
      node.publish(channel, "before")
      expect(http.receive(1).map { |m| m["data"] }).to eq(["before"])
      fresh = @cluster.add_primary
      slot = @cluster.call(@cluster.primary_ports.first, "CLUSTER", "KEYSLOT",
                           BackboneSync._redis_names(prefix, channel, true).first.first)
      @cluster.move_slot(slot, fresh)
      expect(primary_of(channel, prefix)).to eq(fresh)
      # Its client was in the partition that moved: asked to resync.
      eventually(timeout: 10, what: "the client asked to resync") { node.stats[:clients].zero? }
      expect(http.connect.first["error"]).to start_with("401:")
      back = session(node, [channel, "/bp/*"])
      pubsub = BackboneSync._redis_names(prefix, channel, true).last
      expect(@cluster.call(fresh, "PUBSUB", "SHARDCHANNELS").sort).to eq(["#{pubsub}ch:#{channel}", "#{pubsub}kids:/bp"])
      node.publish(channel, "after")
      expect(back.receive(1).map { |m| [m["data"], m.dig("ext", "offset")] }).to eq([["after", 2]])
    end
  end

  # Last in this group's life of the cluster: a primary dies for good.
  it "follows a failover: the other shards carry on, and only the clients of the lost one resync and recover" do
    with_nodes(2) do |nodes, prefix|
      publisher, subscriber = nodes
      channels = Array.new(40) { |k| "/fo/c#{k}" }
      doomed = primary_of(channels.first, prefix)
      lost, kept = channels.partition { |c| primary_of(c, prefix) == doomed }
      expect(kept).not_to be_empty
      hit = session(subscriber, lost)
      bystander = session(subscriber, kept)
      channels.each { |c| publisher.publish(c, "#{c} before") }
      seen = hit.receive(lost.size, within: 10)
      expect(seen.size).to eq(lost.size)
      expect(bystander.receive(kept.size, within: 10).size).to eq(kept.size)
      @cluster.wait_replicated(doomed)
      @cluster.kill(doomed)
      channels.each { |c| publisher.publish(c, "#{c} during") } # held for the dead shard, not lost, not raised
      # The other shards' messages go on arriving, on the same session.
      during = bystander.receive(kept.size, within: 10)
      expect(during.map { |m| m["data"] }.sort).to eq(kept.map { |c| "#{c} during" }.sort)
      @cluster.wait_until_ok
      eventually(timeout: 20, what: "both nodes whole again, the held publishes out") do
        nodes.all? { |n| n.stats[:backplane_up] == 1 } && publisher.stats[:backplane_queued].zero?
      end
      expect(primary_of(channels.first, prefix)).not_to eq(doomed)
      # Only the client of the lost shard was asked to resync; it recovers
      # from where it was, from the promoted replica.
      expect(hit.connect.first["error"]).to start_with("401:")
      publisher.publish(kept.first, "after")
      expect(bystander.receive(1).map { |m| m["data"] }).to eq(["after"])
      back = session(subscriber, [])
      seen.each do |m|
        reply = back.subscribe!(m["channel"], ext: { since: { offset: m.dig("ext", "offset"),
                                                              epoch: m.dig("ext", "epoch") } })
        expect(reply["ext"]).to include("recovered" => true)
      end
      got = back.receive(lost.size, within: 10)
      expect(got.map { |m| m["data"] }.sort).to eq(lost.map { |c| "#{c} during" }.sort)
      expect(got.map { |m| m.dig("ext", "offset") }.uniq).to eq([2])
      expect(back.receive(1, within: 0.3)).to eq([])
    end
  end

  describe "with no replica" do
    before(:all) { @bare = BackboneSyncSpec::RedisCluster.new(primaries: 3, replicas: 0).start }
    after(:all) { @bare&.stop }

    it "answers recovered:false for what a shard that restarted empty lost, and carries on" do
      prefix = "spec#{rand(1 << 30)}:"
      node = BackboneSync::Server.new(host: "127.0.0.1", port: 0, timeout: 5, secret: shared_secret,
                                      redis: @bare.urls.first, redis_prefix: prefix).start
      eventually(timeout: 10, what: "the node on the cluster") { node.stats[:backplane_up] == 1 }
      channel = "/bp/lost"
      http = session(node, [channel])
      node.publish(channel, "before")
      last = http.receive(1).first
      slot = @bare.call(@bare.primary_ports.first, "CLUSTER", "KEYSLOT",
                        BackboneSync._redis_names(prefix, channel, true).first.first)
      port = @bare.primary_port(slot)
      @bare.kill(port)
      @bare.restart(port)
      @bare.wait_until_ok
      eventually(timeout: 20, what: "the node back on the cluster") { node.stats[:backplane_up] == 1 }
      expect(http.connect.first["error"]).to start_with("401:")
      back = session(node, [])
      reply = back.subscribe!(channel, ext: { since: { offset: last.dig("ext", "offset"),
                                                        epoch: last.dig("ext", "epoch") } })
      expect(reply["ext"]["recovered"]).to be(false)
      node.publish(channel, "after")
      expect(back.receive(1).map { |m| m["data"] }).to eq(["after"])
    ensure
      stop_bounded(node) if node
    end
  end
end
