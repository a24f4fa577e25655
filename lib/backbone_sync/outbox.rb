# frozen_string_literal: true

require "securerandom"

module BackboneSync
  # The transactional outbox (Rails layer; runs in the app's thread inside
  # the transaction, in the broadcast queue's thread after a send, and in the
  # relay's thread). The one owner of the backbone_sync_events table: its
  # name, its columns, its settings and every SQL statement run on it.
  #
  # Each broadcast of the push macro and the observer is written as one row
  # per channel by a before_commit callback, in the same transaction as the
  # change it describes; after the commit it is published at once (with its
  # event_id, so the server drops a second copy) and its row deleted once
  # sent. A row whose publish never happened (the process died, the server
  # was unreachable) is published by BackboneSync::Outbox::Relay once it is
  # older than +grace+.
  #
  # Rows: id, channel, payload (the data as JSON), event_id (unique),
  # available_at (integer milliseconds since the epoch: when a relay may
  # claim the row; a claim moves it claim_ttl ahead), claimed_by (the claim
  # holding it), created_at.
  module Outbox
    TABLE = "backbone_sync_events"
    COLUMNS = %w[channel payload event_id available_at claimed_by created_at].freeze
    MIGRATION_HINT = "run `bin/rails generate backbone_sync:install` (it adds the migration " \
                     "db/migrate/*_create_backbone_sync_events.rb) and `bin/rails db:migrate`, or set " \
                     "config.backbone_sync.outbox = false"

    # What before_commit wrote for one change, handed to after_commit by
    # BackboneSync::ChangeTracker: the channels, the data, each channel's
    # event id and the pool whose table holds the rows.
    Staged = Struct.new(:channels, :payload, :event_ids, :pool, keyword_init: true)

    DEFAULTS = {
      enabled: nil,        # nil: on when the table exists; true: required; false: today's behaviour
      retention: 3600.0,   # seconds; older rows are dropped (and reported) by the relay
      grace: 5.0,          # seconds the after-commit path has before a relay publishes a row
      poll_interval: 1.0,  # seconds between the relay's looks at the table when it is idle
      batch_size: 100,     # rows one relay claims at a time
      claim_ttl: 30.0      # seconds a claim holds; then another relay takes the rows over
    }.freeze

    @settings = DEFAULTS.dup
    @tables = {}
    @lock = Mutex.new

    class << self
      DEFAULTS.each_key do |name|
        define_method(name) { @settings[name] }
      end

      # config.backbone_sync.outbox: nil (on when the table exists), true
      # (the table must exist) or false (no rows; broadcasts as before).
      def enabled=(value)
        unless [nil, true, false].include?(value)
          raise ArgumentError, "config.backbone_sync.outbox must be true, false or nil, got #{value.inspect}"
        end

        @settings[:enabled] = value
        reset
      end

      %i[retention grace poll_interval claim_ttl].each do |name|
        define_method(:"#{name}=") do |value|
          unless value.is_a?(Numeric) && value.positive?
            raise ArgumentError, "config.backbone_sync.outbox_#{name} must be a positive number of seconds, " \
                                 "got #{value.inspect}"
          end

          @settings[name] = value.to_f
        end
      end

      def batch_size=(value)
        unless value.is_a?(Integer) && value.positive? && value <= 10_000
          raise ArgumentError, "config.backbone_sync.outbox_batch_size must be an Integer from 1 to 10000, " \
                               "got #{value.inspect}"
        end

        @settings[:batch_size] = value
      end

      # Back to the defaults (specs).
      def restore_defaults
        @settings = DEFAULTS.dup
        reset
      end

      # Forgets which databases have the table (after a migration).
      def reset
        @lock.synchronize { @tables = {} }
        nil
      end

      # The pool whose database holds the table the relay reads:
      # ActiveRecord::Base's. Models on other databases publish as without
      # the outbox.
      def pool
        ::ActiveRecord::Base.connection_pool
      end

      # Whether a change of +klass+ goes through the outbox. Raises
      # OutboxMissing when the outbox is required but its table is not there.
      def active_for?(klass)
        return false if enabled == false
        return false unless defined?(::ActiveRecord::Base) && klass.is_a?(Class) && klass < ::ActiveRecord::Base
        return false unless klass.connection_pool.equal?(pool)

        present = table?(pool)
        raise OutboxMissing, "config.backbone_sync.outbox is true but the #{TABLE} table does not exist; #{MIGRATION_HINT}" if enabled && !present

        present
      end

      # Whether +pool+'s database has the table (asked once per pool).
      def table?(pool = self.pool)
        key = pool.object_id
        known = @lock.synchronize { @tables[key] }
        return known unless known.nil?

        present = pool.with_connection { |c| c.data_source_exists?(TABLE) }
        @lock.synchronize { @tables[key] = present }
      end

      # before_commit: the payload of +record+'s +event+ for +channels+,
      # written as one row per channel through the record's connection,
      # inside its transaction. Returns a Staged, or nil when the outbox is
      # off for this model. A channel or payload that cannot be made is
      # reported and writes nothing (as it publishes nothing without the
      # outbox); a failed INSERT raises, so the change rolls back with it.
      def stage_change(record, event, origin:, format:)
        return nil unless active_for?(record.class)

        begin
          channels = yield
          payload = BackboneSync::Payload.build(record, event, origin: origin, format: format)
          json = BackboneSync.encode_json(payload)
        rescue StandardError => e
          BackboneSync.report_broadcast_error(e, model: record.class.name, id: (record.id if record.respond_to?(:id)),
                                                 event: event.to_s)
          return Staged.new(channels: [], payload: nil, event_ids: {}, pool: pool)
        end
        event_ids = channels.to_h { |channel| [channel, SecureRandom.uuid] }
        insert(record.class.connection, event_ids, json, delay: grace) unless channels.empty?
        Staged.new(channels: channels, payload: payload, event_ids: event_ids, pool: pool)
      end

      # Deletes the rows of +event_ids+ (published). Takes a pooled
      # connection of its own when the calling thread has none (the
      # broadcast queue's thread).
      def delete(event_ids, pool: self.pool)
        return 0 if event_ids.empty?

        pool.with_connection do |c|
          c.exec_delete("DELETE FROM #{c.quote_table_name(TABLE)} WHERE event_id IN (#{event_ids.map { |e| c.quote(e) }.join(', ')})",
                        "BackboneSync outbox")
        end
      end

      # {waiting: rows in the table, oldest_age: seconds since the oldest
      # row was written (0.0 when none)}.
      def stats(pool: self.pool)
        pool.with_connection do |c|
          row = c.select_one("SELECT COUNT(*) AS waiting, MIN(created_at) AS oldest FROM #{c.quote_table_name(TABLE)}",
                             "BackboneSync outbox")
          oldest = time_of(row["oldest"])
          { waiting: Integer(row["waiting"]), oldest_age: oldest ? [Time.now - oldest, 0.0].max.to_f : 0.0 }
        end
      end

      # Milliseconds since the epoch, the unit of available_at.
      def now_ms
        Process.clock_gettime(Process::CLOCK_REALTIME, :millisecond)
      end

      # A created_at as read back (a Time, or a String from SQLite), as a Time.
      def time_of(value)
        return nil if value.nil?
        return value.to_time if value.respond_to?(:to_time) && !value.is_a?(String)

        ::ActiveRecord::Type::DateTime.new.deserialize(value)
      end

      private

      def insert(connection, event_ids, json, delay:)
        c = connection
        now = Time.now.utc
        available = now_ms + (delay * 1000).round
        values = event_ids.map do |channel, event_id|
          "(#{[channel, json, event_id, available, nil, now].map { |v| c.quote(v) }.join(', ')})"
        end
        c.exec_insert("INSERT INTO #{c.quote_table_name(TABLE)} (#{COLUMNS.join(', ')}) VALUES #{values.join(', ')}",
                      "BackboneSync outbox")
      end
    end
  end
end
