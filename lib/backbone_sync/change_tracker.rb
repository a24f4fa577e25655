# frozen_string_literal: true

module BackboneSync
  # What happened to a record in its transaction, remembered until the
  # commit: the one rule for the push macro (Pushable) and the observer
  # (Rails::Observer) alike.
  #
  # - A create followed by updates is a create; a destroy wins over both.
  # - The origin is the one in force at the first change.
  # - Inside BackboneSync.suppress nothing is remembered, and a commit made
  #   inside it broadcasts nothing.
  # - A rollback forgets.
  # - With the outbox, before_commit writes what the transaction amounts to
  #   (stage); what it wrote is kept with the change and handed to after_commit.
  #
  # Each owner (the push macro, each observer) has its own slot on the
  # record, so a model that is both pushed and observed is broadcast by
  # both, with the same event and origin.
  module ChangeTracker
    IVAR = :@backbone_sync_changes

    module_function

    # after_create/update/destroy/touch: remember +event+ for +owner+.
    def mark(record, event, owner)
      return nil if BackboneSync.suppressed?

      changes = record.instance_variable_get(IVAR) || {}
      current = changes[owner]
      if current.nil?
        store(record, changes.merge(owner => [event, BackboneSync.origin].freeze))
      elsif event == :destroy && current[0] != :destroy
        # Anything staged described the earlier event: after_commit publishes without it.
        store(record, changes.merge(owner => [:destroy, current[1]].freeze))
      end
      nil
    end

    # before_commit, inside the transaction: yields what +owner+ remembered
    # as (event, origin), unless nothing was or broadcasts are suppressed
    # now, and keeps the block's result (the outbox rows it wrote) with it
    # for commit.
    def stage(record, owner)
      changes = record.instance_variable_get(IVAR)
      current = changes && changes[owner]
      return nil if current.nil? || BackboneSync.suppressed?

      staged = yield(current[0], current[1])
      store(record, changes.merge(owner => [current[0], current[1], staged].freeze))
      nil
    end

    # after_commit: forgets what +owner+ remembered and yields it as
    # (event, origin, staged: what stage kept, or nil), unless nothing was
    # or broadcasts are suppressed now.
    def commit(record, owner)
      event, origin, staged = take(record, owner)
      yield(event, origin, staged) if event && !BackboneSync.suppressed?
    end

    # after_rollback.
    def forget(record, owner)
      take(record, owner)
      nil
    end

    # [event, origin, staged] remembered for +owner+, or nil; forgotten either way.
    def take(record, owner)
      changes = record.instance_variable_get(IVAR)
      return nil unless changes&.key?(owner)

      store(record, changes.reject { |key, _| key == owner })
      changes[owner]
    end

    # A new Hash each time, never changed in place: a record's dup (which
    # copies instance variables) does not share what this one remembers.
    def store(record, changes)
      record.instance_variable_set(IVAR, changes.empty? ? nil : changes.freeze)
    end
    private_class_method :store
  end
end
