# frozen_string_literal: true

# The dummy app runs from the gem's own bundle (../../Gemfile, or the
# BUNDLE_GEMFILE of gemfiles/rails_6_1.gemfile) and loads the gem from lib/.
ENV["BUNDLE_GEMFILE"] ||= File.expand_path("../../../Gemfile", __dir__)
require "bundler/setup"
$LOAD_PATH.unshift File.expand_path("../../../lib", __dir__)
