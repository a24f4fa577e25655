# frozen_string_literal: true

module BackboneSync
  VERSION = "0.1.0"
end
