# frozen_string_literal: true

$LOAD_PATH.unshift File.expand_path("../lib", __dir__)
require "json"
require "backbone_sync"

# Under `rake spec:asan` only this Ruby process carries the sanitizer
# runtime; the processes specs spawn (node, chromium, Ruby scripts) get the
# plain environment and the normal build.
if ENV.delete("BACKBONE_SYNC_SANITIZED")
  ENV.delete("LD_PRELOAD")
  ENV.delete("BACKBONE_SYNC_EXT_DIR")
end

Dir[File.join(__dir__, "support", "*.rb")].sort.each { |f| require f }

# BACKBONE_SYNC_SPEC_EVENT_LOOP=ev runs the suite on the libev loop: every
# BackboneSync::Server this process makes without an explicit event_loop:
# gets it (`BACKBONE_SYNC_SPEC_EVENT_LOOP=ev bundle exec rspec spec/server`).
# Only this file reads it; servers in spawned processes (bin/backbone_sync,
# rake faye:start, the dummy app) keep their own default.
module BackboneSyncSpec
  EVENT_LOOP = ENV.fetch("BACKBONE_SYNC_SPEC_EVENT_LOOP", "").then { |v| v.empty? ? nil : v.to_sym }

  module DefaultEventLoop
    def initialize(**options)
      super(**{ event_loop: EVENT_LOOP }.merge(options))
    end
  end
end
BackboneSync::Server.prepend(BackboneSyncSpec::DefaultEventLoop) if BackboneSyncSpec::EVENT_LOOP

RSpec.configure do |config|
  config.disable_monkey_patching!
  config.expect_with(:rspec) { |c| c.syntax = :expect }
  config.mock_with(:rspec) { |m| m.verify_partial_doubles = true }
  config.filter_run_when_matching :focus
  # A :load example drives thousands of operations against its own time
  # bounds; under valgrind (some thirty times slower) it would measure
  # valgrind. Its code paths run there in the lighter examples.
  config.filter_run_excluding :load if ENV["BACKBONE_SYNC_VALGRIND"]
  config.order = :random
  Kernel.srand config.seed
  if BackboneSyncSpec::EVENT_LOOP
    config.before(:suite) do
      RSpec.configuration.reporter.message("Servers default to event_loop: #{BackboneSyncSpec::EVENT_LOOP.inspect} " \
                                           "(BACKBONE_SYNC_SPEC_EVENT_LOOP)")
    end
  end
end
