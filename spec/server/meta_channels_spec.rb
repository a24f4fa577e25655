# frozen_string_literal: true

require "spec_helper"

# /meta/* over HTTP long-polling, with the shapes of Faye 1.4
# (shared/notes/faye-wire-format.md "Exact message shapes").
RSpec.describe BackboneSync::Server, "meta channels" do
  def session(server)
    BackboneSyncSpec::BayeuxHTTP::Session.new(server.url, timeout: 10)
  end

  describe "/meta/handshake" do
    it "replies with clientId, version, connection types including websocket, and retry advice" do
      with_server(timeout: 7) do |server|
        reply = session(server).post([{ channel: "/meta/handshake", version: "1.0", id: "hs1",
                                        supportedConnectionTypes: %w[websocket long-polling] }])
        expect(reply.size).to eq(1)
        hs = reply.first
        expect(hs).to include("channel" => "/meta/handshake", "successful" => true, "version" => "1.0", "id" => "hs1")
        expect(hs["clientId"]).to match(/\A[0-9a-z]{16,}\z/)
        expect(hs["supportedConnectionTypes"]).to include("websocket", "long-polling")
        expect(hs["advice"]).to eq({ "reconnect" => "retry", "interval" => 0, "timeout" => 7000 })
      end
    end

    it "gives each handshake a distinct clientId" do
      with_server do |server|
        ids = Array.new(5) { session(server).handshake!["clientId"] }
        expect(ids.uniq.size).to eq(5)
      end
    end

    it "answers 402 when version is missing, with handshake advice and no clientId" do
      with_server do |server|
        hs = session(server).post([{ channel: "/meta/handshake", supportedConnectionTypes: ["long-polling"],
                                     id: "h" }]).first
        expect(hs).to include("channel" => "/meta/handshake", "successful" => false, "id" => "h")
        expect(hs["error"]).to match(/\A402:version:/)
        expect(hs["advice"]).to include("reconnect" => "handshake")
        expect(hs).not_to have_key("clientId")
      end
    end

    it "answers 301 when no offered connection type is supported" do
      with_server do |server|
        hs = session(server).post([{ channel: "/meta/handshake", version: "1.0", supportedConnectionTypes: ["foo"],
                                     id: "h" }]).first
        expect(hs["successful"]).to be(false)
        expect(hs["error"]).to match(/\A301:/)
        expect(hs).not_to have_key("clientId")
      end
    end
  end

  describe "/meta/connect" do
    it "answers 401 Unknown client with handshake advice for an unknown clientId" do
      with_server do |server|
        reply = session(server).post([{ channel: "/meta/connect", clientId: "unknown123", id: "c",
                                        connectionType: "long-polling" }]).first
        expect(reply).to include("channel" => "/meta/connect", "successful" => false, "id" => "c",
                                 "error" => "401:unknown123:Unknown client")
        expect(reply["advice"]).to include("reconnect" => "handshake")
      end
    end

    it "holds a long-poll connect until the timeout and then replies successfully" do
      with_server(timeout: 1) do |server|
        s = session(server)
        s.handshake!
        s.connect(timeout: 15) # the first connect may return at once
        t0 = monotonic
        # 15 s read timeout: a loaded machine or ASan answers late by seconds,
        # not by 15; the check that matters is the lower bound (held, not
        # answered at once), which load cannot break. 0.9 s: timer slack.
        reply = s.connect(timeout: 15)
        elapsed = monotonic - t0
        expect(elapsed).to be >= 0.9
        expect(reply.first).to include("channel" => "/meta/connect", "successful" => true, "clientId" => s.client_id)
        expect(reply.first["advice"]).to include("reconnect" => "retry", "timeout" => 1000)
        expect(reply.drop(1)).to eq([])
      end
    end

    it "returns a held connect early when a message is published to a subscription" do
      with_server(timeout: 30) do |server|
        s = session(server)
        s.handshake!
        s.subscribe!("/early")
        poll = Thread.new { t0 = monotonic; [s.connect(timeout: 35), monotonic - t0] }
        # Held: the server has read the connect (handshake, subscribe, connect).
        eventually(timeout: 10, what: "the connect to be read") { server.stats[:messages_in] >= 3 }
        expect(poll).to be_alive
        server.publish("/early", { "hello" => "world" })
        expect(poll.join(35)).to be_truthy
        reply, elapsed = poll.value
        # Early: the hold is 30 s; a loaded machine answers in well under 20.
        expect(elapsed).to be < 20
        expect(reply.first).to include("channel" => "/meta/connect", "successful" => true)
        deliveries = reply.select { |m| delivery?(m) }
        expect(deliveries.size).to eq(1)
        expect(deliveries.first).to include("channel" => "/early", "data" => { "hello" => "world" })
      end
    end

    it "queues deliveries between connects and hands them over on the next connect" do
      with_server(timeout: 2) do |server|
        s = session(server)
        s.handshake!
        s.subscribe!("/queued")
        3.times { |i| server.publish("/queued", { "i" => i }) }
        got = s.receive(3, within: 5)
        expect(got.map { |m| m["data"] }).to eq([{ "i" => 0 }, { "i" => 1 }, { "i" => 2 }])
      end
    end
  end

  describe "/meta/subscribe and /meta/unsubscribe" do
    it "accepts a string subscription and echoes it, the id and the clientId" do
      with_server do |server|
        s = session(server)
        s.handshake!
        reply = s.post([{ channel: "/meta/subscribe", clientId: s.client_id, subscription: "/one", id: "sub-1" }])
        expect(reply.size).to eq(1)
        # ext is free-form (extensions may add to it), the rest is exact.
        expect(reply.first.reject { |k, _| k == "ext" })
          .to eq({ "id" => "sub-1", "clientId" => s.client_id, "channel" => "/meta/subscribe",
                   "successful" => true, "subscription" => "/one" })
      end
    end

    it "accepts an array subscription, echoes the array, and delivers on each channel" do
      with_server(timeout: 2) do |server|
        s = session(server)
        s.handshake!
        reply = s.subscribe(%w[/arr/a /arr/b]).first
        expect(reply).to include("successful" => true, "subscription" => %w[/arr/a /arr/b])
        server.publish("/arr/a", { "n" => 1 })
        server.publish("/arr/b", { "n" => 2 })
        expect(s.receive(2, within: 5).map { |m| [m["channel"], m["data"]] })
          .to eq([["/arr/a", { "n" => 1 }], ["/arr/b", { "n" => 2 }]])
      end
    end

    it "treats a repeated subscribe as one subscription (one delivery, one count)" do
      with_server(timeout: 1) do |server|
        s = session(server)
        s.handshake!
        2.times { s.subscribe!("/twice") }
        expect(server.stats[:subscriptions]).to eq(1)
        server.publish("/twice", { "n" => 1 })
        got = s.receive(1, within: 3)
        got += s.receive(1, within: 1.5) # a duplicate would show up here
        expect(got.map { |m| m["data"] }).to eq([{ "n" => 1 }])
      end
    end

    it "stops delivering after unsubscribe" do
      with_server(timeout: 1) do |server|
        s = session(server)
        s.handshake!
        s.subscribe!(%w[/un/a /un/b])
        reply = s.unsubscribe("/un/a").first
        expect(reply).to include("channel" => "/meta/unsubscribe", "successful" => true, "subscription" => "/un/a",
                                 "clientId" => s.client_id)
        server.publish("/un/a", { "n" => 1 })
        server.publish("/un/b", { "n" => 2 })
        got = s.receive(1, within: 3)
        got += s.receive(1, within: 1.5) # anything wrongly delivered shows up here
        expect(got.map { |m| m["channel"] }).to eq(["/un/b"])
      end
    end

    it "answers 405 Invalid channel for subscriptions that are not channel names or patterns" do
      with_server do |server|
        s = session(server)
        s.handshake!
        ["/bad channel", "no-slash", "/a//b", "/a/**/b", "/a/b*", "/a/"].each do |bad|
          reply = s.subscribe(bad).first
          expect(reply["successful"]).to be(false), "subscribe #{bad.inspect} was accepted"
          expect(reply["error"]).to start_with("405:"), "subscribe #{bad.inspect}: #{reply['error'].inspect}"
        end
      end
    end

    it "answers 403 for subscriptions to /meta/** and /service/**" do
      with_server do |server|
        s = session(server)
        s.handshake!
        ["/meta/connect", "/meta/**", "/meta/*", "/service/x", "/service/**"].each do |forbidden|
          reply = s.subscribe(forbidden).first
          expect(reply).to include("successful" => false, "clientId" => s.client_id, "subscription" => forbidden)
          expect(reply["error"]).to eq("403:#{forbidden}:Forbidden channel")
        end
        expect(server.stats[:subscriptions]).to eq(0)
      end
    end

    it "treats /meta/subscribe/x as a forbidden channel, not as a subscribe (exact match)" do
      with_server(timeout: 1) do |server|
        s = session(server)
        s.handshake!
        reply = s.post([{ channel: "/meta/subscribe/x", clientId: s.client_id, subscription: "/sneaky", id: "z" }])
        expect(reply.first).to include("channel" => "/meta/subscribe/x", "successful" => false, "id" => "z")
        expect(reply.first["error"]).to start_with("403:")
        expect(server.stats[:subscriptions]).to eq(0)
        server.publish("/sneaky", { "n" => 1 })
        expect(s.receive(1, within: 1.5)).to eq([])
      end
    end

    it "answers 403 for an unknown /meta channel" do
      with_server do |server|
        s = session(server)
        s.handshake!
        reply = s.post([{ channel: "/meta/foo", clientId: s.client_id, id: "m" }]).first
        expect(reply).to include("successful" => false, "id" => "m")
        expect(reply["error"]).to start_with("403:")
      end
    end

    it "answers 401 to a subscribe from an unknown client" do
      with_server do |server|
        reply = session(server).post([{ channel: "/meta/subscribe", clientId: "ghost", subscription: "/x",
                                        id: "g" }]).first
        expect(reply).to include("successful" => false, "id" => "g")
        expect(reply["error"]).to eq("401:ghost:Unknown client")
      end
    end

    it "does not count a subscription made again against max_subscriptions" do
      with_server(max_subscriptions: 2) do |server|
        http = BackboneSyncSpec::BayeuxHTTP::Session.new(server.url)
        http.handshake!
        http.subscribe!("/again/a")
        http.subscribe!("/again/b")
        expect(http.subscribe("/again/a").first).to include("successful" => true)
        expect(http.subscribe(%w[/again/a /again/b]).first).to include("successful" => true)
        expect(http.subscribe("/again/c").first["error"]).to start_with("403:")
        expect(server.stats[:subscriptions]).to eq(2)
      end
    end

    it "gives an error reply once a client exceeds max_subscriptions" do
      with_server(max_subscriptions: 3) do |server|
        s = session(server)
        s.handshake!
        %w[/m/1 /m/2 /m/3].each { |c| s.subscribe!(c) }
        reply = s.subscribe("/m/4").first
        expect(reply).to include("successful" => false, "subscription" => "/m/4",
                                 "error" => "403:/m/4:Too many subscriptions for one client (max_subscriptions)")
        expect(server.stats[:subscriptions]).to eq(3)
      end
    end
  end

  describe "/meta/disconnect" do
    it "ends the session: successful reply, then connect gets 401" do
      with_server do |server|
        s = session(server)
        s.handshake!
        reply = s.disconnect.first
        expect(reply).to include("channel" => "/meta/disconnect", "successful" => true, "clientId" => s.client_id)
        expect(s.connect(timeout: 5).first["error"]).to eq("401:#{s.client_id}:Unknown client")
        eventually(what: "clients to reach 0") { server.stats[:clients].zero? }
      end
    end
  end

  it "echoes ids on every kind of reply in one batch" do
    with_server(timeout: 1, secret: shared_secret) do |server|
      s = session(server)
      s.handshake!
      reply = s.post([
                       { channel: "/meta/subscribe", clientId: s.client_id, subscription: "/ids", id: "a1" },
                       { channel: "/ids", clientId: s.client_id, data: { "x" => 1 }, ext: { secret: shared_secret }, id: "a2" },
                       { channel: "/meta/unsubscribe", clientId: s.client_id, subscription: "/ids", id: "a3" },
                       { channel: "/meta/connect", clientId: s.client_id, connectionType: "long-polling", id: "a4" }
                     ], timeout: 5)
      replies = reply.select { |m| m.key?("successful") }
      expect(replies.map { |m| [m["channel"], m["id"], m["successful"]] })
        .to eq([["/meta/subscribe", "a1", true], ["/ids", "a2", true], ["/meta/unsubscribe", "a3", true],
                ["/meta/connect", "a4", true]])
    end
  end

  it "expires a client that stops connecting (timeout: 1) and then answers 401" do
    with_server(timeout: 1) do |server|
      alive = session(server)
      alive.handshake!
      idle = session(server)
      idle.handshake!
      expect(server.stats[:clients]).to eq(2)
      # The live one keeps polling; the idle one never connects.
      deadline = monotonic + 8
      alive.connect(timeout: 5) until server.stats[:clients] == 1 || monotonic > deadline
      expect(server.stats[:clients]).to eq(1)
      expect(idle.connect(timeout: 5).first["error"]).to eq("401:#{idle.client_id}:Unknown client")
      expect(alive.connect(timeout: 5).first["successful"]).to be(true)
    end
  end
end
