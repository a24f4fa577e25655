# frozen_string_literal: true

require "socket"
require "openssl"
require "securerandom"
require "digest/sha1"
require "base64"
require "json"
require "uri"

module BackboneSyncSpec
  # A deliberately small RFC 6455 client over a raw TCPSocket (or SSLSocket for
  # wss), so the specs see exactly what the server puts on the wire: no
  # subprotocol, masked client frames, close codes, ping/pong. Every read and
  # write has a deadline; nothing here blocks forever.
  class WSClient
    GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
    OPCODES = { continuation: 0x0, text: 0x1, binary: 0x2, close: 0x8, ping: 0x9, pong: 0xA }.freeze
    OPCODE_NAMES = OPCODES.invert.freeze

    class Error < StandardError; end
    class TimeoutError < Error; end
    class HandshakeError < Error; end
    # Raised by the message readers when the peer sent a close frame.
    class Closed < Error
      attr_reader :code, :reason

      def initialize(code, reason)
        @code = code
        @reason = reason
        super("WebSocket closed by the server: code=#{code.inspect} reason=#{reason.inspect}")
      end
    end

    Frame = Struct.new(:opcode, :payload, :fin, keyword_init: true) do
      def close_code
        payload.bytesize >= 2 ? payload.unpack1("n") : nil
      end

      def close_reason
        payload.bytesize > 2 ? payload.byteslice(2..).force_encoding(Encoding::UTF_8) : ""
      end
    end

    attr_reader :response_status, :response_headers, :io, :close_frame

    # url: ws://, wss://, http:// or https:// (the last two map to ws/wss).
    # rcvbuf: SO_RCVBUF in bytes, set before connecting (slow-consumer specs
    # use a small one so the server's send side fills up quickly).
    def self.open(url, **opts)
      client = new(url, **opts)
      return client unless block_given?

      begin
        yield client
      ensure
        client.close_socket
      end
    end

    def initialize(url, timeout: 5, rcvbuf: nil, headers: {}, ssl_context: nil)
      @uri = URI(url.sub(/\Ahttp/, "ws"))
      @timeout = timeout
      @rbuf = +"".b
      @close_frame = nil
      @io = connect(@uri.host, @uri.port || (@uri.scheme == "wss" ? 443 : 80), rcvbuf, ssl_context)
      upgrade(headers)
    end

    # --- sending ---------------------------------------------------------

    def send_text(str)
      send_frame(:text, str.encode(Encoding::UTF_8))
    end

    def send_json(obj)
      send_text(JSON.generate(obj))
    end

    def ping(payload = "")
      send_frame(:ping, payload)
    end

    def pong(payload = "")
      send_frame(:pong, payload)
    end

    def send_close(code = 1000, reason = "")
      send_frame(:close, [code].pack("n") + reason.b)
    end

    # Masks the payload with a random key, as RFC 6455 requires of clients.
    def send_frame(opcode, payload, fin: true, mask: true)
      write_all(frame_bytes(opcode, payload, fin: fin, mask: mask))
    end

    # Several text messages, each its own frame, in one write(): what a
    # busy client's socket holds when the server next reads it.
    def send_texts(strings)
      write_all(strings.map { |s| frame_bytes(:text, s) }.join)
    end

    def frame_bytes(opcode, payload, fin: true, mask: true)
      payload = payload.b
      op = opcode.is_a?(Symbol) ? OPCODES.fetch(opcode) : opcode
      head = [(fin ? 0x80 : 0) | op].pack("C")
      mbit = mask ? 0x80 : 0
      len = payload.bytesize
      head << if len < 126
                [mbit | len].pack("C")
              elsif len < 65_536
                [mbit | 126, len].pack("Cn")
              else
                [mbit | 127, len].pack("CQ>")
              end
      if mask
        key = SecureRandom.random_bytes(4)
        head << key
        payload = xor_mask(payload, key)
      end
      head + payload
    end

    # --- receiving -------------------------------------------------------

    # One raw frame, control frames included.
    def read_frame(timeout: @timeout)
      deadline = now + timeout
      b0, b1 = read_bytes(2, deadline).unpack("CC")
      len = case b1 & 0x7F
            when 126 then read_bytes(2, deadline).unpack1("n")
            when 127 then read_bytes(8, deadline).unpack1("Q>")
            else b1 & 0x7F
            end
      key = (b1 & 0x80).zero? ? nil : read_bytes(4, deadline)
      payload = read_bytes(len, deadline)
      payload = xor_mask(payload, key) if key
      Frame.new(opcode: OPCODE_NAMES.fetch(b0 & 0x0F, b0 & 0x0F), payload: payload, fin: (b0 & 0x80) != 0)
    end

    # The next complete data message (text payload as a UTF-8 String).
    # Answers pings; raises Closed on a close frame.
    def read_message(timeout: @timeout)
      deadline = now + timeout
      parts = []
      loop do
        frame = read_frame(timeout: remaining(deadline))
        case frame.opcode
        when :ping then pong(frame.payload)
        when :pong then next
        when :close
          @close_frame = frame
          raise Closed.new(frame.close_code, frame.close_reason)
        else
          parts << frame.payload
          return parts.join.force_encoding(Encoding::UTF_8) if frame.fin
        end
      end
    end

    # The next message parsed as JSON (a Bayeux server always sends an array).
    def read_json(timeout: @timeout)
      JSON.parse(read_message(timeout: timeout))
    end

    # Reads Bayeux messages (flattening each frame's array) until the block
    # returns true for one, which is returned; the others are kept in #backlog.
    def wait_for(timeout: @timeout)
      deadline = now + timeout
      loop do
        idx = backlog.index { |m| yield(m) }
        return backlog.delete_at(idx) if idx

        backlog.concat(Array(read_json(timeout: remaining(deadline))))
      end
    end

    # The next single Bayeux message (backlog first), each returned once.
    def next_bayeux(timeout: @timeout)
      deadline = now + timeout
      backlog.concat(Array(read_json(timeout: remaining(deadline)))) while backlog.empty?
      backlog.shift
    end

    # Every Bayeux message that arrives within `timeout` seconds.
    def drain(timeout:)
      deadline = now + timeout
      got = backlog.dup
      backlog.clear
      loop do
        left = deadline - now
        break if left <= 0

        got.concat(Array(read_json(timeout: left)))
      rescue TimeoutError
        break
      end
      got
    end

    def backlog
      @backlog ||= []
    end

    # Waits for the server's close frame (answering pings, skipping data) and
    # returns its code; raises TimeoutError if it never comes.
    def wait_for_close(timeout: @timeout)
      deadline = now + timeout
      loop do
        frame = read_frame(timeout: remaining(deadline))
        if frame.opcode == :close
          @close_frame = frame
          return frame.close_code
        end
      end
    end

    # True once the server has closed the TCP connection (EOF or reset) within timeout.
    def eof_within?(timeout)
      deadline = now + timeout
      loop do
        read_bytes(1, deadline)
        @rbuf.clear
      end
    rescue EOFError, Errno::ECONNRESET, Errno::EPIPE, IOError, OpenSSL::SSL::SSLError
      true
    rescue TimeoutError
      false
    end

    # Sends a close frame (best effort) and closes the socket.
    def close(code = 1000)
      send_close(code)
    rescue StandardError
      nil
    ensure
      close_socket
    end

    def close_socket
      @io&.close unless @io&.closed?
    rescue StandardError
      nil
    end

    def closed?
      @io.nil? || @io.closed?
    end

    private

    def now
      Process.clock_gettime(Process::CLOCK_MONOTONIC)
    end

    def remaining(deadline)
      left = deadline - now
      raise TimeoutError, "no WebSocket data from #{@uri} within the deadline" if left <= 0

      left
    end

    def connect(host, port, rcvbuf, ssl_context)
      addr = Socket.sockaddr_in(port, host)
      sock = Socket.new(Socket::AF_INET, Socket::SOCK_STREAM)
      sock.setsockopt(Socket::SOL_SOCKET, Socket::SO_RCVBUF, rcvbuf) if rcvbuf
      # As browsers and Node do: without it, a second small frame waits for the
      # server's delayed ACK (~40 ms) and timings in the specs mean nothing.
      sock.setsockopt(Socket::IPPROTO_TCP, Socket::TCP_NODELAY, 1)
      deadline = now + @timeout
      begin
        sock.connect_nonblock(addr)
      rescue IO::WaitWritable
        raise TimeoutError, "connect to #{host}:#{port} timed out" unless sock.wait_writable(remaining(deadline))

        begin
          sock.connect_nonblock(addr)
        rescue Errno::EISCONN
          nil
        end
      end
      return sock unless @uri.scheme == "wss"

      ctx = ssl_context || OpenSSL::SSL::SSLContext.new.tap { |c| c.verify_mode = OpenSSL::SSL::VERIFY_NONE }
      ssl = OpenSSL::SSL::SSLSocket.new(sock, ctx)
      ssl.sync_close = true
      ssl.hostname = host
      loop do
        ssl.connect_nonblock
        break
      rescue IO::WaitReadable
        raise TimeoutError, "TLS handshake timed out" unless sock.wait_readable(remaining(deadline))
      rescue IO::WaitWritable
        raise TimeoutError, "TLS handshake timed out" unless sock.wait_writable(remaining(deadline))
      end
      ssl
    rescue StandardError
      sock&.close
      raise
    end

    def upgrade(extra_headers)
      key = Base64.strict_encode64(SecureRandom.random_bytes(16))
      # URI has no wss class on every Ruby, so build the request target by hand.
      path = (@uri.path.to_s.empty? ? "/" : @uri.path) + (@uri.query ? "?#{@uri.query}" : "")
      req = +"GET #{path} HTTP/1.1\r\n"
      req << "Host: #{@uri.host}:#{@uri.port}\r\n"
      req << "Upgrade: websocket\r\nConnection: Upgrade\r\n"
      req << "Sec-WebSocket-Key: #{key}\r\nSec-WebSocket-Version: 13\r\n"
      extra_headers.each { |k, v| req << "#{k}: #{v}\r\n" }
      req << "\r\n"
      write_all(req)

      deadline = now + @timeout
      head = read_until("\r\n\r\n", deadline)
      status_line, *lines = head.split("\r\n")
      @response_status = status_line[%r{\AHTTP/1\.[01] (\d{3})}, 1].to_i
      @response_headers = lines.each_with_object({}) do |l, h|
        k, v = l.split(":", 2)
        h[k.strip.downcase] = v.to_s.strip
      end
      unless @response_status == 101
        raise HandshakeError, "expected 101 from #{@uri}, got #{status_line.inspect}"
      end

      expected = Base64.strict_encode64(Digest::SHA1.digest(key + GUID))
      return if @response_headers["sec-websocket-accept"] == expected

      raise HandshakeError, "bad Sec-WebSocket-Accept #{@response_headers['sec-websocket-accept'].inspect}, " \
                            "expected #{expected.inspect}"
    end

    def read_until(marker, deadline)
      until (i = @rbuf.index(marker))
        fill(deadline)
      end
      @rbuf.slice!(0, i + marker.bytesize)
    end

    def read_bytes(n, deadline)
      fill(deadline) while @rbuf.bytesize < n
      @rbuf.slice!(0, n)
    end

    def fill(deadline)
      loop do
        chunk = @io.read_nonblock(65_536, exception: false)
        case chunk
        when :wait_readable
          raise TimeoutError, "no data from #{@uri} within the deadline" unless @io.to_io.wait_readable(remaining(deadline))
        when :wait_writable
          raise TimeoutError, "no data from #{@uri} within the deadline" unless @io.to_io.wait_writable(remaining(deadline))
        when nil
          raise EOFError, "the server closed the connection"
        else
          @rbuf << chunk.b
          return
        end
      end
    end

    def write_all(data)
      deadline = now + @timeout
      data = data.b
      until data.empty?
        n = @io.write_nonblock(data, exception: false)
        case n
        when :wait_writable
          raise TimeoutError, "write to #{@uri} timed out" unless @io.to_io.wait_writable(remaining(deadline))
        when :wait_readable
          raise TimeoutError, "write to #{@uri} timed out" unless @io.to_io.wait_readable(remaining(deadline))
        else
          data = data.byteslice(n..)
        end
      end
    end

    def xor_mask(payload, key)
      bytes = payload.bytes
      k = key.bytes
      bytes.each_index { |i| bytes[i] ^= k[i & 3] }
      bytes.pack("C*")
    end
  end
end
