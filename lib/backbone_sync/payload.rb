# frozen_string_literal: true

module BackboneSync
  # The data of one broadcast. Canonical shape:
  #
  #   {"event":"update","object":{...record.as_json...},"origin":"pg3k...:c5","version":1732437600123}
  #
  # and, for JavaScript written against backbone_sync-rails (payload: :legacy):
  #
  #   {"update":{"42":{...record.as_json...}}}
  module Payload
    EVENTS = %w[create update destroy].freeze
    FORMATS = %i[canonical legacy].freeze

    module_function

    # The Hash to publish for +record+ after +event+. The object is the
    # record's push_payload when it defines one, else its as_json (so its own
    # as_json and include_root_in_json apply).
    def build(record, event, origin: BackboneSync.origin, format: :canonical)
      event = event.to_s
      unless EVENTS.include?(event)
        raise ArgumentError, "event must be one of #{EVENTS.join(', ')}, got #{event.inspect}"
      end

      object = object_for(record)
      case format
      when :canonical
        { "event" => event, "object" => object, "origin" => origin, "version" => version_of(record) }
      when :legacy
        { event => { record_id(record).to_s => object } }
      else
        raise ArgumentError, "payload format must be :canonical or :legacy, got #{format.inspect}"
      end
    end

    def object_for(record)
      object = record.respond_to?(:push_payload) ? record.push_payload : record.as_json
      # push_payload may return Times, Symbols, models: give them their JSON form.
      object = object.as_json if object.respond_to?(:as_json) && !object.is_a?(String)
      object
    end

    # lock_version when the model has it, else updated_at in integer
    # milliseconds since the epoch, else 0. Larger is newer.
    #
    # The page reads the same number from a fetched record's JSON
    # (BackboneSync.versionOf in changes.js): its lock_version, else its
    # updated_at, which Rails renders with millisecond precision, so
    # microseconds here would make every push look newer than any fetch.
    # lock_version follows commit order exactly; updated_at is taken when a
    # save starts, so of two concurrent saves the one that commits last may
    # carry the older time (the page then reads the record again).
    def version_of(record)
      if attribute?(record, "lock_version")
        Integer(record.lock_version || 0)
      elsif attribute?(record, "updated_at") && (time = record.updated_at)
        time = time.to_time if time.respond_to?(:to_time)
        (time.to_r * 1_000).floor
      else
        0
      end
    end

    def attribute?(record, name)
      if record.class.respond_to?(:attribute_names)
        record.class.attribute_names.include?(name) && record.respond_to?(name)
      else
        record.respond_to?(name)
      end
    end

    def record_id(record)
      record.respond_to?(:id) ? record.id : nil
    end
  end
end
