# frozen_string_literal: true

require "forwardable"

require_relative "../broadcaster"
require_relative "observer"

module BackboneSync
  module Rails
    # The backbone_sync-rails (2011) names, kept for apps and initializers
    # written against them: every method is BackboneSync::Broadcaster's, and
    # Faye::Observer is BackboneSync::Rails::Observer.
    #
    #   BackboneSync::Rails::Faye.root_address = "http://localhost:9292"
    module Faye
      DEFAULT_ROOT_ADDRESS = BackboneSync::Broadcaster::DEFAULT_ROOT_ADDRESS
      DEFAULT_MOUNT = BackboneSync::Broadcaster::DEFAULT_MOUNT
      Observer = BackboneSync::Rails::Observer

      class << self
        extend Forwardable

        def_delegators "BackboneSync::Broadcaster", *BackboneSync::Broadcaster.singleton_methods(false)
      end
    end
  end
end
