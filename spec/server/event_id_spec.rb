# frozen_string_literal: true

require "spec_helper"

# ext.event_id: a message published twice with the same event id (a retry, or
# the outbox relay publishing a row the app had already published) reaches
# subscribers once, while the channel's history keeps the first copy.
RSpec.describe BackboneSync::Server, "event ids" do
  def publish_http(server, channel, data, event_id)
    ext = { "secret" => shared_secret }
    ext["event_id"] = event_id unless event_id.nil?
    post_json(server.url, [{ "channel" => channel, "data" => data, "ext" => ext }])
  end

  it "delivers a Bayeux publish once when its event id is published again, and passes the id on" do
    with_server(secret: shared_secret) do |server|
      ws, = ws_session(server.url, ["/ev/http"])
      begin
        replies = Array.new(3) { publish_http(server, "/ev/http", { "n" => 1 }, "row-17").json.first }
        publish_http(server, "/ev/http", { "n" => 2 }, "row-18")
        got = deliveries_before_control(server, ws, "/ev/http")
        expect(replies).to all(include("successful" => true))
        expect(got.map { |m| m["data"] }).to eq([{ "n" => 1 }, { "n" => 2 }])
        expect(got.map { |m| m.dig("ext", "event_id") }).to eq(%w[row-17 row-18])
        expect(got.map { |m| m.dig("ext", "offset") }).to eq([1, 2])
        expect(server.stats[:duplicates_dropped]).to eq(2)
      ensure
        ws.close
      end
    end
  end

  it "delivers an in-process publish once per event id, per channel" do
    with_server do |server|
      ws, = ws_session(server.url, ["/ev/a", "/ev/b"])
      begin
        server.publish("/ev/a", { "x" => 1 }, event_id: "e1")
        server.publish("/ev/a", { "x" => 1 }, event_id: "e1")
        server.publish("/ev/b", { "x" => 1 }, event_id: "e1") # another channel: its own message
        server.publish("/ev/a", { "x" => 2 })                 # no id: never dropped
        server.publish("/ev/a", { "x" => 2 })
        got = deliveries_before_control(server, ws, "/ev/a")
        expect(got.map { |m| [m["channel"], m["data"], m.dig("ext", "event_id")] }).to eq(
          [["/ev/a", { "x" => 1 }, "e1"], ["/ev/b", { "x" => 1 }, "e1"],
           ["/ev/a", { "x" => 2 }, nil], ["/ev/a", { "x" => 2 }, nil]]
        )
      ensure
        ws.close
      end
    end
  end

  it "delivers an id again once the history no longer keeps its first copy (the bound of the rule)" do
    with_server(history_size: 2) do |server|
      ws, = ws_session(server.url, ["/ev/bound"])
      begin
        server.publish("/ev/bound", 1, event_id: "old")
        server.publish("/ev/bound", 2, event_id: "old")            # kept: dropped
        server.publish("/ev/bound", 3)
        server.publish("/ev/bound", 4)                             # "old" leaves the history
        server.publish("/ev/bound", 5, event_id: "old")
        got = deliveries_before_control(server, ws, "/ev/bound")
        expect(got.map { |m| m["data"] }).to eq([1, 3, 4, 5])
      ensure
        ws.close
      end
    end
  end

  it "keeps no ids with history off (history_size: 0): every publish is delivered" do
    with_server(history_size: 0) do |server|
      ws, = ws_session(server.url, ["/ev/off"])
      begin
        2.times { server.publish("/ev/off", 1, event_id: "same") }
        expect(deliveries_before_control(server, ws, "/ev/off").size).to eq(2)
      ensure
        ws.close
      end
    end
  end

  it "refuses an event id that is not a String of 1 to 128 bytes, with a 400 or an ArgumentError" do
    with_server(secret: shared_secret) do |server|
      [17, "", "x" * 129, { "a" => 1 }, ["x"], "a\u0000b"].each do |bad|
        res = publish_http(server, "/ev/bad", 1, bad)
        expect(res.json.first).to include("successful" => false), "event_id #{bad.inspect}"
        expect(res.json.first["error"]).to start_with("400::"), "event_id #{bad.inspect}"
        expect(res.json.first["error"]).to include("event_id")
        expect { server.publish("/ev/bad", 1, event_id: bad) }
          .to raise_error(ArgumentError, /event_id must be .*1 to 128 bytes/)
      end
      expect(publish_http(server, "/ev/bad", 1, "x" * 128).json.first).to include("successful" => true)
      raw = %([{"channel":"/ev/bad","data":1,"ext":{"secret":"#{shared_secret}","event_id":"a","event_id":"b"}}])
      res = request(:post, server.url, body: raw, headers: { "Content-Type" => "application/json" })
      expect(res.json.first["error"]).to include("appears twice")
    end
  end

  it "lets only a publisher with the secret set an event id, even on a public channel" do
    with_server(secret: shared_secret, public_channels: ["/ev/open/**"]) do |server|
      ws, = ws_session(server.url, ["/ev/open/x"])
      begin
        squat = post_json(server.url, [{ "channel" => "/ev/open/x", "data" => "squat", "ext" => { "event_id" => "app-1" } }])
        expect(squat.json.first).to include("successful" => false)
        expect(squat.json.first["error"]).to eq("403:/ev/open/x:Forbidden: ext.event_id needs the publishers' secret")
        plain = post_json(server.url, [{ "channel" => "/ev/open/x", "data" => "browser" }])
        expect(plain.json.first).to include("successful" => true)
        server.publish("/ev/open/x", "app", event_id: "app-1") # not silenced by the refused one
        got = deliveries_before_control(server, ws, "/ev/open/x")
        expect(got.map { |m| m["data"] }).to eq(%w[browser app])
      ensure
        ws.close
      end
    end
  end

  it "counts kept event ids against history_memory" do
    with_server do |server|
      grew = lambda do |channel, **opts|
        before = server.stats[:history_bytes]
        server.publish(channel, "x", **opts)
        eventually { server.stats[:history_channels] == (channel == "/ev/m1" ? 1 : 2) }
        server.stats[:history_bytes] - before
      end
      plain = grew.call("/ev/m1")
      keyed = grew.call("/ev/m2", event_id: "i" * 128)
      # The id is in the frame (ext.event_id) and kept beside it for the check.
      expect(keyed - plain).to be >= 2 * 128
    end
  end
end
