# frozen_string_literal: true

require_relative "rails_helper"

# A save never waits on the push server: broadcasts to another process go
# through BackboneSync::BroadcastQueue, drained by one thread per process.
RSpec.describe "the broadcast queue", :rails do
  before { @processes = [] }

  after do
    @processes.each(&:stop)
    BackboneSync::Rails::Faye.queue_size = BackboneSync::BroadcastQueue::DEFAULT_SIZE
    @hung&.close
  end

  # A push server that accepts connections and never answers.
  def hung_server
    @hung = TCPServer.new("127.0.0.1", 0)
    BackboneSync::Rails::Faye.root_address = "http://127.0.0.1:#{@hung.addr[1]}"
  end

  def start_standalone
    argv = [RbConfig.ruby, File.join(BackboneSyncSpec::ROOT, "bin", "backbone_sync"), "--port", "0",
            "--timeout", "5", "--secret", BackboneSync.secret]
    process = BackboneSyncSpec::ClientProcess.new(argv)
    @processes << process
    process.wait_for(timeout: 20, what: "the listening line") do |l|
      l["raw"].to_s.start_with?("backbone_sync listening on ")
    end["raw"].split.last
  end

  it "does not make a save wait on a push server that accepts and never answers" do
    hung_server
    errors = []
    BackboneSync.on_error { |error, context| errors << [error, context] }
    member = BackboneSync.suppress { Member.create!(name: "v0") }

    times = (1..5).map { |i| timed { member.update!(name: "v#{i}") } }
    expect(times).to all(be < 0.1)
    expect(errors).to eq([]) # the saves are done; the first send still waits on the server

    # The first send waits out the 2 s read timeout; the circuit then opens
    # and the other nine fail at once instead of 2 s each.
    expect(timed { expect(BackboneSync.flush(timeout: 15)).to be(true) }).to be < 5
    expect(errors.size).to eq(10)
    expect(errors.map(&:first)).to all(be_a(BackboneSync::Unreachable))
    expect(errors.first[0].message).to include("did not answer within 2s")
    expect(errors.drop(1).map { |e, _| e.message }).to all(start_with("not sent: the push server failed"))
    expect(errors.first[1]).to include(model: "Member", event: "update", route: :http, channel: "/sync/members")
    expect(BackboneSync::Rails::Faye.queue_stats[:circuit]).to eq(:open)
  end

  it "drops, counts and reports a broadcast that finds the queue full, without blocking the save" do
    hung_server
    BackboneSync::Rails::Faye.queue_size = 2
    errors = []
    BackboneSync.on_error { |error, context| errors << [error, context] }
    dropped = BackboneSync::Rails::Faye.queue_stats[:dropped]
    failures = BackboneSync.broadcast_failures

    # One send hangs on the server, two wait, the rest find the queue full.
    times = (1..6).map { |i| timed { Member.create!(name: "m#{i}") } }
    expect(times).to all(be < 0.1)
    overloaded = errors.select { |e, _| e.is_a?(BackboneSync::Overloaded) }
    expect(overloaded.size).to be_between(3, 4)
    expect(overloaded.first[0].message).to include("broadcast queue is full").and include("queue_size")
    expect(overloaded.first[1]).to include(model: "Member", event: "create", channel: "/sync/members")
    expect(BackboneSync::Rails::Faye.queue_stats[:dropped]).to eq(dropped + overloaded.size)
    expect(BackboneSync.broadcast_failures).to eq(failures + overloaded.size)
  end

  it "keeps the order of each channel" do
    url = start_standalone
    BackboneSync::Rails::Faye.root_address = url.delete_suffix("/faye")
    client = subscriber(url, ["/sync/members"], count: 100)
    member = Member.create!(name: "0")
    (1..30).each { |i| member.update!(name: i.to_s) }
    expect(BackboneSync.flush(timeout: 20)).to be(true)

    publisher = BackboneSync::Publisher.new(url, secret: BackboneSync.secret)
    messages = messages_until_sentinel(client, publish_with: ->(_c, d) { publisher.publish("/sync/members", d) })
    expect(messages.map { |m| m["data"]["object"]["name"] }).to eq((0..30).map(&:to_s))
  ensure
    publisher&.close
  end

  it "sends a forked child's broadcasts from a thread of its own, and flushes them at its exit" do
    url = start_standalone
    BackboneSync::Rails::Faye.root_address = url.delete_suffix("/faye")
    client = subscriber(url, ["/sync/forks"])
    BackboneSync::Rails::Faye.publish(["/sync/forks"], { "from" => "parent" })
    expect(BackboneSync.flush(timeout: 10)).to be(true) # the parent's thread exists now

    ActiveRecord::Base.connection_pool.disconnect! # no SQLite connection crosses the fork
    pid = fork do
      # Exits as soon as it has queued: only the flush at exit sends it.
      BackboneSync::Rails::Faye.publish(["/sync/forks"], { "from" => "child" })
    end
    _, status = Process.wait2(pid)
    expect(status.exitstatus).to eq(0)
    client.wait_for(timeout: 15, what: "the child's broadcast") { |l| l.dig("message", "data", "from") == "child" }
    expect(client.messages.map { |m| m["data"]["from"] }).to eq(%w[parent child])
  end
end
