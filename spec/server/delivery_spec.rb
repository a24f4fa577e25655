# frozen_string_literal: true

require "spec_helper"

RSpec.describe BackboneSync::Server, "fan-out" do
  it "delivers over WebSocket as JSON array frames with channel and data" do
    with_server do |server|
      ws, = ws_session(server.url, ["/fan/one"])
      begin
        server.publish("/fan/one", { "id" => 1 })
        frame_msgs = nil
        Timeout.timeout(5) do
          loop do
            frame_msgs = ws.read_json
            break if frame_msgs.any? { |m| delivery?(m) }
          end
        end
        expect(frame_msgs).to be_an(Array)
        delivered = frame_msgs.find { |m| delivery?(m) }
        expect(delivered).to include("channel" => "/fan/one", "data" => { "id" => 1 })
        expect(delivered).not_to have_key("clientId")
      ensure
        ws.close
      end
    end
  end

  it "round-trips data through the C encoder unchanged (unicode, escapes, numbers, nesting)" do
    data = {
      "s" => "h\u00e9llo \u2713 \u{1F600} \"quoted\" back\\slash \n\t \u0001 </script>",
      "i" => -42, "big" => 2**53, "f" => 1.5, "t" => true, "f2" => false, "n" => nil,
      "a" => [1, [2, [3, { "deep" => [] }]], {}], "empty" => ""
    }
    with_server do |server|
      ws, = ws_session(server.url, ["/enc"])
      begin
        server.publish("/enc", data)
        msg = ws.wait_for { |m| delivery?(m) }
        expect(msg["data"]).to eq(data)
      ensure
        ws.close
      end
    end
  end

  it "matches /a/* one segment deep and /a/** at any depth" do
    with_server do |server|
      star, = ws_session(server.url, ["/w/*"])
      globstar, = ws_session(server.url, ["/w/**"])
      begin
        %w[/w/x /w/x/y /other /w].each { |c| server.publish(c, { "c" => c }) }
        star_got, glob_got = deliveries_before_control(server, [star, globstar], "/w/end")
          .map { |msgs| msgs.map { |m| m["channel"] } }
        expect(star_got).to eq(["/w/x"])
        expect(glob_got).to eq(["/w/x", "/w/x/y"])
      ensure
        star.close
        globstar.close
      end
    end
  end

  it "delivers once to a client whose several subscriptions match the same channel" do
    with_server do |server|
      ws, = ws_session(server.url, ["/d/x", "/d/*", "/d/**", "/**"])
      begin
        server.publish("/d/x", { "n" => 1 })
        extra = deliveries_before_control(server, ws, "/d/x")
        expect(extra.map { |m| m["data"] }).to eq([{ "n" => 1 }])
      ensure
        ws.close
      end
    end
  end

  it "delivers to every subscriber of a channel" do
    with_server do |server|
      clients = Array.new(5) { ws_session(server.url, ["/all"]).first }
      begin
        server.publish("/all", { "n" => 7 })
        clients.each do |ws|
          expect(ws.wait_for { |m| delivery?(m) }["data"]).to eq({ "n" => 7 })
        end
      ensure
        clients.each(&:close)
      end
    end
  end

  it "removes a WebSocket client's subscriptions when its socket closes" do
    with_server(timeout: 1) do |server|
      ws, = ws_session(server.url, ["/gone"])
      expect(server.stats[:subscriptions]).to eq(1)
      ws.close
      eventually(timeout: 8, what: "the closed client's subscriptions to go") { server.stats[:subscriptions].zero? }
      expect(server.stats[:channels]).to eq(0)
      server.publish("/gone", { "n" => 1 }) # must not crash writing to a dead socket
      expect(server.running?).to be(true)
    end
  end
end
