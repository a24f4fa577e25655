# frozen_string_literal: true

require "spec_helper"

RSpec.describe "BackboneSync.sign and BackboneSync.secret" do
  around do |example|
    saved_env = ENV.fetch("BACKBONE_SYNC_SECRET", nil)
    saved_secret = BackboneSync.instance_variable_get(:@secret)
    ENV.delete("BACKBONE_SYNC_SECRET")
    BackboneSync.secret = nil
    example.run
  ensure
    saved_env ? ENV["BACKBONE_SYNC_SECRET"] = saved_env : ENV.delete("BACKBONE_SYNC_SECRET")
    BackboneSync.secret = saved_secret
  end

  describe ".sign" do
    it "makes \"<expires>.<hex HMAC-SHA256(secret, channel\\nexpires)>\"" do
      now = Time.at(1_700_000_000)
      token = BackboneSync.sign("/private/alice", expires_in: 60, secret: "s3cret", now: now)
      expect(token).to match(/\A1700000060\.[0-9a-f]{64}\z/)
      expect(token).to eq(token_for("/private/alice", secret: "s3cret", expires: 1_700_000_060))
    end

    it "defaults to one hour from now" do
      before = Time.now.to_i
      expires = BackboneSync.sign("/a", secret: "k").split(".").first.to_i
      expect(expires).to be_between(before + 3600, Time.now.to_i + 3600)
    end

    it "binds the token to the channel and the secret" do
      now = Time.at(1_700_000_000)
      a = BackboneSync.sign("/a", secret: "k", now: now)
      expect(BackboneSync.sign("/b", secret: "k", now: now)).not_to eq(a)
      expect(BackboneSync.sign("/a", secret: "other", now: now)).not_to eq(a)
    end

    it "uses BackboneSync.secret by default, then $BACKBONE_SYNC_SECRET" do
      ENV["BACKBONE_SYNC_SECRET"] = "from-env"
      now = Time.at(1_700_000_000)
      expect(BackboneSync.sign("/a", now: now)).to eq(token_for("/a", secret: "from-env", expires: 1_700_003_600))
      BackboneSync.secret = "explicit"
      expect(BackboneSync.sign("/a", now: now)).to eq(token_for("/a", secret: "explicit", expires: 1_700_003_600))
    end

    it "says where a secret comes from when there is none" do
      expect { BackboneSync.sign("/a") }
        .to raise_error(ArgumentError, /no secret to sign with: pass secret:, set BackboneSync.secret or .*BACKBONE_SYNC_SECRET/)
    end

    it "refuses wildcards and malformed channels" do
      %w[/a/* /a/** a /a//b].push("", "/a b").each do |bad|
        expect { BackboneSync.sign(bad, secret: "k") }.to raise_error(BackboneSync::ChannelError, /cannot sign/)
      end
      expect { BackboneSync.sign(:sym, secret: "k") }.to raise_error(BackboneSync::ChannelError)
    end

    it "refuses non-positive or non-integer lifetimes" do
      [0, -1, 1.5, "60"].each do |bad|
        expect { BackboneSync.sign("/a", secret: "k", expires_in: bad) }.to raise_error(ArgumentError, /expires_in/)
      end
    end
  end

  describe ".secret" do
    it "is nil when nothing provides one" do
      expect(BackboneSync.secret).to be_nil
    end

    it "reads $BACKBONE_SYNC_SECRET, ignoring an empty value" do
      ENV["BACKBONE_SYNC_SECRET"] = ""
      expect(BackboneSync.secret).to be_nil
      ENV["BACKBONE_SYNC_SECRET"] = "env-secret"
      expect(BackboneSync.secret).to eq("env-secret")
    end

    it "derives one from Rails.application.secret_key_base when Rails is loaded" do
      # Rails is not a dependency; a minimal stand-in with the one method used.
      app = Struct.new(:secret_key_base).new("abc123")
      stub_const("Rails", Module.new { define_singleton_method(:application) { app } })
      expected = OpenSSL::HMAC.hexdigest("SHA256", "abc123", "backbone_sync secret")
      expect(BackboneSync.secret).to eq(expected)
      ENV["BACKBONE_SYNC_SECRET"] = "env-wins"
      expect(BackboneSync.secret).to eq("env-wins")
    end
  end

  describe "tokens against the server" do
    it "lets a subscriber with a token from .sign in, and keeps out expired and foreign ones" do
      with_server(secret: shared_secret, signed_subscriptions: true) do |server|
        session = BackboneSyncSpec::BayeuxHTTP::Session.new(server.url)
        session.handshake!
        good = BackboneSync.sign("/private/a", secret: shared_secret)
        expect(session.subscribe("/private/a", ext: { token: good }).first["successful"]).to be(true)

        expired = BackboneSync.sign("/private/b", secret: shared_secret, expires_in: 60, now: Time.now - 3600)
        foreign = BackboneSync.sign("/private/c", secret: "another-secret")
        other_channel = BackboneSync.sign("/private/x", secret: shared_secret)
        [["/private/b", expired], ["/private/c", foreign], ["/private/d", other_channel]].each do |channel, token|
          reply = session.subscribe(channel, ext: { token: token }).first
          expect(reply["successful"]).to be(false)
          expect(reply["error"]).to eq("403:#{channel}:Forbidden channel")
        end

        server.publish("/private/a", "hello")
        expect(session.receive(1).map { |m| m["data"] }).to eq(["hello"])
      end
    end
  end
end

RSpec.describe "BackboneSync.channel? and .channel_pattern?, the C core's channel rules" do
  it "says which names may be published to or signed for, and which patterns subscribed to" do
    { "/a" => true, "/a/b-c_d" => true, "/a/*" => false, "/meta" => false, "/meta/x" => false,
      "/service" => false, "/service/x" => false, "/metadata" => true, "/servicex/y" => true,
      "a" => false, "/a/" => false, "/a\0b" => false, "" => false, nil => false, :"/a" => false }.each do |name, ok|
      expect(BackboneSync.channel?(name)).to be(ok), name.inspect
    end
    { "/a" => true, "/a/*" => true, "/a/**" => true, "/**" => true, "/meta/*" => false, "/meta" => false,
      "/service/**" => false, "/a/*/b" => false, "/a/***" => false, 42 => false }.each do |pattern, ok|
      expect(BackboneSync.channel_pattern?(pattern)).to be(ok), pattern.inspect
    end
  end
end
