# frozen_string_literal: true

# bin/bench --nodes N (N >= 3): what routing by interest sends each of N
# server nodes, and what a delivery costs a node, beside a single node.
#
# The engine: a 3-primary Redis Cluster (spec/support/redis_cluster.rb)
# when this build's nodes run on one, else one redis-server (--engine
# cluster|redis forces one). A build without cluster mode shows itself by a
# node refusing the cluster's URLs or delivering nothing of the warm-up;
# the report then says which engine ran and why. C channels, channel k subscribed on node k mod N only,
# by one WebSocket Bayeux subscriber each (bench/ws_subscribers.rb). M
# messages, message j on channel j mod C, published straight into the
# engine by bench/engines/rpublish.c (publish.lua, pipelined). Then one node
# alone with every channel, same engine, same M. Nodes on CPU 0; the engine,
# the publisher and the subscribers on CPU 1.
#
# Per node: messages the engine sent it (/stats backplane_received, delta)
# and their share of the published (the deterministic figure: 1/N with
# routing by interest, 1.0 before it), deliveries, deliveries/s (from the
# first publish to the node's last delivery) and the node's CPU (user+sys,
# /proc/PID/stat) per delivery.

$LOAD_PATH.unshift File.expand_path('../lib', __dir__)
require 'backbone_sync'
require 'etc'
require 'fileutils'
require 'json'
require 'net/http'
require 'redis-client'
require 'tmpdir'
require_relative 'ws_subscribers'
require_relative 'engines'
require_relative '../spec/support/redis_process'
require_relative '../spec/support/redis_cluster'

