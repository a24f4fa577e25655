# frozen_string_literal: true

require "spec_helper"

RSpec.describe BackboneSync::Server, "TLS" do
  around do |example|
    Dir.mktmpdir("bs-tls") do |dir|
      @key, @cert = self_signed_cert(dir)
      example.run
    end
  end

  it "serves https: handshake and long-poll delivery" do
    with_server(key: @key, cert: @cert, timeout: 2) do |server|
      expect(server.url).to eq("https://127.0.0.1:#{server.port}/faye")
      s = BackboneSyncSpec::BayeuxHTTP::Session.new(server.url)
      s.handshake!
      s.subscribe!("/tls/http")
      server.publish("/tls/http", { "secure" => true })
      expect(s.receive(1, within: 5).map { |m| m["data"] }).to eq([{ "secure" => true }])
    end
  end

  it "serves wss: subscribe and receive over an encrypted WebSocket" do
    with_server(key: @key, cert: @cert) do |server|
      ws, = ws_session(server.url, ["/tls/ws"])
      begin
        expect(ws.io).to be_a(OpenSSL::SSL::SSLSocket)
        server.publish("/tls/ws", { "secure" => "ws" })
        expect(ws.wait_for { |m| delivery?(m) }["data"]).to eq({ "secure" => "ws" })
      ensure
        ws.close
      end
    end
  end

  it "presents the configured certificate" do
    with_server(key: @key, cert: @cert) do |server|
      ws = BackboneSyncSpec::WSClient.new(server.url)
      begin
        presented = ws.io.peer_cert
        expect(presented.to_pem).to eq(File.read(@cert))
      ensure
        ws.close
      end
    end
  end

  it "does not speak plain HTTP on the TLS port" do
    with_server(key: @key, cert: @cert) do |server|
      plain = server.url.sub("https://", "http://")
      handshake = [{ channel: "/meta/handshake", version: "1.0", supportedConnectionTypes: ["long-polling"] }]
      answered = begin
        res = post_json(plain, handshake, timeout: 3)
        res.status == 200 && res.json.first["successful"] == true
      rescue StandardError
        false
      end
      expect(answered).to be(false)
      expect(server.running?).to be(true)
    end
  end

  it "raises StartError with a clear message for a missing certificate file" do
    server = nil
    expect {
      server = BackboneSync::Server.new(host: "127.0.0.1", port: 0, key: @key, cert: "/nonexistent/cert.pem")
      server.start
    }.to raise_error(BackboneSync::StartError, %r{/nonexistent/cert\.pem})
    expect(server&.running?).to be_falsey
  ensure
    stop_bounded(server) if server
  end
end
