# frozen_string_literal: true

require_relative "rails_helper"
require "open3"

# config.backbone_sync.* as an app sets it in config/application.rb, read at
# boot: each example boots spec/dummy in a real `bin/rails runner` (or
# `bin/rails server`) with its own settings and looks at what the app does.
RSpec.describe "config.backbone_sync settings", :rails do
  include_context "dummy app processes"

  # What the runner reports: the settings as the gem holds them, the meta
  # tags a view renders, and a token asked for through the app's own
  # endpoint (a page for the CSRF token, then the POST).
  REPORT = <<~'RUBY'
    require "action_dispatch/testing/integration"
    out = {
      "subscriptions_path" => BackboneSync::Rails.subscriptions_path,
      "token_ttl" => BackboneSync::Rails.token_ttl,
      "client_url" => BackboneSync::Broadcaster.client_url,
      "redis" => BackboneSync::Broadcaster.redis,
      "route" => BackboneSync::Broadcaster.route.to_s,
      "secret" => BackboneSync.secret,
      "tags" => ApplicationController.render(inline: "<%= backbone_sync_tags %>")
    }
    session = ActionDispatch::Integration::Session.new(Rails.application)
    session.host! "127.0.0.1"
    session.get "/members"
    csrf = session.response.body[/<meta name="csrf-token" content="([^"]+)"/, 1]
    path = BackboneSync::Rails.subscriptions_path || "/backbone_sync/subscriptions"
    session.post path, params: { channel: "/sync/members" }.to_json,
                       headers: { "Content-Type" => "application/json", "X-CSRF-Token" => csrf }
    out["token_status"] = session.response.status
    if session.response.status == 200
      token = JSON.parse(session.response.body)["token"]
      out["token"] = token
      out["token_expires_in"] = Integer(token.split(".").first) - Time.now.to_i
    end
    puts "REPORT #{JSON.generate(out)}"
  RUBY

  def boot(settings)
    env = { "RAILS_ENV" => "test", "BACKBONE_SYNC_DUMMY_CONFIG" => JSON.generate(settings),
            "BACKBONE_SYNC_DUMMY_DB" => ENV.fetch("BACKBONE_SYNC_DUMMY_DB") }
    out, status = Open3.capture2e(env, RbConfig.ruby, rails_bin, "runner", REPORT, chdir: dummy)
    expect(status).to be_success, out
    JSON.parse(out[/^REPORT (.*)$/, 1] || raise("no report in: #{out}"))
  end

  it "gives the embedded server the backplane that config.backbone_sync.redis names, as its publishers use" do
    urls = "redis://127.0.0.1:6390/0,redis://127.0.0.1:6391/0" # nothing listens: the server starts all the same
    script = 'server = BackboneSync::Broadcaster.start_embedded_server(port: 0); ' \
             'puts "REDIS #{server.redis.map(&:to_s).join(",")}"; server.stop'
    env = { "RAILS_ENV" => "test", "BACKBONE_SYNC_DUMMY_CONFIG" => JSON.generate("redis" => urls),
            "BACKBONE_SYNC_DUMMY_DB" => ENV.fetch("BACKBONE_SYNC_DUMMY_DB") }
    out, status = Open3.capture2e(env, RbConfig.ruby, rails_bin, "runner", script, chdir: dummy)
    expect(status).to be_success, out
    expect(out[/^REDIS (.*)$/, 1]).to eq(urls)
  end

  it "takes subscriptions_path, token_ttl, client_url, redis and secret" do
    report = boot("subscriptions_path" => "/push/tokens", "token_ttl" => 90, "secret" => "config-secret",
                  "client_url" => "https://push.example.com/faye", "redis" => "redis://127.0.0.1:6390/3")
    expect(report.values_at("subscriptions_path", "token_ttl", "client_url", "redis", "route", "secret"))
      .to eq(["/push/tokens", 90, "https://push.example.com/faye", "redis://127.0.0.1:6390/3", "redis",
              "config-secret"])
    expect(report["tags"]).to include('<meta name="backbone-sync-server" content="https://push.example.com/faye"')
    expect(report["tags"]).to include('<meta name="backbone-sync-subscriptions" content="/push/tokens"')
    # The token comes from the route drawn at the configured path, lives
    # token_ttl seconds and is signed with the configured secret.
    expect(report["token_status"]).to eq(200)
    expect(report["token_expires_in"]).to be_between(85, 90)
    [["config-secret", true], ["another-secret", false]].each do |secret, accepted|
      with_server(secret: secret, signed_subscriptions: true) do |server|
        http = BackboneSyncSpec::BayeuxHTTP::Session.new(server.url)
        http.handshake!
        reply = http.subscribe("/sync/members", ext: { token: report["token"] }).first
        expect(reply["successful"]).to be(accepted), "a server with secret #{secret}: #{reply.inspect}"
      end
    end
  end

  it "draws no token route and no meta tag with subscriptions_path false" do
    report = boot("subscriptions_path" => false)
    expect(report["subscriptions_path"]).to be(false)
    expect(report["tags"]).to include('<meta name="backbone-sync-server"')
    expect(report["tags"]).not_to include("backbone-sync-subscriptions")
    expect(report["token_status"]).to eq(404)
  end

  it "passes an embedded Hash to the server that `rails server` starts" do
    port = free_port
    env = { "RAILS_ENV" => "test", "BACKBONE_SYNC_ROOT_ADDRESS" => "http://127.0.0.1:#{port}",
            "BACKBONE_SYNC_DUMMY_CONFIG" => JSON.generate("embedded" => { "mount" => "/push", "timeout" => 7 }),
            "BACKBONE_SYNC_DUMMY_DB" => ENV.fetch("BACKBONE_SYNC_DUMMY_DB") }
    server = BackboneSyncSpec::ClientProcess.new([env, RbConfig.ruby, rails_bin, "server", "-b", "127.0.0.1",
                                                  "-p", free_port.to_s,
                                                  "-P", File.join(RAILS_SPEC_TMP, "config-#{port}.pid")], stdin: false)
    begin
      line = server.wait_for(timeout: 90, what: "the embedded server's listening line") do |l|
        l["raw"].to_s.include?("backbone_sync: embedded server listening on ")
      end
      url = line["raw"][%r{http://\S+}]
      expect(url).to eq("http://127.0.0.1:#{port}/push")
      # timeout: 7 is the advice a handshake gets.
      reply = BackboneSyncSpec::BayeuxHTTP::Session.new(url).handshake.first
      expect(reply.dig("advice", "timeout")).to eq(7000)
    ensure
      server.stop
    end
  end
end
