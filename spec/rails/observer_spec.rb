# frozen_string_literal: true

require_relative "rails_helper"

# The 2011 observer style: spec/dummy declares
#   class NoteObserver < ActiveRecord::Observer
#     include BackboneSync::Rails::Faye::Observer   # the old name of BackboneSync::Rails::Observer
#   end
# and config.active_record.observers = :note_observer (rails-observers).
# The subscriber here is the Ruby faye gem's client.
RSpec.describe "BackboneSync::Rails::Observer", :rails do
  around do |example|
    with_server(secret: BackboneSync.secret) do |server|
      @server = server
      example.run
    end
  end

  def received(client)
    messages_until_sentinel(client, publish_with: ->(c, d) { @server.publish(c, d) })
  end

  it "is registered the rails-observers way" do
    expect(ActiveRecord::Base.observers).to eq([:note_observer])
    expect(NoteObserver.instance).to be_a(BackboneSync::Rails::Faye::Observer)
    expect(BackboneSync::Rails::Faye::Observer).to be(BackboneSync::Rails::Observer)
    expect(NoteObserver.observed_classes).to eq([Note])
  end

  it "broadcasts committed creates, updates and destroys on /sync/<table_name>, once each" do
    client = subscriber(@server.url, ["/sync/**"], ruby: true)
    note = Note.create!(body: "first")
    note.update!(body: "second")
    Note.transaction do
      Note.create!(body: "never")
      raise ActiveRecord::Rollback
    end
    BackboneSync.with_origin("pg:c1") { note.destroy! }

    messages = received(client)
    expect(messages.map { |m| [m["channel"], m["data"]["event"]] })
      .to eq([["/sync/notes", "create"], ["/sync/notes", "update"], ["/sync/notes", "destroy"]])
    expect(messages.map { |m| m["data"]["object"]["body"] }).to eq(%w[first second second])
    expect(messages.map { |m| m["data"]["origin"] }).to eq([nil, nil, "pg:c1"])
    expect(messages.first["data"]["version"]).to eq(note.created_at.strftime("%s%3N").to_i) # README: integer milliseconds
    # The same number the page reads from the record's JSON (what a fetch returns).
    rendered = Time.iso8601(messages.first["data"]["object"]["updated_at"])
    expect(messages.first["data"]["version"]).to eq((rendered.to_r * 1000).to_i)
  end

  it "publishes a create with the committed state when the transaction also updated the record" do
    client = subscriber(@server.url)
    Note.transaction do
      note = Note.create!(body: "draft")
      note.update!(body: "final")
    end
    messages = received(client)
    expect(messages.size).to eq(1)
    expect(messages.first["data"]).to include("event" => "create")
    expect(messages.first["data"]["object"]).to include("body" => "final")
  end

  it "uses faye_channel when the model defines it, and the legacy shape when the observer asks" do
    Note.define_singleton_method(:faye_channel) { "journal" }
    NoteObserver.class_eval { def payload_format = :legacy }
    client = subscriber(@server.url)
    note = Note.create!(body: "legacy")
    messages = received(client)
    expect(messages.map { |m| m["channel"] }).to eq(["/sync/journal"])
    expect(messages.first["data"]).to eq("create" => { note.id.to_s => note.as_json })
  ensure
    Note.singleton_class.send(:remove_method, :faye_channel)
    NoteObserver.send(:remove_method, :payload_format)
  end

  it "is silent inside BackboneSync.suppress" do
    client = subscriber(@server.url)
    BackboneSync.suppress { Note.create!(body: "bulk") }
    expect(received(client)).to eq([])
  end

  describe "push_options async: true" do
    around do |example|
      previous = ActiveJob::Base.queue_adapter
      ActiveJob::Base.queue_adapter = ActiveJob::QueueAdapters::TestAdapter.new
      example.run
    ensure
      ActiveJob::Base.queue_adapter = previous
      NoteObserver.remove_instance_variable(:@push_options) if NoteObserver.instance_variable_defined?(:@push_options)
    end

    it "enqueues a BroadcastJob after the commit (none for a rollback), which publishes the committed state" do
      NoteObserver.push_options(async: true, queue: "sync")
      adapter = ActiveJob::Base.queue_adapter
      client = subscriber(@server.url)
      Note.transaction do
        Note.create!(body: "rolled back")
        raise ActiveRecord::Rollback
      end
      note = nil
      BackboneSync.with_origin("pg:c2") do
        Note.transaction do
          note = Note.create!(body: "queued")
          note.update!(body: "queued, then edited")
          expect(adapter.enqueued_jobs).to be_empty
        end
      end
      expect(adapter.enqueued_jobs.size).to eq(1)
      job = adapter.enqueued_jobs.first
      expect(job[:job]).to eq(BackboneSync::BroadcastJob)
      expect(job[:queue]).to eq("sync")
      sleep 0.2
      expect(client.messages).to eq([])

      ActiveJob::Base.execute(job)
      messages = received(client)
      expect(messages.map { |m| m["channel"] }).to eq(["/sync/notes"])
      expect(messages.first["data"]).to include("event" => "create", "origin" => "pg:c2")
      expect(messages.first["data"]["object"]).to include("id" => note.id, "body" => "queued, then edited")
    end

    it "takes push's options and refuses others as push does" do
      expect { NoteObserver.push_options(asink: true) }
        .to raise_error(ArgumentError, /NoteObserver.push_options: unknown option :asink/)
      expect { NoteObserver.push_options(payload: :xml) }.to raise_error(ArgumentError, /payload: must be/)
      NoteObserver.push_options(payload: :legacy)
      expect(NoteObserver.instance.payload_format).to eq(:legacy)
    end
  end

  # One BackboneSync::ChangeTracker for both styles: a model that is pushed
  # and observed is broadcast twice, once per style, with the same data.
  it "and the push macro make the same broadcasts of one transaction: event, committed object, origin, version" do
    memo = define_model("Memo", "notes") do
      push create: "/sync/pushed", update: "/sync/pushed", destroy: "/sync/pushed"
    end
    observer = Class.new(ActiveRecord::Observer) { include BackboneSync::Rails::Observer }
    stub_const("MemoObserver", observer)
    observer.observe(memo)
    observer.instance
    client = subscriber(@server.url)

    BackboneSync.with_origin("pg:t1") do
      memo.transaction do
        m = memo.create!(body: "a")
        m.update!(body: "b")                     # a create then an update: a create, as committed
      end
    end
    m = memo.last
    memo.transaction do
      BackboneSync.with_origin("pg:t2") { m.update!(body: "c") }
      m.destroy!                                 # a destroy wins; the origin is the first change's
    end
    memo.transaction do
      memo.create!(body: "never")
      raise ActiveRecord::Rollback
    end
    BackboneSync.suppress { memo.create!(body: "bulk") }
    memo.create!(body: "alone").update!(body: "edited") # two transactions: a create, then an update

    messages = received(client)
    pushed = messages.select { |x| x["channel"] == "/sync/pushed" }.map { |x| x["data"] }
    observed = messages.select { |x| x["channel"] == "/sync/notes" }.map { |x| x["data"] }
    expect(pushed.map { |d| [d["event"], d["object"]["body"], d["origin"]] })
      .to eq([%w[create b pg:t1], %w[destroy c pg:t2], ["create", "alone", nil], ["update", "edited", nil]])
    expect(observed).to eq(pushed)
  end
end
