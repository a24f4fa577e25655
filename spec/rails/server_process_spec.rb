# frozen_string_literal: true

require_relative "rails_helper"

# Where the embedded server runs, seen from outside: spec/dummy booted by
# real `bin/rails server`, `bin/rails runner` and Puma processes.
RSpec.describe "which process runs the server", :rails do
  include_context "dummy app processes"

  # The environment of an app whose push server listens on +port+, on this
  # spec run's database.
  def app_env(port, embedded: "1")
    { "RAILS_ENV" => "test", "BACKBONE_SYNC_EMBEDDED" => embedded,
      "BACKBONE_SYNC_ROOT_ADDRESS" => "http://127.0.0.1:#{port}",
      "BACKBONE_SYNC_DUMMY_DB" => ENV.fetch("BACKBONE_SYNC_DUMMY_DB") }
  end

  def listening_line(process, timeout: 90)
    process.wait_for(timeout: timeout, what: "the server's listening line") do |l|
      l["raw"].to_s.include?("backbone_sync: embedded server listening on ")
    end["raw"][%r{http://\S+}]
  end

  # `bin/rails server` (Puma, single mode) with the embedded server on +port+.
  def rails_server(port)
    pid_file = File.join(RAILS_SPEC_TMP, "server-#{port}.pid")
    spawn_child(app_env(port), RbConfig.ruby, rails_bin, "server", "-b", "127.0.0.1",
                "-p", free_port.to_s, "-P", pid_file)
  end

  # The HTTP port a `rails server` child listens on, once it does.
  def http_port(server)
    line = server.wait_for(timeout: 90, what: "Puma listening") { |l| l["raw"].to_s.include?("Listening on") }
    Integer(line["raw"][/:(\d+)\z/, 1])
  end

  # A Backbone create: GET the page for its CSRF token and cookie, then POST
  # JSON. Returns [the page, the POST's response].
  def create_member(port, name)
    http = Net::HTTP.new("127.0.0.1", port)
    page = http.get("/members")
    token = page.body[/<meta name="csrf-token" content="([^"]+)"/, 1]
    cookie = page["set-cookie"].split(";").first
    created = http.post("/members", JSON.generate(member: { name: name }),
                        "Content-Type" => "application/json", "X-CSRF-Token" => token, "Cookie" => cookie)
    [page, created]
  end

  it "starts it in `rails server`; `rails runner` publishes to it over HTTP and exits 0" do
    port = free_port
    server = rails_server(port)
    url = listening_line(server)
    expect(url).to eq("http://127.0.0.1:#{port}/faye")
    expect(server.lines.count { |l| l["raw"].to_s.include?("listening on") }).to eq(1)
    client = subscriber(url, ["/sync/members"])

    # A save in the server process goes to it in-process; the page points browsers at it.
    page, created = create_member(http_port(server), "from the server")
    expect(created.code).to eq("201"), created.body
    expect(page.body).to include(%(<meta name="backbone-sync-server" content="#{url}" />))
    client.wait_for(timeout: 20, what: "the server's create") do |l|
      l.dig("message", "data", "object", "name") == "from the server"
    end

    # It exits right after the save: only the flush at exit sends the broadcast.
    runner = spawn_child(app_env(port), RbConfig.ruby, rails_bin, "runner",
                         'Member.create!(name: "from the runner"); ' \
                         "puts JSON.generate(route: BackboneSync::Rails::Faye.route, " \
                         "servers: BackboneSync::Server.started.size)")
    runner.wait_for(timeout: 90, what: "the runner's output") { |l| l.key?("route") }
    status = Process.wait2(runner.pid)[1]
    expect(status.exitstatus).to eq(0), runner.report
    expect(runner.lines).to eq([{ "route" => "http", "servers" => 0 }])
    expect(runner.stderr_text).not_to include("already in use")

    # Other commands that boot the app leave the port alone too.
    routes = IO.popen([app_env(port), RbConfig.ruby, rails_bin, "routes", "-g", "members"],
                      err: %i[child out], &:read)
    expect($?.exitstatus).to eq(0), routes
    expect(routes).to include("members#index")
    expect(routes).not_to include("already in use")
    generate = IO.popen([app_env(port), RbConfig.ruby, rails_bin, "generate", "model", "Gadget", "name:string",
                         "--pretend", "--quiet"], err: %i[child out], &:read)
    expect($?.exitstatus).to eq(0), generate
    expect(generate).not_to include("already in use")
    console = IO.popen([app_env(port), RbConfig.ruby, rails_bin, "console"], "r+", err: %i[child out]) do |io|
      io.puts 'puts "servers=#{BackboneSync::Server.started.size} route=#{BackboneSync::Rails::Faye.route}"'
      io.puts "exit"
      io.close_write
      io.read
    end
    expect($?.exitstatus).to eq(0), console
    expect(console).to include("servers=0 route=http")
    expect(console).not_to include("already in use")

    line = client.wait_for(timeout: 20, what: "the runner's create") do |l|
      l.dig("message", "data", "object", "name") == "from the runner"
    end
    expect(line["message"]["data"]).to include("event" => "create")
  end

  it "does not start it in `rails runner` even when embedded is on" do
    script = "p [BackboneSync::Rails::Engine.serving_process?, BackboneSync::Server.started.size]"
    runner = spawn_child(app_env(free_port), RbConfig.ruby, rails_bin, "runner", script)
    runner.wait_for(timeout: 90, what: "the runner's output") { |l| l.is_a?(Array) }
    expect(runner.lines).to eq([[false, 0]])
  end

  it "publishes over HTTP, with one warning line, when another process holds the port" do
    holder = spawn_child({}, RbConfig.ruby, File.join(BackboneSyncSpec::ROOT, "bin", "backbone_sync"),
                         "--port", "0", "--secret", BackboneSync.secret)
    url = holder.wait_for(timeout: 20, what: "the listening line") do |l|
      l["raw"].to_s.start_with?("backbone_sync listening on ")
    end["raw"].split.last
    port = Integer(url[/:(\d+)\//, 1])
    client = subscriber(url, ["/sync/members"])

    server = rails_server(port)
    http = http_port(server)
    warnings = server.stderr_text.lines.grep(/backbone_sync/)
    expect(warnings.size).to eq(1), server.report
    expect(warnings.first).to include("port #{port} on 127.0.0.1 is already in use")
      .and include("publishes over HTTP to #{url} instead")

    _, created = create_member(http, "from the second server")
    expect(created.code).to eq("201"), created.body
    line = client.wait_for(timeout: 20, what: "the create") { |l| l["message"] }
    expect(line["message"]["data"]["object"]).to include("name" => "from the second server")
  end

  it "says what to run when the C extension is not built" do
    out = IO.popen([{ "BACKBONE_SYNC_EXT_DIR" => File.join(RAILS_SPEC_TMP, "no-build") },
                    RbConfig.ruby, "-I", File.join(BackboneSyncSpec::ROOT, "lib"), "-e", 'require "backbone_sync"'],
                   err: %i[child out], &:read)
    expect(out).to include("BackboneSync::ExtensionMissing")
      .and include("C extension is not built for Ruby #{RUBY_VERSION}")
      .and include("cd #{BackboneSyncSpec::ROOT} && bundle install && bundle exec rake compile")
  end
end
