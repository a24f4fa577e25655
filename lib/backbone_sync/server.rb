# frozen_string_literal: true

require "logger"
require "uri"

module BackboneSync
  # A Faye-compatible (Bayeux) WebSocket and long-polling server running in a
  # native thread of this process. Run it in exactly one process: start it
  # after forking, never before, and publish from other processes over HTTP
  # with BackboneSync::Publisher.
  #
  #   server = BackboneSync::Server.new(port: 9292, secret: ENV["BACKBONE_SYNC_SECRET"]).start
  #   server.publish("/sync/users", { "id" => 1 })
  #   server.stop
  #
  # The C extension defines the private primitives (_configure, _start,
  # _stop, _forget, _publish, _stats, _running?, _port); this class owns
  # validation, defaults, logging and the process model. After a fork the
  # core marks an inherited server stopped (_forget: running? is false,
  # _stop does nothing); @forked_from is only what Ruby tells the caller.
  class Server
    CLIENT_JS = File.expand_path("../../vendor/assets/javascripts/backbone_sync/faye.js", __dir__)
    LOG_LEVELS = { "E" => :error, "W" => :warn, "I" => :info, "D" => :debug }.freeze

    attr_reader :host, :mount, :timeout, :key, :cert, :secret, :logger, :verbose,
                :signed_subscriptions, :public_channels, :max_message_size, :max_depth,
                :max_batch, :max_subscriptions, :max_queue, :max_clients, :max_channels, :request_timeout,
                :allowed_origins, :history_size, :history_ttl, :history_memory, :redis, :redis_prefix,
                :event_loop

    # Servers started in this process, stopped at exit and forgotten in
    # forked children.
    @started = []
    @started_lock = Mutex.new

    class << self
      def register(server)
        @started_lock.synchronize { @started << server unless @started.include?(server) }
      end

      def unregister(server)
        @started_lock.synchronize { @started.delete(server) }
      end

      def started
        @started_lock.synchronize { @started.dup }
      end

      # Process._fork hook, child side: the service thread is gone, so every
      # inherited server is marked stopped without touching its C state.
      def after_fork_in_child
        servers = @started
        @started = []
        @started_lock = Mutex.new
        servers.each(&:forget_after_fork)
      end

      def stop_all
        started.each do |server|
          server.stop
        rescue StandardError => e
          warn "backbone_sync: stopping #{server.url} at exit failed: #{e.message}"
        end
      end
    end

    # Every default of the server, written once: the C core takes explicit
    # values (_configure), and the other Ruby classes that need one of these
    # (RedisPublisher's history settings and key prefix, the embedded
    # server's host and mount) read it here.
    DEFAULTS = {
      host: "127.0.0.1", port: 9292, mount: "/faye", timeout: 45,
      max_message_size: 65_536, max_depth: 32, max_batch: 100,
      max_subscriptions: 1000, max_queue: 1000, max_clients: 100_000, max_channels: 100_000,
      request_timeout: 10, history_size: 100, history_ttl: 300, history_memory: 64 * 1024 * 1024,
      redis_prefix: "backbone_sync:", event_loop: :poll
    }.freeze

    # The loops the service thread can run libwebsockets on: :poll, lws's own
    # poll(2) loop; :ev, a libev (epoll) loop, which needs libev and lws's
    # libev plugin (apt-get install libwebsockets-evlib-ev libev-dev).
    EVENT_LOOPS = %i[poll ev].freeze

    def initialize(host: DEFAULTS[:host], port: DEFAULTS[:port], mount: DEFAULTS[:mount],
                   timeout: DEFAULTS[:timeout], key: nil, cert: nil, secret: nil, logger: nil, verbose: false,
                   signed_subscriptions: false, public_channels: [],
                   max_message_size: DEFAULTS[:max_message_size], max_depth: DEFAULTS[:max_depth],
                   max_batch: DEFAULTS[:max_batch], max_subscriptions: DEFAULTS[:max_subscriptions],
                   max_queue: DEFAULTS[:max_queue], max_clients: DEFAULTS[:max_clients],
                   max_channels: DEFAULTS[:max_channels], request_timeout: DEFAULTS[:request_timeout],
                   allowed_origins: nil, history_size: DEFAULTS[:history_size],
                   history_ttl: DEFAULTS[:history_ttl], history_memory: DEFAULTS[:history_memory],
                   redis: BackboneSync.default_redis_url, redis_prefix: DEFAULTS[:redis_prefix],
                   event_loop: DEFAULTS[:event_loop])
      @host = validate_host(host)
      @port = validate_int(:port, port, 0, 65_535, "use 0 to pick a free port")
      @mount = validate_mount(mount)
      @timeout = validate_int(:timeout, timeout, 1, 3600, "seconds a long-poll /meta/connect is held")
      @key, @cert = validate_tls(key, cert)
      @secret = validate_secret(secret)
      @logger = validate_logger(logger)
      @verbose = verbose ? true : false
      @signed_subscriptions = validate_signed(signed_subscriptions)
      @public_channels = validate_patterns(:public_channels, public_channels)
      @max_message_size = validate_int(:max_message_size, max_message_size, 1024, 64 * 1024 * 1024)
      @max_depth = validate_int(:max_depth, max_depth, 2, 64)
      @max_batch = validate_int(:max_batch, max_batch, 1, 10_000)
      @max_subscriptions = validate_int(:max_subscriptions, max_subscriptions, 1, 100_000)
      @max_queue = validate_int(:max_queue, max_queue, 1, 10_000_000)
      @max_clients = validate_int(:max_clients, max_clients, 1, 10_000_000, "live Bayeux sessions")
      @max_channels = validate_int(:max_channels, max_channels, 1, 10_000_000,
                                   "channels and patterns with subscribers, over all clients")
      @request_timeout = validate_int(:request_timeout, request_timeout, 1, 3600,
                                      "seconds for an HTTP request's headers, and again for its body")
      @allowed_origins = validate_origins(allowed_origins)
      # History lets a client that reconnects get what it missed (ext.since);
      # 0 or false turns it off.
      @history_size = validate_int(:history_size, history_size || 0, 0, 100_000, "0 turns history off")
      @history_ttl = validate_int(:history_ttl, history_ttl, 1, 7 * 86_400, "seconds")
      @history_memory = validate_int(:history_memory, history_memory, 0, 1 << 40, "bytes over all channels")
      @redis = validate_redis(redis)
      @redis_prefix = redis_prefix.to_s
      @event_loop = validate_event_loop(event_loop)
      @lock = Mutex.new
      @forked_from = nil
      @bound_port = nil
    end

    # Binds and starts serving; returns self once listening. Raises
    # BackboneSync::StartError when it cannot (for example, the port is taken).
    def start
      @lock.synchronize do
        if @forked_from
          raise NotRunning, "this server was started in process #{@forked_from}, before this " \
                            "process forked; start a new BackboneSync::Server here, or publish " \
                            "to the parent's over HTTP with BackboneSync::Publisher"
        end
        return self if _running?

        check_tls_files
        open_log
        begin
          _configure(native_options)
          _start
        rescue StandardError
          close_log
          raise
        end
        @bound_port = _port
        self.class.register(self)
      end
      self
    end

    # Idempotent: closes every connection and joins the service thread.
    def stop
      @lock.synchronize do
        _stop # in a forked child the C core knows there is nothing to join
        close_log
        self.class.unregister(self)
      end
      nil
    end

    def running?
      _running?
    end

    # The bound port once started (useful with port: 0), else the configured one.
    def port
      @bound_port || @port
    end

    def url
      scheme = key ? "https" : "http"
      h = host.include?(":") ? "[#{host}]" : host
      "#{scheme}://#{h}:#{port}#{mount}"
    end

    # Sends +data+ (encoded like BackboneSync.encode_json) to the channel's
    # subscribers. Returns nil; the delivery happens in the server's thread.
    # +event_id+ (a String of 1 to 128 bytes) travels in the message's
    # ext.event_id, and while the channel's history keeps a message published
    # with it, a second publish with it is dropped (stats[:duplicates_dropped]):
    # a broadcast sent twice, by a retry or by the outbox relay, arrives once.
    def publish(channel, data, event_id: nil)
      channel = channel.to_s if channel.is_a?(Symbol)
      unless channel.is_a?(String)
        raise ChannelError, "channel must be a String such as \"/sync/users\", got #{channel.inspect}"
      end
      if @forked_from
        raise NotRunning, "this server runs in process #{@forked_from}, not in this forked " \
                          "child (#{Process.pid}); publish over HTTP with " \
                          "BackboneSync::Publisher.new(#{url.inspect}, secret: ...)"
      end

      _publish(channel, data, event_id)
    end

    def stats
      _stats
    end

    # What the app's outbox holds ({waiting: Integer, oldest_age: seconds}),
    # shown in stats and GET /stats as outbox_waiting and outbox_oldest_age.
    # The outbox relay sets it when it runs in this process.
    def outbox_stats=(stats)
      waiting = Integer(stats.fetch(:waiting))
      oldest_ms = (Float(stats.fetch(:oldest_age) || 0) * 1000).round
      _set_outbox([waiting, 0].max, [oldest_ms, 0].max)
    end

    def inspect
      "#<#{self.class} #{url} #{running? ? 'running' : 'stopped'}>"
    end

    # Child side of fork; called by Server.after_fork_in_child.
    def forget_after_fork
      @forked_from = Process.ppid
      _forget
      # The child's copies of the log pipe: the parent's reader thread keeps
      # its own; no thread reads these here.
      [@log_reader, @log_writer].each { |io| io&.close unless io&.closed? }
      @log_reader = @log_writer = @log_thread = nil
    end

    private

    def native_options
      {
        host: host, port: @port, mount: mount, timeout: timeout, key: key, cert: cert,
        secret: secret, verbose: verbose, signed_subscriptions: signed_subscriptions,
        public_channels: public_channels, max_message_size: max_message_size,
        max_depth: max_depth, max_batch: max_batch, max_subscriptions: max_subscriptions,
        max_queue: max_queue, max_clients: max_clients, max_channels: max_channels,
        request_timeout: request_timeout,
        allowed_origins: allowed_origins, client_js: client_js,
        history_size: history_size, history_ttl: history_ttl,
        history_memory: history_memory, event_loop: event_loop,
        log_fd: @log_writer ? @log_writer.fileno : -1
      }.merge(redis_options)
    end

    # The backplane's connection, from redis://[:password@]host[:port][/db]
    # URLs: one Redis, or seed nodes of a Redis Cluster (the core asks Redis
    # which it is).
    def redis_options
      return {} unless redis

      first = redis.first
      {
        redis_nodes: redis.map { |uri| "#{uri.host}:#{uri.port || 6379}" }.join(","),
        redis_password: first.password && URI.decode_www_form_component(first.password),
        redis_db: redis_db(first),
        redis_script: File.read(File.expand_path("publish.lua", __dir__)),
        redis_prefix: redis_prefix
      }
    end

    # A Symbol, or its name as a String (rake faye:start event_loop=ev, YAML).
    def validate_event_loop(value)
      name = value.to_sym if value.is_a?(String) || value.is_a?(Symbol)
      unless EVENT_LOOPS.include?(name)
        raise ArgumentError, "event_loop must be #{EVENT_LOOPS.map(&:inspect).join(' or ')} " \
                             "(:poll, the default: lws's poll loop; :ev: libev with epoll), got #{value.inspect}"
      end

      name
    end

    def redis_db(uri)
      uri.path.to_s.delete_prefix("/").then { |db| db.empty? ? 0 : Integer(db) }
    end

    # One URL, or several (an Array, or a String of comma-separated URLs, as
    # an environment variable gives them): the seed nodes of a Redis Cluster.
    # An Array of URI, or nil.
    def validate_redis(value)
      urls = value.is_a?(Array) ? value.map(&:to_s) : value.to_s.split(",")
      urls = urls.map(&:strip).reject(&:empty?)
      return nil if urls.empty?

      uris = urls.map { |url| redis_uri(url) }
      if uris.map { |u| [u.password, redis_db(u)] }.uniq.size > 1
        raise ArgumentError, "the redis URLs of one Redis Cluster must share one password and database " \
                             "(a cluster has only database 0), got #{urls.join(',').inspect}"
      end

      uris
    end

    def redis_uri(url)
      uri = URI.parse(url)
      return uri if uri.scheme == "redis" && uri.host && uri.path.to_s.match?(%r{\A(/\d*)?\z})

      raise URI::InvalidURIError
    rescue URI::InvalidURIError
      raise ArgumentError, "redis must be a URL such as \"redis://127.0.0.1:6379/0\", or several separated " \
                           "by commas (seed nodes of a Redis Cluster), got #{url.inspect}"
    end

    def client_js
      File.binread(CLIENT_JS) if File.file?(CLIENT_JS)
    end

    def effective_logger
      return logger if logger
      return nil unless verbose

      @stdout_logger ||= Logger.new($stdout, progname: "backbone_sync")
    end

    # The C side writes lines "<L> <text>\n" to a non-blocking pipe (it never
    # calls Ruby); this thread turns them into logger calls.
    def open_log
      target = effective_logger
      return unless target

      @log_reader, @log_writer = IO.pipe
      @log_writer.nonblock = true if @log_writer.respond_to?(:nonblock=)
      reader = @log_reader
      @log_thread = Thread.new do
        Thread.current.name = "backbone_sync log"
        Thread.current.report_on_exception = false
        begin
          while (line = reader.gets)
            level = LOG_LEVELS.fetch(line[0], :info)
            text = line[2..]&.chomp || ""
            begin
              target.public_send(level, text)
            rescue StandardError
              nil # a broken logger must not kill the reader and fill the pipe
            end
          end
        rescue IOError
          nil # closed by close_log
        end
      end
    end

    def close_log
      return unless @log_writer

      # The service thread has exited (or never started), so nothing writes
      # to the pipe any more: EOF lets the reader drain what is left.
      @log_writer.close unless @log_writer.closed?
      @log_thread&.join(2)
      @log_reader.close unless @log_reader.closed?
      @log_reader = @log_writer = @log_thread = nil
    end

    def validate_host(host)
      unless host.is_a?(String) && !host.empty? && !host.match?(/\s/)
        raise ArgumentError, "host must be an address such as \"127.0.0.1\", got #{host.inspect}"
      end

      host
    end

    def validate_int(name, value, min, max, hint = nil)
      unless value.is_a?(Integer) && value.between?(min, max)
        raise ArgumentError, "#{name} must be an Integer from #{min} to #{max}" \
                             "#{hint ? " (#{hint})" : ''}, got #{value.inspect}"
      end

      value
    end

    def validate_mount(mount)
      unless mount.is_a?(String) && mount.match?(%r{\A(/[A-Za-z0-9\-_.~!$&'()*+,;=:@%]+)+\z})
        raise ArgumentError, "mount must be a path such as \"/faye\" (leading slash, no trailing " \
                             "slash), got #{mount.inspect}"
      end

      mount
    end

    def validate_tls(key, cert)
      return [nil, nil] if key.nil? && cert.nil?
      if key.nil? || cert.nil?
        raise ArgumentError, "TLS needs both key: and cert: (PEM file paths); got only " \
                             "#{key ? 'key:' : 'cert:'}"
      end

      [key.to_s, cert.to_s]
    end

    # Checked at start, not in new: the files may appear or go in between.
    def check_tls_files
      [[:key, key, "private key"], [:cert, cert, "certificate"]].each do |name, path, what|
        next if path.nil? || (File.file?(path) && File.readable?(path))

        raise StartError, "cannot read #{name}: #{path.inspect} (#{File.exist?(path) ? 'not a readable file' : 'no such file'}); " \
                          "give the path of a PEM #{what}"
      end
    end

    def validate_secret(secret)
      return nil if secret.nil?
      unless secret.is_a?(String) && !secret.empty? && !secret.include?("\0")
        raise ArgumentError, "secret must be a non-empty String (e.g. SecureRandom.hex(32)) or nil, " \
                             "got #{secret.class}"
      end

      secret
    end

    # nil: any page may call the server, without credentials; else the exact
    # origins (scheme://host[:port]) that may, with credentials.
    def validate_origins(list)
      return nil if list.nil?

      unless list.is_a?(Array) && list.all? { |o| o.is_a?(String) && o.match?(%r{\A[a-z][a-z0-9+.-]*://[^/\s\0]+\z|\Anull\z}) }
        raise ArgumentError, "allowed_origins must be nil (any origin, without credentials) or an Array of " \
                             "origins such as [\"https://app.example.com\"] (scheme://host[:port], no path), " \
                             "got #{list.inspect}"
      end

      list.map { |o| o.dup.freeze }.freeze
    end

    def validate_logger(logger)
      return nil if logger.nil?

      missing = %i[error warn info debug].reject { |m| logger.respond_to?(m) }
      unless missing.empty?
        raise ArgumentError, "logger must respond to error, warn, info and debug (a Logger); " \
                             "#{logger.class} lacks #{missing.join(', ')}"
      end

      logger
    end

    def validate_signed(value)
      case value
      when true, false, nil
        if value && secret.nil?
          raise ArgumentError, "signed_subscriptions needs secret: to check tokens; " \
                               "pass the same secret you give BackboneSync.sign"
        end
        value ? true : false
      when Array
        if secret.nil? && !value.empty?
          raise ArgumentError, "signed_subscriptions needs secret: to check tokens; " \
                               "pass the same secret you give BackboneSync.sign"
        end
        validate_patterns(:signed_subscriptions, value)
      else
        raise ArgumentError, "signed_subscriptions must be true, false or an Array of channel " \
                             "patterns such as [\"/private/**\"], got #{value.inspect}"
      end
    end

    def validate_patterns(name, list)
      unless list.is_a?(Array)
        raise ArgumentError, "#{name} must be an Array of channel patterns such as " \
                             "[\"/chat/**\"], got #{list.inspect}"
      end

      list.map do |pattern|
        unless BackboneSync.channel_pattern?(pattern)
          raise ArgumentError, "#{name}: #{pattern.inspect} is not a channel pattern; use a " \
                               "channel (\"/chat/room\") or one ending in /* or /** (\"/chat/**\")"
        end

        pattern.dup.freeze
      end.freeze
    end
  end

  # Ruby 3.1+ calls Process._fork for every fork (Process.fork, Kernel#fork,
  # IO.popen("-")); in the child, inherited servers are marked stopped.
  module ForkHook
    def _fork
      pid = super
      BackboneSync::Server.after_fork_in_child if pid.zero?
      pid
    end
  end
  Process.singleton_class.prepend(ForkHook) if Process.respond_to?(:_fork)
end

at_exit { BackboneSync::Server.stop_all }
