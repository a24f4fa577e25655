# frozen_string_literal: true

# bin/bench --engines: the publish rate each candidate engine sustains alone
# (no server node), in one run, on the same machine, with one fast C
# publisher and one subscriber receiving every message:
#
#   redis          publish.lua (EVALSHA, PUBLISH) on one redis-server
#   PUBLISH only   a bare PUBLISH of the same delivery, no script: the
#                  transport alone, beside core NATS
#   cluster        publish.lua (SPUBLISH) on a 3-primary Redis Cluster,
#                  channels spread over the primaries by their partition tag
#   nats           core NATS, one nats-server
#   nats cluster   core NATS, 3 nats-servers in a cluster: published on the
#                  first, received on the second
#   jetstream      JetStream publish, each acknowledged, into a memory stream
#                  keeping 100 messages per subject (history), one server
#   jetstream R3   the same on the 3-server cluster, the stream replicated 3 times
#
# Redis through bench/engines/rpublish.c (hiredis, pipelined, at most 64 in
# flight per primary), NATS through bench/engines/natspub.c (libnats). A
# part whose tool is missing is skipped with a message. Nothing is pinned:
# an engine may use both cores, as it would use its machine's.

require 'etc'
require 'fileutils'
require 'socket'
require 'tmpdir'
require_relative 'engines'
require_relative '../spec/support/redis_process'
require_relative '../spec/support/redis_cluster'

