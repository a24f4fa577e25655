# frozen_string_literal: true

require "uri"

require_relative "broadcast_queue"
require_relative "payload"

module BackboneSync
  # The one broadcaster: where every broadcast of this process goes, for the
  # push macro, the observer, BroadcastJob and the app's own calls. The app
  # never has to care:
  #
  # 1. a BackboneSync::Server running in this process gets them in-process;
  # 2. else, when a Redis URL is configured (redis=, config.backbone_sync.redis
  #    or BACKBONE_SYNC_REDIS_URL), BackboneSync::RedisPublisher puts them
  #    into the backplane every server node listens to;
  # 3. else BackboneSync::Publisher POSTs them to root_address (kept-alive
  #    connection, short timeouts, a few retries) with the shared secret.
  #
  # Routes 2 and 3 go through a BackboneSync::BroadcastQueue: the save
  # returns at once and one thread per process does the network part.
  # Nothing here needs Rails; BackboneSync::Rails::Faye (rails/faye.rb) is
  # its backbone_sync-rails name and answers the same methods:
  #
  #   BackboneSync::Broadcaster.root_address = "http://localhost:9292"
  module Broadcaster
    DEFAULT_ROOT_ADDRESS = "http://localhost:#{BackboneSync::Server::DEFAULTS[:port]}"
    DEFAULT_MOUNT = BackboneSync::Server::DEFAULTS[:mount]

    @lock = Mutex.new
    @root_address = DEFAULT_ROOT_ADDRESS
    @redis = nil
    @server = nil
    @client_url = nil
    @publisher = nil
    @publisher_pid = nil
    @queue = nil
    @queue_size = BackboneSync::BroadcastQueue::DEFAULT_SIZE

    class << self
      attr_reader :root_address

      # Where the server listens, as "http://host:port" (the mount defaults
      # to /faye) or the full "http://host:port/faye".
      def root_address=(address)
        parsed = begin
          URI.parse(address.to_s)
        rescue URI::InvalidURIError
          nil
        end
        unless parsed.is_a?(URI::HTTP) && parsed.host
          raise ArgumentError, "root_address must be the server's http(s) address, such as " \
                               "\"http://localhost:9292\", got #{address.inspect}"
        end

        @lock.synchronize do
          @root_address = address.to_s
          reset_publisher
        end
      end

      # The server's Bayeux URL: root_address plus /faye unless it has a path.
      def server_url
        uri = URI.parse(root_address)
        uri.path = DEFAULT_MOUNT if uri.path.nil? || uri.path.empty? || uri.path == "/"
        uri.to_s
      end

      # The URL browsers use (backbone_sync_tags): the embedded server's
      # when there is one, else client_url= when set, else server_url.
      def client_url
        @client_url || embedded_server&.url || server_url
      end

      attr_writer :client_url

      # The Redis URL of the backplane, or nil: set explicitly, else
      # $BACKBONE_SYNC_REDIS_URL. Several URLs (an Array, or one String of
      # comma-separated URLs) are the seed nodes of a Redis Cluster, and are
      # kept as given.
      def redis
        @redis || BackboneSync.default_redis_url
      end

      def redis=(url)
        @lock.synchronize do
          @redis = if BackboneSync.redis_urls(url).empty? then nil
                   elsif url.is_a?(Array) then url.map(&:to_s).freeze
                   else url.to_s
                   end
          reset_publisher
        end
      end

      # The server this process publishes to in-process: the one set here,
      # else any BackboneSync::Server started in this process.
      def server
        return @server if @server&.running?

        BackboneSync::Server.started.find(&:running?)
      end

      attr_writer :server

      # The server started by config.backbone_sync.embedded, if any.
      attr_reader :embedded_server

      # Starts a server in this process (config.backbone_sync.embedded);
      # +options+ go to BackboneSync::Server.new. Its port defaults to
      # root_address's, and its backplane to this process's redis (the one
      # its publishers use).
      def start_embedded_server(**options)
        uri = URI.parse(root_address)
        defaults = { host: BackboneSync::Server::DEFAULTS[:host], port: uri.port, mount: uri.path.to_s.empty? || uri.path == "/" ? DEFAULT_MOUNT : uri.path,
                     secret: BackboneSync.secret, redis: redis }
        server = BackboneSync::Server.new(**defaults.merge(options)).start
        @embedded_server = server
        server
      end

      def stop_embedded_server
        @embedded_server&.stop
        @embedded_server = nil
      end

      # Which route the next publish takes: :in_process, :redis or :http.
      def route
        return :in_process if server
        return :redis if redis

        :http
      end

      # Sends +data+ to every channel in +channels+: at once to a server
      # in this process (no network), else through the broadcast queue,
      # so the caller never waits on the network. Never raises: a failure
      # (now or in the queue's thread) is logged, counted
      # (BackboneSync.broadcast_failures) and handed to
      # BackboneSync.on_error. Returns the number of channels delivered or
      # queued.
      #
      # +event_ids+ (a Hash channel => event id, for the outbox) travel with
      # the messages: the server drops a second publish of one id. +on_sent+
      # is called with (channel, event_id) once a channel's message is
      # handed to the server (from the queue's thread on routes 2 and 3).
      def publish(channels, data, context = {}, event_ids: nil, on_sent: nil)
        context = context.merge(route: route)
        valid = Array(channels).filter_map do |channel|
          [BackboneSync.sync_channel(channel), event_ids&.[](channel)]
        rescue StandardError => e
          BackboneSync.report_broadcast_error(e, context.merge(channel: channel))
          nil
        end
        local = server
        return queue.push(valid.map(&:first), data, context, event_ids: valid.to_h, on_sent: on_sent) unless local

        valid.count do |channel, event_id|
          send_to(local, channel, data, event_id)
          sent(on_sent, channel, event_id, context)
          true
        rescue StandardError => e
          BackboneSync.report_broadcast_error(e, context.merge(channel: channel))
          false
        end
      end

      # What a committed change of +record+ becomes, for the push macro and
      # the observer alike: the payload (format: :canonical or :legacy, with
      # +origin+) to +channels+, now through publish, or with async: through
      # a BackboneSync::BroadcastJob on +queue+ (the payload is built now:
      # the record may be gone when the job runs). Never raises: a failure is
      # reported as publish's are.
      #
      # +staged+ (a BackboneSync::Outbox::Staged) is what the outbox wrote
      # before the commit: its payload and event ids are published and its
      # rows deleted once sent. With async:, the job carries the event ids
      # and deletes the rows; when it is lost or late, the relay publishes
      # them, and the server drops whichever copy comes second.
      def broadcast_change(record, event, channels, origin:, format: :canonical, async: false, queue: nil, staged: nil)
        context = { model: record.class.name, id: (record.id if record.respond_to?(:id)), event: event.to_s }
        return publish_staged(staged, context) if staged && !async
        return nil if staged&.channels&.empty?

        payload = staged ? staged.payload : BackboneSync::Payload.build(record, event, origin: origin, format: format)
        if async
          require "backbone_sync/broadcast_job"
          job = BackboneSync::BroadcastJob
          job = job.set(queue: queue) if queue
          args = [Array(channels), payload]
          args << staged.event_ids if staged
          job.perform_later(*args)
        else
          publish(channels, payload, context)
        end
        nil
      rescue StandardError => e
        BackboneSync.report_broadcast_error(e, context || { model: record.class.name, event: event.to_s })
      end

      # How many broadcasts may wait for the network (config.backbone_sync.queue_size).
      attr_reader :queue_size

      # Set at boot: a new size makes a new queue (what the old one holds
      # is still sent by its thread, but no longer flushed).
      def queue_size=(size)
        @lock.synchronize do
          next if size == @queue_size && @queue

          @queue = nil
          @queue_size = size
          queue_locked
        end
      end

      # Waits (at most +timeout+ seconds) until every queued broadcast has
      # been sent or reported. True when nothing is left.
      def flush(timeout: 5)
        q = @lock.synchronize { @queue }
        q ? q.flush(timeout: timeout) : true
      end

      # The queue's {queued:, dropped:, circuit:}.
      def queue_stats
        queue.stats
      end

      # Like publish for one channel, but synchronous (also on routes 2 and
      # 3) and raises BackboneSync::Error on failure.
      def publish!(channel, data, event_id: nil)
        publish_one(channel, data, event_id)
      end

      # Drops the kept-alive publisher (after a config change or a fork).
      def reset
        @lock.synchronize { reset_publisher }
      end

      private

      def queue
        @lock.synchronize { queue_locked }
      end

      # Caller holds @lock.
      def queue_locked
        @queue ||= BackboneSync::BroadcastQueue.new(
          size: @queue_size,
          sender: ->(channel, data, event_id) { send_to(publisher, channel, data, event_id) },
          on_failure: ->(error, context) { BackboneSync.report_broadcast_error(error, context) }
        )
      end

      def publish_one(channel, data, event_id = nil)
        channel = BackboneSync.sync_channel(channel)
        send_to(server || publisher, channel, data, event_id)
      end

      # Server, Publisher and RedisPublisher all take event_id: (nil: none).
      def send_to(target, channel, data, event_id)
        target.publish(channel, data, event_id: event_id)
      end

      def sent(on_sent, channel, event_id, context)
        on_sent&.call(channel, event_id)
      rescue StandardError => e
        BackboneSync.report_broadcast_error(e, context.merge(channel: channel, after: :sent))
      end

      # What the outbox staged: published with its event ids; the rows go
      # once the server has them (what is not sent stays for the relay).
      def publish_staged(staged, context)
        return nil if staged.channels.empty?

        pool = staged.pool
        publish(staged.channels, staged.payload, context.merge(outbox: true), event_ids: staged.event_ids,
                                                                           on_sent: lambda { |_channel, event_id|
                                                                             BackboneSync::Outbox.delete([event_id], pool: pool)
                                                                           })
        nil
      end

      # One publisher per process: a forked child opens its own connection.
      def publisher
        @lock.synchronize do
          reset_publisher if @publisher_pid != Process.pid
          @publisher ||= begin
            @publisher_pid = Process.pid
            if (url = redis)
              require "backbone_sync/redis_publisher"
              BackboneSync::RedisPublisher.new(url)
            else
              # A shorter connect timeout than Publisher's default: a save's
              # broadcasts wait behind it in the queue. The rest are Publisher's.
              BackboneSync::Publisher.new(server_url, secret: BackboneSync.secret, open_timeout: 1)
            end
          end
        end
      end

      # Caller holds @lock.
      def reset_publisher
        @queue&.close_circuit
        old = @publisher
        ours = @publisher_pid == Process.pid
        @publisher = nil
        @publisher_pid = nil
        # A publisher inherited over fork shares its socket with the parent:
        # dropping it without closing leaves the parent's connection alone.
        old.close if old && ours
      rescue StandardError
        nil
      end
    end
  end
end
