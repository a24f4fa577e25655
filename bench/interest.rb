#!/usr/bin/env ruby
# frozen_string_literal: true

# bench/interest.rb (bin/bench --nodes 3): what interest-based routing on the
# Redis backplane sends each node, and what a delivery costs a node.
#
# Starts a fresh redis-server and N server nodes (bin/backbone_sync --redis),
# plus one single node on another Redis database for comparison. C channels
# are each subscribed on one node only (channel k on node k mod N, by one
# long-polling session per node); the single node has them all. M messages
# are published round robin straight into Redis (RedisPublisher), each to
# both setups. Printed per node: the messages Redis sent it
# (stats backplane_received) as a share of the engine's, the deliveries its
# session got, and the node's CPU (user+system from /proc) per delivery.
# The share is the deterministic figure: with routing by interest it is
# 1/N; before it, every node received every message.
#
#   bench/interest.rb --nodes 3 --channels 300 --messages 30000

$LOAD_PATH.unshift File.expand_path('../lib', __dir__)
require 'backbone_sync'
require 'backbone_sync/redis_publisher'
require 'json'
require 'net/http'
require 'optparse'
require 'socket'
require 'tmpdir'

ROOT = File.expand_path('..', __dir__)
SECRET = 'bench-interest-secret'
DEADLINE = 180 # seconds for every delivery to arrive

options = { nodes: 3, channels: 300, messages: 30_000 }
OptionParser.new do |o|
  o.banner = 'usage: bench/interest.rb [options]'
  o.on('--nodes N', Integer, 'server nodes sharing one Redis (default 3)') { options[:nodes] = _1 }
  o.on('--channels C', Integer, 'channels, each subscribed on one node (default 300)') { options[:channels] = _1 }
  o.on('--messages M', Integer, 'messages published round robin (default 30000)') { options[:messages] = _1 }
end.parse!
abort 'bench/interest.rb: --nodes must be 2 or more' if options[:nodes] < 2

def free_port
  s = TCPServer.new('127.0.0.1', 0)
  s.addr[1]
ensure
  s&.close
end

def cpu_seconds(pid)
  fields = File.read("/proc/#{pid}/stat").split(') ').last.split
  (Integer(fields[11]) + Integer(fields[12])).fdiv(Etc.sysconf(Etc::SC_CLK_TCK))
end

