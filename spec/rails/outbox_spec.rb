# frozen_string_literal: true

require_relative "rails_helper"

# The outbox in this process: rows written in the transaction, published
# after the commit and deleted, none with the outbox off, and the relay's
# retention. The processes that die are in outbox_process_spec.rb.
RSpec.describe "the outbox (backbone_sync_events)", :rails do
  around do |example|
    with_server(secret: BackboneSync.secret) do |server|
      @server = server
      example.run
    end
  end

  let(:server) { @server }
  let(:publish_sentinel) { ->(channel, data) { server.publish(channel, data) } }

  def rows
    ActiveRecord::Base.connection.select_all("SELECT * FROM backbone_sync_events ORDER BY id").to_a
  end

  # A model whose before_commit, saved last in a transaction, records the
  # outbox rows as the transaction sees them just before COMMIT.
  def outbox_probe
    define_model("OutboxProbe", "projects") do
      class << self
        attr_accessor :seen
      end
      before_commit do
        self.class.seen = self.class.connection.select_all("SELECT channel, payload FROM backbone_sync_events ORDER BY id").to_a
      end
    end
  end

  def received(client)
    messages_until_sentinel(client, publish_with: publish_sentinel)
  end

  it "writes one row per channel inside the transaction, publishes it after the commit and deletes it" do
    client = subscriber(server.url)
    member = Member.create!(name: "Ann")
    probe = outbox_probe
    Member.transaction do
      member.update!(name: "Anna")
      expect(rows).to eq([]) # not before the commit: before_commit writes it
      Note.create!(body: "observed")
      probe.create!(name: "probe") # its before_commit runs after theirs, still inside
    end
    seen = probe.seen
    expect(seen.map { |r| r["channel"] }).to contain_exactly("/sync/members", "/sync/member_#{member.id}", "/sync/notes")
    expect(JSON.parse(seen.first["payload"])).to include("event" => "update")

    messages = received(client)
    expect(messages.map { |m| [m["channel"], m["data"]["event"]] }).to eq(
      [["/sync/members", "create"], ["/sync/members", "update"], ["/sync/member_#{member.id}", "update"],
       ["/sync/notes", "create"]]
    )
    expect(rows).to eq([])
  end

  it "with async: true, hands the rows' event ids to the BroadcastJob, which deletes the rows it sent" do
    previous = ActiveJob::Base.queue_adapter
    ActiveJob::Base.queue_adapter = ActiveJob::QueueAdapters::TestAdapter.new
    define_model("Task", "tasks") { push({ create: :collections }, async: true) }
    client = subscriber(server.url)
    Task.create!(title: "queued")
    job = ActiveJob::Base.queue_adapter.enqueued_jobs.first
    expect(rows.map { |r| r["channel"] }).to eq(["/sync/tasks"]) # the safety net until the job runs
    event_id = rows.first["event_id"]
    expect(job[:args].last).to include("/sync/tasks" => event_id)

    ActiveJob::Base.execute(job)
    expect(rows).to eq([])
    expect(received(client).map { |m| m["data"]["object"]["title"] }).to eq(["queued"])
  ensure
    ActiveJob::Base.queue_adapter = previous
  end

  it "writes nothing for a rolled-back transaction" do
    Member.transaction do
      Member.create!(name: "Ghost")
      raise ActiveRecord::Rollback
    end
    expect(Member.count).to eq(0)
    expect(rows).to eq([])
  end

  it "keeps the rows when the push server cannot be reached, for a relay to publish" do
    BackboneSync::Rails::Faye.root_address = "http://127.0.0.1:#{free_port}"
    BackboneSync::Broadcaster.server = nil
    errors = []
    BackboneSync.on_error { |error, context| errors << [error, context] }
    allow(BackboneSync::Server).to receive(:started).and_return([])
    member = Member.create!(name: "Kept")
    expect(BackboneSync.flush(timeout: 10)).to be(true)
    expect(errors.map { |_, context| context[:channel] }).to eq(["/sync/members"])
    expect(rows.map { |r| r["channel"] }).to eq(["/sync/members"])
    expect(BackboneSync.outbox_stats).to include(waiting: 1)
    expect(BackboneSync.outbox_stats[:oldest_age]).to be_between(0.0, 60.0)

    # The relay, once the row is past its grace, publishes it to the server.
    allow(BackboneSync::Server).to receive(:started).and_call_original
    client = subscriber(server.url)
    relay = BackboneSync::Outbox::Relay.new
    expect(relay.run_once).to eq(0) # within the grace: the after-commit path's
    ActiveRecord::Base.connection.execute("UPDATE backbone_sync_events SET available_at = 0")
    expect(relay.run_once).to eq(1)
    expect(relay.counts).to include(published: 1, failed: 0)
    messages = received(client)
    expect(messages.map { |m| m["data"]["object"]["id"] }).to eq([member.id])
    expect(rows).to eq([])
    expect(BackboneSync.outbox_stats).to eq(waiting: 0, oldest_age: 0.0)
  end

  it "writes nothing and publishes as before with config.backbone_sync.outbox = false" do
    BackboneSync::Outbox.enabled = false
    client = subscriber(server.url)
    probe = outbox_probe
    Member.transaction do
      Member.create!(name: "Plain")
      probe.create!(name: "probe")
    end
    expect(probe.seen).to eq([])
    messages = received(client)
    expect(messages.map { |m| m["data"]["object"]["name"] }).to eq(["Plain"])
    expect(rows).to eq([])
    expect(BackboneSync::Outbox::Relay.start_unless_off).to be_nil
  end

  it "says which generator and migration add the table when the outbox is required and the table is missing" do
    BackboneSync::Outbox.enabled = true
    allow_any_instance_of(ActiveRecord::Base.connection.class).to receive(:data_source_exists?)
      .with("backbone_sync_events").and_return(false)
    expect { Member.create!(name: "No table") }.to raise_error(
      BackboneSync::OutboxMissing, /backbone_sync_events table does not exist; run `bin\/rails generate backbone_sync:install`.*bin\/rails db:migrate/
    )
    expect(Member.count).to eq(0) # the change rolled back with its broadcast
  end

  it "drops rows older than the retention unpublished, reports and counts each" do
    client = subscriber(server.url)
    c = ActiveRecord::Base.connection
    old = Time.now.utc - 7200
    3.times do |i|
      c.execute("INSERT INTO backbone_sync_events (channel, payload, event_id, available_at, created_at) VALUES " \
                "('/sync/members', '{\"event\":\"create\",\"object\":{\"id\":#{i}}}', 'old-#{i}', 0, #{c.quote(old)})")
    end
    c.execute("INSERT INTO backbone_sync_events (channel, payload, event_id, available_at, created_at) VALUES " \
              "('/sync/members', '{\"event\":\"create\",\"object\":{\"id\":99}}', 'fresh', 0, #{c.quote(Time.now.utc)})")
    errors = []
    BackboneSync.on_error { |error, context| errors << [error, context] }

    relay = BackboneSync::Outbox::Relay.new(retention: 3600)
    expect(relay.run_once).to eq(4)
    expect(relay.counts).to eq(published: 1, dropped: 3, failed: 0)
    expect(errors.map { |e, ctx| [e.class, ctx[:event_id]] }).to eq(
      [[BackboneSync::OutboxExpired, "old-0"], [BackboneSync::OutboxExpired, "old-1"], [BackboneSync::OutboxExpired, "old-2"]]
    )
    expect(errors.first[0].message).to include("over the retention of 3600s")
    expect(received(client).map { |m| m["data"]["object"]["id"] }).to eq([99])
    expect(rows).to eq([])
  end

  it "runs a relay thread that stops cleanly, and gives the table's stats to a server in this process" do
    BackboneSync::Outbox.poll_interval = 0.05
    c = ActiveRecord::Base.connection
    2.times do |i| # within their grace: the relay leaves them
      c.execute("INSERT INTO backbone_sync_events (channel, payload, event_id, available_at, created_at) VALUES " \
                "('/sync/members', '{}', 'waiting-#{i}', #{BackboneSync::Outbox.now_ms + 600_000}, #{c.quote(Time.now.utc - 3)})")
    end
    allow(BackboneSync::Broadcaster).to receive(:server).and_return(server)
    relay = BackboneSync::Outbox::Relay.new.start
    expect(relay).to be_running
    expect(BackboneSync::Outbox::Relay.start_unless_off).to equal(relay) # one per process
    deadline = monotonic + 15
    sleep 0.05 until server.stats[:outbox_waiting] == 2 || monotonic > deadline
    expect(server.stats).to include(outbox_waiting: 2)
    expect(server.stats[:outbox_oldest_age]).to be_between(2.0, 60.0)
    expect(relay.stop(timeout: 10)).to be(true)
    expect(relay).not_to be_running
    expect(rows.size).to eq(2)
  end
end
