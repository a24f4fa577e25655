# frozen_string_literal: true

require_relative "js_bundle"

namespace :js do
  desc "Build vendor/assets/javascripts/backbone_sync.js and backbone_sync.esm.js from the source files"
  task :build do
    changed = JsBundle.write
    puts(changed.empty? ? "js:build: up to date" : "js:build: wrote #{changed.join(', ')}")
  end
end

namespace :js do
  desc "Pack the npm package (npm/ plus the built files) into pkg/backbone_sync-<version>.tgz"
  task pack: :build do
    require_relative "../lib/backbone_sync/version"
    tarball = JsBundle.pack(File.join(JsBundle::ROOT, "pkg"))
    puts "js:pack: #{tarball}"
  end
end
