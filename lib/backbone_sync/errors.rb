# frozen_string_literal: true

# The exception classes live in Ruby; the C extension looks them up when it
# loads, so this file must be required before the extension.
module BackboneSync
  # Base class: rescue BackboneSync::Error to catch everything this gem raises.
  class Error < StandardError; end

  # The server could not bind or initialise (port taken, bad certificate, ...).
  class StartError < Error; end

  # A Ruby object could not be turned into JSON (invalid UTF-8, NaN, a cycle).
  class EncodeError < Error; end

  # A channel name does not follow Faye's grammar (/segment/segment).
  class ChannelError < Error; end

  # publish on a server that is not running in this process.
  class NotRunning < Error; end

  # The in-process publish queue is full; subscribers cannot keep up.
  class Overloaded < Error; end

  # BackboneSync::Publisher gave up: the server was unreachable or refused.
  class PublishError < Error; end
end
