# frozen_string_literal: true

require_relative "rails_helper"

# A job that holds its queue's thread until the spec opens its gate.
class BackboneSyncRailsSpec::HoldTheQueue < ActiveJob::Base
  GATES = Concurrent::Map.new

  def perform(gate)
    GATES.fetch(gate).pop
  end
end

# The push macro against a real BackboneSync::Server in this process and a
# real npm faye client subscribed to /sync/**.
RSpec.describe "push (the ActiveRecord macro)", :rails do
  around do |example|
    with_server(secret: BackboneSync.secret) do |server|
      @server = server
      example.run
    end
  end

  let(:server) { @server }
  let(:publish_sentinel) { ->(channel, data) { server.publish(channel, data) } }

  def received(client)
    messages_until_sentinel(client, publish_with: publish_sentinel)
  end

  it "broadcasts each committed create, update and destroy once, on the right channels" do
    client = subscriber(server.url)
    member = Member.create!(name: "Ann", email: "ann@example.com")
    member.update!(name: "Anna")
    member.destroy!

    messages = received(client)
    expect(messages.map { |m| [m["channel"], m["data"]["event"]] }).to eq(
      [["/sync/members", "create"],
       ["/sync/members", "update"], ["/sync/member_#{member.id}", "update"],
       ["/sync/members", "destroy"], ["/sync/member_#{member.id}", "destroy"]]
    )
    create = messages.first["data"]
    expect(create["object"]).to include("id" => member.id, "name" => "Ann", "email" => "ann@example.com")
    expect(create).to include("origin" => nil)
    expect(create["version"]).to eq(0) # lock_version
    expect(messages[1]["data"]["object"]["name"]).to eq("Anna")
    expect(messages[1]["data"]["version"]).to eq(member.lock_version).and eq(1) # README: lock_version when the table has it
    expect(messages[1]["data"]["version"]).to be >= create["version"]
    expect(messages[3]["data"]["object"]).to include("id" => member.id, "name" => "Anna")
  end

  it "publishes nothing for a rolled-back transaction" do
    client = subscriber(server.url)
    Member.transaction do
      Member.create!(name: "Ghost")
      raise ActiveRecord::Rollback
    end
    expect { Member.transaction { Member.create!(name: "Boom") && raise("boom") } }.to raise_error("boom")
    expect(Member.count).to eq(0)
    expect(received(client)).to eq([])
  end

  it "publishes nothing before the commit, then the committed state once" do
    client = subscriber(server.url)
    member = nil
    Member.transaction do
      member = Member.create!(name: "v1")
      member.update!(name: "v2")
      member.update!(name: "v3")
      sleep 0.3 # a broadcast sent before the commit would arrive now
      expect(client.messages).to eq([])
    end

    messages = received(client)
    expect(messages.size).to eq(1)
    expect(messages.first["channel"]).to eq("/sync/members")
    expect(messages.first["data"]).to include("event" => "create")
    expect(messages.first["data"]["object"]).to include("id" => member.id, "name" => "v3")
  end

  it "publishes an update for touch and a destroy for a record destroyed in the transaction that changed it" do
    member = Member.create!(name: "Ann")
    client = subscriber(server.url)
    member.touch
    Member.transaction do
      member.update!(name: "Gone")
      member.destroy!
    end
    events = received(client).map { |m| [m["channel"], m["data"]["event"]] }
    expect(events).to eq([["/sync/members", "update"], ["/sync/member_#{member.id}", "update"],
                          ["/sync/members", "destroy"], ["/sync/member_#{member.id}", "destroy"]])
  end

  it "publishes nothing inside BackboneSync.suppress, even when the commit comes after the block" do
    client = subscriber(server.url)
    BackboneSync.suppress { 3.times { |i| Member.create!(name: "bulk #{i}") } }
    Member.transaction do
      BackboneSync.suppress { Member.create!(name: "late commit") }
    end
    expect(BackboneSync.suppressed?).to be(false)
    Member.create!(name: "after")
    messages = received(client)
    expect(messages.map { |m| m["data"]["object"]["name"] }).to eq(["after"])
  end

  it "leaves a model without push untouched: no callbacks, no broadcasts, no errors" do
    client = subscriber(server.url)
    family = Family.create!(name: "Smith")
    family.update!(name: "Smyth")
    family.destroy!
    expect(Family.respond_to?(:push)).to be(true)
    expect(Family.include?(BackboneSync::Pushable::Instance)).to be(false)
    chains = ->(model) { [model._commit_callbacks.to_a.size, model._rollback_callbacks.to_a.size] }
    base = chains.call(ApplicationRecord)
    expect(chains.call(Family)).to eq(base)
    expect(chains.call(Member)).to eq(base.map { |n| n + 1 })
    expect(Family.private_method_defined?(:backbone_sync_mark)).to be(false)
    expect(received(client)).to eq([])
    expect(BackboneSync::Pushable.models).to include(Member)
    expect(BackboneSync::Pushable.models).not_to include(Family)
  end

  describe "channels" do
    it "uses collection_channel and instance_channel, adding /sync/ when missing" do
      define_model("Task", "tasks") do
        push create: :collections, update: %i[collections instances]
        def collection_channel = "project_#{project_id}_tasks"
        def instance_channel = "/sync/tasks/#{id}"
      end
      client = subscriber(server.url, ["/sync/**"])
      task = Task.create!(title: "a", project_id: 7)
      task.update!(title: "b")
      expect(received(client).map { |m| m["channel"] }).to eq(
        ["/sync/project_7_tasks", "/sync/project_7_tasks", "/sync/tasks/#{task.id}"]
      )
    end

    it "takes Procs (called with the record), Strings, methods and belongs_to associations" do
      define_model("Project", "projects")
      define_model("Task", "tasks") do
        belongs_to :project, optional: true
        push create: [->(task) { "board_#{task.project_id}" }, "all_tasks", :project, :extra_channels]
        def extra_channels = %w[audit /sync/audit_tasks]
      end
      project = Project.create!(name: "p")
      client = subscriber(server.url)
      Task.create!(title: "t", project: project)
      expect(received(client).map { |m| m["channel"] }).to eq(
        ["/sync/board_#{project.id}", "/sync/all_tasks", "/sync/project_#{project.id}_tasks",
         "/sync/audit", "/sync/audit_tasks"]
      )
    end

    it "never evaluates a String and rejects invalid names when push is declared" do
      expect { define_model("Task", "tasks") { push create: 'project_#{project_id}' } }
        .to raise_error(ArgumentError, /never evaluated; use a Proc/)
      expect { define_model("Task", "tasks") { push create: "bad channel" } }
        .to raise_error(BackboneSync::ChannelError, /not a valid channel/)
      expect { define_model("Task", "tasks") { push create: "/sync/**" } }
        .to raise_error(BackboneSync::ChannelError, /no wildcards/)
      expect { define_model("Task", "tasks") { push create: 42 } }
        .to raise_error(ArgumentError, /a target is :collections/)
      expect { define_model("Task", "tasks") { push crate: :collections } }
        .to raise_error(ArgumentError, /unknown key :crate/)
    end

    it "reports an invalid channel found at publish time and still saves" do
      errors = []
      BackboneSync.on_error { |error, context| errors << [error, context] }
      define_model("Task", "tasks") do
        push create: [->(task) { "has space #{task.id}" }, :collections]
      end
      client = subscriber(server.url)
      failures = BackboneSync.broadcast_failures
      task = Task.create!(title: "t")
      expect(task).to be_persisted
      expect(errors.size).to eq(1)
      expect(errors.first[0]).to be_a(BackboneSync::ChannelError)
      expect(errors.first[0].message).to include("not a valid channel")
      expect(errors.first[1]).to include(model: "Task", event: "create")
      expect(BackboneSync.broadcast_failures).to eq(failures + 1)
      expect(received(client)).to eq([])
    end

    it "`pushable` means the defaults, and a later push replaces the map" do
      define_model("Task", "tasks") { pushable }
      expect(Task.backbone_sync_config.events).to eq(BackboneSync::Pushable::DEFAULTS)
      Task.push destroy: :instances
      expect(Task.backbone_sync_config.events).to eq(create: [], update: [], destroy: [:instances])
      client = subscriber(server.url)
      task = Task.create!(title: "quiet")
      task.destroy!
      expect(received(client).map { |m| [m["channel"], m["data"]["event"]] })
        .to eq([["/sync/task_#{task.id}", "destroy"]])
    end
  end

  describe "payload" do
    it "uses lock_version as the version, the model's as_json and include_root_in_json" do
      define_model("Task", "tasks") do
        self.include_root_in_json = true
        push create: :collections, update: :collections
        def as_json(options = {}) = super(options.merge(only: %i[id title lock_version]))
      end
      client = subscriber(server.url)
      task = Task.create!(title: "a")
      task.update!(title: "b")
      data = received(client).map { |m| m["data"] }
      expect(data.map { |d| d["version"] }).to eq([0, 1])
      expect(data.last["object"]).to eq("task" => { "id" => task.id, "title" => "b", "lock_version" => 1 })
    end

    it "uses push_payload when the model defines it" do
      define_model("Task", "tasks") do
        push create: :collections
        def push_payload = { id: id, label: title.upcase, at: Time.utc(2020, 1, 2, 3, 4, 5) }
      end
      client = subscriber(server.url)
      task = Task.create!(title: "hi")
      object = received(client).first["data"]["object"]
      expect(object).to eq("id" => task.id, "label" => "HI", "at" => "2020-01-02T03:04:05.000Z")
    end

    it "sends the backbone_sync-rails shape with payload: :legacy" do
      define_model("Task", "tasks") { push({ create: :collections, destroy: :collections }, payload: :legacy) }
      client = subscriber(server.url)
      task = Task.create!(title: "old js")
      task.destroy!
      data = received(client).map { |m| m["data"] }
      expect(data.first.keys).to eq(["create"])
      expect(data.first["create"].keys).to eq([task.id.to_s])
      expect(data.first["create"][task.id.to_s]).to include("id" => task.id, "title" => "old js")
      expect(data.last.keys).to eq(["destroy"])
    end

    it "carries the origin set for the request" do
      client = subscriber(server.url)
      BackboneSync.with_origin("page1:c7") { Member.create!(name: "mine") }
      Member.create!(name: "theirs")
      origins = received(client).map { |m| m["data"]["origin"] }
      expect(origins).to eq(["page1:c7", nil])
    end
  end

  describe "async: true" do
    around do |example|
      previous = ActiveJob::Base.queue_adapter
      ActiveJob::Base.queue_adapter = ActiveJob::QueueAdapters::TestAdapter.new
      example.run
    ensure
      ActiveJob::Base.queue_adapter = previous
    end

    it "enqueues a BroadcastJob after the commit (none for a rollback), which publishes when run" do
      define_model("Task", "tasks") { push({ create: :collections }, async: true, queue: "sync") }
      adapter = ActiveJob::Base.queue_adapter
      client = subscriber(server.url)
      Task.transaction do
        Task.create!(title: "rolled back")
        raise ActiveRecord::Rollback
      end
      task = nil
      Task.transaction do
        task = Task.create!(title: "queued")
        expect(adapter.enqueued_jobs).to be_empty
      end
      expect(adapter.enqueued_jobs.size).to eq(1)
      job = adapter.enqueued_jobs.first
      expect(job[:job]).to eq(BackboneSync::BroadcastJob)
      expect(job[:queue]).to eq("sync")
      sleep 0.2
      expect(client.messages).to eq([])

      ActiveJob::Base.execute(job)
      messages = received(client)
      expect(messages.map { |m| m["channel"] }).to eq(["/sync/tasks"])
      expect(messages.first["data"]).to include("event" => "create")
      expect(messages.first["data"]["object"]).to include("id" => task.id, "title" => "queued")
    end
  end

  # The app's own adapter (spec/dummy: :async, ActiveJob's real thread
  # pool), with one thread: a job of the spec's holds it, so the broadcast
  # job runs exactly when the spec lets it, after what the spec did meanwhile.
  describe "async: true on a real queue adapter" do
    around do |example|
      previous = ActiveJob::Base.queue_adapter
      logger = ActiveJob::Base.logger
      ActiveJob::Base.queue_adapter = ActiveJob::QueueAdapters::AsyncAdapter.new(min_threads: 1, max_threads: 1)
      example.run
    ensure
      ActiveJob::Base.queue_adapter.shutdown(wait: true) if ActiveJob::Base.queue_adapter.respond_to?(:shutdown)
      ActiveJob::Base.queue_adapter = previous
      ActiveJob::Base.logger = logger
    end

    # Runs the block while the adapter's only thread is held, then lets it go.
    def with_queue_held
      gate = SecureRandom.hex(4)
      BackboneSyncRailsSpec::HoldTheQueue::GATES[gate] = Queue.new
      BackboneSyncRailsSpec::HoldTheQueue.perform_later(gate)
      yield
    ensure
      BackboneSyncRailsSpec::HoldTheQueue::GATES.delete(gate) << :go
    end

    # The BroadcastJob performs that ended: [job_id, exception or nil].
    def broadcast_jobs_ended
      ended = Queue.new
      subscription = ActiveSupport::Notifications.subscribe("perform.active_job") do |*, payload|
        job = payload[:job]
        ended << [job.job_id, payload[:exception_object]] if job.is_a?(BackboneSync::BroadcastJob)
      end
      yield ended
    ensure
      ActiveSupport::Notifications.unsubscribe(subscription)
    end

    it "publishes the record as it was committed, though it changed before the job ran" do
      define_model("Task", "tasks") { push({ create: :collections }, async: true) }
      client = subscriber(server.url)
      task = nil
      broadcast_jobs_ended do |ended|
        with_queue_held do
          task = Task.create!(title: "as committed")
          Task.where(id: task.id).update_all(title: "changed later") # silent: no callbacks
        end
        job_id, error = Timeout.timeout(15) { ended.pop }
        expect(job_id).to be_a(String)
        expect(error).to be_nil
      end
      messages = received(client)
      expect(messages.map { |m| m["channel"] }).to eq(["/sync/tasks"])
      expect(messages.first["data"]["object"]).to include("id" => task.id, "title" => "as committed")
    end

    it "raises in the job when the publish fails, so the backend sees it, and reports it with the job's id" do
      define_model("Task", "tasks") { push({ create: :collections }, async: true) }
      reports = Queue.new
      BackboneSync.on_error = ->(error, context) { reports << [error, context] }
      ActiveJob::Base.logger = ActiveSupport::Logger.new(IO::NULL) # the failure is expected; no backtrace on the terminal
      broadcast_jobs_ended do |ended|
        with_queue_held do
          Task.create!(title: "not sent")
          stop_bounded(server) # no server left in this process: the job publishes over HTTP
          BackboneSync::Rails::Faye.root_address = "http://127.0.0.1:#{free_port}" # nobody listens
        end
        job_id, error = Timeout.timeout(60) { ended.pop }
        expect(error).to be_a(BackboneSync::Unreachable)
        reported, context = Timeout.timeout(5) { reports.pop }
        expect(reported).to equal(error)
        expect(context).to include(channel: "/sync/tasks", job: job_id)
      end
    end
  end
end
