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

RSpec.configure do |config|
  config.disable_monkey_patching!
  config.expect_with(:rspec) { |c| c.syntax = :expect }
  config.mock_with(:rspec) { |m| m.verify_partial_doubles = true }
  config.filter_run_when_matching :focus
  config.order = :random
  Kernel.srand config.seed
end
