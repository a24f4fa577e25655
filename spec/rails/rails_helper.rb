# frozen_string_literal: true

# Boots spec/dummy (a real Rails app on a fresh SQLite file) before the
# shared spec helpers, as an app would: Rails first, then the gem, whose
# engine comes in because Rails is loaded. Run in a process of its own
# (`rake spec:rails`, `rake spec:rails61`): it loads Rails into the process.
require "tmpdir"
require "fileutils"

# A run of the whole tree (`rspec` with no arguments) loads the core specs
# first, without Rails, and they must not see Rails: skip these there.
if defined?(BackboneSync::Server) && !defined?(::Rails::Railtie)
  warn "spec/rails skipped: it boots a Rails app, so it runs in a process of its own: " \
       "`bundle exec rake spec:rails` (Rails 7.2) or `bundle exec rake spec:rails61`"
  RSpec.configure { |config| config.filter_run_excluding(:rails) }
  return
end

ENV["RAILS_ENV"] = "test"
ENV.delete("BACKBONE_SYNC_REDIS_URL")
ENV.delete("BACKBONE_SYNC_SECRET")
ENV.delete("BACKBONE_SYNC_EMBEDDED")
RAILS_SPEC_TMP = Dir.mktmpdir("backbone_sync-rails-spec")
ENV["BACKBONE_SYNC_DUMMY_DB"] = File.join(RAILS_SPEC_TMP, "test.sqlite3")
spec_pid = Process.pid
at_exit { FileUtils.rm_rf(RAILS_SPEC_TMP) if Process.pid == spec_pid } # not in a forked child

require_relative "../dummy/config/environment"
require_relative "../spec_helper"
require "rack/test"

ActiveRecord::Schema.verbose = false
load File.expand_path("../dummy/db/schema.rb", __dir__)

module BackboneSyncRailsSpec
  SENTINEL = "/sync/zz_sentinel"

  module Helpers
    # A real npm faye client subscribed to +channels+ on +server_url+, ready.
    def subscriber(server_url, channels = ["/sync/**"], count: 50, tokens: nil, ruby: false)
      klass = BackboneSyncSpec::ClientProcess
      client = if ruby
                 klass.ruby_faye(server_url, channels, count, timeout: 30, tokens: tokens)
               else
                 klass.node_faye(server_url, channels, count, timeout: 30, tokens: tokens)
               end
      @subscribers << client
      client.wait_ready(timeout: 20)
      client
    end

    # Publishes a marker after everything the spec did and returns the
    # messages the client got before it: deliveries come in publish order,
    # so whatever was going to arrive has arrived.
    def messages_until_sentinel(client, publish_with:)
      marker = SecureRandom.hex(4)
      publish_with.call(BackboneSyncRailsSpec::SENTINEL, { "sentinel" => marker })
      client.wait_for(timeout: 15, what: "the sentinel") do |line|
        line.dig("message", "data", "sentinel") == marker
      end
      client.messages.take_while { |m| m.dig("data", "sentinel") != marker }
    end

    # Defines an ActiveRecord model named +name+ on +table+ for one example.
    def define_model(name, table, &body)
      klass = Class.new(ApplicationRecord)
      stub_const(name, klass)
      klass.table_name = table
      klass.class_eval(&body) if body
      klass
    end

    def rack_session
      Rack::Test::Session.new(Rails.application)
    end

    # GETs the members page, as a browser would, and returns its CSRF token.
    def csrf_token(session)
      session.get("/members")
      expect(session.last_response.status).to eq(200)
      session.last_response.body[/<meta name="csrf-token" content="([^"]+)"/, 1] or
        raise "no csrf-token meta tag on /members"
    end

    def json_post(session, path, body, headers = {})
      session.post(path, JSON.generate(body), { "CONTENT_TYPE" => "application/json" }.merge(headers))
      session.last_response
    end
  end
end

# spec/dummy booted in child processes (bin/rails, rake, Puma): each child
# is stopped after the example.
RSpec.shared_context "dummy app processes" do
  let(:dummy) { File.join(BackboneSyncSpec::ROOT, "spec", "dummy") }
  let(:rails_bin) { File.join(dummy, "bin", "rails") }

  before { @processes = [] }
  after { @processes.each(&:stop) }

  # A child process (BackboneSyncSpec::ClientProcess) of +argv+ with +env+;
  # stdin: true gives it a pipe that stays open until it is stopped.
  def spawn_child(env, *argv, stdin: false)
    process = BackboneSyncSpec::ClientProcess.new([env, *argv], stdin: stdin)
    @processes << process
    process
  end
end

RSpec.configure do |config|
  config.include BackboneSyncRailsSpec::Helpers

  config.before do
    @subscribers = []
    BackboneSync::Rails::Faye.server = nil
    BackboneSync::Rails::Faye.redis = nil
    BackboneSync::Rails::Faye.root_address = BackboneSync::Rails::Faye::DEFAULT_ROOT_ADDRESS
    BackboneSync.on_error = nil
    BackboneSync.authorize_subscription = nil
    [Member, Family, Note].each(&:delete_all)
    ActiveRecord::Base.connection.execute("DELETE FROM tasks")
    ActiveRecord::Base.connection.execute("DELETE FROM projects")
    ActiveRecord::Base.connection.execute("DELETE FROM backbone_sync_events")
    BackboneSync::Outbox.restore_defaults
  end

  config.after do
    # Broadcasts an example queued are its own: sent or reported before the next.
    BackboneSync.flush(timeout: 10)
    @subscribers.each(&:stop)
  end
end