class NodesBench
  include Engines::Children
  Node = Struct.new(:pid, :port, :log)
  NoCluster = Class.new(StandardError) # this build's nodes do not run on a Redis Cluster
  Phase = Struct.new(:label, :nodes, :received, :deliveries, :expected, :cpu, :seconds, :publish_rate)

  def initialize(nodes:, channels:, messages:, engine:)
    @n = nodes
    @channels = Array.new(channels) { |k| "/bench/c#{k}" }
    @messages = messages
    @engine_wanted = engine # 'auto', 'cluster' or 'redis'
    @dir = Dir.mktmpdir('backbone_sync-nodes')
    @secret = SecureRandom.hex(16)
    @children = []
    @cores = Etc.nprocessors # before this process is pinned to one
    @pin = @cores >= 2 && system('taskset', '-c', '1', 'true', out: File::NULL, err: File::NULL)
  end

  def run
    started = now
    @publisher = Engines.build_rpublish(@dir)
    # Everything this process starts from here runs on CPU 1 unless started pinned to CPU 0.
    system('taskset', '-p', '-c', '1', Process.pid.to_s, out: File::NULL) if @pin
    engine = start_engine
    begin
      spread = measure(@n, engine)
    rescue NoCluster => e
      raise if @engine_wanted == 'cluster'

      warn "bin/bench: no cluster mode in this build (#{e.message}): one redis-server instead"
      @fallback = e.message
      stop_engine(engine)
      engine = start_engine(force_single: true)
      spread = measure(@n, engine)
    end

    single = measure(1, engine)
    report(engine, spread, single, now - started)
  ensure
    @subs&.close
    @children.dup.each { stop_pid(_1) }
    stop_engine(engine) if engine
    FileUtils.rm_rf(@dir)
  end

  private

  # ---- the engine -----------------------------------------------------------

  def start_engine(force_single: false)
    if !force_single && @engine_wanted != 'redis'
      $stderr.print 'bin/bench: starting a 3-primary Redis Cluster ... '
      cluster = BackboneSyncSpec::RedisCluster.new(primaries: 3, replicas: 0)
      begin
        cluster.start
      rescue Exception # an interrupt too: no redis-server left behind
        cluster.stop
        raise
      end
      warn 'up'
      return Engines::Target.cluster(cluster)
    end
    redis = BackboneSyncSpec::RedisProcess.new(BackboneSyncSpec::RedisProcess.free_port)
    begin
      redis.start
    rescue Exception # as above
      redis.stop
      raise
    end
    Engines::Target.single(redis)
  end

  def stop_engine(engine)
    engine.stop
  rescue StandardError
    nil
  end

  # ---- one measurement: `count` nodes sharing the channels ----------------

  # Returns a Phase; raises NoCluster when the nodes cannot use a cluster.
  def measure(count, engine)
    $stderr.print "bin/bench: #{count} node#{count > 1 ? 's' : ''} on #{engine.name} ... "
    nodes = []
    begin
      count.times { nodes << start_node(engine.node_url) }
      nodes.each { wait_backplane(_1) }
    rescue RuntimeError => e
      raise engine.cluster ? NoCluster.new(e.message) : e
    end
    subscribe(nodes)
    plan = engine.plan(@dir, @channels)
    unless warm_up(plan, nodes)
      raise NoCluster, 'the nodes got nothing of the warm-up' if engine.cluster

      raise 'the nodes got nothing of the warm-up'
    end

    phase = publish_and_count(plan, nodes)
    warn format('done (%.1f s)', phase.seconds.compact.max.to_f)
    phase
  ensure
    @subs&.close
    nodes&.each { stop_pid(_1.pid) }
  end

  def start_node(redis_url)
    log = File.join(@dir, "node-#{@children.size}.log")
    cmd = [RbConfig.ruby, '-I', File.join(ROOT, 'lib'), File.join(ROOT, 'bin/backbone_sync'), '--port', '0',
           '--secret', @secret, '--timeout', '30', '--redis', redis_url]
    cmd = ['taskset', '-c', '0', *cmd] if @pin
    pid = Process.spawn(*cmd, out: log, err: "#{log}.err", chdir: ROOT)
    @children << pid
    deadline = now + 20
    until now > deadline
      port = File.read(log)[%r{listening on http://127\.0\.0\.1:(\d+)/}, 1]
      return Node.new(pid, Integer(port), log) if port
      if Process.wait(pid, Process::WNOHANG)
        @children.delete(pid)
        raise "a node exited early: #{File.read("#{log}.err").strip.lines.last(3).join(' ')}"
      end

      sleep 0.05
    end
    raise 'a node printed no listening line within 20 s'
  end

  def stats(node)
    JSON.parse(Net::HTTP.get(URI("http://127.0.0.1:#{node.port}/stats"), 'Authorization' => "Bearer #{@secret}"))
  end

  def wait_backplane(node)
    deadline = now + 10
    until now > deadline
      return if (stats(node)['backplane_up'] rescue 0) == 1

      sleep 0.1
    end
    raise "the node on port #{node.port} did not reach the engine within 10 s"
  end

  # Channel k on node k mod count, one WebSocket subscriber each.
  def subscribe(nodes)
    @subs = WsSubscribers.new
    @channels.each_with_index { |ch, k| @subs.add(k % nodes.size, nodes[k % nodes.size].port, ch) }
    @subs.wait_subscribed(30)
  end

  # One message per channel; true once each arrived (at most 5 s).
  def warm_up(plan, nodes)
    out, ok = Engines.rpublish(@publisher, plan, @channels.size)
    raise "warm-up publish failed: #{out}" unless ok

    arrived = @subs.pump_until(5) { @subs.conns.all? { _1.count >= 1 } }
    return false if !arrived && @subs.conns.none? { _1.count.positive? }
    raise "warm-up: #{@subs.conns.count { _1.count.zero? }} channels got nothing" unless arrived

    @subs.reset_counts
    true
  end

  def publish_and_count(plan, nodes)
    expected = Hash.new(0)
    @messages.times { |j| expected[(j % @channels.size) % nodes.size] += 1 }
    before = nodes.map { stats(_1)['backplane_received'] }
    cpu_before = nodes.map { cpu_seconds(_1.pid) }
    start = now
    pub = Engines.spawn_rpublish(@publisher, plan, @messages)
    begin
      @subs.pump_until(60) { @subs.counts_by_node.sum { _2 } >= @messages }
    rescue Exception # an interrupt too: no publisher left behind
      Engines.abandon(pub)
      raise
    end
    out = Engines.finish(pub, 30)
    cpu = nodes.each_with_index.map { |nd, i| cpu_seconds(nd.pid) - cpu_before[i] }
    counts = @subs.counts_by_node
    lasts = @subs.last_at_by_node
    Phase.new("#{nodes.size} node#{nodes.size > 1 ? 's' : ''}", nodes.size,
              nodes.each_with_index.map { |nd, i| stats(nd)['backplane_received'] - before[i] },
              Array.new(nodes.size) { counts[_1] || 0 }, Array.new(nodes.size) { expected[_1] }, cpu,
              Array.new(nodes.size) { |i| lasts[i] ? lasts[i] - start : nil }, out['msgs_per_sec'].to_f)
  end

  # On-CPU time of every thread of pid, in seconds (schedstat: nanoseconds,
  # where /proc/PID/stat counts 10 ms ticks).
  def cpu_seconds(pid)
    Dir["/proc/#{pid}/task/*/schedstat"].sum do |f|
      Integer(File.read(f).split.first)
    rescue Errno::ENOENT, Errno::ESRCH # a thread that ended meanwhile
      0
    end / 1e9
  end

  # ---- the report -----------------------------------------------------------

  def report(engine, spread, single, seconds)
    puts
    puts "(no cluster mode in this build: #{@fallback})" if @fallback
    puts "bin/bench --nodes #{@n}: engine #{engine.description}; #{@channels.size} channels, each subscribed " \
         "on one node (one WebSocket subscriber each); #{@messages} messages spread evenly over them, published " \
         'into the engine (publish.lua, pipelined C publisher)'
    row = '%-8s %10s %8s %11s %9s %12s %6s %12s'
    puts format(row, 'node', 'from engine', 'share', 'deliveries', 'expected', 'deliveries/s', 'busy', 'CPU us/deliv')
    rows(spread).each { puts format(row, *_1) }
    rows(single, 'single').each { puts format(row, *_1) }
    shares = spread.received.map { _1.fdiv(@messages) }
    puts format('share: each of the %d nodes received %.3f of the engine\'s messages on average (1/%d = %.3f; ' \
                'every node received 1.000 before routing by interest); the single node %.3f',
                @n, shares.sum / @n, @n, 1.0 / @n, single.received.first.fdiv(@messages))
    per_node = spread.cpu.sum / spread.deliveries.sum
    alone = single.cpu.first / single.deliveries.first
    rate_n = spread.deliveries.each_with_index.sum { |d, i| spread.seconds[i] ? d / spread.seconds[i] : 0 } / @n
    rate_1 = single.deliveries.first / single.seconds.first
    puts format('ratios, %d nodes / single: CPU per delivery %.2fx; deliveries/s per node %.2fx, all %d together ' \
                '%.2fx (the nodes share CPU 0 of %d cores: this shows cost, not scaling)',
                @n, per_node / alone, rate_n / rate_1, @n, spread.deliveries.sum / spread.seconds.compact.max / rate_1,
                @cores)
    puts format('publisher: %.0f msgs/s into the engine with %d nodes, %.0f with one', spread.publish_rate, @n,
                single.publish_rate)
    lost = (spread.expected.sum - spread.deliveries.sum) + (single.expected.sum - single.deliveries.sum)
    puts(lost.zero? ? 'nothing lost' : "LOST #{lost} deliveries")
    puts 'deliveries/s: from the first publish to the node\'s last delivery; busy: the node\'s CPU time over that ' \
         'span (below 100%: the node waited for the publisher, the engine or the subscribers, which share CPU 1)'
    puts format('(%.0f s in all; nodes on CPU 0, engine, publisher and subscribers on CPU 1%s)', seconds,
                @pin ? '' : ', not pinned')
    exit(lost.zero? ? 0 : 1)
  end

  def rows(phase, label = nil)
    phase.nodes.times.map do |i|
      d = phase.deliveries[i]
      s = phase.seconds[i]
      [label || "node #{i + 1}", phase.received[i], format('%.1f%%', 100.0 * phase.received[i] / @messages), d,
       phase.expected[i], s ? format('%.0f', d / s) : '-', s ? format('%.0f%%', 100 * phase.cpu[i] / s) : '-',
       d.positive? ? format('%.2f', phase.cpu[i] * 1e6 / d) : '-']
    end
  end
end
