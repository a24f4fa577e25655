# frozen_string_literal: true

require "spec_helper"

# Channel history: every delivery carries ext {offset, epoch}; a subscribe
# with ext.since gets exactly what it missed, or is told it cannot.
RSpec.describe BackboneSync::Server, "recovery from history" do
  def data_of(deliveries)
    deliveries.map { |m| m["data"] }
  end

  def position(delivery)
    { offset: delivery.dig("ext", "offset"), epoch: delivery.dig("ext", "epoch") }
  end

  it "numbers deliveries per channel and reports the position on subscribe" do
    with_server do |server|
      http = BackboneSyncSpec::BayeuxHTTP::Session.new(server.url)
      http.handshake!
      reply = http.subscribe!("/rec/a")
      expect(reply["ext"]).to include("offset" => 0, "epoch" => a_string_matching(/\A[0-9a-z]{16}\z/))
      3.times { |i| server.publish("/rec/a", i) }
      server.publish("/rec/b", "other channel")
      got = http.receive(3)
      expect(got.map { |m| m.dig("ext", "offset") }).to eq([1, 2, 3])
      expect(got.map { |m| m.dig("ext", "epoch") }.uniq).to eq([reply["ext"]["epoch"]])
    end
  end

  it "over WebSocket: a client that reconnects with since gets every missed message once, in order" do
    with_server do |server|
      ws, = ws_session(server.url, ["/rec/ws"])
      last = nil
      begin
        3.times { |i| server.publish("/rec/ws", "before #{i}") }
        seen = Array.new(3) { ws.wait_for { |m| delivery?(m) } }
        expect(data_of(seen)).to eq(["before 0", "before 1", "before 2"])
        last = position(seen.last)
      ensure
        ws.close_socket # abrupt: no close frame, no /meta/disconnect
      end
      5.times { |i| server.publish("/rec/ws", "away #{i}") }

      http = BackboneSyncSpec::BayeuxHTTP::Session.new(server.url)
      client_id = http.handshake!(types: %w[websocket long-polling])["clientId"]
      again = BackboneSyncSpec::WSClient.new(server.url)
      begin
        again.send_json([{ channel: "/meta/connect", clientId: client_id, connectionType: "websocket", id: "c" }])
        again.send_json([{ channel: "/meta/subscribe", clientId: client_id, subscription: "/rec/ws", id: "s",
                           ext: { since: last } }])
        reply = again.wait_for { |m| m["id"] == "s" }
        expect(reply).to include("successful" => true)
        expect(reply["ext"]).to include("recovered" => true, "offset" => 8, "epoch" => last[:epoch])
        server.publish("/rec/ws", { "control" => "after" })
        got = deliveries_until_marker(again, "after", 5)
        expect(data_of(got)).to eq((0...5).map { |i| "away #{i}" })
        expect(got.map { |m| m.dig("ext", "offset") }).to eq((4..8).to_a)
      ensure
        again.close
      end
    end
  end

  it "over long-polling: the missed messages come with the next connect, once, in order" do
    with_server do |server|
      http = BackboneSyncSpec::BayeuxHTTP::Session.new(server.url)
      http.handshake!
      http.subscribe!("/rec/lp")
      2.times { |i| server.publish("/rec/lp", "before #{i}") }
      last = position(http.receive(2).last)
      # The client goes away without a word; the server keeps publishing.
      4.times { |i| server.publish("/rec/lp", "away #{i}") }

      back = BackboneSyncSpec::BayeuxHTTP::Session.new(server.url)
      back.handshake!
      reply = back.subscribe!("/rec/lp", ext: { since: last })
      expect(reply["ext"]).to include("recovered" => true, "offset" => 6)
      server.publish("/rec/lp", "after")
      got = back.receive(5)
      expect(data_of(got)).to eq((0...4).map { |i| "away #{i}" } + ["after"])
      expect(back.receive(1, within: 0.5)).to eq([]) # nothing twice
    end
  end

  it "says recovered: false, and replays nothing, when the gap is older than the history" do
    with_server(history_size: 3) do |server|
      http = BackboneSyncSpec::BayeuxHTTP::Session.new(server.url)
      http.handshake!
      http.subscribe!("/rec/gap")
      server.publish("/rec/gap", "seen")
      last = position(http.receive(1).last)
      10.times { |i| server.publish("/rec/gap", "away #{i}") }

      back = BackboneSyncSpec::BayeuxHTTP::Session.new(server.url)
      back.handshake!
      reply = back.subscribe!("/rec/gap", ext: { since: last })
      expect(reply["ext"]).to include("recovered" => false, "offset" => 11, "epoch" => last[:epoch])
      server.publish("/rec/gap", "after")
      expect(data_of(back.receive(1))).to eq(["after"]) # nothing partial before it
    end
  end

  it "says recovered: false after a restart, whose history is new (another epoch)" do
    last = nil
    port = nil
    with_server do |server|
      port = server.port
      http = BackboneSyncSpec::BayeuxHTTP::Session.new(server.url)
      http.handshake!
      http.subscribe!("/rec/restart")
      server.publish("/rec/restart", 1)
      last = position(http.receive(1).last)
    end
    with_server(port: port) do |server|
      server.publish("/rec/restart", 2)
      back = BackboneSyncSpec::BayeuxHTTP::Session.new(server.url)
      back.handshake!
      reply = back.subscribe!("/rec/restart", ext: { since: last })
      expect(reply["ext"]["recovered"]).to be(false)
      expect(reply["ext"]["epoch"]).not_to eq(last[:epoch])
    end
  end

  it "does not send twice what a same-session resubscribe with since finds still queued" do
    with_server do |server|
      http = BackboneSyncSpec::BayeuxHTTP::Session.new(server.url)
      http.handshake!
      epoch = http.subscribe!("/rec/same")["ext"]["epoch"]
      3.times { |i| server.publish("/rec/same", i) } # queued: no connect is out
      reply = http.subscribe!("/rec/same", ext: { since: { offset: 0, epoch: epoch } })
      expect(reply["ext"]).to include("recovered" => true)
      got = http.receive(3)
      expect(got.map { |m| m["data"] }).to eq([0, 1, 2])
      expect(http.receive(1, within: 0.5)).to eq([])
    end
  end

  it "flushes what was queued for a session when it connects on a new WebSocket" do
    with_server(timeout: 30) do |server|
      http = BackboneSyncSpec::BayeuxHTTP::Session.new(server.url)
      client_id = http.handshake!(types: %w[websocket long-polling])["clientId"]
      http.subscribe!("/rec/queued")
      2.times { |i| server.publish("/rec/queued", i) } # no link: they wait in the session
      ws = BackboneSyncSpec::WSClient.new(server.url)
      begin
        ws.send_json([{ channel: "/meta/connect", clientId: client_id, connectionType: "websocket", id: "c" }])
        # 20 s: far more than a loaded or valgrind run needs, still short of the 30 s connect timeout.
        got = Array.new(2) { ws.wait_for(timeout: 20) { |m| delivery?(m) } }
        expect(got.map { |m| m["data"] }).to eq([0, 1])
        # Flushed at once, not at the timeout: the held connect has not been answered yet.
        expect(ws.backlog.select { |m| m["channel"] == "/meta/connect" }).to eq([])
      ensure
        ws.close
      end
    end
  end

  it "keeps no history with history_size: 0, and plain clients see no difference" do
    with_server(history_size: 0) do |server|
      http = BackboneSyncSpec::BayeuxHTTP::Session.new(server.url)
      http.handshake!
      reply = http.subscribe!("/rec/off")
      expect(reply).not_to have_key("ext")
      server.publish("/rec/off", "x")
      delivery = http.receive(1).first
      expect(delivery).to eq("channel" => "/rec/off", "data" => "x")
    end
  end

  it "bounds history memory over all channels; the least recently published channels lose theirs first" do
    # 64 KB holds three of the 16 KB channels below with room to spare for a
    # few hundred bytes of per-channel bookkeeping (22 channels, < 1 KB each);
    # history_size 4 keeps each channel's ring of entries that small too.
    with_server(history_memory: 64 * 1024, history_size: 4) do |server|
      channels = ["/mem/old"] + Array.new(20) { |i| "/mem/c#{i}" }
      http = BackboneSyncSpec::BayeuxHTTP::Session.new(server.url)
      http.handshake!
      # Subscribing creates each channel's history (offset 0) and tells its epoch.
      epochs = channels.to_h { |c| [c, http.subscribe!(c)["ext"]["epoch"]] }
      server.publish("/mem/old", "x" * 100)
      # Published in order: /mem/old first, /mem/c19 last; 2 × 8 KB each, far over 64 KB in all.
      channels.drop(1).each { |c| 2.times { |n| server.publish(c, "#{c} #{n} " + "z" * 8000) } }
      http.receive(1 + 40, within: 10) # all published; the history now holds what it kept

      back = BackboneSyncSpec::BayeuxHTTP::Session.new(server.url)
      back.handshake!
      kept = channels.map do |c|
        back.subscribe!(c, ext: { since: { offset: 0, epoch: epochs[c] } })["ext"]["recovered"]
      end
      # The two most recently published (32 KB) fit in 64 KB and are intact...
      expect(kept.last(2)).to eq([true, true])
      server.publish("/mem/old", "end") # after every replay: all of them arrive before it
      replayed = []
      deadline = monotonic + 10 # replays are in the connect replies at once; 10 s for a loaded machine
      until replayed.include?("end")
        raise "the replays and the marker did not arrive within 10 s" if monotonic > deadline

        replayed.concat(back.receive(1, within: 1).map { |m| m["data"] })
      end
      replayed.pop
      expect(replayed.map { |d| d[/\A\S+ \d/] }.last(4)).to eq(["/mem/c18 0", "/mem/c18 1", "/mem/c19 0", "/mem/c19 1"])
      expect(replayed.sum(&:bytesize)).to be <= 64 * 1024
      # ...the 16 published before them (256 KB) cannot all fit, and lost theirs,
      expect(kept.first(17)).to all(be(false))
      # and no channel kept its history while one published after it lost its own.
      expect(kept).to eq(kept.sort_by { |k| k ? 1 : 0 })
    end
  end

  it "keeps a message recoverable for history_ttl seconds, and not after" do
    with_server(history_ttl: 1) do |server|
      http = BackboneSyncSpec::BayeuxHTTP::Session.new(server.url)
      http.handshake!
      epoch = http.subscribe!("/rec/ttl")["ext"]["epoch"]
      server.publish("/rec/ttl", "young")
      reply = http.subscribe!("/rec/ttl", ext: { since: { offset: 0, epoch: epoch } })
      expect(reply["ext"]).to include("recovered" => true)
      # Time is the behaviour here: past the 1 s ttl, the sweep (once a
      # second) drops it; 10 s leaves a loaded machine its slack.
      eventually(timeout: 10, interval: 0.5, what: "the message to outlive history_ttl") do
        !http.subscribe!("/rec/ttl", ext: { since: { offset: 0, epoch: epoch } })["ext"]["recovered"]
      end
    end
  end
end
