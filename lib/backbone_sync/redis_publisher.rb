# frozen_string_literal: true

module BackboneSync
  # Publishes straight into the Redis backplane, from any process, with the
  # same script the servers run (publish.lua): Redis numbers the message and
  # every server node fans it out. No HTTP hop, and it does not matter which
  # nodes are up. Needs the redis-client gem. Safe to share between threads.
  #
  #   publisher = BackboneSync::RedisPublisher.new("redis://127.0.0.1:6379/0")
  #   publisher.publish("/sync/users", { "id" => 1 })   # => the message's offset
  class RedisPublisher
    SCRIPT = File.read(File.expand_path("publish.lua", __dir__)).freeze
    PREFIX = Server::DEFAULTS[:redis_prefix]

    attr_reader :url

    # history_size and history_ttl are used only until a server has
    # connected to this Redis: the servers' own settings, which they store
    # there, win (publish.lua). Their defaults are the server's.
    def initialize(url = BackboneSync.default_redis_url, prefix: PREFIX,
                   history_size: Server::DEFAULTS[:history_size],
                   history_ttl: Server::DEFAULTS[:history_ttl], timeout: 2)
      begin
        require "redis-client"
      rescue LoadError
        raise LoadError, "BackboneSync::RedisPublisher needs the redis-client gem: add " \
                         "gem \"redis-client\" to your Gemfile and run bundle install"
      end
      if url.nil? || url.to_s.empty?
        raise ArgumentError, "give the Redis URL, such as \"redis://127.0.0.1:6379/0\", " \
                             "or set BACKBONE_SYNC_REDIS_URL"
      end

      @url = url.to_s
      @prefix = prefix.to_s
      @history_size = Integer(history_size)
      @history_ttl = Integer(history_ttl)
      @client = RedisClient.config(url: @url, timeout: timeout, reconnect_attempts: 2).new_client
      @sha = nil
      @lock = Mutex.new
    end

    # Publishes +data+ to +channel+ on every node. Returns the message's
    # offset in its channel. Raises ChannelError, EncodeError, or
    # PublishError when Redis cannot be reached.
    def publish(channel, data, event_id: nil)
      channel = BackboneSync.channel!(channel)
      # The delivery up to its ext, built by the C core as the server builds
      # it; the script adds the offset and the epoch (made by the core too).
      head = BackboneSync.delivery_head(channel, BackboneSync.encode_json(data), event_id)
      keys, pubsub = BackboneSync._redis_names(@prefix, channel, false)
      args = [pubsub, channel, head, @history_size, @history_ttl, BackboneSync.new_epoch, event_id.to_s, "PUBLISH"]
      @lock.synchronize { run(keys, args) }
    rescue RedisClient::Error => e
      raise e.is_a?(RedisClient::ConnectionError) ? Unreachable : PublishError, "could not publish to #{channel} through Redis at #{@url}: #{e.message} " \
                          "(is redis-server running and reachable?)"
    end

    def close
      @lock.synchronize { @client.close }
    end

    private

    def run(keys, args)
      @sha ||= @client.call("SCRIPT", "LOAD", SCRIPT)
      @client.call("EVALSHA", @sha, keys.size, *keys, *args)
    rescue RedisClient::CommandError => e
      raise unless e.message.start_with?("NOSCRIPT")

      # Redis restarted and forgot the script.
      @sha = nil
      @client.call("EVAL", SCRIPT, keys.size, *keys, *args)
    end
  end
end
