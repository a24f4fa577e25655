# frozen_string_literal: true

require "digest/sha1"

module BackboneSync
  # Publishes straight into the Redis backplane, from any process, with the
  # same script the servers run (publish.lua): Redis numbers the message and
  # every server node fans it out. No HTTP hop, and it does not matter which
  # nodes are up. Needs the redis-client gem. Safe to share between threads.
  #
  #   publisher = BackboneSync::RedisPublisher.new("redis://127.0.0.1:6379/0")
  #   publisher.publish("/sync/users", { "id" => 1 })   # => the message's offset
  #
  # It also publishes into a Redis Cluster: given several URLs (an Array, or
  # one String of comma-separated URLs), or one URL of a node whose INFO
  # says cluster_enabled:1, it takes them as seed nodes, keeps one client per
  # primary and a slot table from CLUSTER SLOTS, and sends each publish to
  # the primary serving the hash slot of the channel's keys (the core names
  # them; they share one hash tag) with SPUBLISH. It follows MOVED, ASK,
  # failovers and CLUSTERDOWN for at most RETRY_SECONDS (and the timeout of
  # a call under way then), then raises.
  class RedisPublisher
    SCRIPT = File.read(File.expand_path("publish.lua", __dir__)).freeze
    SHA = Digest::SHA1.hexdigest(SCRIPT).freeze
    PREFIX = Server::DEFAULTS[:redis_prefix]
    SLOTS = 16_384
    # A cluster publish gives up after this many seconds or tries of
    # following redirects, failovers and a cluster that is down.
    RETRY_SECONDS = 5
    RETRY_ATTEMPTS = 12

    # The redis setting, its URLs joined by commas.
    attr_reader :url

    # url_or_urls: one URL, or the seed nodes of a Redis Cluster (an Array,
    # or a String of comma-separated URLs). history_size and history_ttl are
    # used only until a server has connected to this Redis: the servers' own
    # settings, which they store there, win (publish.lua). Their defaults are
    # the server's. timeout: seconds, for connecting and for each reply.
    def initialize(url_or_urls = BackboneSync.default_redis_url, prefix: PREFIX,
                   history_size: Server::DEFAULTS[:history_size],
                   history_ttl: Server::DEFAULTS[:history_ttl], timeout: 2)
      begin
        require "redis-client"
      rescue LoadError
        raise LoadError, "BackboneSync::RedisPublisher needs the redis-client gem: add " \
                         "gem \"redis-client\" to your Gemfile and run bundle install"
      end
      urls = BackboneSync.redis_urls(url_or_urls)
      if urls.empty?
        raise ArgumentError, "give the Redis URL, such as \"redis://127.0.0.1:6379/0\", or several " \
                             "(seed nodes of a Redis Cluster), or set BACKBONE_SYNC_REDIS_URL"
      end

      @url = urls.join(",")
      @prefix = prefix.to_s
      @history_size = Integer(history_size)
      @history_ttl = Integer(history_ttl)
      @timeout = timeout
      @urls = urls
      @seeds = urls.map { |url| parse(url) }
      # nil until the first publish asks the one node given whether it is
      # in a cluster; several URLs can only be a cluster's seeds.
      @cluster = @seeds.size > 1 ? cluster_seeds! : nil
      @single = nil # the client of a single Redis
      @clients = {} # "host:port" => the client of a cluster node
      @slots = nil  # slot => "host:port" of its primary
      @lock = Mutex.new
    end

    # Publishes +data+ to +channel+ on every node. Returns the message's
    # offset in its channel. Raises ChannelError, EncodeError, Unreachable
    # when Redis cannot be reached, or PublishError when it refuses.
    def publish(channel, data, event_id: nil)
      channel = BackboneSync.channel!(channel)
      # The delivery up to its ext, built by the C core as the server builds
      # it; the script adds the offset and the epoch (made by the core too).
      head = BackboneSync.delivery_head(channel, BackboneSync.encode_json(data), event_id)
      # Without an event id, one of its own (not in the delivery), as the
      # servers do: a retry of a publish Redis ran but whose answer was lost
      # is dropped rather than numbered anew.
      dedup = event_id || "bs-#{BackboneSync.new_epoch}"
      @lock.synchronize do
        cluster = detect
        keys, pubsub = BackboneSync._redis_names(@prefix, channel, cluster)
        args = [pubsub, channel, head, @history_size, @history_ttl, BackboneSync.new_epoch, dedup,
                cluster ? "SPUBLISH" : "PUBLISH"]
        cluster ? run_in_cluster(BackboneSync._redis_slot(keys[0]), keys, args) : run(single, keys, args)
      end
    rescue RedisClient::Error => e
      raise failure(e, channel)
    end

    # Whether this publisher talks to a Redis Cluster (asks the node on the
    # first call when given one URL; raises Unreachable when it cannot).
    def cluster?
      @lock.synchronize { detect }
    rescue RedisClient::Error => e
      raise failure(e, nil)
    end

    def close
      @lock.synchronize do
        @single&.close
        @clients.each_value(&:close)
        @clients.clear
        @slots = nil
      end
    end

    private

    # The config of a single Redis's client (a seed's, on a cluster).
    def parse(url)
      RedisClient.config(url: url, timeout: @timeout, reconnect_attempts: 2)
    rescue ArgumentError, URI::InvalidURIError
      raise ArgumentError, "redis must be a URL such as \"redis://127.0.0.1:6379/0\", or several for a " \
                           "Redis Cluster, got #{redact(url).inspect}"
    end

    # The seeds of a cluster are on TCP and name db 0 (or none), the only
    # db a cluster has. Returns true.
    def cluster_seeds!
      @seeds.each_with_index do |seed, i|
        if seed.path
          raise ArgumentError, "a Redis Cluster's nodes are reached over TCP: #{redact(@urls[i]).inspect} " \
                               "is a socket path; give redis://host:port URLs"
        end
        next if seed.db.zero?

        raise ArgumentError, "a Redis Cluster has only db 0, but #{redact(@urls[i]).inspect} names db " \
                             "#{seed.db}: drop the /#{seed.db} from the cluster's URL(s)"
      end
      true
    end

    # true for a cluster, false for a single Redis. The one node given is a
    # cluster's when its INFO says cluster_enabled:1.
    def detect
      return @cluster unless @cluster.nil?

      seed = @seeds.first
      probe = seed.path ? nil : node_client("#{seed.host}:#{seed.port}")
      info = begin
        probe ? probe.call("INFO", "cluster") : ""
      rescue RedisClient::CommandError
        "" # INFO renamed away: not a cluster we could use anyway
      end
      if info.to_s.include?("cluster_enabled:1")
        @cluster = cluster_seeds!
      else
        @clients.each_value(&:close)
        @clients.clear
        @cluster = false
      end
    end

    def single
      @single ||= @seeds.first.new_client
    end

    # A node's client, with the seeds' credentials and TLS. It does not
    # reconnect and resend by itself: run_in_cluster tries again, after
    # reading the slot table, within its bound.
    def node_client(node)
      @clients[node] ||= begin
        host, _, port = node.rpartition(":")
        seed = @seeds.first
        RedisClient.config(host: host, port: Integer(port), username: seed.password && seed.username,
                           password: seed.password, ssl: seed.ssl?, ssl_params: seed.ssl_params,
                           timeout: @timeout, reconnect_attempts: 0).new_client
      end
    end

    def drop(node)
      @clients.delete(node)&.close
    end

    def run(client, keys, args)
      client.call("EVALSHA", SHA, keys.size, *keys, *args)
    rescue RedisClient::CommandError => e
      raise unless e.message.start_with?("NOSCRIPT")

      # A node that has not seen the script yet (restarted, or a promoted
      # replica): EVAL runs it and caches it there.
      client.call("EVAL", SCRIPT, keys.size, *keys, *args)
    end

    # Runs the script on the primary of +slot+, following the cluster as it
    # changes, for at most RETRY_SECONDS and RETRY_ATTEMPTS.
    def run_in_cluster(slot, keys, args)
      deadline = monotonic + RETRY_SECONDS
      attempts = 0
      ask = nil
      begin
        attempts += 1
        node = nil
        node = ask || primary(slot, deadline)
        if ask
          ask = nil
          # ASKING holds for the next command of this connection only.
          replies = node_client(node).pipelined(exception: false) do |pipe|
            pipe.call("ASKING")
            pipe.call("EVAL", SCRIPT, keys.size, *keys, *args)
          end
          error = replies.find { |reply| reply.is_a?(RedisClient::Error) }
          raise error if error

          return replies.last
        end
        run(node_client(node), keys, args)
      rescue RedisClient::CommandError => e
        case e.message
        when /\AMOVED \d+ (\S+)/
          # The slot (and most likely others: a failover, a resharding) moved.
          target = endpoint(Regexp.last_match(1), node)
          begin
            refresh_slots(deadline)
          rescue RedisClient::ConnectionError
            nil # the old table, and the next try reads it again
          end
          (@slots ||= Array.new(SLOTS))[slot] = target # even when the node that answered lags
        when /\AASK \d+ (\S+)/
          ask = endpoint(Regexp.last_match(1), node) # this slot is being migrated there
        when /\A(CLUSTERDOWN|TRYAGAIN)/
          @slots = nil
          back_off(attempts, deadline)
        else
          raise
        end
        retry if attempts < RETRY_ATTEMPTS && monotonic < deadline
        raise
      rescue RedisClient::ConnectionError
        # A primary went away (its replica takes over) or the table is stale.
        drop(node) if node
        @slots = nil
        back_off(attempts, deadline)
        retry if attempts < RETRY_ATTEMPTS && monotonic < deadline
        raise
      end
    end

    # The node ("host:port") serving +slot+, from the slot table, which is
    # read again when it is missing.
    def primary(slot, deadline)
      refresh_slots(deadline) unless @slots
      @slots[slot] || raise(RedisClient::CommandError, "CLUSTERDOWN no primary serves hash slot #{slot}")
    end

    # Reads CLUSTER SLOTS from the first node that answers: the primaries
    # known, then the seeds; no other after +deadline+ (a node that hangs
    # costs a timeout each). Closes the clients of nodes no longer primaries.
    def refresh_slots(deadline)
      known = @slots ? @slots.compact.uniq : []
      candidates = (@clients.keys + known + @seeds.map { |s| "#{s.host}:#{s.port}" }).uniq
      errors = []
      candidates.each do |node|
        break if errors.any? && monotonic > deadline

        ranges = node_client(node).call("CLUSTER", "SLOTS")
        table = Array.new(SLOTS)
        ranges.each do |from, to, (host, port, *)|
          host = node.rpartition(":").first if host.to_s.empty? || host == "?"
          table.fill("#{host}:#{port}", from..to)
        end
        @slots = table
        (@clients.keys - table.uniq).each { |stale| drop(stale) }
        return
      rescue RedisClient::Error => e
        drop(node) if e.is_a?(RedisClient::ConnectionError)
        errors << "#{node}: #{e.message}"
      end
      raise RedisClient::CannotConnectError, "no node of the Redis Cluster answered CLUSTER SLOTS " \
                                             "(#{errors.join('; ')})"
    end

    # "host:port" from a MOVED or ASK, whose host is empty when the node
    # does not know it: then it is the host of the node that answered.
    def endpoint(target, from)
      target.start_with?(":") ? "#{from.rpartition(':').first}#{target}" : target
    end

    # None before the second try (a connection closed while idle), then
    # 0.2 s doubling up to 1 s, never past the deadline.
    def back_off(attempts, deadline)
      pause = attempts < 2 ? 0 : [0.05 * (2**attempts), 1.0, deadline - monotonic].min
      sleep(pause) if pause.positive?
    end

    def monotonic
      Process.clock_gettime(Process::CLOCK_MONOTONIC)
    end

    def failure(error, channel)
      what = channel ? "could not publish to #{channel}" : "could not reach Redis"
      if @cluster
        where = "through the Redis Cluster seeded by #{redact(@url)}"
        if error.is_a?(RedisClient::ConnectionError)
          return Unreachable.new("#{what} #{where}: #{error.message} (are its nodes up, and is at least " \
                                 "one seed URL right?)")
        end
        if error.message.match?(/\A(CLUSTERDOWN|TRYAGAIN|MOVED|ASK)/)
          return PublishError.new("#{what} #{where}: the cluster did not settle within #{RETRY_SECONDS}s " \
                                  "(#{error.message}); check that every hash slot is served " \
                                  "(redis-cli --cluster check)")
        end
        return PublishError.new("#{what} #{where}: #{error.message}")
      end

      where = "through Redis at #{redact(@url)}"
      if error.is_a?(RedisClient::ConnectionError)
        Unreachable.new("#{what} #{where}: #{error.message} (is redis-server running and reachable?)")
      else
        PublishError.new("#{what} #{where}: #{error.message} (is redis-server running and reachable?)")
      end
    end

    # A URL without its password.
    def redact(url)
      url.to_s.gsub(%r{//([^:@/,]*):[^@/,]*@}, '//\1:***@')
    end
  end
end
