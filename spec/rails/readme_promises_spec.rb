# frozen_string_literal: true

require_relative "rails_helper"

# Promises the README makes in its Rails section that no other spec checks,
# each against the real dummy app, a real server in this process and a real
# npm faye subscriber.
RSpec.describe "what the README promises about push and the endpoint", :rails do
  around do |example|
    with_server(secret: BackboneSync.secret) do |server|
      @server = server
      BackboneSync::Rails::Faye.server = server
      example.run
    ensure
      BackboneSync::Rails::Faye.server = nil
    end
  end

  def received(client)
    messages_until_sentinel(client, publish_with: ->(c, d) { @server.publish(c, d) })
  end

  def events(messages)
    messages.map { |m| [m["channel"], m["data"]["event"]] }
  end

  it "stays silent for update_columns, update_all and delete; touch publishes an update" do
    client = subscriber(@server.url)
    member = Member.create!(name: "Quiet")
    BackboneSync.flush(timeout: 10)
    member.update_columns(name: "no callbacks")
    Member.where(id: member.id).update_all(name: "none either")
    member.reload.touch # members have a lock_version, which update_all moved on
    Member.where(id: member.id).first.delete
    expect(events(received(client))).to eq(
      [["/sync/members", "create"],
       ["/sync/members", "update"], ["/sync/member_#{member.id}", "update"]]
    )
  end

  it "broadcasts by hand with push_broadcast" do
    client = subscriber(@server.url)
    member = BackboneSync.suppress { Member.create!(name: "Hand") }
    member.push_broadcast(:update)
    messages = received(client)
    expect(events(messages)).to eq([["/sync/members", "update"], ["/sync/member_#{member.id}", "update"]])
    expect(messages.first["data"]["object"]).to include("id" => member.id, "name" => "Hand")
  end

  describe "the subscription endpoint's policies" do
    let(:session) { rack_session }

    def request_token(channel, headers = {})
      headers = { "HTTP_ACCEPT" => "application/json", "HTTP_X_CSRF_TOKEN" => csrf_token(session) }.merge(headers)
      json_post(session, "/backbone_sync/subscriptions", { channel: channel }, headers).status
    end

    it "needs every policy that applies: the global block and each model's push_authorize" do
      BackboneSync.authorize_subscription { |channel, _request| channel != "/sync/members" }
      Member.define_singleton_method(:push_authorize) { |_channel, request| request.headers["X-Pass"] == "yes" }
      expect(request_token("/sync/members", "HTTP_X_PASS" => "yes")).to eq(403) # the global block says no
      expect(request_token("/sync/member_1", "HTTP_X_PASS" => "yes")).to eq(200) # both say yes
      expect(request_token("/sync/member_1")).to eq(403)                        # the model says no
      expect(request_token("/sync/notes")).to eq(200)                           # only the global block applies
    ensure
      Member.singleton_class.send(:remove_method, :push_authorize)
    end

    it "asks push_authorize for the names a model's push_channel? claims" do
      Member.define_singleton_method(:push_authorize) { |_channel, _request| false }
      Member.define_singleton_method(:push_channel?) { |channel| channel.start_with?("/sync/crew") }
      expect(request_token("/sync/crew_7")).to eq(403)
      expect(request_token("/sync/members")).to eq(200) # no longer Member's
    ensure
      Member.singleton_class.send(:remove_method, :push_authorize)
      Member.singleton_class.send(:remove_method, :push_channel?)
    end

    it "refuses a wrong CSRF token as it refuses a missing one" do
      expect(request_token("/sync/members", "HTTP_X_CSRF_TOKEN" => "forged-#{SecureRandom.hex(8)}")).to eq(403)
      expect(request_token("/sync/members")).to eq(200)
    end
  end

  describe "the origin header" do
    def origin_seen(value)
      seen = :unset
      app = BackboneSync::OriginMiddleware.new(->(_env) { seen = BackboneSync.origin; [200, {}, []] })
      app.call("HTTP_X_BACKBONESYNC_ORIGIN" => value)
      seen
    end

    it "keeps printable ASCII up to 128 characters, and ignores anything else" do
      expect(origin_seen("p" * 127 + ":")).to eq("p" * 127 + ":")        # exactly 128
      expect(origin_seen("p" * 129)).to be_nil                           # one over
      expect(origin_seen("page:c1\n")).to be_nil                         # a control character
      expect(origin_seen("page c1")).to be_nil                           # a space is not \x21-\x7e
      expect(origin_seen("page:\u00e9")).to be_nil                       # not ASCII
      expect(origin_seen("")).to be_nil
    end

    it "follows the app's isolation level: fiber-local under :fiber" do
      skip "ActiveSupport::IsolatedExecutionState is Rails 7 and later" unless defined?(ActiveSupport::IsolatedExecutionState)
      previous = ActiveSupport::IsolatedExecutionState.isolation_level
      ActiveSupport::IsolatedExecutionState.isolation_level = :fiber
      inner = nil
      BackboneSync.with_origin("outer:c1") do
        Fiber.new { inner = BackboneSync.origin }.resume
        expect(BackboneSync.origin).to eq("outer:c1")
      end
      expect(inner).to be_nil # another fiber does not see it
    ensure
      ActiveSupport::IsolatedExecutionState.isolation_level = previous if previous
    end
  end
end
