# frozen_string_literal: true

require "spec_helper"

# The spec helpers and client scripts checked against the real Faye server
# (npm faye NodeAdapter). If these fail, a failure elsewhere may be the
# helpers' fault rather than our server's.
RSpec.describe "spec helpers against the real Faye server (npm faye NodeAdapter)" do
  it "raw WebSocket client: upgrade without subprotocol, subscribe, receive, ping/pong, close" do
    with_reference_server(timeout: 3) do |ref|
      ws, = ws_session(ref.url, ["/ref/ws"])
      begin
        expect(ws.response_status).to eq(101)
        expect(ws.response_headers).not_to have_key("sec-websocket-protocol")
        ref.publish("/ref/ws", { "n" => 1 })
        msg = ws.wait_for { |m| m["channel"] == "/ref/ws" }
        expect(msg["data"]).to eq({ "n" => 1 })

        ws.ping("abc")
        frame = ws.read_frame
        expect([frame.opcode, frame.payload]).to eq([:pong, "abc"])

        ws.send_close(1000)
        expect(ws.wait_for_close).to eq(1000)
      ensure
        ws.close_socket
      end
    end
  end

  it "raw WebSocket client: frames of 7-bit, 16-bit and 64-bit lengths both ways" do
    with_reference_server(timeout: 3, secret: "s4") do |ref|
      ws, client_id = ws_session(ref.url, ["/ref/len"])
      begin
        [10, 100, 126, 200, 65_535, 70_000].each do |size|
          ref.publish("/ref/len", { "pad" => "a" * size })
          expect(ws.wait_for { |m| m["channel"] == "/ref/len" }["data"]["pad"].size).to eq(size)
          ws.send_json([{ channel: "/ref/len", clientId: client_id, data: { "pad" => "b" * size },
                          ext: { secret: "s4" }, id: "p#{size}" }])
          expect(ws.wait_for { |m| m["id"] == "p#{size}" && m.key?("successful") }["successful"]).to be(true)
          expect(ws.wait_for { |m| m["channel"] == "/ref/len" && !m.key?("successful") }["data"]["pad"]).to eq("b" * size)
        end
      ensure
        ws.close_socket
      end
    end
  end

  it "HTTP helper: handshake, subscribe, long-poll delivery of JSON and form publishes" do
    with_reference_server(timeout: 2, secret: "s3") do |ref|
      session = BackboneSyncSpec::BayeuxHTTP::Session.new(ref.url)
      hs = session.handshake!
      expect(hs["supportedConnectionTypes"]).to include("websocket", "long-polling")
      session.subscribe!("/ref/http")

      expect(session.publish("/ref/http", { "n" => 0 }).first["error"]).to eq("403:/ref/http:Forbidden channel")
      expect(session.publish("/ref/http", { "n" => 1 }, ext: { secret: "s3" }).first["successful"]).to be(true)
      form = post_form(ref.url, [{ channel: "/ref/http", data: { n: 2 }, ext: { secret: "s3" } }])
      expect(form.json.first["successful"]).to be(true)
      old = Net::HTTP.post_form(URI(ref.url), message: { channel: "/ref/http", data: { n: 3 }, ext: { secret: "s3" } }.to_json)
      expect(JSON.parse(old.body).first["successful"]).to be(true)

      got = session.receive(3, within: 5)
      expect(got.map { |m| m["data"]["n"] }).to eq([1, 2, 3])
      expect(got.map { |m| m["ext"] || {} }).to all(eq({}))
    end
  end

  [["npm faye", :node_faye], ["Ruby faye gem", :ruby_faye]].each do |name, factory|
    [true, false].each do |websocket|
      transport = websocket ? "websocket" : "long-polling"
      it "#{name} client script over #{transport} receives in-process publishes" do
        with_reference_server(timeout: 3) do |ref|
          BackboneSyncSpec::ClientProcess.public_send(factory, ref.url, ["/ref/a", "/ref/wild/*"], 2,
                                                      websocket: websocket, timeout: 20).tap do |client|
            client.wait_ready(timeout: 20)
            ref.publish("/ref/a", { "n" => 1 })
            ref.publish("/ref/wild/x", { "n" => 2 })
            lines = client.wait_done(timeout: 20)
            expect(lines.map { |l| l["message"]["data"] }).to eq([{ "n" => 1 }, { "n" => 2 }])
            expect(lines.map { |l| l["transport"] }).to all(eq(transport))
          ensure
            client.stop
          end
        end
      end
    end
  end
end
