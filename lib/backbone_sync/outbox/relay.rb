# frozen_string_literal: true

require "json"
require "securerandom"
require "socket"

module BackboneSync
  module Outbox
    # Publishes the outbox rows nobody published (relay layer; its own thread,
    # "backbone_sync outbox relay", or the caller's in run_once). A row is
    # left behind when the process that committed it died before its
    # after-commit publish, or the push server could not be reached then.
    #
    # Each round claims at most batch_size rows whose available_at has come
    # (grace after the commit, so it does not race the after-commit path; a
    # race is harmless anyway: the server drops a second publish of an
    # event_id it still holds), in id order, skipping channels with an older
    # row another relay holds, publishes them one by one through
    # BackboneSync::Broadcaster.publish! (in-process to a server in this
    # process, else Redis or HTTP) and deletes each once published. A claim
    # moves available_at claim_ttl ahead: when a relay dies, its rows become
    # claimable again then, and another relay takes over. Rows older than
    # retention are dropped, counted and reported (OutboxExpired).
    #
    # Order: id order within a channel, which is insertion order; with
    # concurrent transactions it can differ from commit order (an id is
    # given at INSERT, the commit comes later), and leftovers published
    # during a recovery may arrive after newer changes published directly:
    # the payload's version says which is newer.
    class Relay
      MAX_BACKOFF = 30.0
      STOP_TIMEOUT = 10.0

      @started = []
      @started_lock = Mutex.new

      class << self
        # The relays running in this process.
        def started
          @started_lock.synchronize { @started.select(&:running?) }
        end

        def register(relay)
          @started_lock.synchronize { @started = @started.select(&:running?) << relay }
        end

        # Stops every relay of this process (at exit).
        def stop_all
          started.each(&:stop)
        end

        # Starts a relay unless the outbox is off (config.backbone_sync.outbox
        # = false) or one already runs in this process. Returns it, or nil.
        def start_unless_off(**options)
          return nil if Outbox.enabled == false

          started.first || new(**options).start
        end
      end

      attr_reader :id

      # +publish+ is called as publish.call(channel, data, event_id) and
      # raises on failure; the default is Broadcaster.publish!.
      def initialize(pool: Outbox.pool, batch_size: Outbox.batch_size, poll_interval: Outbox.poll_interval,
                     claim_ttl: Outbox.claim_ttl, retention: Outbox.retention, publish: nil)
        @pool = pool
        @batch_size = batch_size
        @poll_interval = poll_interval
        @claim_ttl_ms = (claim_ttl * 1000).round
        @retention = retention
        @publish = publish || ->(channel, data, event_id) { Broadcaster.publish!(channel, data, event_id: event_id) }
        @id = "#{Socket.gethostname[0, 40]}:#{Process.pid}:#{SecureRandom.hex(4)}"
        @claims = 0
        @counts = { published: 0, dropped: 0, failed: 0 }
        @lock = Mutex.new
        @wake = ConditionVariable.new
        @stopping = false
        @thread = nil
        @pid = nil
        @backoff = poll_interval
        @table = false
      end

      # {published:, dropped:, failed:} by this relay.
      def counts
        @lock.synchronize { @counts.dup }
      end

      # Starts the relay's thread. Returns self.
      def start
        @lock.synchronize do
          return self if running_locked?

          @stopping = false
          @pid = Process.pid
          @thread = Thread.new { run }
          @thread.name = "backbone_sync outbox relay"
          @thread.report_on_exception = false
        end
        Relay.register(self)
        self
      end

      # True while its thread runs in this process (a forked child has no
      # such thread: start it again there).
      def running?
        @lock.synchronize { running_locked? }
      end

      # Stops the thread after the row it is publishing; what it claimed and
      # did not publish is released at once. Returns true when it stopped.
      def stop(timeout: STOP_TIMEOUT)
        thread = @lock.synchronize do
          @stopping = true
          @wake.broadcast
          @pid == Process.pid ? @thread : nil
        end
        return true unless thread

        thread.join(timeout) ? true : false
      end

      # One round: drops expired rows, publishes one batch. Returns the
      # number of rows it claimed (0 when the table is missing or empty).
      def run_once
        return 0 unless table?

        token = "#{@id}:#{@claims += 1}"
        rows = claim(token)
        return 0 if rows.empty?

        publish_rows(rows, token)
        rows.size
      end

      # The table's {waiting:, oldest_age:}, also given to the server when it
      # runs in this process (GET /stats: outbox_waiting, outbox_oldest_age).
      def report_stats
        return nil unless table?

        stats = Outbox.stats(pool: @pool)
        server = Broadcaster.server
        server.outbox_stats = stats if server
        stats
      end

      private

      def running_locked?
        @pid == Process.pid && @thread&.alive? ? true : false
      end

      def stopping?
        @lock.synchronize { @stopping }
      end

      def run
        until stopping?
          claimed = begin
            run_once.tap { @backoff = @poll_interval }
          rescue StandardError => e
            BackboneSync.report_broadcast_error(e, relay: @id)
            @backoff = [@backoff * 2, MAX_BACKOFF].min
            -1
          end
          begin
            report_stats
          rescue StandardError
            nil
          end
          # A full batch: there may be more right away.
          pause(claimed >= @batch_size ? 0 : @backoff)
        end
      ensure
        @pool.release_connection if @pool.respond_to?(:release_connection)
      end

      def pause(seconds)
        return if seconds <= 0

        @lock.synchronize { @wake.wait(@lock, seconds) unless @stopping }
      end

      # Whether the table is there (asked until it is: a relay may start
      # before the migration has run).
      def table?
        @table ||= @pool.with_connection { |c| c.data_source_exists?(TABLE) }
      end

      def claim(token)
        now = Outbox.now_ms
        @pool.with_connection do |c|
          t = c.quote_table_name(TABLE)
          ids = c.select_values(<<~SQL.squish, "BackboneSync outbox claim")
            SELECT e.id FROM #{t} e WHERE e.available_at <= #{now}
            AND NOT EXISTS (SELECT 1 FROM #{t} o WHERE o.channel = e.channel AND o.id < e.id
                            AND o.claimed_by IS NOT NULL AND o.available_at > #{now})
            ORDER BY e.id LIMIT #{Integer(@batch_size)}
          SQL
          return [] if ids.empty?

          # The available_at test again: of two relays that read the same
          # ids, the second finds them claimed (its UPDATE waits for the
          # first's row locks, then sees the new values).
          c.exec_update("UPDATE #{t} SET claimed_by = #{c.quote(token)}, available_at = #{now + @claim_ttl_ms} " \
                        "WHERE id IN (#{ids.map { |id| Integer(id) }.join(', ')}) AND available_at <= #{now}",
                        "BackboneSync outbox claim")
          c.select_all("SELECT id, channel, payload, event_id, created_at FROM #{t} " \
                       "WHERE claimed_by = #{c.quote(token)} ORDER BY id", "BackboneSync outbox claim").to_a
        end
      end

      def publish_rows(rows, token)
        cutoff = Time.now - @retention
        rows.each do |row|
          break if stopping?

          created = Outbox.time_of(row["created_at"])
          next drop(row, created, token) if created && created < cutoff

          begin
            @publish.call(row["channel"], JSON.parse(row["payload"]), row["event_id"])
          rescue StandardError => e
            count(:failed)
            BackboneSync.report_broadcast_error(e, relay: @id, channel: row["channel"], event_id: row["event_id"])
            @backoff = [@backoff * 2, MAX_BACKOFF].min
            break
          end
          delete(row, token)
          count(:published)
        end
      ensure
        release(token)
      end

      def drop(row, created, token)
        delete(row, token)
        count(:dropped)
        age = (Time.now - created).round
        BackboneSync.report_broadcast_error(
          OutboxExpired.new("not published: this outbox row is #{age}s old, over the retention of " \
                            "#{@retention.round}s (config.backbone_sync.outbox_retention); was the push server " \
                            "or every relay down that long?"),
          relay: @id, channel: row["channel"], event_id: row["event_id"], created_at: created
        )
      end

      def delete(row, token)
        @pool.with_connection do |c|
          c.exec_delete("DELETE FROM #{c.quote_table_name(TABLE)} WHERE id = #{Integer(row['id'])} " \
                        "AND claimed_by = #{c.quote(token)}", "BackboneSync outbox")
        end
      end

      # What this claim still holds (a failed publish, a stop) is claimable
      # again after the backoff; meanwhile the claim keeps the newer rows of
      # those channels back, so they keep their order.
      def release(token)
        @pool.with_connection do |c|
          c.exec_update("UPDATE #{c.quote_table_name(TABLE)} SET available_at = " \
                        "#{Outbox.now_ms + (stopping? ? 0 : (@backoff * 1000).round)} " \
                        "WHERE claimed_by = #{c.quote(token)}", "BackboneSync outbox")
        end
      rescue StandardError => e
        BackboneSync.report_broadcast_error(e, relay: @id, after: :release)
      end

      def count(what)
        @lock.synchronize { @counts[what] += 1 }
      end
    end
  end
end

at_exit { BackboneSync::Outbox::Relay.stop_all }
