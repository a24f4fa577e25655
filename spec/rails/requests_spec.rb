# frozen_string_literal: true

require_relative "rails_helper"
require_relative "../../rakelib/js_bundle"

# Through the dummy app's full middleware stack (Rack::Test): the origin
# header, the subscription endpoint and its CSRF protection, the view
# helper, and the server enforcing the endpoint's tokens.
RSpec.describe "Rails requests", :rails do
  let(:session) { rack_session }

  describe "origin tagging" do
    it "carries X-BackboneSync-Origin from the request into the broadcasts its saves make" do
      with_server(secret: BackboneSync.secret) do |server|
        client = subscriber(server.url)
        token = csrf_token(session)
        headers = { "HTTP_X_CSRF_TOKEN" => token, "HTTP_ACCEPT" => "application/json" }

        created = json_post(session, "/members", { name: "Ann" },
                            headers.merge("HTTP_X_BACKBONESYNC_ORIGIN" => "k3j9page:c12"))
        expect(created.status).to eq(201)
        id = JSON.parse(created.body)["id"]
        session.put("/members/#{id}", JSON.generate(name: "Ann B"),
                    headers.merge("CONTENT_TYPE" => "application/json"))
        expect(session.last_response.status).to eq(200)
        session.delete("/members/#{id}", nil, headers.merge("HTTP_X_BACKBONESYNC_ORIGIN" => "x" * 500))
        expect(session.last_response.status).to eq(204)

        messages = messages_until_sentinel(client, publish_with: ->(c, d) { server.publish(c, d) })
        expect(messages.map { |m| [m["channel"], m["data"]["event"], m["data"]["origin"]] }).to eq(
          [["/sync/members", "create", "k3j9page:c12"],
           ["/sync/members", "update", nil], ["/sync/member_#{id}", "update", nil],
           # Over-long values are dropped, not echoed to every subscriber.
           ["/sync/members", "destroy", nil], ["/sync/member_#{id}", "destroy", nil]]
        )
        expect(BackboneSync.origin).to be_nil
      end
    end

    it "keeps the origin per thread and restores it after the request" do
      seen = Queue.new
      inside = Queue.new
      go = Queue.new
      app = BackboneSync::OriginMiddleware.new(lambda do |_env|
        seen << BackboneSync.origin
        inside << true
        go.pop # held until both requests are inside the middleware at once
        seen << BackboneSync.origin
        [200, {}, ["ok"]]
      end)
      threads = %w[a:1 b:2].map do |origin|
        Thread.new { app.call("HTTP_X_BACKBONESYNC_ORIGIN" => origin) }
      end
      Timeout.timeout(10, Timeout::Error, "both requests did not reach the app") { 2.times { inside.pop } }
      2.times { go << true }
      expect(threads.map { |t| t.join(10)&.value }).to eq([[200, {}, ["ok"]]] * 2)
      expect(Array.new(4) { seen.pop }.sort).to eq(%w[a:1 a:1 b:2 b:2])
      expect(BackboneSync.origin).to be_nil
      expect(Rails.application.middleware.map(&:klass)).to include(BackboneSync::Rails::OriginMiddleware)
    end
  end

  describe "POST /backbone_sync/subscriptions" do
    def request_token(channel, csrf: csrf_token(session))
      headers = { "HTTP_ACCEPT" => "application/json" }
      headers["HTTP_X_CSRF_TOKEN"] = csrf if csrf
      response = json_post(session, "/backbone_sync/subscriptions", { channel: channel }, headers)
      [response.status, JSON.parse(response.body)]
    end

    it "grants a signed token by default" do
      status, body = request_token("/sync/members")
      expect(status).to eq(200)
      expect(body["channel"]).to eq("/sync/members")
      expires, hex = body["token"].split(".")
      expect(Integer(expires)).to be_within(60).of(Time.now.to_i + 3600)
      expect(hex).to eq(OpenSSL::HMAC.hexdigest("SHA256", BackboneSync.secret, "/sync/members\n#{expires}"))
    end

    it "refuses without the CSRF token, and refuses invalid channels" do
      status, body = request_token("/sync/members", csrf: nil)
      expect(status).to eq(403)
      expect(body["error"]).to include("CSRF")
      expect(request_token("/sync/*").first).to eq(400)
      expect(request_token("/meta/subscribe").first).to eq(400)
      expect(request_token(nil).first).to eq(400)
    end

    it "asks BackboneSync.authorize_subscription with the channel and the request" do
      asked = []
      BackboneSync.authorize_subscription do |channel, request|
        asked << [channel, request.class]
        channel == "/sync/members"
      end
      expect(request_token("/sync/members").first).to eq(200)
      status, body = request_token("/sync/secret_plans")
      expect(status).to eq(403)
      expect(body["error"]).to include("not allowed")
      expect(asked.map(&:first)).to eq(%w[/sync/members /sync/secret_plans])
      expect(asked.first.last).to be <= ActionDispatch::Request
    end

    it "asks push_authorize of the model whose channels these are" do
      asked = []
      Member.define_singleton_method(:push_authorize) do |channel, request|
        asked << channel
        request.headers["X-Member-Pass"] == "yes"
      end
      expect(request_token("/sync/members").first).to eq(403)
      expect(request_token("/sync/member_7").first).to eq(403)
      expect(request_token("/sync/family_3_members").first).to eq(403)
      expect(request_token("/sync/notes").first).to eq(200) # not Member's channel
      expect(asked).to eq(%w[/sync/members /sync/member_7 /sync/family_3_members])
      response = json_post(session, "/backbone_sync/subscriptions", { channel: "/sync/members" },
                           "HTTP_X_CSRF_TOKEN" => csrf_token(session), "HTTP_X_MEMBER_PASS" => "yes")
      expect(response.status).to eq(200)
    ensure
      Member.singleton_class.send(:remove_method, :push_authorize)
    end

    it "hands out tokens the server accepts, and the server refuses subscribers without one" do
      with_server(secret: BackboneSync.secret, signed_subscriptions: true) do |server|
        BackboneSync.authorize_subscription { |channel, _| channel != "/sync/member_1" }
        _, granted = request_token("/sync/members")
        client = subscriber(server.url, ["/sync/members"], tokens: { "/sync/members" => granted["token"] })
        Member.create!(name: "visible")
        line = client.wait_for(timeout: 15, what: "the create") { |l| l["message"] }
        expect(line["message"]["data"]["object"]["name"]).to eq("visible")

        expect(request_token("/sync/member_1").first).to eq(403)
        refused = BackboneSyncSpec::ClientProcess.node_faye(server.url, ["/sync/member_1"], 1, timeout: 15)
        @subscribers << refused
        line = refused.wait_for(timeout: 15, what: "the refusal") { |l| l["error"] || l["ready"] }
        expect(line).to include("error" => "Forbidden channel", "code" => 403)

        wrong = BackboneSyncSpec::ClientProcess.node_faye(server.url, ["/sync/member_1"], 1, timeout: 15,
                                                          tokens: { "/sync/member_1" => granted["token"] })
        @subscribers << wrong
        line = wrong.wait_for(timeout: 15, what: "the refusal") { |l| l["error"] || l["ready"] }
        expect(line).to include("error" => "Forbidden channel", "code" => 403)
      end
    end
  end

  describe "the page" do
    it "emits backbone_sync_tags with the server address and the endpoint, next to the CSRF tags" do
      BackboneSync::Rails::Faye.root_address = "http://127.0.0.1:9393"
      session.get("/members")
      html = session.last_response.body
      expect(html).to include('<meta name="backbone-sync-server" content="http://127.0.0.1:9393/faye" />')
        .or include('<meta name="backbone-sync-server" content="http://127.0.0.1:9393/faye">')
      expect(html).to match(%r{<meta name="backbone-sync-subscriptions" content="/backbone_sync/subscriptions" ?/?>})
      expect(html).to include('name="csrf-token"')
      expect(html).to match(%r{<script src="/assets/application(-[0-9a-f]+)?\.js})
    end

    it "serves the JavaScript assets through Sprockets" do
      expect(Rails.application.config.assets.paths)
        .to include(File.join(BackboneSyncSpec::ROOT, "vendor", "assets", "javascripts"))
      session.get("/assets/application.js")
      expect(session.last_response.status).to eq(200)
      js = session.last_response.body
      # backbone_sync.js is these files joined (rakelib/js_bundle.rb).
      JsBundle::SOURCES.each do |name|
        source = File.read(File.join(BackboneSyncSpec::ROOT, "vendor/assets/javascripts", "#{name}.js"))
        first_code_line = source.lines.map(&:strip).find { |l| l.length > 20 && !l.start_with?("//", "*", "/*") }
        expect(js).to include(first_code_line), "application.js lacks #{name}.js"
      end
      expect(js).to include("Backbone.VERSION =")
    end
  end
end
