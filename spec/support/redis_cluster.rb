# frozen_string_literal: true

require "redis-client"
require "tmpdir"
require "fileutils"
require_relative "redis_process"

module BackboneSyncSpec
  # A real Redis Cluster on loopback ports, owned by the spec: `primaries`
  # primaries, each with `replicas` replicas, made by redis-cli --cluster
  # create. A primary can be killed; its replica takes over within about
  # twice the node timeout, which is short here (cluster-node-timeout).
  class RedisCluster
    NODE_TIMEOUT_MS = 1000

    attr_reader :nodes

    def initialize(primaries: 3, replicas: 1)
      @dir = Dir.mktmpdir("bs-cluster")
      @nodes = Array.new(primaries * (1 + replicas)) { new_node }
      @replicas = replicas
    end

    def start
      # A free port can be taken before redis-server binds it (other
      # servers start on this machine too): such a node gets another.
      @nodes.map! do |node|
        tries = 0
        begin
          node.start
        rescue RedisProcess::PortTaken
          raise if (tries += 1) > 5

          node = new_node
          retry
        end
      end
      addrs = @nodes.map { |n| "127.0.0.1:#{n.port}" }
      ok = system("redis-cli", "--cluster", "create", *addrs, "--cluster-replicas", @replicas.to_s,
                  "--cluster-yes", out: File::NULL, err: File::NULL)
      raise "redis-cli --cluster create failed on #{addrs.join(' ')}" unless ok

      wait_until_ok
      self
    end

    def stop
      @nodes.each(&:stop)
      FileUtils.rm_rf(@dir)
    end

    # Seed URLs, as a server or a publisher takes them: all nodes, or the first n.
    def urls(n = @nodes.size)
      @nodes.first(n).map { |node| "redis://127.0.0.1:#{node.port}/0" }
    end

    # The port of the live primary that serves a slot.
    def primary_port(slot)
      slots.each { |from, to, port| return port if slot.between?(from, to) }
      nil
    end

    # [[first slot, last slot, primary port], ...], as a live node sees it.
    def slots
      call_any("CLUSTER", "SLOTS").map { |from, to, primary, *| [from, to, primary[1]] }
    end

    def primary_ports
      slots.map(&:last).uniq
    end

    # Kills (SIGKILL) the node on port; a primary's replica is promoted.
    def kill(port)
      node(port).stop
    end

    # Starts a killed node again on its port, with its cluster identity and
    # slots (nodes.conf) but no data.
    def restart(port)
      node(port).start
    end

    # Once every replica of the primary on port has applied all it wrote.
    def wait_replicated(port, seconds = 10)
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + seconds
      loop do
        info = call(port, "INFO", "replication")
        offset = info[/master_repl_offset:(\d+)/, 1]
        acked = info.scan(/^slave\d+:.*offset=(\d+)/).flatten
        return if !acked.empty? && acked.all? { |o| o == offset }
        raise "the replicas of #{port} did not catch up within #{seconds}s" if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline

        sleep 0.05
      end
    end

    # A new, empty primary joins the cluster (it holds no slot until one is
    # moved to it). Its port.
    def add_primary
      node = nil
      begin
        (node = new_node).start
      rescue RedisProcess::PortTaken
        retry
      end
      @nodes << node
      call(node.port, "CLUSTER", "MEET", "127.0.0.1", primary_ports.first)
      id = call(node.port, "CLUSTER", "MYID")
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 10
      until live.all? { |n| call(n.port, "CLUSTER", "NODES").include?(id) }
        raise "the new node did not join within 10s" if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline

        sleep 0.05
      end
      wait_until_ok # the new node too has learned who serves every slot
      node.port
    end

    # Moves one slot, with its keys, from the primary that serves it to the
    # primary on port `to`, as redis-cli --cluster reshard does.
    def move_slot(slot, to)
      from = primary_port(slot)
      from_id = call(from, "CLUSTER", "MYID")
      to_id = call(to, "CLUSTER", "MYID")
      call(to, "CLUSTER", "SETSLOT", slot, "IMPORTING", from_id)
      call(from, "CLUSTER", "SETSLOT", slot, "MIGRATING", to_id)
      loop do
        keys = call(from, "CLUSTER", "GETKEYSINSLOT", slot, 100)
        break if keys.empty?

        call(from, "MIGRATE", "127.0.0.1", to, "", 0, 5000, "KEYS", *keys)
      end
      (primary_ports | [to]).each { |port| call(port, "CLUSTER", "SETSLOT", slot, "NODE", to_id) }
      wait_until_ok
    end

    # Until every slot is served by a live primary and every live node says
    # cluster_state:ok (after a start or a failover). At most `seconds`.
    def wait_until_ok(seconds = 30)
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + seconds
      loop do
        return if healthy?
        raise "the Redis Cluster did not settle within #{seconds}s" if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline

        sleep 0.1
      end
    end

    def call(port, *args)
      client = RedisClient.new(host: "127.0.0.1", port: port, timeout: 2)
      client.call(*args)
    ensure
      client&.close
    end

    private

    def new_node
      port = RedisProcess.free_port
      RedisProcess.new(port, ["--cluster-enabled", "yes", "--cluster-config-file", File.join(@dir, "nodes-#{port}.conf"),
                              "--cluster-node-timeout", NODE_TIMEOUT_MS.to_s, "--dir", @dir,
                              "--cluster-replica-validity-factor", "0",
                              "--cluster-require-full-coverage", "no", "--dbfilename", "dump-#{port}.rdb"])
    end

    def node(port)
      @nodes.find { |n| n.port == port }
    end

    def live
      @nodes.select(&:running?)
    end

    def call_any(*args)
      live.each do |node|
        return call(node.port, *args)
      rescue RedisClient::Error
        next
      end
      raise "no node of the Redis Cluster answers"
    end

    def healthy?
      live_ports = live.map(&:port)
      return false unless live.all? { |n| call(n.port, "CLUSTER", "INFO").include?("cluster_state:ok") }

      covered = slots.sum { |from, to, port| live_ports.include?(port) ? to - from + 1 : 0 }
      covered == 16_384
    rescue RedisClient::Error
      false
    end
  end
end
