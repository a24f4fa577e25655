# frozen_string_literal: true

require "spec_helper"
require_relative "../../rakelib/js_bundle"

RSpec.describe "the generated JavaScript bundles" do
  [JsBundle::CLASSIC, JsBundle::MODULE].each do |name|
    it "vendor/assets/javascripts/#{name} is what `rake js:build` makes of the sources" do
      text = JsBundle.outputs.fetch(name)
      path = File.join(JsBundle::ASSETS, name)
      expect(File.exist?(path)).to be(true), "#{name} is missing: run `bundle exec rake js:build`"
      expect(File.read(path) == text).to be(true), "#{name} is stale: run `bundle exec rake js:build` and commit it"
    end
  end

  it "refuses a source that requires a file loaded after it" do
    stub_const("JsBundle::SOURCES", JsBundle::SOURCES.reverse)
    expect { JsBundle.outputs }.to raise_error(/requires .* not before it/)
  end
end
