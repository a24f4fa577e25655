# frozen_string_literal: true

# `plugin :backbone_sync` in config/puma.rb: runs the backbone_sync server
# once per Puma, in single and cluster mode, with or without preload_app!.
# What it does is described in lib/backbone_sync/puma_plugin.rb.
require "puma/plugin"
require_relative "../../backbone_sync/puma_plugin"

Puma::Plugin.create do
  # Puma offers the config DSL to plugins: the server process is forked
  # just before the first workers, after preload_app! loaded the app.
  def config(dsl)
    dsl.before_fork { BackboneSync::PumaPlugin.before_fork }
  end

  def start(launcher)
    BackboneSync::PumaPlugin.start(launcher)
  end
end
