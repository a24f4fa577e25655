# frozen_string_literal: true

# The engines behind bin/bench --nodes and --engines: one redis-server or a
# Redis Cluster (as a Target that writes bench/engines/rpublish.c's plan),
# and the C publishers built at run time.

$LOAD_PATH.unshift File.expand_path('../lib', __dir__)
require 'backbone_sync'
require 'redis-client'

module Engines
  # The child processes a bench starts (kept in @children), stopped within
  # a bound: TERM, then KILL after 5 s.
  module Children
    def stop_pid(pid)
      return unless @children.delete(pid)

      Process.kill('TERM', pid)
      deadline = now + 5
      sleep 0.05 until Process.wait(pid, Process::WNOHANG) || now > deadline
      return if now <= deadline

      Process.kill('KILL', pid)
      Process.wait(pid)
    rescue Errno::ESRCH, Errno::ECHILD
      nil
    end

    def now
      Process.clock_gettime(Process::CLOCK_MONOTONIC)
    end
  end

  ROOT = File.expand_path('..', __dir__)
  SCRIPT = File.read(File.join(ROOT, 'lib/backbone_sync/publish.lua'))
  PREFIX = BackboneSync::Server::DEFAULTS[:redis_prefix]
  PAYLOAD = { 'pad' => 'x' * 100 }.freeze # a ~200-byte delivery, as bin/bench's

  # Where publishes go. cluster: a BackboneSyncSpec::RedisCluster, or nil
  # for one redis-server (redis: its BackboneSyncSpec::RedisProcess).
  Target = Struct.new(:cluster, :redis) do
    def self.cluster(cluster) = new(cluster, nil)
    def self.single(redis) = new(nil, redis)

    def name = cluster ? 'a Redis Cluster' : 'one redis-server'

    def description
      cluster ? "a Redis Cluster of #{primaries.size} primaries (sharded pub/sub)" : 'one redis-server (PUBLISH)'
    end

    # What a node's --redis takes: every primary's URL, or the one URL.
    def node_url = cluster ? cluster.urls.join(',') : redis.url

    def primaries = cluster ? cluster.primary_ports : [redis.port]

    def port_of(key)
      return redis.port unless cluster

      slot = BackboneSync._redis_slot(key)
      @slots ||= cluster.slots
      @slots.each { |from, to, port| return port if slot.between?(from, to) }
      raise "no primary serves slot #{slot}"
    end

    # Writes the plan for channels (see rpublish.c); returns its path.
    # raw: a bare (S)PUBLISH of the delivery instead of publish.lua, to
    # show what the script costs over the transport.
    def plan(dir, channels, raw: false)
      ports = primaries
      shas = ports.to_h { |p| [p, load_script(p)] }
      path = File.join(dir, "plan-#{ports.join('-')}-#{channels.size}#{raw ? '-raw' : ''}")
      File.open(path, 'w') do |f|
        ports.each { f.puts "port #{_1}" }
        channels.each { |ch| f.puts plan_line(ch, ports, shas, raw) }
      end
      path
    end

    # publish.lua's SHA on the primary at port.
    def load_script(port)
      client = RedisClient.new(host: '127.0.0.1', port: port)
      client.call('SCRIPT', 'LOAD', SCRIPT)
    ensure
      client&.close
    end

    def plan_line(channel, ports, shas, raw)
      keys, pubsub = BackboneSync._redis_names(PREFIX, channel, !cluster.nil?)
      port = port_of(keys[1])
      head = BackboneSync.delivery_head(channel, BackboneSync.encode_json(PAYLOAD), nil)
      send = cluster ? 'SPUBLISH' : 'PUBLISH'
      args = if raw
               [send, "#{pubsub}ch:#{channel}", "#{head}\"offset\":1,\"epoch\":\"#{BackboneSync.new_epoch}\"}}]"]
             else
               ['EVALSHA', shas.fetch(port), keys.size.to_s, *keys, pubsub, channel, head,
                BackboneSync::Server::DEFAULTS[:history_size].to_s, BackboneSync::Server::DEFAULTS[:history_ttl].to_s,
                BackboneSync.new_epoch, '', send]
             end
      raise "a tab or newline in #{channel}'s publish" if args.any? { _1.match?(/[\t\n]/) }

      "cmd #{ports.index(port)}\t#{pubsub}ch:#{channel}\t#{args.join("\t")}"
    end

    def subscribe_command = cluster ? 'SSUBSCRIBE' : 'SUBSCRIBE'

    def stop
      cluster ? cluster.stop : redis.stop
    end
  end

  module_function

  def compile(dir, name, source, *libs)
    out = File.join(dir, name)
    cc = ENV.fetch('CC', 'cc')
    ok = system(cc, '-O2', '-Wall', '-Wextra', '-o', out, File.join(ROOT, 'bench/engines', source), *libs,
                err: File.join(dir, "#{name}.cc.log"))
    ok ? out : nil
  end

  def build_rpublish(dir)
    compile(dir, 'rpublish', 'rpublish.c', '-lhiredis', '-lpthread') ||
      abort("bin/bench: building bench/engines/rpublish.c failed (needs libhiredis-dev: bin/setup): " \
            "#{File.read(File.join(dir, 'rpublish.cc.log'))[0, 800]}")
  end

  def parse(out)
    out.lines.map { _1.chomp.split(' ', 2) }.select { _1.size == 2 }.to_h
  end

  # Runs rpublish to the end; returns [output, success].
  def rpublish(bin, plan, messages, *extra)
    pub = spawn_rpublish(bin, plan, messages, *extra)
    out = finish(pub, 120)
    [out, out['ok'] == '1']
  end

  def spawn_rpublish(bin, plan, messages, *extra)
    spawn(bin, '--plan', plan, '--messages', messages.to_s, *extra)
  end

  # Starts a publisher; [pid, its output] for #finish.
  def spawn(*cmd)
    r, w = IO.pipe
    pid = Process.spawn(*cmd, out: w, err: w)
    w.close
    [pid, r]
  end

  # Waits for a publisher at most `seconds` (then kills it); returns its
  # key-value output, with ok 1 when it exited 0.
  def finish(pub, seconds)
    pid, r = pub
    out = +''
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + seconds
    status = nil
    loop do
      out << r.read_nonblock(65_536, exception: false).then { _1.is_a?(String) ? _1 : '' } if IO.select([r], nil, nil, 0.1)
      break if (status = Process.wait2(pid, Process::WNOHANG)&.last)
      next unless Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline

      Process.kill('KILL', pid)
      status = Process.wait2(pid).last
      out << "\nkilled after #{seconds} s\n"
      break
    end
    out << r.read
    parse(out).merge('ok' => status.success? ? '1' : '0', 'raw' => out)
  ensure
    abandon(pub) unless status
    r.close unless r.closed?
  end

  # Kills a publisher that is still running (an interrupt, an error).
  def abandon(pub)
    pid, = pub
    return unless pid && Process.wait(pid, Process::WNOHANG).nil?

    Process.kill('KILL', pid)
    Process.wait(pid)
  rescue Errno::ESRCH, Errno::ECHILD
    nil
  end
end
