# frozen_string_literal: true

require_relative "rails_helper"

# Where a broadcast goes when no server runs in this process: Redis when
# configured, else HTTP to root_address. The servers here are separate
# processes (bin/backbone_sync), as in production.
RSpec.describe "BackboneSync::Rails::Faye publish routes", :rails do
  def start_standalone(env = {})
    argv = [env, RbConfig.ruby, File.join(BackboneSyncSpec::ROOT, "bin", "backbone_sync"), "--port", "0",
            "--timeout", "5", "--secret", BackboneSync.secret]
    process = BackboneSyncSpec::ClientProcess.new(argv)
    @processes << process
    line = process.wait_for(timeout: 20, what: "the listening line") do |l|
      l["raw"].to_s.start_with?("backbone_sync listening on ")
    end
    line["raw"].split.last
  end

  def start_redis
    skip "redis-server is not installed (bin/setup installs it)" unless system("command -v redis-server >/dev/null 2>&1")
    port = free_port
    process = BackboneSyncSpec::ClientProcess.new(
      ["redis-server", "--port", port.to_s, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    )
    @processes << process
    process.wait_for(timeout: 20, what: "redis ready") { |l| l["raw"].to_s.include?("Ready to accept connections") }
    "redis://127.0.0.1:#{port}/0"
  end

  before { @processes = [] }
  after { @processes.each(&:stop) }

  it "goes in-process when a server runs here, whatever else is configured" do
    BackboneSync::Rails::Faye.redis = "redis://127.0.0.1:1/0"
    expect(BackboneSync::Rails::Faye.route).to eq(:redis)
    with_server(secret: BackboneSync.secret) do |server|
      expect(BackboneSync::Rails::Faye.route).to eq(:in_process)
      expect(BackboneSync::Rails::Faye.server).to equal(server)
    end
    BackboneSync::Rails::Faye.redis = nil
    expect(BackboneSync::Rails::Faye.route).to eq(:http)
  end

  it "POSTs to root_address with the app's secret when no server runs in this process" do
    url = start_standalone
    BackboneSync::Rails::Faye.root_address = url.delete_suffix("/faye")
    expect(BackboneSync::Rails::Faye.server_url).to eq(url)
    expect(BackboneSync::Rails::Faye.route).to eq(:http)
    client = subscriber(url)
    member = Member.create!(name: "over http")
    member.update!(name: "again")
    expect(BackboneSync.flush(timeout: 10)).to be(true) # the sentinel goes out after them

    publisher = BackboneSync::Publisher.new(url, secret: BackboneSync.secret)
    messages = messages_until_sentinel(client, publish_with: ->(c, d) { publisher.publish(c, d) })
    expect(messages.map { |m| [m["channel"], m["data"]["event"]] }).to eq(
      [["/sync/members", "create"], ["/sync/members", "update"], ["/sync/member_#{member.id}", "update"]]
    )
    expect(messages.first["data"]["object"]).to include("name" => "over http")
  end

  it "never raises into the save when the server is down: logs, counts and calls on_error" do
    errors = []
    BackboneSync.on_error { |error, context| errors << [error, context] }
    BackboneSync::Rails::Faye.root_address = "http://127.0.0.1:#{free_port}"
    failures = BackboneSync.broadcast_failures
    member = Member.create!(name: "nobody listens")
    member.update!(name: "still nobody")
    expect(member.reload.name).to eq("still nobody")
    expect(BackboneSync.flush(timeout: 10)).to be(true)
    expect(BackboneSync.broadcast_failures).to eq(failures + 3)
    expect(errors.map { |e, _| e.class }.uniq).to eq([BackboneSync::Unreachable])
    expect(errors.first[0].message).to include("is the server running?")
    # The circuit opened on the first failure: the others did not try again.
    expect(errors.drop(1).map { |e, _| e.message }).to all(start_with("not sent: the push server failed"))
    expect(errors.map { |_, c| c[:channel] })
      .to eq(["/sync/members", "/sync/members", "/sync/member_#{member.id}"])
    expect(errors.first[1]).to include(model: "Member", event: "create", route: :http)
  end

  it "gives up within the short timeout when the server accepts but never answers" do
    silent = TCPServer.new("127.0.0.1", 0)
    BackboneSync::Rails::Faye.root_address = "http://127.0.0.1:#{silent.addr[1]}"
    errors = []
    BackboneSync.on_error { |error, _| errors << error }
    started = monotonic
    Member.create!(name: "slow")
    expect(BackboneSync.flush(timeout: 30)).to be(true)
    # read_timeout 2 s and no retry after a read timeout: 20 s holds on a
    # loaded machine and is still far from Net::HTTP's 60 s default.
    expect(monotonic - started).to be < 20
    expect(errors.size).to eq(1)
    expect(errors.first).to be_a(BackboneSync::Unreachable)
    expect(errors.first.message).to include("did not answer")
  ensure
    silent&.close
  end

  it "wraps a TLS failure (an https root_address, a plain server) in PublishError" do
    url = start_standalone
    BackboneSync::Rails::Faye.root_address = url.sub("http://", "https://").delete_suffix("/faye")
    expect { BackboneSync::Rails::Faye.publish!("/sync/members", { "n" => 1 }) }
      .to raise_error(BackboneSync::PublishError, %r{TLS with https://.*A plain server needs an http:// URL})
  end

  it "names the Rails settings in the wrong-secret hint" do
    url = start_standalone
    publisher = BackboneSync::Publisher.new(url, secret: "wrong", retries: 0)
    expect { publisher.publish("/sync/members", {}) }
      .to raise_error(BackboneSync::PublishError, /403.*config\.backbone_sync\.secret.*BACKBONE_SYNC_SECRET/)
  end

  it "publishes into the Redis backplane when a Redis URL is configured" do
    redis = start_redis
    url = start_standalone("BACKBONE_SYNC_REDIS_URL" => redis)
    # root_address points nowhere: only the backplane can deliver.
    BackboneSync::Rails::Faye.root_address = "http://127.0.0.1:#{free_port}"
    BackboneSync::Rails::Faye.redis = redis
    expect(BackboneSync::Rails::Faye.route).to eq(:redis)
    errors = []
    BackboneSync.on_error { |error, _| errors << error }
    client = subscriber(url)
    member = Member.create!(name: "via redis")
    member.destroy!
    expect(BackboneSync.flush(timeout: 10)).to be(true)

    require "backbone_sync/redis_publisher"
    publisher = BackboneSync::RedisPublisher.new(redis)
    messages = messages_until_sentinel(client, publish_with: ->(c, d) { publisher.publish(c, d) })
    expect(errors).to eq([])
    expect(messages.map { |m| [m["channel"], m["data"]["event"]] }).to eq(
      [["/sync/members", "create"], ["/sync/members", "destroy"], ["/sync/member_#{member.id}", "destroy"]]
    )
  ensure
    publisher&.close
  end

  it "reads the Redis URL from BACKBONE_SYNC_REDIS_URL, and publishes there" do
    redis = start_redis
    url = start_standalone("BACKBONE_SYNC_REDIS_URL" => redis)
    # root_address points nowhere and Faye.redis is not set: only the URL
    # from ENV can deliver.
    BackboneSync::Rails::Faye.root_address = "http://127.0.0.1:#{free_port}"
    ENV["BACKBONE_SYNC_REDIS_URL"] = redis
    expect(BackboneSync::Rails::Faye.route).to eq(:redis)
    errors = []
    BackboneSync.on_error { |error, _| errors << error }
    client = subscriber(url)
    member = Member.create!(name: "via ENV")
    expect(BackboneSync.flush(timeout: 10)).to be(true)
    require "backbone_sync/redis_publisher"
    publisher = BackboneSync::RedisPublisher.new(redis)
    messages = messages_until_sentinel(client, publish_with: ->(c, d) { publisher.publish(c, d) })
    expect(errors).to eq([])
    expect(messages.map { |m| [m["channel"], m["data"]["event"], m["data"]["object"]["id"]] })
      .to eq([["/sync/members", "create", member.id]])
  ensure
    publisher&.close
    ENV.delete("BACKBONE_SYNC_REDIS_URL")
  end
end
