# frozen_string_literal: true

require "spec_helper"

# Unmodified Faye clients nobody here wrote, against our server: the npm
# `faye` Client over WebSocket and over long-polling, and the Ruby `faye` gem
# Client (EventMachine). Each runs in a child process (spec/support/node/
# faye_client.js, spec/support/ruby_faye_client.rb) printing JSON lines.
RSpec.describe "Faye clients against BackboneSync::Server" do
  clients = [
    ["npm faye over WebSocket", :node_faye, true, "websocket"],
    ["npm faye with websocket disabled (long-polling)", :node_faye, false, "long-polling"],
    ["Ruby faye gem over WebSocket", :ruby_faye, true, "websocket"],
    ["Ruby faye gem with websocket disabled (long-polling)", :ruby_faye, false, "long-polling"]
  ]

  def start_client(factory, url, channels, count, websocket, **opts)
    BackboneSyncSpec::ClientProcess.public_send(factory, url, channels, count, websocket: websocket, timeout: 30, **opts)
  end

  clients.each do |name, factory, websocket, transport|
    describe name do
      it "handshakes, subscribes and receives in-process, HTTP Publisher and old-gem form publishes" do
        with_server(secret: shared_secret, timeout: 5) do |server|
          client = start_client(factory, server.url, ["/interop/a", "/interop/wild/**"], 3, websocket)
          begin
            client.wait_ready(timeout: 30)
            expect(server.stats[:clients]).to be >= 1
            expect(server.stats[:subscriptions]).to eq(2)

            server.publish("/interop/a", { "via" => "in-process", "n" => 1 })

            expect(BackboneSync::Publisher.new(server.url, secret: shared_secret)
                                          .publish("/interop/wild/x/y", { "via" => "publisher", "n" => 2 }))
              .to be(true)

            # The old backbone_sync-rails gems' exact call.
            old = Net::HTTP.post_form(URI(server.url),
                                      message: { channel: "/interop/a", data: { "via" => "old-gem", "n" => 3 },
                                                 ext: { secret: shared_secret } }.to_json)
            expect(old.code).to eq("200")
            expect(JSON.parse(old.body).first).to include("channel" => "/interop/a", "successful" => true)

            lines = client.wait_done(timeout: 30)
            expect(lines.map { |l| l["message"]["data"] }).to eq([
                                                                    { "via" => "in-process", "n" => 1 },
                                                                    { "via" => "publisher", "n" => 2 },
                                                                    { "via" => "old-gem", "n" => 3 }
                                                                  ]), client.report
            expect(lines.map { |l| l["message"]["channel"] }).to eq(["/interop/a", "/interop/wild/x/y", "/interop/a"])
            expect(lines.map { |l| l["transport"] }).to all(eq(transport))
            expect(lines.map { |l| l["message"].dig("ext", "secret") }).to all(be_nil)
          ensure
            client.stop
          end
        end
      end

      it "does not receive a publish without the secret" do
        with_server(secret: shared_secret, timeout: 5) do |server|
          client = start_client(factory, server.url, ["/interop/guarded"], 1, websocket)
          begin
            client.wait_ready(timeout: 30)
            old = Net::HTTP.post_form(URI(server.url),
                                      message: { channel: "/interop/guarded", data: { "evil" => true } }.to_json)
            expect(JSON.parse(old.body).first["error"]).to eq("403:/interop/guarded:Forbidden channel")
            server.publish("/interop/guarded", { "good" => true })
            lines = client.wait_done(timeout: 30)
            expect(lines.map { |l| l["message"]["data"] }).to eq([{ "good" => true }])
          ensure
            client.stop
          end
        end
      end

      it "publishes to a public channel (others receive it) and is refused elsewhere" do
        with_server(secret: shared_secret, public_channels: ["/chat/**"], timeout: 5) do |server|
          listener = start_client(factory, server.url, ["/chat/room", "/locked"], 2, websocket)
          begin
            listener.wait_ready(timeout: 30)
            talker = start_client(factory, server.url, ["/chat/echo"], 0, websocket,
                                  publish: ["/chat/room", { "text" => "hello" }])
            refused = start_client(factory, server.url, ["/chat/echo"], 0, websocket,
                                   publish: ["/locked", { "text" => "nope" }])
            expect(talker.wait_for(timeout: 30, what: "publish result") { |l| l["published"] || l["publish_error"] })
              .to eq({ "published" => true })
            line = refused.wait_for(timeout: 30, what: "publish result") { |l| l["published"] || l["publish_error"] }
            expect(line["publish_error"].to_s).to match(/Forbidden channel/)
            # A control message last: a wrongly delivered /locked would arrive before it.
            listener.wait_for(timeout: 30, what: "the chat message") { |l| l.key?("message") }
            server.publish("/chat/room", { "control" => true })
            expect(listener.wait_done(timeout: 30).map { |l| [l["message"]["channel"], l["message"]["data"]] })
              .to eq([["/chat/room", { "text" => "hello" }], ["/chat/room", { "control" => true }]])
          ensure
            listener.stop
            talker&.stop
            refused&.stop
          end
        end
      end

      it "subscribes with a signed token" do
        with_server(secret: shared_secret, signed_subscriptions: true, timeout: 5) do |server|
          token = token_for("/interop/signed")
          client = start_client(factory, server.url, ["/interop/signed"], 1, websocket,
                                tokens: { "/interop/signed" => token })
          denied = start_client(factory, server.url, ["/interop/signed"], 1, websocket)
          begin
            client.wait_ready(timeout: 30)
            line = denied.wait_for(timeout: 30, what: "subscribe error") { |l| l["error"] || l["ready"] }
            expect(line).not_to have_key("ready")
            expect(line["error"].to_s).to match(/Forbidden channel|403/)
            server.publish("/interop/signed", { "ok" => 1 })
            expect(client.wait_done(timeout: 30).map { |l| l["message"]["data"] }).to eq([{ "ok" => 1 }])
          ensure
            client.stop
            denied.stop
          end
        end
      end
    end
  end

  it "keeps a long-polling npm faye client across connect timeouts (timeout: 1)" do
    with_server(timeout: 1) do |server|
      client = start_client(:node_faye, server.url, ["/interop/slow"], 1, false)
      begin
        client.wait_ready(timeout: 30)
        sleep 3.5 # several held connects time out and are renewed
        server.publish("/interop/slow", { "after" => "timeouts" })
        expect(client.wait_done(timeout: 30).map { |l| l["message"]["data"] }).to eq([{ "after" => "timeouts" }])
      ensure
        client.stop
      end
    end
  end

  it "re-handshakes after the server restarts on the same port (401 Unknown client)" do
    server = BackboneSync::Server.new(host: "127.0.0.1", port: 0, timeout: 2)
    server.start
    port = server.port
    client = start_client(:node_faye, server.url, ["/interop/restart"], 1, false)
    begin
      client.wait_ready(timeout: 30)
      stop_bounded(server)
      server = BackboneSync::Server.new(host: "127.0.0.1", port: port, timeout: 2)
      server.start
      # The client gets 401 on its next connect, handshakes again and resubscribes.
      eventually(timeout: 20, what: "the client to resubscribe") { server.stats[:subscriptions] == 1 }
      server.publish("/interop/restart", { "back" => true })
      expect(client.wait_done(timeout: 30).map { |l| l["message"]["data"] }).to eq([{ "back" => true }])
    ensure
      client.stop
      stop_bounded(server)
    end
  end

  [["npm faye", :node_faye], ["Ruby faye gem", :ruby_faye]].each do |name, factory|
    it "works over https/wss with the #{name} client (self-signed certificate)" do
      Dir.mktmpdir("bs-tls") do |dir|
        key, cert = self_signed_cert(dir)
        with_server(key: key, cert: cert) do |server|
          client = start_client(factory, server.url, ["/interop/tls"], 1, true)
          begin
            client.wait_ready(timeout: 30)
            server.publish("/interop/tls", { "tls" => true })
            lines = client.wait_done(timeout: 30)
            expect(lines.map { |l| [l["message"]["data"], l["transport"]] }).to eq([[{ "tls" => true }, "websocket"]])
          ensure
            client.stop
          end
        end
      end
    end
  end
end
