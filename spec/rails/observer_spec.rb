# frozen_string_literal: true

require_relative "rails_helper"

# The 2011 observer style: spec/dummy declares
#   class NoteObserver < ActiveRecord::Observer
#     include BackboneSync::Rails::Faye::Observer
#   end
# and config.active_record.observers = :note_observer (rails-observers).
# The subscriber here is the Ruby faye gem's client.
RSpec.describe "BackboneSync::Rails::Faye::Observer", :rails do
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
    expect(messages.first["data"]["version"]).to eq(note.created_at.strftime("%s%6N").to_i) # README: integer microseconds
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
end