class EnginesBench
  include Engines::Children
  REPEAT = 3 # runs per engine; the median is printed

  def initialize(messages:, channels:)
    @messages = messages
    @channels = Array.new(channels) { |k| "/bench/c#{k}" }
    @dir = Dir.mktmpdir('backbone_sync-engines')
    @children = []
  end

  def run
    rows = []
    rpublish = Engines.build_rpublish(@dir)
    natspub = build_natspub
    rows.concat(redis_single(rpublish))
    rows << redis_cluster(rpublish)
    rows.concat(nats(natspub)) if natspub
    report(rows.compact)
  ensure
    @children.dup.each { stop_pid(_1) }
    FileUtils.rm_rf(@dir)
  end

  private

  Row = Struct.new(:engine, :rates, :received_rates, :note, :cpu_us)

  def median(values) = values.sort[values.size / 2]

  # ---- Redis ----------------------------------------------------------------

  def redis_single(bin)
    $stderr.print 'bin/bench: publish.lua on one redis-server ... '
    redis = BackboneSyncSpec::RedisProcess.new(BackboneSyncSpec::RedisProcess.free_port).start
    target = Engines::Target.single(redis)
    rows = [rpublish_row('redis (1 server)', bin, target, 'publish.lua EVALSHA + PUBLISH'),
            rpublish_row('redis PUBLISH only', bin, target, 'a bare PUBLISH, no script: the transport alone', raw: true)]
    warn 'done'
    rows
  ensure
    redis&.stop
  end

  def redis_cluster(bin)
    $stderr.print 'bin/bench: publish.lua on a 3-primary Redis Cluster ... '
    cluster = BackboneSyncSpec::RedisCluster.new(primaries: 3, replicas: 0)
    begin
      cluster.start
    rescue StandardError => e
      warn "skipped: #{e.message}"
      return nil
    end
    row = rpublish_row('redis cluster (3 primaries)', bin, Engines::Target.cluster(cluster),
                       'publish.lua EVALSHA + SPUBLISH, one connection (and publishing thread) per primary')
    warn 'done'
    row
  ensure
    cluster&.stop
  end

  def rpublish_row(label, bin, target, note, raw: false)
    plan = target.plan(@dir, @channels, raw: raw)
    pids = target.primaries.map { |p| redis_pid(p) }
    cpu = []
    runs = Array.new(REPEAT) do
      before = cpu_seconds(pids)
      out, ok = Engines.rpublish(bin, plan, @messages, '--subscribe', target.subscribe_command)
      raise "#{label}: #{out['raw']}" unless ok

      cpu << (cpu_seconds(pids) - before) * 1e6 / Integer(out['published'])
      out
    end
    Row.new(label, runs.map { _1['msgs_per_sec'].to_f }, runs.map { _1['received_per_sec'].to_f }, note, median(cpu))
  end

  def redis_pid(port)
    info = RedisClient.new(host: '127.0.0.1', port: port).then { |c| c.call('INFO', 'server').tap { c.close } }
    Integer(info[/process_id:(\d+)/, 1])
  end

  # On-CPU seconds of every thread of these processes (schedstat, ns).
  def cpu_seconds(pids)
    pids.sum do |pid|
      Dir["/proc/#{pid}/task/*/schedstat"].sum do |f|
        Integer(File.read(f).split.first)
      rescue Errno::ENOENT, Errno::ESRCH
        0
      end
    end / 1e9
  end

  # ---- NATS -----------------------------------------------------------------

  def build_natspub
    unless system('nats-server', '--version', out: File::NULL, err: File::NULL)
      warn 'bin/bench: skipping NATS: nats-server is not installed (apt-get install nats-server, or bin/setup)'
      return nil
    end
    bin = Engines.compile(@dir, 'natspub', 'natspub.c', '-lnats')
    warn 'bin/bench: skipping NATS: building bench/engines/natspub.c failed (needs libnats-dev: bin/setup)' unless bin
    bin
  end

  def nats(bin)
    rows = []
    $stderr.print 'bin/bench: core NATS and JetStream on one nats-server ... '
    @nats_pids = []
    port = start_nats('one', jetstream: true)
    rows << natspub_row('nats (1 server)', bin, port, port, [], 'core NATS publish')
    rows << natspub_row('jetstream (1 server)', bin, port, port, ['--js'],
                        'JetStream publish, acked (async, 256 in flight), memory stream, 100 per subject')
    warn 'done'
    $stderr.print 'bin/bench: core NATS and JetStream on a 3-server NATS cluster ... '
    @nats_pids = []
    ports = start_nats_cluster(3)
    rows << natspub_row('nats cluster (3 servers)', bin, ports[0], ports[1], [],
                        'core NATS, published on server 1, received on server 2')
    rows << natspub_row('jetstream cluster (R3)', bin, ports[0], ports[1], ['--js', '--replicas', '3'],
                        'JetStream as above, the stream replicated on 3 servers')
    warn 'done'
    rows
  rescue RuntimeError => e
    warn "failed: #{e.message}"
    rows
  end

  # A failed run (an unacknowledged publish, a message not received) is
  # told in the row's note, and left out of its median.
  def natspub_row(label, bin, port, sub_port, extra, note)
    cpu = []
    failed = []
    runs = Array.new(REPEAT) do
      before = cpu_seconds(@nats_pids)
      pub = Engines.spawn(bin, '--url', "nats://127.0.0.1:#{port}", '--sub-url', "nats://127.0.0.1:#{sub_port}",
                          '--messages', @messages.to_s, '--channels', @channels.size.to_s, *extra)
      out = Engines.finish(pub, 120)
      if out['ok'] == '1'
        cpu << (cpu_seconds(@nats_pids) - before) * 1e6 / Integer(out['published'])
        out
      else
        failed << "errors #{out['errors'] || '?'}, received #{out['received'] || '?'} of #{out['published'] || '?'}"
        nil
      end
    end.compact
    raise "#{label}: every run failed (#{failed.join('; ')})" if runs.empty?

    note += " (#{failed.size} of #{REPEAT} runs failed: #{failed.join('; ')})" unless failed.empty?
    Row.new(label, runs.map { _1['msgs_per_sec'].to_f }, runs.map { _1['received_per_sec'].to_f }, note, median(cpu))
  end

  def free_port = BackboneSyncSpec::RedisProcess.free_port

  # Starts a nats-server; returns its client port once it accepts.
  def start_nats(name, jetstream: false, cluster: nil)
    port = free_port
    store = File.join(@dir, "nats-#{name}")
    cmd = ['nats-server', '-a', '127.0.0.1', '-p', port.to_s, '-n', "bench-#{name}"]
    cmd += ['-js', '-sd', store] if jetstream
    cmd += cluster if cluster
    log = File.join(@dir, "nats-#{name}.log")
    pid = Process.spawn(*cmd, out: log, err: [:child, :out])
    @children << pid
    @nats_pids << pid
    wait_port(port, log)
    port
  end

  # n servers, each routed to all the others; returns their client ports
  # once each has its n - 1 routes.
  def start_nats_cluster(n)
    cports = Array.new(n) { free_port }
    routes = cports.map { "nats-route://127.0.0.1:#{_1}" }.join(',')
    ports = cports.each_with_index.map do |cp, i|
      start_nats("c#{i}", jetstream: true, cluster: ['--cluster_name', 'bench', '--cluster', "nats://127.0.0.1:#{cp}",
                                                     '--routes', routes])
    end
    deadline = now + 10
    until (0...n).all? { |i| File.read(File.join(@dir, "nats-c#{i}.log")).scan('Route connection created').size >= n - 1 }
      raise "the NATS cluster did not form within 10 s" if now > deadline

      sleep 0.1
    end
    ports
  end

  def wait_port(port, log)
    deadline = now + 10
    loop do
      TCPSocket.new('127.0.0.1', port).close
      return
    rescue SystemCallError
      raise "nats-server did not listen within 10 s: #{File.read(log)[-500..]}" if now > deadline

      sleep 0.05
    end
  end

  # ---- the report -----------------------------------------------------------

  def report(rows)
    puts
    puts "bin/bench --engines: #{@messages} messages of ~200 bytes over #{@channels.size} channels, one C " \
         "publisher, one subscriber receiving all; median of #{REPEAT} runs; not pinned, #{Etc.nprocessors} cores"
    row = '%-28s %12s %12s %9s %11s  %s'
    puts format(row, 'engine', 'publish/s', 'received/s', 'x redis', 'CPU us/msg', 'what')
    base = rows.first && median(rows.first.rates)
    rows.each do |r|
      rate = median(r.rates)
      puts format(row, r.engine, format('%.0f', rate), format('%.0f', median(r.received_rates)),
                  base ? format('%.2fx', rate / base) : '-', r.cpu_us ? format('%.2f', r.cpu_us) : '-', r.note)
    end
    puts 'CPU us/msg: the engine\'s processes\' on-CPU time (all servers or shards together) per message published; ' \
         '1e6 / it is what one core would sustain'
    puts "(runs: #{rows.map { |r| "#{r.engine}: #{r.rates.map { format('%.0f', _1) }.join('/')}" }.join('; ')})"
  end
end
