# frozen_string_literal: true

require "spec_helper"
require "json"
require_relative "support/rails_app"
require_relative "../../rakelib/js_bundle"

# From `rails new` to a live page, for each JavaScript setup: the install
# generator (run twice: the second run changes nothing), a Member with
# `push`, Puma with the embedded server, and two Chromium pages that see each
# other's create, update and destroy (support/two_pages.mjs).
#
# Backbone, Underscore and jQuery are the app's own, added the way the
# generator says: under importmap as ES modules in vendor/javascript (what
# `bin/importmap pin backbone underscore jquery` downloads; made here from
# node_modules, offline), as classic scripts otherwise.
RSpec.describe "bin/rails generate backbone_sync:install" do
  # What `bin/importmap pin` gives for packages that ship CommonJS/UMD only:
  # the file wrapped into an ES module with a default export.
  def es_module(source, imports = {})
    <<~JS
      #{imports.map { |name, var| %(import #{var} from "#{name}";) }.join("\n")}
      var module = { exports: {} }, exports = module.exports;
      var require = function (name) { return { #{imports.map { |name, var| %("#{name}": #{var}) }.join(', ')} }[name]; };
      #{source}
      export default module.exports;
    JS
  end

  def without_source_map(source)
    source.gsub(%r{^//# sourceMappingURL=.*$}, "")
  end

  def page_script(app, kind)
    body = app.fixture("members_page.js")
    case kind
    when :module
      %(import Backbone from "backbone";\nimport BackboneSync from "backbone_sync";\n#{body}membersPage(Backbone, BackboneSync);\n)
    when :classic
      "#{body}document.addEventListener('DOMContentLoaded', function () { membersPage(window.Backbone, window.BackboneSync); });\n"
    end
  end

  # Backbone, Underscore, jQuery and the page, the importmap way.
  def add_importmap_libraries(app)
    app.write("vendor/javascript/underscore.js", without_source_map(app.node_module("underscore/underscore-esm.js")))
    app.write("vendor/javascript/jquery.js", es_module(app.node_module("jquery/dist/jquery.js")))
    app.write("vendor/javascript/backbone.js",
              es_module(app.node_module("backbone-1.6.1/backbone.js"), "underscore" => "_", "jquery" => "jQuery"))
    app.write("app/javascript/members.js", page_script(app, :module))
    app.write("config/importmap.rb", app.read("config/importmap.rb") + <<~RUBY)
      pin "backbone" # @1.6.1
      pin "underscore" # @1.13.8
      pin "jquery" # @3.7.1
      pin "members"
    RUBY
    app.write("app/javascript/application.js", %(#{app.read('app/javascript/application.js')}import "members"\n))
  end

  # The same as classic scripts, included before backbone_sync.
  def add_classic_libraries(app)
    app.write("vendor/assets/javascripts/underscore.js", without_source_map(app.node_module("underscore/underscore-umd.js")))
    app.write("vendor/assets/javascripts/jquery.js", app.node_module("jquery/dist/jquery.js"))
    app.write("vendor/assets/javascripts/backbone.js", app.node_module("backbone-1.6.1/backbone.js"))
    app.write("app/assets/javascripts/members.js", page_script(app, :classic))
    layout = app.read("app/views/layouts/application.html.erb")
    tag = %(<%= javascript_include_tag "backbone_sync" %>)
    expect(layout).to include(tag)
    app.write("app/views/layouts/application.html.erb", layout.sub(tag, <<~ERB.strip))
      <%= javascript_include_tag "jquery", "underscore", "backbone" %>
          #{tag}
          <%= javascript_include_tag "members" %>
    ERB
  end

  # What `bin/rails javascript:install:esbuild` (jsbundling-rails) writes;
  # the task itself would run `yarn add` and `gem install foreman`, which
  # need the network.
  def install_jsbundling_esbuild(app)
    app.write("package.json", JSON.pretty_generate(
      "name" => "app", "private" => true,
      "scripts" => { "build" => "esbuild app/javascript/*.* --bundle --sourcemap --format=esm " \
                                "--outdir=app/assets/builds --public-path=/assets" }
    ))
    app.write("app/assets/builds/.keep", "")
    app.write("app/javascript/application.js", "// Entry point for the build script in your package.json\n")
    app.write("app/assets/config/manifest.js", "#{app.read('app/assets/config/manifest.js')}//= link_tree ../builds\n")
    layout = app.read("app/views/layouts/application.html.erb")
    app.write("app/views/layouts/application.html.erb", layout.sub(%r{\s*</head>}, <<~ERB.chomp))

          <%= javascript_include_tag "application", "data-turbo-track": "reload", type: "module" %>
        </head>
    ERB
  end

  # `npm install backbone_sync backbone underscore jquery`, offline: our
  # package packed by `rake js:pack`'s code, the others from npm's cache
  # (bin/setup's `npm ci` fetched the versions package-lock.json names).
  def npm_install_libraries(app)
    tarball = JsBundle.pack(File.join(File.dirname(app.dir), "pkg"))
    lock = JSON.parse(File.read(File.join(InstallSpecApp::ROOT, "package-lock.json"))).fetch("packages")
    registry = `npm config get registry`.strip.chomp("/")
    urls = { "backbone" => "backbone-1.6.1", "underscore" => "underscore", "jquery" => "jquery" }.map do |name, dir|
      "#{registry}/#{name}/-/#{name}-#{lock.fetch("node_modules/#{dir}").fetch('version')}.tgz"
    end
    app.app!("npm", "install", "--offline", "--no-audit", "--no-fund", tarball, *urls)
    app.write("app/javascript/members.js", page_script(app, :module))
    app.write("app/javascript/application.js", %(#{app.read('app/javascript/application.js')}import "./members"\n))
    # esbuild is the gem's own dev dependency, not installed in the app.
    app.app!("npm", "run", "build", env: { "PATH" => "#{File.join(InstallSpecApp::ROOT, 'node_modules/.bin')}:#{ENV.fetch('PATH')}" })
  end

  # An app whose JavaScript Sprockets concatenates (as before Rails 7), with
  # Backbone, Underscore and jQuery vendored and required.
  def add_sprockets_application_js(app)
    app.write("vendor/assets/javascripts/underscore.js", without_source_map(app.node_module("underscore/underscore-umd.js")))
    app.write("vendor/assets/javascripts/jquery.js", app.node_module("jquery/dist/jquery.js"))
    app.write("vendor/assets/javascripts/backbone.js", app.node_module("backbone-1.6.1/backbone.js"))
    app.write("app/assets/javascripts/application.js", <<~JS)
      //= require jquery
      //= require underscore
      //= require backbone
      //= require_self
    JS
    app.write("app/assets/config/manifest.js", "#{app.read('app/assets/config/manifest.js')}//= link application.js\n")
    layout = app.read("app/views/layouts/application.html.erb")
    app.write("app/views/layouts/application.html.erb", layout.sub(%r{\s*</head>}, <<~ERB.chomp))

          <%= javascript_include_tag "application" %>
        </head>
    ERB
  end

  def two_pages_in_step(app)
    url = app.start_server
    output, status = Open3.capture2e("node", File.join(__dir__, "support/two_pages.mjs"), url)
    expect(status.success?).to be(true), "#{output}\n--- server log:\n#{app.server_output[-4000..] || app.server_output}"
  ensure
    app.stop
  end

  def install_twice(app)
    first = app.rails!("generate", "backbone_sync:install")
    before = app.snapshot
    second = app.rails!("generate", "backbone_sync:install")
    expect(app.snapshot).to eq(before), "the second run changed files:\n#{second}"
    expect(second).not_to match(/^\s+(create|insert|append|force|conflict)\s/)
    expect(app.read("config/initializers/backbone_sync.rb")).to include("root_address")
    expect(app.read("app/views/layouts/application.html.erb").scan("backbone_sync_tags").size).to eq(1)
    # The outbox's migration, once, with a timestamp; the second run leaves it.
    migrations = Dir.glob("db/migrate/*_create_backbone_sync_events.rb", base: app.dir)
    expect(migrations.size).to eq(1), migrations.inspect
    expect(File.basename(migrations.first)).to match(/\A\d{14}_create_backbone_sync_events\.rb\z/)
    expect(first).to match(%r{create\s+db/migrate/\d{14}_create_backbone_sync_events\.rb})
    expect(second).to match(%r{exist\s+db/migrate/\d{14}_create_backbone_sync_events\.rb})
    first
  end

  # After add_members' db:migrate: the table is there and the outbox is on.
  def expect_outbox_migrated(app)
    said = app.rails!("runner", "p [ActiveRecord::Base.connection.data_source_exists?('backbone_sync_events'), " \
                                "BackboneSync::Outbox.active_for?(Member), BackboneSync.outbox_stats]")
    expect(said).to include("[true, true, {:waiting=>0, :oldest_age=>0.0}]")
  end

  it "wires a Rails 7.2 default app (importmap, Sprockets) to a live page" do
    app = InstallSpecApp.new("importmap-sprockets")
    app.create
    app.rails!("importmap:install")
    said = install_twice(app)
    expect(said).to include("installed for importmap", "bin/importmap pin backbone underscore jquery")
    expect(app.read("config/importmap.rb")).to include(%(pin "backbone_sync", to: "backbone_sync.esm.js"))
    expect(app.read("app/assets/config/manifest.js")).to include("//= link backbone_sync.esm.js")
    expect(app.read("app/javascript/application.js")).to include(%(import "backbone_sync"))

    add_importmap_libraries(app)
    app.add_members
    expect_outbox_migrated(app)
    two_pages_in_step(app)
  end

  it "wires a Propshaft app with importmap to a live page" do
    app = InstallSpecApp.new("importmap-propshaft")
    app.create("--asset-pipeline=propshaft")
    app.rails!("importmap:install")
    said = install_twice(app)
    expect(said).to include("installed for importmap")
    expect(app.read("config/importmap.rb")).to include(%(pin "backbone_sync", to: "backbone_sync.esm.js"))

    add_importmap_libraries(app)
    app.add_members
    two_pages_in_step(app)
  end

  it "wires a jsbundling app (esbuild) to a live page, through the npm package" do
    app = InstallSpecApp.new("jsbundling-esbuild")
    app.create("--javascript=esbuild")
    install_jsbundling_esbuild(app)
    said = install_twice(app)
    expect(said).to include("installed for jsbundling", "npm install backbone_sync@#{BackboneSync::VERSION} backbone underscore jquery")
    expect(app.read("app/javascript/application.js")).to include(%(import "backbone_sync"))

    npm_install_libraries(app)
    expect(app.read("app/assets/builds/application.js")).to include("X-BackboneSync-Origin")
    app.add_members
    two_pages_in_step(app)
  end

  it "wires a classic Sprockets app (//= require) to a live page" do
    app = InstallSpecApp.new("sprockets-classic")
    app.create("--skip-javascript")
    add_sprockets_application_js(app)
    said = install_twice(app)
    expect(said).to include("installed for Sprockets")
    expect(app.read("app/assets/javascripts/application.js"))
      .to eq("//= require jquery\n//= require underscore\n//= require backbone\n//= require backbone_sync\n//= require_self\n")

    app.write("app/assets/javascripts/application.js", app.read("app/assets/javascripts/application.js") + page_script(app, :classic))
    app.add_members
    two_pages_in_step(app)
  end

  it "wires a Propshaft app without a JavaScript setup to a live page, with classic scripts" do
    app = InstallSpecApp.new("propshaft-classic")
    app.create("--asset-pipeline=propshaft", "--skip-javascript")
    said = install_twice(app)
    expect(said).to include("installed for Propshaft", %(javascript_include_tag "jquery", "underscore", "backbone", "backbone_sync"))

    add_classic_libraries(app)
    app.add_members
    two_pages_in_step(app)
  end
end
