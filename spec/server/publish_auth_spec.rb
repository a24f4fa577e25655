# frozen_string_literal: true

require "spec_helper"

RSpec.describe BackboneSync::Server, "client publishing and subscription auth" do
  def publisher_session(server)
    BackboneSyncSpec::BayeuxHTTP::Session.new(server.url).tap(&:handshake!)
  end

  describe "publishing from outside the process" do
    it "rejects a client publish without the secret with 403, and nobody receives it" do
      with_server(secret: shared_secret) do |server|
        ws, = ws_session(server.url, ["/p/x"])
        begin
          pub = publisher_session(server)
          [nil, { secret: "wrong" }, { other: 1 }].each do |ext|
            reply = pub.publish("/p/x", { "evil" => true }, ext: ext).first
            expect(reply).to include("channel" => "/p/x", "successful" => false)
            expect(reply["error"]).to eq("403:/p/x:Forbidden channel")
          end
          expect(deliveries_before_control(server, ws, "/p/x")).to eq([])
        ensure
          ws.close
        end
      end
    end

    it "rejects every client publish when the server has no secret" do
      with_server(secret: nil) do |server|
        ws, = ws_session(server.url, ["/p/x"])
        begin
          reply = publisher_session(server).publish("/p/x", { "n" => 1 }, ext: { secret: "" }).first
          expect(reply["error"]).to eq("403:/p/x:Forbidden channel")
          expect(deliveries_before_control(server, ws, "/p/x")).to eq([])
        ensure
          ws.close
        end
      end
    end

    it "delivers a publish carrying the secret, with ext.secret stripped from the delivery" do
      with_server(secret: shared_secret) do |server|
        ws, = ws_session(server.url, ["/p/y"])
        begin
          pub = publisher_session(server)
          reply = pub.post([{ channel: "/p/y", clientId: pub.client_id, data: { "n" => 1 }, id: "pub-7",
                              ext: { secret: shared_secret, note: "kept" } }]).first
          expect(reply).to include("channel" => "/p/y", "successful" => true, "id" => "pub-7")
          msg = ws.wait_for { |m| delivery?(m) }
          expect(msg["data"]).to eq({ "n" => 1 })
          expect(msg["id"]).to eq("pub-7") # Faye keeps the publisher's id and ext; only clientId goes
          expect(msg).not_to have_key("clientId")
          expect(JSON.generate(msg)).not_to include(shared_secret)
          expect(msg.dig("ext", "note")).to eq("kept")
        ensure
          ws.close
        end
      end
    end

    it "accepts a secret publish without clientId, as a JSON body and as a form message=" do
      with_server(secret: shared_secret) do |server|
        ws, = ws_session(server.url, ["/p/z"])
        begin
          res = post_json(server.url, [{ channel: "/p/z", data: { "via" => "json" }, ext: { secret: shared_secret } }])
          expect(res.status).to eq(200)
          expect(res.json.first).to include("channel" => "/p/z", "successful" => true)
          res = post_form(server.url, { channel: "/p/z", data: { "via" => "form" }, ext: { secret: shared_secret } })
          expect(res.status).to eq(200)
          expect(res.json.first).to include("channel" => "/p/z", "successful" => true)
          got = deliveries_before_control(server, ws, "/p/z")
          expect(got.map { |m| m["data"] }).to eq([{ "via" => "json" }, { "via" => "form" }])
          expect(got.map { |m| m.dig("ext", "secret") }).to eq([nil, nil])
        ensure
          ws.close
        end
      end
    end

    it "delivers a batch of 50 secret publishes in one POST, in order, each acked with its id" do
      with_server(secret: shared_secret) do |server|
        ws, = ws_session(server.url, ["/p/batch"])
        begin
          batch = Array.new(50) { |i| { channel: "/p/batch", data: { "i" => i }, ext: { secret: shared_secret }, id: "b#{i}" } }
          res = post_json(server.url, batch)
          expect(res.status).to eq(200)
          expect(res.json.map { |m| [m["id"], m["successful"]] }).to eq(Array.new(50) { |i| ["b#{i}", true] })
          got = deliveries_before_control(server, ws, "/p/batch")
          expect(got.map { |m| m["data"]["i"] }).to eq((0...50).to_a)
        ensure
          ws.close
        end
      end
    end

    it "answers 405 to a publish to a pattern or an invalid name, even with the secret" do
      with_server(secret: shared_secret) do |server|
        pub = publisher_session(server)
        ["/p/*", "/p/**", "/bad name", "nope"].each do |bad|
          reply = pub.publish(bad, { "n" => 1 }, ext: { secret: shared_secret }).first
          expect(reply["successful"]).to be(false)
          expect(reply["error"]).to start_with("405:"), "publish to #{bad.inspect}: #{reply['error'].inspect}"
        end
      end
    end

    it "lets clients publish to public_channels without the secret, and only there" do
      with_server(secret: shared_secret, public_channels: ["/chat/**"]) do |server|
        ws, = ws_session(server.url, ["/chat/room1", "/private"])
        begin
          pub = publisher_session(server)
          expect(pub.publish("/chat/room1", { "text" => "hi" }).first["successful"]).to be(true)
          expect(pub.publish("/private", { "text" => "no" }).first["error"]).to eq("403:/private:Forbidden channel")
          got = deliveries_before_control(server, ws, "/private")
          expect(got.map { |m| [m["channel"], m["data"]] }).to eq([["/chat/room1", { "text" => "hi" }]])
        ensure
          ws.close
        end
      end
    end
  end

  describe "signed subscriptions" do
    def subscribe_reply(server, channel, token)
      s = BackboneSyncSpec::BayeuxHTTP::Session.new(server.url)
      s.handshake!
      [s, s.subscribe(channel, ext: token ? { token: token } : nil).first]
    end

    it "rejects missing, forged, wrong-channel and expired tokens with 403" do
      with_server(secret: shared_secret, signed_subscriptions: true) do |server|
        channel = "/signed/a"
        good = token_for(channel)
        expires = good.split(".").first
        bad_tokens = {
          "missing" => nil,
          "empty" => "",
          "forged hex" => "#{expires}.#{'0' * 64}",
          "wrong secret" => token_for(channel, secret: "not-the-secret"),
          "other channel" => token_for("/signed/b"),
          "expired" => token_for(channel, expires: Time.now.to_i - 10),
          "moved expiry" => "#{expires.to_i + 1000}.#{good.split('.').last}",
          "no dot" => good.delete(".")
        }
        bad_tokens.each do |what, token|
          _, reply = subscribe_reply(server, channel, token)
          expect(reply["successful"]).to be(false), "#{what} token was accepted"
          expect(reply["error"]).to eq("403:#{channel}:Forbidden channel"), "#{what}: #{reply['error'].inspect}"
        end
        expect(server.stats[:subscriptions]).to eq(0)
      end
    end

    it "accepts a token from BackboneSync.sign and one built from the documented format, and delivers" do
      with_server(secret: shared_secret, signed_subscriptions: true, timeout: 2) do |server|
        channel = "/signed/ok"
        token = BackboneSync.sign(channel, expires_in: 60, secret: shared_secret)
        expect(token).to match(/\A\d+\.[0-9a-f]{64}\z/)
        s, reply = subscribe_reply(server, channel, token)
        expect(reply).to include("successful" => true, "subscription" => channel)
        _, reply2 = subscribe_reply(server, channel, token_for(channel))
        expect(reply2["successful"]).to be(true)
        server.publish(channel, { "n" => 1 })
        expect(s.receive(1, within: 4).map { |m| m["data"] }).to eq([{ "n" => 1 }])
      end
    end

    it "needs tokens only for the listed patterns when signed_subscriptions is an Array" do
      with_server(secret: shared_secret, signed_subscriptions: ["/private/**"]) do |server|
        _, open_reply = subscribe_reply(server, "/public/x", nil)
        expect(open_reply["successful"]).to be(true)
        _, closed_reply = subscribe_reply(server, "/private/x", nil)
        expect(closed_reply["error"]).to eq("403:/private/x:Forbidden channel")
        _, signed_reply = subscribe_reply(server, "/private/x", token_for("/private/x"))
        expect(signed_reply["successful"]).to be(true)
      end
    end

    it "checks each channel of an array subscription" do
      with_server(secret: shared_secret, signed_subscriptions: true) do |server|
        s = BackboneSyncSpec::BayeuxHTTP::Session.new(server.url)
        s.handshake!
        reply = s.subscribe(%w[/signed/a /signed/b], ext: { token: token_for("/signed/a") }).first
        expect(reply["successful"]).to be(false)
        expect(reply["error"]).to start_with("403:")
      end
    end
  end
end