# One node: a bin/backbone_sync process and the URL it printed.
Node = Struct.new(:pid, :url, :out) do
  def self.start(redis_url)
    r, w = IO.pipe
    pid = Process.spawn(RbConfig.ruby, File.join(ROOT, 'bin/backbone_sync'), '--port', '0', '--redis', redis_url,
                        '--secret', SECRET, '--timeout', '10', out: w, err: w)
    w.close
    line = nil
    Timeout.timeout(20) { line = r.gets until line&.include?('listening on') }
    new(pid, line[%r{https?://\S+}], r)
  end

  def stats
    uri = URI(url)
    req = Net::HTTP::Get.new('/stats')
    req['Authorization'] = "Bearer #{SECRET}"
    JSON.parse(Net::HTTP.start(uri.host, uri.port) { |h| h.request(req) }.body)
  end

  def stop
    Process.kill('TERM', pid)
    Timeout.timeout(10) { Process.wait(pid) }
  rescue Errno::ESRCH, Errno::ECHILD
    nil
  end
end

# A long-polling Bayeux session that counts deliveries.
class Session
  attr_reader :count

  def initialize(url, channels)
    @uri = URI(url)
    @http = Net::HTTP.start(@uri.host, @uri.port, read_timeout: 30)
    @id = post([{ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['long-polling'] }])
          .first.fetch('clientId')
    channels.each_slice(100) do |slice|
      reply = post([{ channel: '/meta/subscribe', clientId: @id, subscription: slice }]).first
      raise "subscribe failed: #{reply}" unless reply['successful']
    end
    @count = 0
  end

  def drain_until(expected, deadline)
    while @count < expected && Process.clock_gettime(Process::CLOCK_MONOTONIC) < deadline
      msgs = post([{ channel: '/meta/connect', clientId: @id, connectionType: 'long-polling' }])
      @count += msgs.count { |m| m.key?('data') && !m['channel'].start_with?('/meta/') }
    end
    @count
  end

  private

  def post(messages)
    req = Net::HTTP::Post.new(@uri.path, 'Content-Type' => 'application/json')
    JSON.parse(@http.request(req, JSON.generate(messages)).body)
  end
end

require 'etc'
require 'timeout'
Dir.mktmpdir('bench-interest') do |dir|
  port = free_port
  redis_pid = Process.spawn('redis-server', '--port', port.to_s, '--bind', '127.0.0.1', '--save', '',
                            '--appendonly', 'no', '--dir', dir, out: File::NULL, err: File::NULL)
  nodes = []
  begin
    Timeout.timeout(10) do
      loop do
        TCPSocket.new('127.0.0.1', port).close
        break
      rescue Errno::ECONNREFUSED
        sleep 0.05
      end
    end
    n, c, m = options.values_at(:nodes, :channels, :messages)
    names = Array.new(c) { |k| "/bench/c#{k}" }
    nodes = Array.new(n) { Node.start("redis://127.0.0.1:#{port}/0") }
    single = Node.start("redis://127.0.0.1:#{port}/1")
    sessions = nodes.each_with_index.map { |node, i| Session.new(node.url, names.select.with_index { |_, k| k % n == i }) }
    lone = Session.new(single.url, names)
    all = nodes + [single]
    cpu_before = all.to_h { |node| [node, cpu_seconds(node.pid)] }
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + DEADLINE
    expected = Array.new(n) { |i| (0...m).count { |j| j % c % n == i } }
    drains = sessions.each_with_index.map { |s, i| Thread.new { s.drain_until(expected[i], deadline) } }
    drains << Thread.new { lone.drain_until(m, deadline) }
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    cluster = BackboneSync::RedisPublisher.new("redis://127.0.0.1:#{port}/0")
    alone = BackboneSync::RedisPublisher.new("redis://127.0.0.1:#{port}/1")
    m.times do |j|
      cluster.publish(names[j % c], { 'j' => j })
      alone.publish(names[j % c], { 'j' => j })
    end
    drains.each(&:join)
    seconds = Process.clock_gettime(Process::CLOCK_MONOTONIC) - started

    puts "bench/interest: #{n} nodes over one Redis, #{c} channels each subscribed on one node, " \
         "#{m} messages (and a single node with every channel, on its own Redis database)"
    puts format('%-8s %12s %8s %12s %12s %16s', 'node', 'from Redis', 'share', 'deliveries', 'expected',
                'CPU/delivery')
    rows = all.each_with_index.map do |node, i|
      got = i < n ? sessions[i].count : lone.count
      want = i < n ? expected[i] : m
      received = node.stats['backplane_received']
      cpu = cpu_seconds(node.pid) - cpu_before[node]
      label = i < n ? "node #{i + 1}" : 'single'
      puts format('%-8s %12d %7.1f%% %12d %12d %13.1f µs', label, received, 100.0 * received / m, got, want,
                  got.zero? ? 0 : cpu * 1e6 / got)
      [received, got, want, cpu]
    end
    shares = rows.first(n).map { |r| r[0].fdiv(m) }
    puts format('each of the %d nodes received %.3f of the engine\'s messages (1/%d = %.3f; before ' \
                'routing by interest: 1.000)', n, shares.sum / n, n, 1.0 / n)
    puts format('CPU per delivery, cluster node / single node: %.2f (this %d-core machine shows cost, not scaling; ' \
                '%.1f s for the run)', rows.first(n).sum { _1[3] } / rows.first(n).sum { _1[1] } /
                (rows.last[3] / rows.last[1]), Etc.nprocessors, seconds)
    lost = rows.sum { |r| r[2] - r[1] }
    puts lost.zero? ? 'nothing lost' : "LOST #{lost} deliveries"
    exit(lost.zero? ? 0 : 1)
  ensure
    cluster&.close
    alone&.close
    (nodes + [single].compact).each(&:stop)
    Process.kill('TERM', redis_pid)
    Process.wait(redis_pid)
  end
end
