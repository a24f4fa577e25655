# frozen_string_literal: true

module BackboneSync
  module Outbox
    # `rake backbone_sync:relay` (relay layer, the main thread): one relay in
    # the foreground until SIGINT or SIGTERM, publishing to the server at
    # root_address (or the Redis backplane). Any number may run, on any
    # machine that reaches the database: their claims keep them apart.
    module Runner
      module_function

      def run(out: $stdout)
        if Outbox.enabled == false
          raise OutboxMissing, "the outbox is off (config.backbone_sync.outbox = false): there is nothing to relay"
        end
        unless Outbox.table?
          raise OutboxMissing, "the #{TABLE} table does not exist in #{Outbox.pool.db_config.database.inspect}; " \
                               "#{MIGRATION_HINT.sub(', or set config.backbone_sync.outbox = false', '')}"
        end

        out.sync = true if out.respond_to?(:sync=)
        # A self-pipe, as Launcher does: the signal handler only writes.
        wake_r, wake_w = IO.pipe
        previous = %w[INT TERM].to_h do |sig|
          [sig, trap(sig) { wake_w.write_nonblock(sig[0], exception: false) }]
        end
        relay = Relay.new.start
        out.puts "backbone_sync outbox relay #{relay.id} publishing to " \
                 "#{Broadcaster.redis ? 'Redis' : Broadcaster.server_url}"
        wake_r.read(1)
        relay
      ensure
        relay&.stop
        previous&.each { |sig, handler| trap(sig, handler || "DEFAULT") }
        wake_r&.close
        wake_w&.close
      end
    end
  end
end
