# frozen_string_literal: true

require "json"
require "net/http"
require "uri"

module BackboneSync
  # Publishes to a running BackboneSync (or Faye) server over HTTP, from any
  # process: web workers, job runners, consoles. Keeps one keep-alive
  # connection; safe to share between threads.
  #
  #   publisher = BackboneSync::Publisher.new("http://127.0.0.1:9292/faye", secret: "s")
  #   publisher.publish("/sync/users", { "id" => 1 })
  class Publisher
    # Errors worth a reconnect and another try: nothing reached the server,
    # or a kept-alive connection was closed under us.
    RETRYABLE = [
      Errno::ECONNREFUSED, Errno::ECONNRESET, Errno::EPIPE, Errno::ECONNABORTED,
      Errno::EHOSTUNREACH, Errno::ENETUNREACH, Errno::EADDRNOTAVAIL,
      Net::OpenTimeout, EOFError, IOError, SocketError
    ].freeze

    attr_reader :url

    def initialize(url, secret: BackboneSync.secret, open_timeout: 2, read_timeout: 2, retries: 2)
      @uri = begin
        URI.parse(url.to_s)
      rescue URI::InvalidURIError
        nil
      end
      unless @uri.is_a?(URI::HTTP) && @uri.host
        raise ArgumentError, "url must be the server's http(s) URL with its mount, such as " \
                             "\"http://127.0.0.1:9292/faye\", got #{url.inspect}"
      end
      unless retries.is_a?(Integer) && retries >= 0
        raise ArgumentError, "retries must be an Integer >= 0, got #{retries.inspect}"
      end

      @url = @uri.to_s
      @secret = secret
      @open_timeout = open_timeout
      @read_timeout = read_timeout
      @retries = retries
      @lock = Mutex.new
      @http = nil
    end

    # Sends one message. Returns true once the server accepted it; raises
    # BackboneSync::PublishError when the server refused it or could not be
    # reached after the retries, EncodeError when +data+ is not encodable.
    def publish(channel, data, event_id: nil)
      channel = BackboneSync.channel!(channel)
      message = { "channel" => channel, "data" => data }
      ext = {}
      ext["secret"] = @secret if @secret
      ext["event_id"] = BackboneSync.event_id!(event_id) if event_id
      message["ext"] = ext unless ext.empty?
      body = BackboneSync.encode_json([message])
      @lock.synchronize { check_reply(channel, post(body)) }
      true
    end

    # Closes the kept-alive connection; the next publish opens a new one.
    def close
      @lock.synchronize { disconnect }
      nil
    end

    private

    def post(body)
      attempts = 0
      begin
        attempts += 1
        request = Net::HTTP::Post.new(@uri.request_uri.empty? ? "/" : @uri.request_uri)
        request["Content-Type"] = "application/json"
        connection.request(request, body)
      rescue *RETRYABLE => e
        disconnect
        retry if attempts <= @retries
        raise Unreachable, "could not reach #{@url} after #{attempts} attempts (#{e.class}: " \
                            "#{e.message}); is the server running? Start it with " \
                            "`bundle exec rake faye:start` or bin/backbone_sync"
      rescue Net::ReadTimeout
        # The server may have taken the message: retrying could deliver it twice.
        disconnect
        raise Unreachable, "#{@url} did not answer within #{@read_timeout}s; the message may " \
                           "or may not have been delivered"
      rescue OpenSSL::SSL::SSLError => e
        disconnect
        raise PublishError, "TLS with #{@url} failed (#{e.message}): #{tls_hint}"
      end
    end

    def check_reply(channel, response)
      unless response.is_a?(Net::HTTPSuccess)
        raise PublishError, "#{@url} answered HTTP #{response.code}; check that the URL " \
                            "includes the server's mount path (e.g. /faye)"
      end

      replies = begin
        JSON.parse(response.body.to_s)
      rescue JSON::ParserError
        nil
      end
      replies = [replies] if replies.is_a?(Hash)
      reply = replies.find { |r| r.is_a?(Hash) && r["channel"] == channel } if replies.is_a?(Array)
      unless reply
        raise PublishError, "#{@url} gave no Bayeux reply for #{channel} " \
                            "(#{response.body.to_s[0, 200].inspect}); is this a Faye server?"
      end
      return if reply["successful"]

      error = reply["error"].to_s
      hint = if error.start_with?("403")
               "the secret is missing or wrong: give publishers the server's secret " \
                 "(in Rails, config.backbone_sync.secret or the BACKBONE_SYNC_SECRET environment " \
                 "variable, the same in every process; else BackboneSync::Publisher.new(url, secret: ...))"
             else
               "check the channel name and the message"
             end
      raise PublishError, "#{@url} refused the publish to #{channel}: #{error.inspect}; #{hint}"
    end

    def tls_hint
      if @uri.scheme == "https"
        "is the server started with key: and cert:? A plain server needs an http:// URL " \
          "(in Rails, config.backbone_sync.root_address); else check that its certificate is trusted"
      else
        "the server expects https://"
      end
    end

    def connection
      return @http if @http&.started?

      http = Net::HTTP.new(@uri.host, @uri.port)
      http.use_ssl = @uri.scheme == "https"
      http.open_timeout = @open_timeout
      http.read_timeout = @read_timeout
      http.write_timeout = @read_timeout if http.respond_to?(:write_timeout=)
      http.keep_alive_timeout = 30
      http.start
      @http = http
    end

    def disconnect
      @http&.finish if @http&.started?
    rescue IOError
      nil
    ensure
      @http = nil
    end
  end
end
