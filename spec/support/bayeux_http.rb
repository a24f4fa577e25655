# frozen_string_literal: true

require "net/http"
require "openssl"
require "json"
require "uri"

module BackboneSyncSpec
  # Bayeux over plain HTTP, as Faye's long-polling transport and the old Rails
  # gems' Net::HTTP publishers speak it. Every request has open/read timeouts.
  module BayeuxHTTP
    Response = Struct.new(:status, :headers, :body, keyword_init: true) do
      def json
        JSON.parse(body)
      end

      def [](name)
        headers[name.downcase]
      end
    end

    module_function

    # Any HTTP request; returns a Response whose headers are a Hash of
    # lower-case name => value (first value when repeated).
    def request(method, url, body: nil, headers: {}, timeout: 5)
      uri = URI(url)
      http = Net::HTTP.new(uri.host, uri.port)
      http.open_timeout = timeout
      http.read_timeout = timeout
      http.write_timeout = timeout
      if uri.scheme == "https"
        http.use_ssl = true
        http.verify_mode = OpenSSL::SSL::VERIFY_NONE # the specs' self-signed certificate
      end
      klass = Net::HTTP.const_get(method.to_s.capitalize)
      req = klass.new(uri.request_uri, headers)
      req.body = body if body
      http.start do |h|
        res = h.request(req)
        Response.new(status: res.code.to_i,
                     headers: res.each_header.to_h { |k, v| [k.downcase, v] },
                     body: res.body.to_s)
      end
    end

    # POST a JSON body (an Array of messages, a single Hash, or a raw String).
    def post_json(url, messages, headers: {}, timeout: 5)
      body = messages.is_a?(String) ? messages : JSON.generate(messages)
      request(:post, url, body: body, timeout: timeout,
                          headers: { "Content-Type" => "application/json" }.merge(headers))
    end

    # POST a form with a `message=` field, as the old Rails publishers did.
    def post_form(url, messages, headers: {}, timeout: 5)
      json = messages.is_a?(String) ? messages : JSON.generate(messages)
      request(:post, url, body: URI.encode_www_form(message: json), timeout: timeout,
                          headers: { "Content-Type" => "application/x-www-form-urlencoded" }.merge(headers))
    end

    # One Bayeux session over HTTP long-polling. Each call returns the parsed
    # reply array; the helpers ending in ! also check success.
    class Session
      attr_reader :url, :client_id

      def initialize(url, timeout: 5)
        @url = url
        @timeout = timeout
        @next_id = 0
      end

      def next_id
        (@next_id += 1).to_s(36)
      end

      def post(messages, timeout: @timeout)
        res = BayeuxHTTP.post_json(@url, messages, timeout: timeout)
        raise "POST #{@url} answered #{res.status}: #{res.body}" unless res.status == 200

        res.json
      end

      def handshake(types: %w[long-polling], **extra)
        post([{ channel: "/meta/handshake", version: "1.0", supportedConnectionTypes: types,
                id: next_id }.merge(extra)])
      end

      def handshake!(**kw)
        reply = handshake(**kw).first
        raise "handshake failed: #{reply.inspect}" unless reply["successful"]

        @client_id = reply.fetch("clientId")
        reply
      end

      # A /meta/connect; `timeout` is how long to wait for the held reply.
      def connect(timeout: @timeout, connection_type: "long-polling")
        post([{ channel: "/meta/connect", clientId: @client_id, connectionType: connection_type,
                id: next_id }], timeout: timeout)
      end

      def subscribe(subscription, ext: nil)
        msg = { channel: "/meta/subscribe", clientId: @client_id, subscription: subscription, id: next_id }
        msg[:ext] = ext if ext
        post([msg])
      end

      def subscribe!(subscription, **kw)
        reply = subscribe(subscription, **kw).first
        raise "subscribe #{subscription.inspect} failed: #{reply.inspect}" unless reply["successful"]

        reply
      end

      def unsubscribe(subscription)
        post([{ channel: "/meta/unsubscribe", clientId: @client_id, subscription: subscription, id: next_id }])
      end

      def publish(channel, data, ext: nil, client_id: @client_id)
        msg = { channel: channel, data: data, id: next_id }
        msg[:clientId] = client_id if client_id
        msg[:ext] = ext if ext
        post([msg])
      end

      def disconnect
        post([{ channel: "/meta/disconnect", clientId: @client_id, id: next_id }])
      end

      # Connects until `count` deliveries (messages with data, no `successful`)
      # arrived or `within` seconds passed; returns the deliveries.
      def receive(count, within: 5)
        deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + within
        got = []
        while got.size < count
          left = deadline - Process.clock_gettime(Process::CLOCK_MONOTONIC)
          break if left <= 0

          begin
            reply = connect(timeout: left)
          rescue Net::ReadTimeout
            break
          end
          got.concat(reply.reject { |m| m.key?("successful") })
        end
        got
      end
    end
  end
end
