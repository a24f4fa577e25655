# frozen_string_literal: true

require 'json'
require 'net/http'
require 'securerandom'
require 'socket'

# WebSocket Bayeux subscribers for bin/bench --nodes: one connection per
# channel, driven from one thread with IO.select, counting deliveries per
# connection. They speak Bayeux as the C load generator (bench/loadgen) does:
# POST /meta/handshake, then a WebSocket at the same path carrying
# /meta/connect and /meta/subscribe, and a new /meta/connect whenever the
# held one is answered. They only count: the node's CPU is what is measured,
# and one delivery here is one message on one channel, so Ruby keeps up.
class WsSubscribers
  Conn = Struct.new(:sock, :node, :channel, :client_id, :buf, :count, :last_at, :subscribed)

  DELIVERY = /"channel":"(?!\/meta\/)/
  CONNECT_REPLY = '"channel":"/meta/connect"'
  SUBSCRIBE_OK = /"channel":"\/meta\/subscribe"[^}]*"successful":true|"successful":true[^}]*"channel":"\/meta\/subscribe"/

  attr_reader :conns

  def initialize(mount: '/faye')
    @mount = mount
    @conns = []
    @by_sock = {}
  end

  # Opens one subscriber on the node listening on port (node: its index in
  # the report) for channel; the subscribe is confirmed by #wait_subscribed.
  def add(node, port, channel)
    id = handshake(port)
    sock = Socket.tcp('127.0.0.1', port, connect_timeout: 5)
    sock.setsockopt(Socket::IPPROTO_TCP, Socket::TCP_NODELAY, 1)
    upgrade(sock, port)
    conn = Conn.new(sock, node, channel, id, +''.b, 0, nil, false)
    send_json(conn, [{ channel: '/meta/connect', clientId: id, connectionType: 'websocket' },
                     { channel: '/meta/subscribe', clientId: id, subscription: channel }])
    @conns << conn
    @by_sock[sock] = conn
    conn
  end

  # Until every subscribe is answered successfully, at most `seconds`.
  def wait_subscribed(seconds)
    pump_until(seconds) { @conns.all?(&:subscribed) }
    missing = @conns.reject(&:subscribed)
    raise "#{missing.size} of #{@conns.size} subscribes unanswered after #{seconds} s" unless missing.empty?
  end

  # Reads until block returns true or `seconds` pass; returns the block's last value.
  def pump_until(seconds)
    deadline = now + seconds
    until (done = yield)
      left = deadline - now
      break if left <= 0

      ready, = IO.select(@by_sock.keys, nil, nil, [left, 0.2].min)
      ready&.each { |s| read(@by_sock[s]) }
    end
    done
  end

  def counts_by_node
    @conns.group_by(&:node).transform_values { |cs| cs.sum(&:count) }
  end

  def last_at_by_node
    @conns.group_by(&:node).transform_values { |cs| cs.map(&:last_at).compact.max }
  end

  def reset_counts
    @conns.each do |c|
      c.count = 0
      c.last_at = nil
    end
  end

  def close
    @conns.each { |c| c.sock.close unless c.sock.closed? }
    @conns.clear
    @by_sock.clear
  end

  private

  def now
    Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end

  def handshake(port)
    body = JSON.generate([{ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: %w[websocket] }])
    res = Net::HTTP.start('127.0.0.1', port, open_timeout: 5, read_timeout: 5) do |h|
      h.post(@mount, body, 'Content-Type' => 'application/json')
    end
    JSON.parse(res.body).first.fetch('clientId')
  end

  def upgrade(sock, port)
    key = [SecureRandom.random_bytes(16)].pack('m0')
    sock.write("GET #{@mount} HTTP/1.1\r\nHost: 127.0.0.1:#{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" \
               "Sec-WebSocket-Key: #{key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head = +''
    deadline = now + 5
    until head.include?("\r\n\r\n")
      raise 'no WebSocket upgrade reply within 5 s' if now > deadline || !sock.wait_readable(1)

      head << sock.readpartial(4096)
    end
    raise "WebSocket upgrade refused: #{head.lines.first}" unless head.start_with?('HTTP/1.1 101')
    # Frames may follow the headers in the same read only after we send; nothing to keep.
  end

  # One masked text frame, as a client must send.
  def send_json(conn, messages)
    payload = JSON.generate(messages).b
    mask = SecureRandom.random_bytes(4)
    len = payload.bytesize
    header = len < 126 ? [0x81, 0x80 | len].pack('CC') : [0x81, 0x80 | 126, len].pack('CCn')
    masked = payload.bytes.each_with_index.map { |b, i| b ^ mask.getbyte(i & 3) }.pack('C*')
    conn.sock.write(header + mask + masked)
  end

  def read(conn)
    chunk = conn.sock.read_nonblock(1 << 16, exception: false)
    return if chunk == :wait_readable
    raise "node #{conn.node + 1} closed the subscriber of #{conn.channel}" if chunk.nil?

    conn.buf << chunk
    while (frame = next_frame(conn))
      opcode, payload = frame
      next unless opcode == 1 || opcode == 2

      handle(conn, payload)
    end
  end

  # [opcode, payload] of the first whole frame in conn.buf (removed), or nil.
  def next_frame(conn)
    b = conn.buf
    return nil if b.bytesize < 2

    len = b.getbyte(1) & 0x7f
    off = 2
    if len == 126
      return nil if b.bytesize < 4

      len = b.byteslice(2, 2).unpack1('n')
      off = 4
    elsif len == 127
      return nil if b.bytesize < 10

      len = b.byteslice(2, 8).unpack1('Q>')
      off = 10
    end
    return nil if b.bytesize < off + len

    frame = [b.getbyte(0) & 0x0f, b.byteslice(off, len)]
    conn.buf = b.byteslice(off + len, b.bytesize - off - len)
    frame
  end

  def handle(conn, payload)
    delivered = payload.scan(DELIVERY).size
    if delivered.positive?
      conn.count += delivered
      conn.last_at = now
    end
    conn.subscribed ||= payload.match?(SUBSCRIBE_OK)
    return unless payload.include?(CONNECT_REPLY)

    send_json(conn, [{ channel: '/meta/connect', clientId: conn.client_id, connectionType: 'websocket' }])
  end
end
