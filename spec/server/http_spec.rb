# frozen_string_literal: true

require "spec_helper"

RSpec.describe BackboneSync::Server, "HTTP endpoints" do
  let(:handshake) { [{ channel: "/meta/handshake", version: "1.0", supportedConnectionTypes: ["long-polling"], id: "1" }] }

  describe "CORS" do
    it "echoes any Origin without credentials by default, varies on Origin, and says no-cache" do
      with_server do |server|
        res = post_json(server.url, handshake, headers: { "Origin" => "http://app.example.test" })
        expect(res.status).to eq(200)
        expect(res["content-type"]).to start_with("application/json")
        expect(res["access-control-allow-origin"]).to eq("http://app.example.test")
        expect(res["access-control-allow-credentials"]).to be_nil
        expect(res["vary"]).to eq("Origin")
        expect(res["cache-control"]).to include("no-cache")
        expect(res.json.first["successful"]).to be(true)
      end
    end

    it "with allowed_origins, answers those origins with credentials and no others, null included" do
      with_server(allowed_origins: ["https://app.example.test"]) do |server|
        res = post_json(server.url, handshake, headers: { "Origin" => "https://app.example.test" })
        expect(res["access-control-allow-origin"]).to eq("https://app.example.test")
        expect(res["access-control-allow-credentials"]).to eq("true")
        expect(res["vary"]).to eq("Origin")
        %w[https://evil.example.test null http://app.example.test].each do |other|
          res = post_json(server.url, handshake, headers: { "Origin" => other })
          expect(res["access-control-allow-origin"]).to be_nil, other
          expect(res["access-control-allow-credentials"]).to be_nil, other
        end
      end
    end

    it "with allowed_origins, refuses a WebSocket upgrade from another origin with 403" do
      with_server(allowed_origins: ["https://app.example.test"]) do |server|
        expect { BackboneSyncSpec::WSClient.new(ws_url(server), headers: { "Origin" => "https://evil.example.test" }) }
          .to raise_error(/403/)
        ws = BackboneSyncSpec::WSClient.new(ws_url(server), headers: { "Origin" => "https://app.example.test" })
        ws.close
        ws = BackboneSyncSpec::WSClient.new(ws_url(server)) # no Origin: not a browser
        ws.close
      end
    end

    it "answers an OPTIONS preflight with the allowed methods, headers and max-age" do
      with_server do |server|
        res = request(:options, server.url, headers: {
                        "Origin" => "http://app.example.test",
                        "Access-Control-Request-Method" => "POST",
                        "Access-Control-Request-Headers" => "Content-Type"
                      })
        expect(res.status).to be_between(200, 204)
        expect(res["access-control-allow-origin"]).to eq("http://app.example.test")
        expect(res["access-control-allow-credentials"]).to be_nil
        expect(res["access-control-allow-methods"].split(/,\s*/)).to include("POST", "GET")
        expect(res["access-control-allow-headers"].split(/,\s*/))
          .to include("Accept", "Authorization", "Content-Type", "Pragma", "X-Requested-With")
        expect(res["access-control-max-age"]).to eq("86400")
      end
    end

    it "accepts the cross-origin transport's form-encoded message= body" do
      with_server do |server|
        res = post_form(server.url, handshake, headers: { "Origin" => "http://app.example.test" })
        expect(res.status).to eq(200)
        expect(res["access-control-allow-origin"]).to eq("http://app.example.test")
        expect(res.json.first).to include("channel" => "/meta/handshake", "successful" => true)
      end
    end
  end

  describe "the browser client" do
    it "serves the same JavaScript at <mount>.js and <mount>/client.js" do
      with_server do |server|
        a = request(:get, "#{origin(server)}/faye.js")
        b = request(:get, "#{origin(server)}/faye/client.js")
        [a, b].each do |res|
          expect(res.status).to eq(200)
          expect(res["content-type"]).to match(%r{\A(text|application)/javascript})
          expect(res.body.bytesize).to be > 100
        end
        expect(b.body).to eq(a.body)
        expect(a.body).to include("Faye")
      end
    end

    it "follows a custom mount" do
      with_server(mount: "/bayeux") do |server|
        expect(request(:get, "#{origin(server)}/bayeux.js").status).to eq(200)
        expect(request(:get, "#{origin(server)}/bayeux/client.js").status).to eq(200)
      end
    end

    it "answers 404 elsewhere" do
      with_server do |server|
        expect(request(:get, "#{origin(server)}/nothing-here").status).to eq(404)
      end
    end
  end

  describe "GET /stats" do
    it "is 403 without the bearer secret or with a wrong one" do
      with_server(secret: shared_secret) do |server|
        expect(request(:get, "#{origin(server)}/stats").status).to eq(403)
        expect(request(:get, "#{origin(server)}/stats", headers: { "Authorization" => "Bearer wrong" }).status).to eq(403)
        expect(request(:get, "#{origin(server)}/stats", headers: { "Authorization" => shared_secret }).status).to eq(403)
      end
    end

    it "returns the stats as JSON with the bearer secret" do
      with_server(secret: shared_secret) do |server|
        BackboneSyncSpec::BayeuxHTTP::Session.new(server.url).handshake!
        res = request(:get, "#{origin(server)}/stats", headers: { "Authorization" => "Bearer #{shared_secret}" })
        expect(res.status).to eq(200)
        expect(res["content-type"]).to start_with("application/json")
        stats = res.json
        expect(stats.keys).to match_array(%w[connections clients channels subscriptions messages_in messages_out
                                             bytes_out slow_clients_dropped errors backplane_up
                                             backplane_queued backplane_refused history_channels
                                             history_bytes clients_refused clients_evicted
                                             duplicates_dropped outbox_waiting outbox_oldest_age backplane_received])
        expect(stats["backplane_up"]).to eq(0) # no Redis configured
        expect(stats.except("outbox_oldest_age").values).to all(be_an(Integer))
        expect(stats["outbox_oldest_age"]).to eq(0) # no outbox relay in this process
        expect(stats["clients"]).to eq(1)
      end
    end

    it "is 403 when the server has no secret" do
      with_server(secret: nil) do |server|
        expect(request(:get, "#{origin(server)}/stats", headers: { "Authorization" => "Bearer " }).status).to eq(403)
      end
    end
  end
end
