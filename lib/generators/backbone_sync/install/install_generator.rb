# frozen_string_literal: true

require "json"
require "rails/generators"
require "backbone_sync/version"

module BackboneSync
  module Generators
    # bin/rails generate backbone_sync:install
    #
    # Writes config/initializers/backbone_sync.rb, the outbox's migration
    # (db/migrate/<timestamp>_create_backbone_sync_events.rb, unless one is
    # there already), puts backbone_sync_tags in
    # the application layout and loads backbone_sync's JavaScript the way the
    # app loads its own: importmap, jsbundling (esbuild and friends),
    # Sprockets or Propshaft. Running it again changes nothing. Backbone,
    # Underscore and jQuery stay the app's own: it says how to add them.
    class InstallGenerator < ::Rails::Generators::Base
      include ::Rails::Generators::Migration

      source_root File.expand_path("templates", __dir__)

      desc "Set up backbone_sync: initializer, layout tags, JavaScript for this app's asset setup"

      LAYOUT = "app/views/layouts/application.html.erb"
      INITIALIZER = "config/initializers/backbone_sync.rb"
      IMPORTMAP = "config/importmap.rb"
      MODULE_ENTRY = "app/javascript/application.js"
      SPROCKETS_ENTRY = "app/assets/javascripts/application.js"
      SPROCKETS_MANIFEST = "app/assets/config/manifest.js"
      OUTBOX_MIGRATION = "create_backbone_sync_events"
      # The ES module (importmap); backbone_sync.js is the classic script.
      ES_MODULE = "backbone_sync.esm.js"

      # What each setup is called, and what is left to do after the run.
      SETUP_NAMES = {
        importmap: "importmap",
        jsbundling: "jsbundling (#{MODULE_ENTRY})",
        sprockets: "Sprockets",
        propshaft: "Propshaft"
      }.freeze

      NEXT_STEPS = {
        importmap: <<~TEXT,
          Pin Backbone, Underscore and jQuery (ES modules in vendor/javascript):
            bin/importmap pin backbone underscore jquery
          and, when Backbone.$ is not set by then, in app/javascript/application.js:
            import jQuery from "jquery"
            import Backbone from "backbone"
            Backbone.$ = jQuery
          `import BackboneSync from "backbone_sync"` in your modules; it also
          defines window.BackboneSync.
        TEXT
        jsbundling: <<~TEXT,
          Add the npm package and Backbone, Underscore and jQuery:
            npm install backbone_sync@VERSION backbone underscore jquery
          (or yarn add ...), then rebuild (bin/dev, or bin/rails javascript:build).
          `import BackboneSync from "backbone_sync"` in your modules; Backbone finds
          jQuery by itself when the bundle holds it.
        TEXT
        sprockets: <<~TEXT,
          Put jquery.js, underscore.js and backbone.js in vendor/assets/javascripts
          (or add gems that ship them) and require them before backbone_sync:
            //= require jquery
            //= require underscore
            //= require backbone
            //= require backbone_sync
        TEXT
        propshaft: <<~TEXT
          Put jquery.js, underscore.js and backbone.js in vendor/assets/javascripts
          and include them before backbone_sync in the layout:
            <%= javascript_include_tag "jquery", "underscore", "backbone", "backbone_sync" %>
        TEXT
      }.freeze

      def create_initializer
        return say_status(:exist, INITIALIZER, :blue) if exist?(INITIALIZER)

        template "backbone_sync.rb", INITIALIZER
      end

      # The outbox table (see BackboneSync::Outbox), with ActiveRecord's timestamps.
      def self.next_migration_number(dirname)
        require "rails/generators/active_record"
        ::ActiveRecord::Generators::Base.next_migration_number(dirname)
      end

      def create_outbox_migration
        existing = Dir.glob(File.join(destination_root, "db", "migrate", "*_#{OUTBOX_MIGRATION}.rb")).first
        return say_status(:exist, existing.delete_prefix("#{destination_root}/"), :blue) if existing
        unless defined?(::ActiveRecord::Migration)
          return say_status(:skip, "db/migrate/#{OUTBOX_MIGRATION}.rb: this app does not use ActiveRecord, " \
                                   "so it has no outbox", :yellow)
        end

        migration_template "#{OUTBOX_MIGRATION}.rb.tt", "db/migrate/#{OUTBOX_MIGRATION}.rb"
      end

      def add_layout_tags
        return say_layout_missing("<%= backbone_sync_tags %>") unless exist?(LAYOUT)
        return if read(LAYOUT).include?("backbone_sync_tags")

        if read(LAYOUT).match?(/<%= csrf_meta_tags %>/)
          inject_into_file LAYOUT, "\n    <%= backbone_sync_tags %>", after: /<%= csrf_meta_tags %>/
        else
          inject_into_file LAYOUT, "    <%= backbone_sync_tags %>\n", before: %r{^\s*</head>}
        end
      end

      def add_javascript
        send(:"add_javascript_for_#{javascript_setup}")
      end

      def show_next_steps
        say ""
        say "backbone_sync is installed for #{SETUP_NAMES.fetch(javascript_setup)}.", :green
        say NEXT_STEPS.fetch(javascript_setup).gsub("VERSION", BackboneSync::VERSION)
        say <<~TEXT
          Run `bin/rails db:migrate` for the outbox table (backbone_sync_events).
          Backbone 0.9.2 to 1.6.1 works; Backbone.sync needs jQuery (Backbone.$) or
          your own Backbone.ajax. Then declare `push` in a model and follow its
          collection in the page:
            new BackboneSync.RailsFayeSubscriber(members, {channel: "members"})
        TEXT
      end

      private

      # What loads the app's JavaScript: importmap (config/importmap.rb),
      # a jsbundling bundler (package.json with a build script), or classic
      # scripts through Sprockets or Propshaft.
      def javascript_setup
        @javascript_setup ||=
          if exist?(IMPORTMAP)
            :importmap
          elsif bundler_build?
            :jsbundling
          elsif gem_in_bundle?("propshaft")
            :propshaft
          else
            :sprockets
          end
      end

      def add_javascript_for_importmap
        add_line IMPORTMAP, %(pin "backbone_sync", to: "#{ES_MODULE}"), unless_matching: /^\s*pin\s+["']backbone_sync["']/
        # Sprockets serves only what the manifest links; Propshaft serves all.
        if exist?(SPROCKETS_MANIFEST) && !gem_in_bundle?("propshaft")
          add_line SPROCKETS_MANIFEST, "//= link #{ES_MODULE}", unless_matching: /^\s*\/\/= link #{Regexp.escape(ES_MODULE)}/
        end
        add_import
      end

      def add_javascript_for_jsbundling
        add_import
      end

      def add_javascript_for_sprockets
        if exist?(SPROCKETS_ENTRY)
          return if read(SPROCKETS_ENTRY).match?(%r{^\s*//= require backbone_sync\s*$})

          requires = read(SPROCKETS_ENTRY).scan(%r{^\s*//= require .*\n})
          if requires.empty?
            append_to_file SPROCKETS_ENTRY, "//= require backbone_sync\n"
          else
            inject_into_file SPROCKETS_ENTRY, "//= require backbone_sync\n", after: requires.last
          end
        else
          # No application.js of its own: a tag in the layout, which the
          # manifest must let Sprockets serve.
          add_line SPROCKETS_MANIFEST, "//= link backbone_sync.js", unless_matching: %r{^\s*//= link backbone_sync\.js} if exist?(SPROCKETS_MANIFEST)
          add_include_tag
        end
      end

      def add_javascript_for_propshaft
        add_include_tag
      end

      def add_import
        return say_status(:missing, "#{MODULE_ENTRY}: add import \"backbone_sync\" to your entry point", :red) unless exist?(MODULE_ENTRY)

        add_line MODULE_ENTRY, %(import "backbone_sync"), unless_matching: /^\s*import\s+(.*\s+from\s+)?["']backbone_sync["']/
      end

      def add_include_tag
        tag = %(<%= javascript_include_tag "backbone_sync" %>)
        return say_layout_missing(tag) unless exist?(LAYOUT)
        return if read(LAYOUT).match?(/javascript_include_tag.*["']backbone_sync["']/)

        inject_into_file LAYOUT, "    #{tag}\n", before: %r{^\s*</head>}
      end

      # Appends `line` to `path` unless a line matches `unless_matching`.
      def add_line(path, line, unless_matching:)
        return if read(path).match?(unless_matching)

        text = read(path)
        append_to_file path, "#{"\n" unless text.empty? || text.end_with?("\n")}#{line}\n"
      end

      def say_layout_missing(tag)
        say_status :missing, "#{LAYOUT}: add #{tag} inside <head> of your layout", :red
      end

      def bundler_build?
        return false unless exist?("package.json")

        scripts = JSON.parse(read("package.json")).fetch("scripts", {})
        scripts.key?("build") || gem_in_bundle?("jsbundling-rails")
      rescue JSON::ParserError
        false
      end

      def gem_in_bundle?(name)
        %w[Gemfile.lock Gemfile].any? do |file|
          exist?(file) && read(file).match?(/^\s*(gem\s+)?["']?#{Regexp.escape(name)}["']?[\s,(]/)
        end
      end

      def exist?(path)
        File.exist?(File.join(destination_root, path))
      end

      def read(path)
        File.read(File.join(destination_root, path))
      end
    end
  end
end
