# frozen_string_literal: true

require_relative "rails_helper"
require "net/http"

# `plugin :backbone_sync` in a real Puma cluster serving spec/dummy: one
# server per Puma, every worker's saves reach a subscriber.
RSpec.describe "plugin :backbone_sync (Puma)", :rails do
  include_context "dummy app processes"

  # Puma with 2 workers of one thread each, serving the dummy app plus
  # GET /save, which saves a Member named after the worker's pid and holds
  # the worker's only thread a moment, so that a concurrent request goes to
  # the other worker, and GET /commit_and_die, whose worker is SIGKILLed
  # after the commit, before its broadcast. +env+ adds to the app's ENV.
  def start_puma(preload:, workers: 2, embedded: "1", env: {})
    dir = Dir.mktmpdir("puma", RAILS_SPEC_TMP)
    File.write(File.join(dir, "config.ru"), <<~RUBY)
      require #{File.join(dummy, 'config', 'environment').inspect}
      map "/save" do
        run(lambda do |env|
          Member.create!(name: "worker \#{Process.pid} \#{env['QUERY_STRING']}")
          sleep 0.3
          [200, { "content-type" => "text/plain" }, [Process.pid.to_s]]
        end)
      end
      map "/commit_and_die" do
        run(lambda do |env|
          BackboneSync::Broadcaster.singleton_class.prepend(Module.new { def publish(*) = Process.kill(:KILL, Process.pid) })
          Member.create!(name: "died \#{env['QUERY_STRING']}")
          [500, {}, ["not killed"]]
        end)
      end
      run Rails.application
    RUBY
    @http_port = free_port
    File.write(File.join(dir, "puma.rb"), <<~RUBY)
      workers #{workers}
      threads 1, 1
      bind "tcp://127.0.0.1:#{@http_port}"
      rackup #{File.join(dir, 'config.ru').inspect}
      pidfile #{File.join(dir, 'puma.pid').inspect}
      environment "test"
      preload_app! #{preload} # Puma 7 preloads by default with several workers
      plugin :backbone_sync
    RUBY
    @push_port = free_port
    # embedded on, as in development: the workers must leave it to the plugin.
    env = { "RAILS_ENV" => "test", "BACKBONE_SYNC_EMBEDDED" => embedded, "BACKBONE_SYNC_ROOT_ADDRESS" => "http://127.0.0.1:#{@push_port}",
            "BACKBONE_SYNC_DUMMY_DB" => ENV.fetch("BACKBONE_SYNC_DUMMY_DB"), **env }
    spawn_child(env, RbConfig.ruby, Gem.bin_path("puma", "puma"), "-C", File.join(dir, "puma.rb"))
  end

  def raw_lines(puma, pattern)
    puma.lines.map { |l| l["raw"].to_s }.grep(pattern)
  end

  def wait_booted(puma, count, phase: 0)
    puma.wait_for(timeout: 120, what: "#{count} workers booted in phase #{phase}") do
      raw_lines(puma, /Worker \d+ \(PID: \d+\) booted in .*phase: #{phase}/).size >= count
    end
  end

  # Saves through GET /save, two requests at a time, until two different
  # workers answered. Returns their pids.
  def saves_from_both_workers(tag)
    pids = []
    20.times do |round|
      threads = 2.times.map do |i|
        Thread.new do
          Thread.current.report_on_exception = false
          http = Net::HTTP.new("127.0.0.1", @http_port)
          http.read_timeout = 20
          body = http.get("/save?#{tag}-#{round}-#{i}").body
          Integer(body, exception: false) or raise "GET /save answered #{body[0, 300]}"
        end
      end
      pids |= threads.map(&:value)
      return pids if pids.size >= 2
    end
    raise "the requests never reached two workers: #{pids.inspect}"
  end

  def expect_saves_from(client, pids)
    pids.each do |pid|
      client.wait_for(timeout: 30, what: "a save of worker #{pid}") do |l|
        l.dig("message", "data", "object", "name").to_s.start_with?("worker #{pid} ")
      end
    end
  end

  # The URL of the push server once Puma (or its server process) says it listens.
  def server_url(puma)
    puma.wait_for(timeout: 120, what: "the server's listening line") do |l|
      l["raw"].to_s.include?("backbone_sync: embedded server listening on ")
    end["raw"][%r{http://\S+}]
  end

  def expect_no_crash_loop(puma)
    expect(raw_lines(puma, /listening on/).size).to eq(1), puma.report
    expect(puma.stderr_text).not_to match(/already in use|StartError|PortInUse|Error/)
    expect(raw_lines(puma, /ended|taken by another process|reaped unknown/)).to eq([])
  end

  it "runs one server for a cluster without preload_app!, across a phased restart" do
    puma = start_puma(preload: false)
    url = server_url(puma)
    expect(url).to eq("http://127.0.0.1:#{@push_port}/faye")
    # One client for the whole example, phased restart included (the
    # helper's clients give up after 30 s).
    client = BackboneSyncSpec::ClientProcess.node_faye(url, ["/sync/members"], 50, timeout: 240)
    @subscribers << client
    client.wait_ready(timeout: 20)
    wait_booted(puma, 2)

    first = saves_from_both_workers("first")
    expect_saves_from(client, first)
    expect(first).not_to include(puma.pid)

    # A phased restart replaces the workers one by one; the server stays.
    Process.kill("USR1", puma.pid)
    wait_booted(puma, 2, phase: 1)
    second = saves_from_both_workers("second")
    expect(second & first).to eq([])
    expect_saves_from(client, second)
    expect_no_crash_loop(puma)
    expect(raw_lines(puma, /Worker \d+ \(PID: \d+\) booted/).size).to eq(4)
  end

  it "runs one server for a cluster with preload_app!" do
    puma = start_puma(preload: true)
    url = server_url(puma)
    client = subscriber(url, ["/sync/members"])
    wait_booted(puma, 2)

    expect_saves_from(client, saves_from_both_workers("preloaded"))
    expect_no_crash_loop(puma)
    expect(raw_lines(puma, /Worker \d+ \(PID: \d+\) booted/).size).to eq(2)

    # The master starts the server process again when it dies.
    workers = raw_lines(puma, /Worker \d+ \(PID: \d+\) booted/).map { |l| Integer(l[/PID: (\d+)/, 1]) }
    children = IO.popen(["ps", "-o", "pid=", "--ppid", puma.pid.to_s], &:read).split.map { |pid| Integer(pid) }
    server_pids = children - workers
    expect(server_pids.size).to eq(1), "children #{children}, workers #{workers}"
    Process.kill("KILL", server_pids.first)
    puma.wait_for(timeout: 60, what: "the server listening again") { raw_lines(puma, /listening on/).size == 2 }
    again = subscriber(url, ["/sync/members"])
    expect_saves_from(again, saves_from_both_workers("restarted"))
  end

  it "relays, from its server process, the change of a worker killed between commit and broadcast" do
    puma = start_puma(preload: false, env: { "BACKBONE_SYNC_OUTBOX_GRACE" => "1", "BACKBONE_SYNC_OUTBOX_POLL" => "0.2" })
    url = server_url(puma)
    client = subscriber(url, ["/sync/members"])
    wait_booted(puma, 2)

    tag = "relay-#{SecureRandom.hex(3)}"
    http = Net::HTTP.new("127.0.0.1", @http_port)
    http.read_timeout = 30
    http.max_retries = 0 # Net::HTTP would send the GET again, to another worker
    expect { http.get("/commit_and_die?#{tag}") }.to raise_error(EOFError) # the worker died mid-response
    client.wait_for(timeout: 30, what: "the dead worker's change") do |l|
      l.dig("message", "data", "object", "name") == "died #{tag}"
    end
    # Once only, though the relay polls on; and Puma replaced the worker.
    wait_booted(puma, 3)
    expect_saves_from(client, saves_from_both_workers("after"))
    names = client.lines.map { |l| l.dig("message", "data", "object", "name") }
    expect(names.count("died #{tag}")).to eq(1)
    expect(raw_lines(puma, /listening on/).size).to eq(1)
  end

  it "stops its server process on a hot restart, and the new master starts another" do
    puma = start_puma(preload: true)
    server_url(puma)
    wait_booted(puma, 2)

    Process.kill("USR2", puma.pid) # Puma execs itself; the port must be free for the new server
    puma.wait_for(timeout: 120, what: "a second listening line") { raw_lines(puma, /listening on/).size == 2 }
    client = subscriber(server_url(puma), ["/sync/members"])
    puma.wait_for(timeout: 120, what: "the workers after the restart") do
      raw_lines(puma, /Worker \d+ \(PID: \d+\) booted/).size >= 4
    end
    expect_saves_from(client, saves_from_both_workers("hot"))
    expect(raw_lines(puma, /taken by another process|ended/)).to eq([]), puma.report
  end

  it "runs the server in the Puma process in single mode, even with embedded off" do
    puma = start_puma(preload: false, workers: 0, embedded: "0")
    url = server_url(puma)
    client = subscriber(url, ["/sync/members"])
    puma.wait_for(timeout: 60, what: "Puma listening") { |l| l["raw"].to_s.include?("Use Ctrl-C to stop") }

    http = Net::HTTP.new("127.0.0.1", @http_port)
    expect(Integer(http.get("/save?single").body)).to eq(puma.pid)
    expect_saves_from(client, [puma.pid])
    expect(raw_lines(puma, /listening on/).size).to eq(1)
  end
end
