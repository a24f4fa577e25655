# frozen_string_literal: true

# Builds the browser assets every JavaScript setup loads from the one source,
# the plain ES5 files in vendor/assets/javascripts that Sprockets can require
# one by one:
#
# - vendor/assets/javascripts/backbone_sync.js: the files concatenated in load
#   order, with no Sprockets directive left, so Sprockets (`//= require
#   backbone_sync`) and Propshaft (`javascript_include_tag "backbone_sync"`)
#   serve the same thing. A classic script: it finds Backbone and Underscore
#   on `window`.
# - vendor/assets/javascripts/backbone_sync.esm.js: the same files as an ES
#   module that imports "backbone" and "underscore", for importmap
#   (`pin "backbone_sync", to: "backbone_sync.esm.js"`) and, as the npm
#   package's entry, for bundlers.
#
# `rake js:build` writes them; spec/install/js_bundle_spec.rb fails when a
# checked-in copy differs from what this builds.
class JsBundle
  ROOT = File.expand_path("..", __dir__)
  ASSETS = File.join(ROOT, "vendor/assets/javascripts")

  # Load order: each file comes after the files it `//= require`s.
  SOURCES = %w[
    backbone_sync/faye
    backbone_sync/config
    backbone_sync/sync
    backbone_sync/client
    backbone_sync/changes
    backbone_sync/subscription
    backbone_sync/core
    extensions/backbone.collection.idempotent
    backbone_sync-rails/rails_faye_subscriber
    backbone_sync/pushable
  ].freeze

  CLASSIC = "backbone_sync.js"
  MODULE = "backbone_sync.esm.js"

  # The line each source file ends with: its `root` is `window`, where the
  # ES module lends it Backbone and _.
  INVOCATION = "})(typeof window !== 'undefined' ? window : this);"

  DIRECTIVE = %r{\A//= require (\S+)\s*\z}

  # { file name => contents } of every generated file.
  def self.outputs
    new.outputs
  end

  def outputs
    { CLASSIC => classic, MODULE => esm }
  end

  # Writes the generated files; returns the names of those that changed.
  def self.write
    outputs.filter_map do |name, text|
      path = File.join(ASSETS, name)
      next if File.exist?(path) && File.read(path) == text

      File.write(path, text)
      name
    end
  end

  # Stages the npm package (npm/package.json with the gem's version, the
  # built files, README and LICENSE) under tmp/npm and packs it into `dir`
  # with `npm pack`; returns the tarball's path.
  def self.pack(dir)
    require "json"
    require "fileutils"
    require_relative "../lib/backbone_sync/version"

    stage = File.join(ROOT, "tmp/npm/backbone_sync")
    FileUtils.rm_rf(stage)
    FileUtils.mkdir_p([stage, dir])
    manifest = JSON.parse(File.read(File.join(ROOT, "npm/package.json")))
    manifest = { "name" => manifest.delete("name"), "version" => BackboneSync::VERSION }.merge(manifest)
    File.write(File.join(stage, "package.json"), "#{JSON.pretty_generate(manifest)}\n")
    FileUtils.cp(File.join(ROOT, "npm/README.md"), stage)
    FileUtils.cp(File.join(ROOT, "LICENSE"), stage)
    outputs.each { |name, text| File.write(File.join(stage, name), text) }
    name = IO.popen(["npm", "pack", "--silent", "--pack-destination", File.expand_path(dir)], chdir: stage, &:read)
    raise "npm pack failed in #{stage}" unless $?.success?

    File.join(File.expand_path(dir), name.lines.last.strip)
  end

  def classic
    <<~JS + bodies
      // backbone_sync.js: the browser side of backbone_sync in one classic
      // script, for Sprockets (`//= require backbone_sync`, after jquery,
      // underscore and backbone) and Propshaft (`javascript_include_tag`).
      // It finds Backbone and Underscore on `window`.
      //
      #{generated_note}

    JS
  end

  def esm
    <<~JS + bodies + <<~JS
      // backbone_sync.esm.js: the browser side of backbone_sync as an ES
      // module, for importmap and bundlers (the npm package's entry). It uses
      // the "backbone" and "underscore" it imports, and leaves window.Backbone
      // and window._ as it found them; like the classic script it defines
      // window.BackboneSync (and window.Faye when the page has none).
      //
      //   import BackboneSync, { RailsFayeSubscriber } from "backbone_sync";
      //
      #{generated_note}

      import Backbone from "backbone";
      import _ from "underscore";

      var root = typeof window !== "undefined" ? window : globalThis;

      // The files below are classic scripts that read Backbone and _ from
      // `root` while they load (never later): lend them ours for that time.
      var lent = {};
      ["Backbone", "_"].forEach(function (name) {
        lent[name] = { own: Object.prototype.hasOwnProperty.call(root, name), value: root[name] };
      });
      root.Backbone = Backbone;
      root._ = _;
      try {
    JS
      } finally {
        Object.keys(lent).forEach(function (name) {
          if (lent[name].own) root[name] = lent[name].value;
          else delete root[name];
        });
      }

      var BackboneSync = root.BackboneSync;
      export default BackboneSync;
      export { BackboneSync };
      export var RailsFayeSubscriber = BackboneSync.RailsFayeSubscriber;
      export var FayeClient = BackboneSync.FayeClient;
      export var PushableCollection = Backbone.PushableCollection;
      export var PushableModel = Backbone.PushableModel;
    JS
  end

  private

  def generated_note
    text = "GENERATED by `rake js:build` from these files in vendor/assets/javascripts " \
           "(edit them, then rebuild): #{SOURCES.map { |s| "#{s}.js" }.join(', ')}."
    text.scan(/\S.{0,72}(?=\s|\z)/).map { |line| "// #{line}" }.join("\n")
  end

  # The sources in load order, each checked to need only what comes before
  # it, without their `//= require` lines.
  def bodies
    seen = []
    SOURCES.map do |name|
      lines = File.read(File.join(ASSETS, "#{name}.js")).lines
      unless lines.last&.chomp == INVOCATION
        raise "#{name}.js must end with #{INVOCATION.inspect} (js_bundle.rb relies on it)"
      end

      lines.reject! do |line|
        next false unless (needed = line[DIRECTIVE, 1])
        raise "#{name}.js requires #{needed}, which is not before it in JsBundle::SOURCES" unless seen.include?(needed)

        true
      end
      seen << name
      lines.join
    end.join("\n")
  end
end
