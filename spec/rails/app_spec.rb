# frozen_string_literal: true

require_relative "rails_helper"

# The Rails glue, seen from outside: the dummy app booted in child
# processes, with `rake faye:start` and with the embedded server.
RSpec.describe "Rails glue", :rails do
  include_context "dummy app processes"

  it "loads the engine from `require \"backbone_sync\"` once Rails is loaded" do
    expect(defined?(BackboneSync::Rails::Engine)).to eq("constant")
    expect(Rails.application.railties.map(&:class)).to include(BackboneSync::Rails::Engine)
    expect(Member.method(:push).owner).to eq(BackboneSync::Pushable::Macro)
    expect(ActionView::Base.include?(BackboneSync::Rails::Helpers)).to be(true)
  end

  it "runs `rake faye:start` in the app, on root_address's port and with the app's secret" do
    rake = Gem.bin_path("rake", "rake")
    process = spawn_child({ "BACKBONE_SYNC_ROOT_ADDRESS" => "http://127.0.0.1:0" },
                          RbConfig.ruby, rake, "-f", File.join(dummy, "Rakefile"), "faye:start", stdin: true)
    line = process.wait_for(timeout: 60, what: "the listening line") do |l|
      l["raw"].to_s.start_with?("backbone_sync listening on ")
    end
    url = line["raw"].split.last
    expect(url).to match(%r{\Ahttp://127\.0\.0\.1:\d+/faye\z})
    expect(process.lines.map { |l| l["raw"].to_s }.grep(/\Asecret:/)).to eq([]) # not generated

    client = subscriber(url, ["/sync/members"])
    # The secret derived from the app's secret_key_base is the one it checks.
    BackboneSync::Publisher.new(url, secret: BackboneSync.secret).publish("/sync/members", { "n" => 1 })
    expect { BackboneSync::Publisher.new(url, secret: "wrong", retries: 0).publish("/sync/members", {}) }
      .to raise_error(BackboneSync::PublishError, /403/)
    client.wait_for(timeout: 15, what: "the publish") { |l| l.dig("message", "data", "n") == 1 }
    expect(client.messages.size).to eq(1)
  end

  it "lists faye:start among the app's rake tasks" do
    out = IO.popen([RbConfig.ruby, Gem.bin_path("rake", "rake"), "-f", File.join(dummy, "Rakefile"), "-T", "faye"],
                   err: %i[child out], &:read)
    expect(out).to include("rake faye:start")
  end

  it "does not start an embedded server outside development unless asked" do
    expect(BackboneSync::Rails::Faye.embedded_server).to be_nil
    expect(BackboneSync::Server.started).to eq([])
  end

  it "reads config.backbone_sync before the app's initializers" do
    # An app initializer (config/initializers/*.rb) sees what
    # config.backbone_sync set: the dummy sets root_address from ENV.
    dir = File.join(RAILS_SPEC_TMP, "probe_initializers")
    FileUtils.mkdir_p(dir)
    File.write(File.join(dir, "probe.rb"), <<~RUBY)
      puts JSON.generate(probe: BackboneSync::Rails::Faye.root_address)
      $stdout.flush
    RUBY
    script = <<~RUBY
      require "json"
      require #{File.join(dummy, 'config', 'application').inspect}
      Rails.application.config.paths["config/initializers"] << #{dir.inspect}
      Rails.application.initialize!
    RUBY
    env = { "BACKBONE_SYNC_ROOT_ADDRESS" => "http://probe.example:1234",
            "BACKBONE_SYNC_DUMMY_DB" => File.join(RAILS_SPEC_TMP, "probe.sqlite3") }
    process = spawn_child(env, RbConfig.ruby, "-e", script, stdin: true)
    line = process.wait_for(timeout: 60, what: "the probe initializer's line") { |l| l.key?("probe") }
    expect(line["probe"]).to eq("http://probe.example:1234")
  end
end
