# frozen_string_literal: true

require "spec_helper"
require "redis-client"
require "json"

# RedisPublisher on a real Redis Cluster (3 primaries, 1 replica each): each
# publish lands on the primary of its channel's partition, with SPUBLISH; the
# publisher follows slots that move (MOVED, ASK) and primaries that fail
# over, and gives up within its bound rather than hang.
RSpec.describe BackboneSync::RedisPublisher, "on a Redis Cluster" do
  # As the other backplane specs: a missing redis-server fails, since a skip
  # would report a green run that never touched a cluster.
  def self.need_redis!
    return if BackboneSyncSpec::RedisProcess.available? && system("command -v redis-cli >/dev/null 2>&1")

    raise "redis-server and redis-cli are not on PATH: the Redis Cluster specs need them " \
          "(bin/setup installs redis-server)"
  end

  # The bound of one publish: the publisher's retry window, one more
  # connect and reply timeout (2 s), and some slack for a loaded machine.
  BOUND = BackboneSync::RedisPublisher::RETRY_SECONDS + 2 + 2

  def fresh_prefix
    "spec#{rand(1 << 30)}:"
  end

  def names(prefix, channel)
    BackboneSync._redis_names(prefix, channel, true)
  end

  def slot_of(prefix, channel)
    BackboneSync._redis_slot(names(prefix, channel)[0][0])
  end

  # The port of the primary that serves channel's keys, as the cluster says.
  def port_of(prefix, channel)
    @cluster.primary_port(slot_of(prefix, channel))
  end

  # Several channels named base<i> in the partition of +channel+.
  def partition_mates(prefix, channel, base, count)
    tag = names(prefix, channel)[1]
    (0..).lazy.map { |i| "#{base}#{i}" }.select { |c| names(prefix, c)[1] == tag }.first(count)
  end

  describe "on a healthy cluster" do
    before(:all) do
      self.class.need_redis!
      @cluster = BackboneSyncSpec::RedisCluster.new(primaries: 3, replicas: 1).start
    end

    after(:all) { @cluster&.stop }

    it "puts each channel's keys on its partition's primary, counts offsets per channel, and SPUBLISHes there" do
      prefix = fresh_prefix
      channels = Array.new(300) { |i| "/cl/c#{i}" }
      by_port = channels.group_by { |c| port_of(prefix, c) }
      expect(by_port.keys.size).to eq(3) # 300 channels spread over every primary

      # One raw sharded-pub/sub connection per primary, SSUBSCRIBEd to
      # <pubsub>ch:<channel> for each of its channels (one slot per command).
      subs = by_port.to_h do |port, list|
        pubsub = RedisClient.new(host: "127.0.0.1", port: port, timeout: 2).pubsub
        list.each { |c| pubsub.call("SSUBSCRIBE", "#{names(prefix, c)[1]}ch:#{c}") }
        confirmed = 0
        deadline = monotonic + 10
        while confirmed < list.size && monotonic < deadline
          event = pubsub.next_event(1)
          confirmed += 1 if event&.first == "ssubscribe"
        end
        expect(confirmed).to eq(list.size)
        [port, pubsub]
      end

      publisher = described_class.new(@cluster.urls, prefix: prefix)
      begin
        offsets = channels.to_h { |c| [c, []] }
        3.times { |round| channels.each { |c| offsets[c] << publisher.publish(c, { "c" => c, "n" => round }) } }
        expect(offsets.values.uniq).to eq([[1, 2, 3]])

        # Each key on the primary the cluster says serves it: a plain client
        # there would get MOVED for a key of another node.
        channels.each do |c|
          keys, = names(prefix, c)
          port = port_of(prefix, c)
          expect(@cluster.call(port, "GET", keys[2])).to eq("3")
          expect(@cluster.call(port, "ZCARD", keys[3])).to eq(3)
          expect(@cluster.call(port, "EXISTS", keys[1])).to eq(1)
        end

        got = Hash.new { |h, k| h[k] = [] }
        deadline = monotonic + 20
        while got.values.sum(&:size) < 900 && monotonic < deadline
          subs.each_value do |pubsub|
            while (event = pubsub.next_event(0.05))
              next unless event.first == "smessage"

              channel, offset, epoch, frame = event[2].split("\n", 4)
              expect(event[1]).to end_with("ch:#{channel}")
              got[channel] << [Integer(offset), epoch, JSON.parse(frame)]
            end
          end
        end
        expect(got.keys.sort).to eq(channels.sort)
        channels.each do |c|
          expect(got[c].map(&:first)).to eq([1, 2, 3])
          epoch = @cluster.call(port_of(prefix, c), "GET", names(prefix, c)[0][1])
          got[c].each_with_index do |(offset, their_epoch, frame), round|
            expect(their_epoch).to eq(epoch)
            message = frame.first
            expect(message["channel"]).to eq(c)
            expect(message["data"]).to eq({ "c" => c, "n" => round })
            expect(message["ext"]).to include("offset" => offset, "epoch" => epoch)
          end
        end
      ensure
        publisher.close
        subs.each_value(&:close)
      end
    end

    it "is shared by threads: each publish gets its own offset, on any primary" do
      prefix = fresh_prefix
      channels = Array.new(3) { |i| "/cl/threads#{i}" }
      publisher = described_class.new(@cluster.urls, prefix: prefix)
      begin
        threads = Array.new(8) do |t|
          Thread.new { Array.new(60) { |n| channels[(t + n) % 3].then { |c| [c, publisher.publish(c, n)] } } }
        end
        results = threads.flat_map { |thread| thread.join(BOUND * 3)&.value || raise("a publishing thread hung") }
        results.group_by(&:first).each do |channel, pairs|
          expect(pairs.map(&:last).sort).to eq((1..pairs.size).to_a)
          expect(@cluster.call(port_of(prefix, channel), "GET", names(prefix, channel)[0][2])).to eq(pairs.size.to_s)
        end
        expect(results.size).to eq(480)
      ensure
        publisher.close
      end
    end

    it "drops a second publish of an event id and answers with the first one's offset" do
      prefix = fresh_prefix
      publisher = described_class.new(@cluster.urls.join(","), prefix: prefix)
      begin
        first = publisher.publish("/cl/once", "a", event_id: "row-1")
        expect(publisher.publish("/cl/once", "a again", event_id: "row-1")).to eq(first)
        expect(publisher.publish("/cl/once", "b", event_id: "row-2")).to eq(first + 1)
        expect(publisher.publish("/cl/once", "b again", event_id: "row-2")).to eq(first + 1)
        keys, = names(prefix, "/cl/once")
        port = port_of(prefix, "/cl/once")
        expect(@cluster.call(port, "ZRANGE", keys[4], 0, -1)).to eq(%w[row-1 row-2])
        expect(@cluster.call(port, "ZCARD", keys[3])).to eq(2)
      ensure
        publisher.close
      end
    end

    it "takes one URL of a cluster node, a primary's or a replica's, as the cluster's seed" do
      prefix = fresh_prefix
      primary = @cluster.primary_ports.first
      replica = (@cluster.nodes.map(&:port) - @cluster.primary_ports).first
      [primary, replica].each_with_index do |port, i|
        publisher = described_class.new("redis://127.0.0.1:#{port}", prefix: prefix)
        begin
          expect(publisher.cluster?).to be(true)
          # Channels on every primary, so most are not the seed's.
          channels = Array.new(30) { |n| "/cl/seed#{n}" }
          channels.each { |c| expect(publisher.publish(c, i)).to eq(i + 1) }
          channels.each { |c| expect(@cluster.call(port_of(prefix, c), "GET", names(prefix, c)[0][2])).to eq((i + 1).to_s) }
        ensure
          publisher.close
        end
      end
    end

    it "accepts the seeds as an Array and as a comma-separated String, as BACKBONE_SYNC_REDIS_URL holds them" do
      prefix = fresh_prefix
      urls = @cluster.urls(2)
      forms = [urls, urls.join(","), " #{urls.join(' , ')} "]
      forms.each_with_index do |form, i|
        publisher = described_class.new(form, prefix: prefix)
        begin
          expect(publisher.url).to eq(urls.join(","))
          expect(publisher.publish("/cl/forms", i)).to eq(i + 1)
        ensure
          publisher.close
        end
      end

      env = ENV.fetch("BACKBONE_SYNC_REDIS_URL", nil)
      ENV["BACKBONE_SYNC_REDIS_URL"] = urls.join(",")
      publisher = described_class.new(prefix: prefix)
      begin
        expect(publisher.publish("/cl/forms", "env")).to eq(forms.size + 1)
      ensure
        publisher.close
        ENV["BACKBONE_SYNC_REDIS_URL"] = env
      end
    end

    it "is what the broadcaster publishes with when its redis setting holds the seeds, kept as given" do
      require "backbone_sync/broadcasting" # what broadcaster.rb uses and rails.rb loads first
      require "backbone_sync/broadcaster"
      channel = "/cl/bc#{rand(1 << 30)}"
      urls = @cluster.urls(2)
      [urls, urls.join(","), urls.first].each_with_index do |setting, i|
        BackboneSync::Broadcaster.redis = setting
        expect(BackboneSync::Broadcaster.redis).to eq(setting)
        expect(BackboneSync::Broadcaster.route).to eq(:redis)
        expect(BackboneSync::Broadcaster.publish!(channel, i)).to eq(i + 1)
      end
      port = port_of(BackboneSync::RedisPublisher::PREFIX, channel)
      expect(@cluster.call(port, "GET", names(BackboneSync::RedisPublisher::PREFIX, channel)[0][2])).to eq("3")
    ensure
      BackboneSync::Broadcaster.redis = nil
    end

    it "refuses a db other than 0 for a cluster, saying so, and still takes one for a single Redis" do
      urls = @cluster.urls(2).map { |u| u.sub(%r{/0\z}, "/3") }
      expect { described_class.new(urls) }
        .to raise_error(ArgumentError, %r{a Redis Cluster has only db 0, but "redis://127\.0\.0\.1:\d+/3" names db 3: drop the /3})
      expect { described_class.new([@cluster.urls.first, urls.first]) }.to raise_error(ArgumentError, /only db 0/)

      # One URL: known to be a cluster's only once the node was asked.
      publisher = described_class.new(urls.first)
      begin
        expect { publisher.publish("/cl/db", 1) }.to raise_error(ArgumentError, /only db 0.*drop the \/3/)
      ensure
        publisher.close
      end

      single = BackboneSyncSpec::RedisProcess.new(BackboneSyncSpec::RedisProcess.free_port).start
      publisher = described_class.new("redis://127.0.0.1:#{single.port}/3", prefix: "spec:")
      begin
        expect(publisher.cluster?).to be(false)
        expect(publisher.publish("/cl/db", 1)).to eq(1)
        # The untagged names of a single Redis, in db 3.
        raw = RedisClient.new(host: "127.0.0.1", port: single.port, db: 3)
        expect(raw.call("GET", "spec:offset:/cl/db")).to eq("1")
        raw.close
      ensure
        publisher.close
        single.stop
      end
    end

    it "raises Unreachable within its bound when no seed answers" do
      dead = Array.new(2) { "redis://127.0.0.1:#{BackboneSyncSpec::RedisProcess.free_port}/0" }
      publisher = described_class.new(dead)
      begin
        took = timed do
          expect { publisher.publish("/cl/nowhere", 1) }
            .to raise_error(BackboneSync::Unreachable, /Redis Cluster seeded by .*are its nodes up/)
        end
        expect(took).to be < BOUND
      ensure
        publisher.close
      end

      # One URL: nothing to ask whether it is a cluster; it says so at once.
      publisher = described_class.new(dead.first)
      begin
        took = timed { expect { publisher.publish("/cl/nowhere", 1) }.to raise_error(BackboneSync::Unreachable) }
        expect(took).to be < BOUND
      ensure
        publisher.close
      end
    end

    it "raises Unreachable within its bound when a primary hangs, and the other primaries go on" do
      prefix = fresh_prefix
      hung, other = Array.new(40) { |i| "/cl/hang#{i}" }.uniq { |c| port_of(prefix, c) }
      port = port_of(prefix, hung)
      publisher = described_class.new(@cluster.urls, prefix: prefix)
      begin
        expect(publisher.publish(hung, 1)).to eq(1)
        # Every command there waits, longer than the bound (and no
        # CLIENT UNPAUSE gets through either): only a timeout ends a call.
        pause = BOUND
        paused_at = monotonic
        @cluster.call(port, "CLIENT", "PAUSE", (pause * 1000).to_i, "ALL")
        took = timed do
          expect { publisher.publish(hung, 2) }.to raise_error(BackboneSync::Unreachable, /Redis Cluster/)
        end
        expect(took).to be < BOUND
        expect(publisher.publish(other, 1)).to eq(1) # on another primary, while that one still hangs
        expect(monotonic - paused_at).to be < pause
      ensure
        eventually(timeout: BOUND + 5, what: "the paused primary to answer again") do
          @cluster.call(port, "PING") == "PONG"
        rescue RedisClient::Error
          false
        end
        publisher.close
      end
    end

    # The ASKING calls a node has served, from its command stats.
    def askings(port)
      @cluster.call(port, "INFO", "commandstats")[/cmdstat_asking:calls=(\d+)/, 1].to_i
    end

    it "follows a slot that migrates: ASK and TRYAGAIN while it moves, MOVED after, without a new publisher" do
      prefix = fresh_prefix
      old, fresh = partition_mates(prefix, "/cl/mig0", "/cl/mig", 2)
      slot = slot_of(prefix, old)
      publisher = described_class.new(@cluster.urls(1), prefix: prefix)
      idle = described_class.new(@cluster.urls(1), prefix: prefix) # keeps the table of before
      begin
        expect(publisher.publish(old, "before")).to eq(1)
        expect(idle.publish(old, "before")).to eq(2)
        from = @cluster.primary_port(slot)
        to = (@cluster.primary_ports - [from]).first
        from_id = @cluster.call(from, "CLUSTER", "MYID")
        to_id = @cluster.call(to, "CLUSTER", "MYID")
        asked = askings(to)

        @cluster.call(to, "CLUSTER", "SETSLOT", slot, "IMPORTING", from_id)
        @cluster.call(from, "CLUSTER", "SETSLOT", slot, "MIGRATING", to_id)
        # None of fresh's keys is on `from`: it answers ASK; `to`, asked,
        # answers TRYAGAIN (a script of several keys, some missing) until
        # the slot has moved; the publisher tries again meanwhile.
        during = Thread.new { publisher.publish(fresh, "during") }
        eventually(timeout: BOUND, what: "the publisher sent ASKING to the importing node") { askings(to) > asked }

        keys = @cluster.call(from, "CLUSTER", "GETKEYSINSLOT", slot, 1000)
        expect(keys).to include(names(prefix, old)[0][2])
        @cluster.call(from, "MIGRATE", "127.0.0.1", to, "", 0, 5000, "KEYS", *keys)
        ([to, from] + @cluster.primary_ports).uniq.each do |port|
          @cluster.call(port, "CLUSTER", "SETSLOT", slot, "NODE", to_id)
        end
        expect(@cluster.primary_port(slot)).to eq(to)
        expect(during.join(BOUND)&.value).to eq(1)

        # idle's table still says `from`, which answers MOVED.
        expect(idle.publish(old, "after")).to eq(3)
        expect(publisher.publish(fresh, "after")).to eq(2)
        expect(@cluster.call(to, "GET", names(prefix, old)[0][2])).to eq("3")
        expect(@cluster.call(to, "GET", names(prefix, fresh)[0][2])).to eq("2")
        expect(@cluster.call(to, "ZCARD", names(prefix, old)[0][3])).to eq(3)
      ensure
        during&.join(BOUND)
        publisher.close
        idle.close
      end
    end
  end

  describe "when a primary fails over" do
    before(:all) do
      self.class.need_redis!
      @cluster = BackboneSyncSpec::RedisCluster.new(primaries: 3, replicas: 1).start
    end

    after(:all) { @cluster&.stop }

    it "goes on publishing to the promoted replica, and while the cluster is down succeeds or raises within its bound" do
      prefix = fresh_prefix
      channels = Array.new(60) { |i| "/fo/c#{i}" }
      publisher = described_class.new(@cluster.urls, prefix: prefix)
      begin
        channels.each { |c| expect(publisher.publish(c, 0)).to eq(1) }
        victim = port_of(prefix, channels.first)
        on_victim = channels.select { |c| port_of(prefix, c) == victim }
        # Its replica holds the writes before the primary dies (once it has
        # finished its first sync).
        eventually(timeout: 15, what: "the replica of #{victim} acknowledged its writes") do
          @cluster.call(victim, "WAIT", 1, 500) == 1
        end

        @cluster.kill(victim)
        outcomes = Queue.new
        stop = false
        during = Thread.new do
          n = 0
          until stop
            channel = on_victim[n % on_victim.size]
            n += 1
            started = monotonic
            outcome = begin
              publisher.publish(channel, "during")
              :sent
            rescue BackboneSync::Unreachable, BackboneSync::PublishError => e
              e.class
            end
            outcomes << [outcome, monotonic - started]
          end
        end
        @cluster.wait_until_ok(30)
        stop = true
        expect(during.join(BOUND + 1)).not_to be_nil # never hangs
        results = Array.new(outcomes.size) { outcomes.pop }
        expect(results).not_to be_empty
        expect(results.map(&:last).max).to be < BOUND
        expect(results.map(&:first).uniq - [:sent, BackboneSync::Unreachable, BackboneSync::PublishError]).to eq([])

        promoted = port_of(prefix, on_victim.first)
        expect(promoted).not_to eq(victim)
        sent = results.count { |outcome, _| outcome == :sent }
        on_victim.each do |c|
          offset = publisher.publish(c, "after")
          expect(@cluster.call(promoted, "GET", names(prefix, c)[0][2])).to eq(offset.to_s)
        end
        # Nothing was counted twice or lost on the promoted replica: the
        # offsets there add up to what was published.
        total = on_victim.sum { |c| Integer(@cluster.call(promoted, "GET", names(prefix, c)[0][2])) }
        expect(total).to eq(on_victim.size * 2 + sent)
        # The channels on the other primaries never noticed.
        (channels - on_victim).each { |c| expect(publisher.publish(c, "after")).to eq(2) }
      ensure
        stop = true
        during&.join(BOUND + 1)
        publisher.close
      end
    end
  end
end
