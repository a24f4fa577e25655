# frozen_string_literal: true

require "spec_helper"

# Named after what goes wrong in production: clients that vanish mid-request,
# stop with work in flight, queues that overflow while nobody polls.
RSpec.describe BackboneSync::Server, "failure modes" do
  # On both loops: on libev, stop has to break the loop lws joined.
  %i[poll ev].each do |event_loop|
    it "stop returns promptly while a long-poll connect is held, and the poller gets an answer or a closed socket (#{event_loop})" do
      server = described_class.new(host: "127.0.0.1", port: 0, timeout: 60, event_loop: event_loop)
      server.start
      s = BackboneSyncSpec::BayeuxHTTP::Session.new(server.url, timeout: 30)
      s.handshake!
      poll = Thread.new do
        s.connect(timeout: 30)
      rescue StandardError => e
        e
      end
      begin
        # Held: the server has read the connect (messages_in counts it after
        # the handshake) and has not answered it.
        eventually(timeout: 10, what: "the connect to be read") { server.stats[:messages_in] >= 2 }
        expect(poll).to be_alive
        t0 = monotonic
        # 20 s: far above a loaded machine's stop, far below the 60 s a stop
        # that waited out the held connect would take.
        stop_bounded(server, within: 20)
        expect(monotonic - t0).to be < 20
        expect(poll.join(10)).to be_truthy
        result = poll.value
        # A reply to this connect, or the socket closed under it: nothing else
        # (no timeout, no garbage, no other message).
        if result.is_a?(Array)
          expect(result.first).to include("channel" => "/meta/connect", "clientId" => s.client_id)
        else
          expect(result).to be_a(EOFError).or be_a(Errno::ECONNRESET)
        end
      ensure
        poll.kill
        stop_bounded(server)
      end
    end
  end

  it "stop returns promptly with 50 WebSocket clients connected, and closes all of them" do
    server = described_class.new(host: "127.0.0.1", port: 0)
    server.start
    clients = []
    begin
      50.times { clients << ws_session(server.url, ["/many"]).first }
      t0 = monotonic
      # 20 s: far above a loaded machine's stop, far below the 45 s held
      # connects a stop that waited for them would take.
      stop_bounded(server, within: 20)
      expect(monotonic - t0).to be < 20
      clients.each { |ws| expect(ws.eof_within?(5)).to be(true) }
    ensure
      clients.each(&:close_socket)
      stop_bounded(server)
    end
  end

  it "delivers one publish to 200 WebSocket subscribers" do
    with_server do |server|
      clients = []
      begin
        200.times { clients << ws_session(server.url, ["/crowd"]).first }
        expect(server.stats[:subscriptions]).to eq(200)
        server.publish("/crowd", { "all" => true })
        got = clients.count { |ws| ws.wait_for(timeout: 10) { |m| delivery?(m) }["data"] == { "all" => true } }
        expect(got).to eq(200)
      ensure
        clients.each(&:close_socket)
      end
    end
  end

  it "drops long-polling clients whose queue overflows between connects, and frees what they held" do
    pad = "p" * 16_000
    with_server(max_queue: 50, timeout: 5) do |server|
      # 16 MB: 40 dropped clients each held 50 frames of 16 KB, so keeping
      # what they queued would grow by 32 MB; history holds at most 100 of
      # them (1.6 MB) and the rest is allocator noise.
      expect_memory_growth_below(16 * 1024) do
        40.times do |round|
          s = BackboneSyncSpec::BayeuxHTTP::Session.new(server.url)
          s.handshake!
          s.subscribe!("/pile")
          51.times { |i| server.publish("/pile", { "round" => round, "i" => i, "pad" => pad }) }
          eventually(what: "overflowing client #{round} to be dropped") do
            server.stats[:slow_clients_dropped] == round + 1
          end
          expect(s.connect(timeout: 8).first["error"]).to eq("401:#{s.client_id}:Unknown client")
          expect(server.stats[:clients]).to eq(0)
        end
      end
    end
  end

  it "survives clients that vanish mid-request (half a header, half a body)" do
    with_server do |server|
      half_header = TCPSocket.new("127.0.0.1", server.port)
      half_header.write("POST /faye HTTP/1.1\r\nHost: x\r\nContent-Le")
      half_body = TCPSocket.new("127.0.0.1", server.port)
      half_body.write("POST /faye HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" \
                      "Content-Length: 1000\r\n\r\n[{\"channel\":")
      half_ws = TCPSocket.new("127.0.0.1", server.port)
      half_ws.write("GET /faye HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n")
      sleep 0.1
      [half_header, half_body, half_ws].each(&:close)
      hs = BackboneSyncSpec::BayeuxHTTP::Session.new(server.url).handshake.first
      expect(hs["successful"]).to be(true)
      eventually(what: "the abandoned connections to be closed") { server.stats[:connections] <= 1 }
    end
  end

  it "keeps working through 20 connects and disconnects of the same WebSocket subscriber" do
    with_server do |server|
      20.times do |i|
        ws, = ws_session(server.url, ["/churn"])
        begin
          server.publish("/churn", { "i" => i })
          expect(ws.wait_for { |m| delivery?(m) }["data"]).to eq({ "i" => i })
        ensure
          ws.close
        end
      end
      eventually(timeout: 15, what: "subscriptions of closed sockets to go") { server.stats[:subscriptions].zero? }
    end
  end
end
