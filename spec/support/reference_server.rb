# frozen_string_literal: true

require_relative "client_process"
require_relative "bayeux_http"

module BackboneSyncSpec
  # The real Faye server (npm faye NodeAdapter, spec/support/node/reference_server.js),
  # used to prove the spec helpers right independently of our server.
  module ReferenceServer
    Handle = Struct.new(:url, :port, :process, keyword_init: true) do
      # Publishes in-process, like BackboneSync::Server#publish.
      def publish(channel, data)
        res = BayeuxHTTP.post_json("http://127.0.0.1:#{port}/__publish", { channel: channel, data: data })
        raise "reference publish failed: #{res.status} #{res.body}" unless res.status == 200
      end
    end

    def with_reference_server(timeout: 5, secret: nil)
      args = ["--timeout", timeout.to_s]
      args.push("--secret", secret) if secret
      proc = ClientProcess.node("reference_server.js", *args)
      line = proc.wait_for(timeout: 15, what: "port line") { |l| l["port"] }
      yield Handle.new(url: line["url"], port: line["port"], process: proc)
    ensure
      proc&.stop
    end
  end
end

RSpec.configure { |c| c.include BackboneSyncSpec::ReferenceServer } if defined?(RSpec) && RSpec.respond_to?(:configure)
