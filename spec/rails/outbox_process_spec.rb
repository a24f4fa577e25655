# frozen_string_literal: true

require_relative "rails_helper"
require_relative "../support/postgres_process"
require "net/http"

# Nothing lost between the database and the page, with real processes that
# die: spec/dummy booted by `bin/rails runner`, `bin/rails faye:start` and
# `bin/rails backbone_sync:relay`, a real push server (bin/backbone_sync),
# and a real npm faye client. On this run's SQLite file and on a PostgreSQL
# 15 the spec starts itself.
RSpec.describe "the outbox across processes", :rails do
  include_context "dummy app processes"

  # The app's environment: its push server at +port+, the outbox's timings
  # shortened (grace 1 s, claims 3 s), on this example's database.
  def app_env(port)
    env = { "RAILS_ENV" => "test", "BACKBONE_SYNC_EMBEDDED" => "0",
            "BACKBONE_SYNC_ROOT_ADDRESS" => "http://127.0.0.1:#{port}",
            "BACKBONE_SYNC_DUMMY_DB" => ENV.fetch("BACKBONE_SYNC_DUMMY_DB"),
            "BACKBONE_SYNC_OUTBOX_GRACE" => "1", "BACKBONE_SYNC_OUTBOX_CLAIM_TTL" => "3",
            "BACKBONE_SYNC_OUTBOX_POLL" => "0.2" }
    env["DATABASE_URL"] = database_url if database_url
    env
  end

  def runner(port, script)
    spawn_child(app_env(port), RbConfig.ruby, rails_bin, "runner", script)
  end

  # Waits (bounded) for a child to exit and its output to be read; returns its Process::Status.
  def exit_status(process, timeout: 120)
    process.wait_exit(timeout: timeout)
  end

  # A push server of its own (no app): bin/backbone_sync on +port+.
  def push_server(port)
    server = spawn_child({}, RbConfig.ruby, File.join(BackboneSyncSpec::ROOT, "bin", "backbone_sync"),
                         "--port", port.to_s, "--secret", BackboneSync.secret)
    listening(server)
    server
  end

  def listening(process)
    process.wait_for(timeout: 90, what: "the listening line") do |l|
      l["raw"].to_s.start_with?("backbone_sync listening on ")
    end["raw"].split.last
  end

  def server_url(port)
    "http://127.0.0.1:#{port}/faye"
  end

  def publisher(port)
    @publisher ||= BackboneSync::Publisher.new(server_url(port), secret: BackboneSync.secret)
  end

  def names_received(client, port)
    messages_until_sentinel(client, publish_with: ->(channel, data) { publisher(port).publish(channel, data) })
      .select { |m| m["channel"] == "/sync/members" }.map { |m| m["data"]["object"]["name"] }
  end

  # Waits until the client has a create of each of +names+.
  def wait_for_names(client, names, timeout: 60)
    missing = names.to_set
    client.wait_for(timeout: timeout, what: "creates of #{names.size} members") do |line|
      missing.delete(line.dig("message", "data", "object", "name"))
      missing.empty?
    end
  end

  # Waits (bounded) until the block is true, asking again every 50 ms.
  def eventually(what, timeout: 30)
    deadline = monotonic + timeout
    until (value = yield)
      raise "#{what}: not within #{timeout}s" if monotonic > deadline

      sleep 0.05
    end
    value
  end

  # Each context below defines query(sql) on its own database.
  def outbox_count
    query("SELECT COUNT(*) AS n FROM backbone_sync_events").first["n"].to_i
  end

  # Rows a relay may not claim yet (available_at still ahead).
  def rows_in_grace
    query("SELECT COUNT(*) AS n FROM backbone_sync_events WHERE available_at > #{BackboneSync::Outbox.now_ms}")
      .first["n"].to_i
  end

  # Rows some relay claimed and never released: nothing clears a claim but a
  # delete or another claim, so this does not race the claim's expiry.
  def claims_by_relay
    query("SELECT claimed_by, COUNT(*) AS n FROM backbone_sync_events WHERE claimed_by IS NOT NULL " \
          "GROUP BY claimed_by").map { |r| r["n"].to_i }
  end

  def member_names(prefix)
    query("SELECT name FROM members WHERE name LIKE '#{prefix}-%' ORDER BY id").map { |r| r["name"] }
  end

  shared_examples "nothing lost" do |with_restart: true|
    it "publishes, through the relay in `rake faye:start`, a change whose process was SIGKILLed right after its commit" do
      port = free_port
      host = spawn_child(app_env(port), RbConfig.ruby, "-C", dummy, rails_bin, "faye:start")
      url = listening(host)
      client = subscriber(url, ["/sync/members", BackboneSyncRailsSpec::SENTINEL], count: 500)

      # Killed where its after_commit would publish: after COMMIT, before any send.
      name = "killed-#{SecureRandom.hex(3)}"
      child = runner(port, <<~RUBY)
        BackboneSync::Broadcaster.singleton_class.prepend(Module.new do
          def publish(*)
            puts JSON.generate(committed: Member.where(name: #{name.inspect}).count)
            $stdout.flush
            Process.kill(:KILL, Process.pid)
          end
        end)
        Member.create!(name: #{name.inspect})
      RUBY
      status = exit_status(child)
      expect(status.termsig).to eq(9), child.report
      expect(child.lines).to eq([{ "committed" => 1 }])
      killed_at = monotonic

      wait_for_names(client, [name], timeout: 30)
      expect(monotonic - killed_at).to be < 15
      expect(names_received(client, port)).to eq([name])
      eventually("the row deleted") { outbox_count.zero? }
    end

    it "loses nothing and doubles nothing when a relay is SIGKILLed mid-batch and another takes over" do
      port = free_port
      url = listening(push_server(port))
      client = subscriber(url, ["/sync/members", BackboneSyncRailsSpec::SENTINEL], count: 500)

      # 60 committed changes nobody published.
      prefix = "batch-#{SecureRandom.hex(3)}"
      maker = runner(port, <<~RUBY)
        BackboneSync::Broadcaster.singleton_class.prepend(Module.new { def publish(*) = 0 })
        60.times { |i| Member.create!(name: "#{prefix}-%02d" % i) }
        puts JSON.generate(rows: BackboneSync.outbox_stats[:waiting])
      RUBY
      expect(exit_status(maker).exitstatus).to eq(0), maker.report
      expect(maker.lines).to eq([{ "rows" => 60 }])
      # A relay claims only rows past the grace (1 s after their insert): wait
      # for all 60, so that the first claim is a whole batch of 25.
      eventually("the 60 rows past the grace") { rows_in_grace.zero? }

      # The first relay publishes 10 of its batch of 25 and dies before deleting the 10th.
      first = runner(port, <<~RUBY)
        sent = 0
        publish = lambda do |channel, data, event_id|
          BackboneSync::Broadcaster.publish!(channel, data, event_id: event_id)
          sent += 1
          Process.kill(:KILL, Process.pid) if sent == 10
        end
        relay = BackboneSync::Outbox::Relay.new(batch_size: 25, publish: publish)
        100.times { break if relay.run_once.zero? }
        puts JSON.generate(finished: true)
      RUBY
      expect(exit_status(first).termsig).to eq(9), first.report
      expect(first.lines).to eq([])
      expect(outbox_count).to eq(51)
      # One claim of 25 rows, 9 of them deleted, the rest left to expire.
      expect(claims_by_relay).to eq([16])

      second = spawn_child(app_env(port), RbConfig.ruby, "-C", dummy, rails_bin, "backbone_sync:relay")
      second.wait_for(timeout: 90, what: "the relay's line") { |l| l["raw"].to_s.start_with?("backbone_sync outbox relay") }
      names = Array.new(60) { |i| "#{prefix}-%02d" % i }
      wait_for_names(client, names, timeout: 60)
      received = names_received(client, port)
      expect(received.tally.select { |_, n| n > 1 }).to eq({})
      expect(received).to eq(names) # one channel: in id order, across the takeover
      eventually("the table emptied") { outbox_count.zero? }
    end

    if with_restart
      it "brings a reconnecting subscriber level with the database when the push server was down during 100 saves" do
        port = free_port
        server = push_server(port)
        client = subscriber(server_url(port), ["/sync/members", "/sync/zz_probe", BackboneSyncRailsSpec::SENTINEL],
                            count: 1000)
        server.stop

        prefix = "down-#{SecureRandom.hex(3)}"
        saver = runner(port, <<~RUBY)
          100.times { |i| Member.create!(name: "#{prefix}-%03d" % i) }
          BackboneSync.flush(timeout: 30)
          puts JSON.generate(rows: BackboneSync.outbox_stats[:waiting], failures: BackboneSync.broadcast_failures)
        RUBY
        expect(exit_status(saver).exitstatus).to eq(0), saver.report
        expect(saver.lines).to eq([{ "rows" => 100, "failures" => 100 }])

        push_server(port)
        # The client reconnects by itself (its client id is unknown to the new
        # server: it handshakes and subscribes again); a probe says when.
        probe = 0
        eventually("the subscriber back", timeout: 60) do
          publisher(port).publish("/sync/zz_probe", { "probe" => probe += 1 }) rescue nil # rubocop:disable Style/RescueModifier
          client.messages.any? { |m| m["channel"] == "/sync/zz_probe" }
        end
        spawn_child(app_env(port), RbConfig.ruby, "-C", dummy, rails_bin, "backbone_sync:relay")

        in_db = member_names(prefix)
        expect(in_db.size).to eq(100)
        wait_for_names(client, in_db, timeout: 90)
        received = names_received(client, port)
        expect(received.tally.select { |_, n| n > 1 }).to eq({})
        expect(received.sort).to eq(in_db.sort)
        eventually("the table emptied") { outbox_count.zero? }
      end
    end
  end

  context "on SQLite" do
    let(:database_url) { nil }

    it "says what to run when `rake backbone_sync:relay` finds no table" do
      env = app_env(free_port).merge("BACKBONE_SYNC_DUMMY_DB" => File.join(RAILS_SPEC_TMP, "empty-#{SecureRandom.hex(3)}.sqlite3"))
      out = IO.popen([env, RbConfig.ruby, "-C", dummy, rails_bin, "backbone_sync:relay"], err: %i[child out], &:read)
      expect($?.exitstatus).not_to eq(0)
      expect(out).to include("rake backbone_sync:relay: the backbone_sync_events table does not exist")
        .and include("bin/rails generate backbone_sync:install").and include("bin/rails db:migrate")
    end

    it "runs the relay next to the embedded server of `rails server`, which reports the outbox in GET /stats" do
      port = free_port
      host = spawn_child(app_env(port).merge("BACKBONE_SYNC_EMBEDDED" => "1"), RbConfig.ruby, rails_bin, "server",
                         "-b", "127.0.0.1", "-p", free_port.to_s, "-P", File.join(RAILS_SPEC_TMP, "outbox-#{port}.pid"))
      url = host.wait_for(timeout: 90, what: "the embedded server's line") do |l|
        l["raw"].to_s.include?("backbone_sync: embedded server listening on ")
      end["raw"][%r{http://\S+}]
      client = subscriber(url, ["/sync/members", BackboneSyncRailsSpec::SENTINEL], count: 500)

      name = "embedded-#{SecureRandom.hex(3)}"
      child = runner(port, <<~RUBY)
        BackboneSync::Broadcaster.singleton_class.prepend(Module.new { def publish(*) = Process.kill(:KILL, Process.pid) })
        Member.create!(name: #{name.inspect})
      RUBY
      expect(exit_status(child).termsig).to eq(9), child.report
      wait_for_names(client, [name], timeout: 30)
      expect(names_received(client, port)).to eq([name])

      stats = eventually("the relay's figures in /stats") do
        response = Net::HTTP.start("127.0.0.1", port) do |http|
          http.get("/stats", "Authorization" => "Bearer #{BackboneSync.secret}")
        end
        body = JSON.parse(response.body)
        body if body["outbox_waiting"]&.zero?
      end
      expect(stats).to include("outbox_waiting" => 0, "outbox_oldest_age" => 0.0)
    end

    def query(sql)
      ActiveRecord::Base.connection.select_all(sql).to_a
    end

    include_examples "nothing lost"
  end

  context "on PostgreSQL", if: BackboneSyncSpec::PostgresProcess.available? do
    before(:all) do
      require "pg"
      @pg = BackboneSyncSpec::PostgresProcess.new(BackboneSyncSpec::RedisProcess.free_port).start
      env = { "RAILS_ENV" => "test", "DATABASE_URL" => @pg.url, "BACKBONE_SYNC_EMBEDDED" => "0" }
      out = IO.popen([env, RbConfig.ruby, File.join(BackboneSyncSpec::ROOT, "spec", "dummy", "bin", "rails"), "runner",
                      'ActiveRecord::Schema.verbose = false; load Rails.root.join("db/schema.rb").to_s; ' \
                      "puts ActiveRecord::Base.connection.adapter_name"], err: %i[child out], &:read)
      raise "loading the schema into PostgreSQL failed: #{out}" unless $?.success? && out.include?("PostgreSQL")

      @pg_conn = PG.connect(@pg.url)
    end

    after(:all) do
      @pg_conn&.close
      @pg&.stop
    end

    let(:database_url) { @pg.url }

    def query(sql)
      @pg_conn.exec(sql).to_a
    end

    include_examples "nothing lost"
  end
end
