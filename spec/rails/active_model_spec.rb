# frozen_string_literal: true

require_relative "rails_helper"

# BackboneSync::Pushable on a plain ActiveModel class: no database, no
# transactions, so each callback publishes right away.
RSpec.describe "BackboneSync::Pushable on a plain ActiveModel class", :rails do
  let(:klass) do
    Class.new do
      include ActiveModel::Model
      extend ActiveModel::Callbacks
      define_model_callbacks :create, :update, :destroy
      include BackboneSync::Pushable

      attr_accessor :id, :title, :updated_at

      def self.name = "Card"

      push create: :collections, update: %i[collections instances], destroy: :instances

      def as_json(*) = { "id" => id, "title" => title }
      def save = run_callbacks(id ? :update : :create) { self.id ||= 99 }
      def destroy = run_callbacks(:destroy) { true }
    end
  end

  it "publishes create, update and destroy with the same payload" do
    with_server(secret: BackboneSync.secret) do |server|
      client = subscriber(server.url)
      card = klass.new(title: "plain")
      card.save
      card.title = "edited"
      card.updated_at = Time.utc(2024, 1, 1, 0, 0, 0, 7_999)
      BackboneSync.with_origin("p:c2") { card.save }
      card.destroy
      messages = messages_until_sentinel(client, publish_with: ->(c, d) { server.publish(c, d) })
      expect(messages.map { |m| [m["channel"], m["data"]["event"]] }).to eq(
        [["/sync/cards", "create"], ["/sync/cards", "update"], ["/sync/card_99", "update"],
         ["/sync/card_99", "destroy"]]
      )
      expect(messages[1]["data"]).to eq(
        "event" => "update", "object" => { "id" => 99, "title" => "edited" }, "origin" => "p:c2",
        "version" => Time.utc(2024, 1, 1).to_i * 1000 + 7 # milliseconds, as the JSON renders it
      )
      expect(messages.first["data"]["version"]).to eq(0)
    end
  end

  it "explains what is missing when the class has no model callbacks" do
    expect do
      Class.new do
        include BackboneSync::Pushable
        def self.name = "Bare"
        push create: :collections
      end
    end.to raise_error(ArgumentError, /define_model_callbacks :create, :update, :destroy/)
  end
end
