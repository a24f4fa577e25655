# frozen_string_literal: true

# A real Ruby `faye` gem Client (EventMachine), run as a subprocess by the
# interop specs. Same interface and output as spec/support/node/faye_client.js:
#
#   ruby spec/support/ruby_faye_client.rb URL CHANNELS COUNT [--no-websocket]
#                                         [--timeout SECONDS] [--tokens JSON]
#                                         [--publish CHANNEL JSON]
#
# JSON lines on stdout: {"ready":true,"transport":T}, then {"message":M,"transport":T}
# per delivery, then {"done":true,"received":N} (exit 0) or
# {"timeout":true,"received":N} (exit 3); {"error":..} (exit 2) if a subscribe fails;
# with --publish, {"published":true} or {"publish_error":..} after ready.
#
# spec_helper may load spec/support/*.rb by glob: this file does nothing unless
# it is the program being run.
if $PROGRAM_NAME == __FILE__
  require "json"
  require "faye"
  require "eventmachine"

  $stdout.sync = true
  positional = []
  flags = { timeout: 20.0, tokens: {} }
  args = ARGV.dup
  until args.empty?
    arg = args.shift
    case arg
    when "--no-websocket" then flags[:no_websocket] = true
    when "--timeout" then flags[:timeout] = Float(args.shift)
    when "--tokens" then flags[:tokens] = JSON.parse(args.shift)
    when "--publish" then flags[:publish] = [args.shift, JSON.parse(args.shift)]
    else positional << arg
    end
  end
  url, channel_list, count_arg = positional
  unless url && channel_list && count_arg
    warn "usage: ruby_faye_client.rb URL CHANNELS COUNT [--no-websocket] [--timeout S] [--tokens JSON]"
    exit 64
  end
  channels = channel_list.split(",").reject(&:empty?)
  count = Integer(count_arg)
  out = ->(obj) { $stdout.puts(JSON.generate(obj)) }
  exit_code = 3

  # The specs' self-signed certificates: this client only talks to 127.0.0.1.
  tls = url.start_with?("https:") ? { verify_peer: false } : nil

  EM.run do
    client = Faye::Client.new(url, { timeout: 60, retry: 1 }.merge(tls ? { tls: tls } : {}))
    client.disable("websocket") if flags[:no_websocket]
    transport = -> { client.instance_variable_get(:@dispatcher)&.connection_type }
    received = 0
    finished = false

    finish = lambda do |code, line|
      next if finished

      finished = true
      exit_code = code
      out.call(line)
      # disconnect is best effort; stop the reactor regardless.
      begin
        client.disconnect
      rescue StandardError
        nil
      end
      EM.add_timer(0.1) { EM.stop }
    end

    client.add_extension(Class.new do
      define_method(:outgoing) do |message, callback|
        if message["channel"] == "/meta/subscribe" && flags[:tokens][message["subscription"]]
          message["ext"] = (message["ext"] || {}).merge("token" => flags[:tokens][message["subscription"]])
        end
        callback.call(message)
      end

      define_method(:incoming) do |message, callback|
        if !message["channel"].start_with?("/meta/") && message.key?("data") && !message.key?("successful") && !finished
          received += 1
          out.call({ message: message, transport: transport.call })
          finish.call(0, { done: true, received: received }) if received >= count
        end
        callback.call(message)
      end
    end.new)

    EM.add_timer(flags[:timeout]) { finish.call(3, { timeout: true, received: received }) }

    pending = channels.size
    channels.each do |channel|
      sub = client.subscribe(channel) { |_data| nil }
      sub.callback do
        pending -= 1
        if pending.zero?
          out.call({ ready: true, transport: transport.call })
          if flags[:publish]
            publication = client.publish(*flags[:publish])
            publication.callback { out.call({ published: true }) }
            publication.errback { |err| out.call({ publish_error: err.respond_to?(:message) ? err.message : err.to_s }) }
          end
          finish.call(0, { done: true, received: 0 }) if count.zero? && !flags[:publish]
        end
      end
      sub.errback { |err| finish.call(2, { error: err.respond_to?(:message) ? err.message : err.to_s, channel: channel }) }
    end
  end
  exit exit_code
end
