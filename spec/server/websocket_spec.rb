# frozen_string_literal: true

require "spec_helper"

RSpec.describe BackboneSync::Server, "WebSocket transport" do
  it "upgrades at the mount path without a subprotocol" do
    with_server do |server|
      BackboneSyncSpec::WSClient.open(server.url) do |ws|
        expect(ws.response_status).to eq(101)
        expect(ws.response_headers["upgrade"]).to match(/\Awebsocket\z/i)
        expect(ws.response_headers).not_to have_key("sec-websocket-protocol")
      end
    end
  end

  it "refuses an upgrade elsewhere with an HTTP error status" do
    with_server do |server|
      expect { BackboneSyncSpec::WSClient.new("#{origin(server)}/elsewhere", timeout: 3) }
        .to raise_error(BackboneSyncSpec::WSClient::HandshakeError, /expected 101 .* got "HTTP\/1\.[01] 4\d\d/)
    end
  end

  it "answers a batch of subscribes in one frame, echoing ids, and pushes deliveries" do
    with_server do |server|
      client_id = BackboneSyncSpec::BayeuxHTTP::Session.new(server.url).handshake!(types: ["websocket"])["clientId"]
      BackboneSyncSpec::WSClient.open(server.url) do |ws|
        # A held connect replies only at the timeout (Faye holds a batch containing one), so it goes alone.
        ws.send_json([{ channel: "/meta/connect", clientId: client_id, connectionType: "websocket", id: "1" }])
        ws.send_json([
                       { channel: "/meta/subscribe", clientId: client_id, subscription: "/ws/a", id: "2" },
                       { channel: "/meta/subscribe", clientId: client_id, subscription: "/ws/b", id: "3" }
                     ])
        replies = [ws.wait_for { |m| m["id"] == "2" }, ws.wait_for { |m| m["id"] == "3" }]
        expect(replies.map { |m| m.values_at("channel", "successful", "subscription", "clientId") })
          .to eq([["/meta/subscribe", true, "/ws/a", client_id], ["/meta/subscribe", true, "/ws/b", client_id]])
        server.publish("/ws/b", { "n" => 1 })
        expect(ws.wait_for { |m| delivery?(m) }).to include("channel" => "/ws/b", "data" => { "n" => 1 })
      end
    end
  end

  it "replies to a held WebSocket connect at the timeout" do
    with_server(timeout: 1) do |server|
      ws, client_id = ws_session(server.url, [])
      begin
        reply = ws.wait_for(timeout: 4) { |m| m["channel"] == "/meta/connect" && m["id"] == "c1" }
        expect(reply).to include("successful" => true, "clientId" => client_id)
        expect(reply["advice"]).to include("reconnect" => "retry", "timeout" => 1000)
      ensure
        ws.close
      end
    end
  end

  it "answers a ping with a pong carrying the same payload" do
    with_server do |server|
      BackboneSyncSpec::WSClient.open(server.url) do |ws|
        ws.ping("are-you-there")
        frame = ws.read_frame(timeout: 5)
        expect([frame.opcode, frame.payload]).to eq([:pong, "are-you-there"])
      end
    end
  end

  it "answers a client close with a close frame" do
    with_server do |server|
      BackboneSyncSpec::WSClient.open(server.url) do |ws|
        ws.send_close(1000, "bye")
        expect(ws.wait_for_close(timeout: 5)).to eq(1000)
        expect(ws.eof_within?(5)).to be(true)
      end
      eventually(what: "connections to reach 0") { server.stats[:connections].zero? }
    end
  end

  it "survives an abrupt TCP close in the middle of a frame" do
    with_server do |server|
      ws, = ws_session(server.url, ["/abrupt"])
      ws.io.write("\x81\xFE\x10\x00abcd") # text frame header announcing 4096 bytes, then gone
      ws.close_socket
      other, = ws_session(server.url, ["/abrupt"])
      begin
        server.publish("/abrupt", { "ok" => true })
        expect(other.wait_for { |m| delivery?(m) }["data"]).to eq({ "ok" => true })
      ensure
        other.close
      end
    end
  end

  it "closes the connection on an unmasked client frame or invalid UTF-8, and keeps serving" do
    with_server do |server|
      # RFC 6455 suggests 1002 and 1007; any close (or a bare TCP close) is a rejection.
      [[->(ws) { ws.send_frame(:text, "[]", mask: false) }, (1000..4999).to_a],
       [->(ws) { ws.send_frame(:text, "[\"\xff\"]".b) }, [1007]]].each do |send_bad, codes|
        BackboneSyncSpec::WSClient.open(server.url) do |ws|
          send_bad.call(ws)
          code = begin
            ws.wait_for_close(timeout: 5)
          rescue EOFError
            :eof
          end
          expect(codes + [:eof]).to include(code)
        end
      end
      expect(BackboneSyncSpec::BayeuxHTTP::Session.new(server.url).handshake.first["successful"]).to be(true)
    end
  end

  # lws reads under 1 KB of a socket per loop turn. At the turn's end the
  # publisher's socket is read until it is empty (within bounds) before any
  # subscriber is written, so a burst reaches each one as one frame, not
  # one frame per read (21 frames without that).
  it "delivers a burst that arrived in one read of the publisher's socket in one frame per subscriber" do
    with_server(secret: "burst-secret") do |server|
      subs = Array.new(3) { ws_session(server.url, ["/burst"]) }
      publisher, pub_id = ws_session(server.url)
      count = 40
      burst = send_publish_burst(publisher, pub_id, "/burst", count, secret: "burst-secret")
      expect(burst.sum(&:bytesize)).to be > 10 * 1024
      subs.each do |ws, _|
        order, frames = burst_as_received(ws, count)
        expect(order).to eq((0...count).to_a)
        expect(frames.size).to be <= 2, "the burst came in #{frames.size} frames of #{frames.inspect} deliveries"
      end
      expect(publisher.drain(timeout: 0.5).count { |m| m["successful"] && m["id"].to_s.start_with?("p") }).to eq(count)
    ensure
      (subs || []).each { |ws, _| ws.close_socket }
      publisher&.close_socket
    end
  end
end
