# frozen_string_literal: true

require_relative "lib/backbone_sync/version"

Gem::Specification.new do |spec|
  spec.name = "backbone_sync"
  spec.version = BackboneSync::VERSION
  spec.authors = ["The backbone_sync authors"]
  spec.summary = "Real-time Backbone.js sync over a Faye-compatible server written in C"
  spec.description = <<~DESC
    A Bayeux (Faye protocol) WebSocket and long-polling server built on
    libwebsockets, running in a native thread of your Ruby process, so stock
    Faye clients receive the messages your Ruby code publishes.
  DESC
  spec.license = "MIT"
  spec.homepage = "https://rubygems.org/gems/backbone_sync"
  spec.required_ruby_version = ">= 3.0"

  spec.metadata = {
    "rubygems_mfa_required" => "true"
  }

  spec.files = Dir[
    "lib/**/*",
    "ext/**/*.{c,h,rb}",
    "vendor/**/*",
    "bin/*",
    "README.md",
    "LICENSE"
  ].reject { |f| File.directory?(f) || f.end_with?(".so") }
  spec.bindir = "bin"
  spec.executables = ["backbone_sync"]
  spec.require_paths = ["lib"]
  spec.extensions = ["ext/backbone_sync/extconf.rb"]
end
