# frozen_string_literal: true

module BackboneSync
  module Rails
    # The observer style of backbone_sync-rails (2011), with the rails-observers
    # gem (Rails layer, app threads):
    #
    #   class UserObserver < ActiveRecord::Observer
    #     include BackboneSync::Rails::Observer   # or its old name, BackboneSync::Rails::Faye::Observer
    #     push_options async: true, queue: "sync" # optional: push's options
    #   end
    #   # config/application.rb: config.active_record.observers = :user_observer
    #
    # Creates, updates and destroys of the observed models go to
    # "/sync/<table_name>" (or the model's faye_channel class method) after
    # the transaction commits, with the same payload as the push macro: the
    # same BackboneSync::ChangeTracker decides what a transaction amounts to,
    # and BackboneSync::Broadcaster sends it. push_options takes push's
    # options: async: true enqueues a BackboneSync::BroadcastJob (on queue:),
    # payload: :legacy sends {"create":{"42":{...}}} (as does defining
    # payload_format returning :legacy in the observer).
    module Observer
      def self.included(base)
        base.extend(ClassMethods) if base.is_a?(Class)
      end

      module ClassMethods
        # push's options (async:, queue:, payload:) for every model this
        # observer sees; replaces earlier ones.
        def push_options(**options)
          @push_options = BackboneSync::Pushable.build_options(self, options, "push_options").freeze
        end

        # The options in force (inherited by subclasses).
        def backbone_sync_options
          return @push_options if defined?(@push_options) && @push_options
          return superclass.backbone_sync_options if superclass.respond_to?(:backbone_sync_options)

          BackboneSync::Pushable.build_options(self, {}, "push_options")
        end
      end

      def after_create(record)
        BackboneSync::ChangeTracker.mark(record, :create, self)
      end

      def after_update(record)
        BackboneSync::ChangeTracker.mark(record, :update, self)
      end

      def after_destroy(record)
        BackboneSync::ChangeTracker.mark(record, :destroy, self)
      end

      # rails-observers wires ActiveRecord's CALLBACKS, which have no
      # before_commit: the outbox's is added here, for each observed class.
      def define_callbacks(klass)
        super if defined?(super)
        return unless klass.respond_to?(:before_commit)

        observer = self
        name = :"_backbone_sync_#{self.class.name.to_s.underscore.tr('/', '_')}_before_commit"
        return if klass.method_defined?(name)

        klass.send(:define_method, name) { observer.backbone_sync_stage(self) }
        klass.before_commit(name)
      end

      # before_commit: the outbox rows, in the transaction (when the outbox is on).
      def backbone_sync_stage(record)
        BackboneSync::ChangeTracker.stage(record, self) do |event, origin|
          BackboneSync::Outbox.stage_change(record, event, origin: origin, format: payload_format) { [channel_for(record)] }
        end
      end

      def after_commit(record)
        BackboneSync::ChangeTracker.commit(record, self) do |event, origin, staged|
          options = backbone_sync_options
          BackboneSync::Broadcaster.broadcast_change(record, event, staged ? staged.channels : channel_for(record),
                                                     origin: origin, format: payload_format,
                                                     async: options[:async], queue: options[:queue], staged: staged)
        rescue StandardError => e
          BackboneSync.report_broadcast_error(e, model: record.class.name, event: event.to_s)
        end
      end

      def after_rollback(record)
        BackboneSync::ChangeTracker.forget(record, self)
      end

      # The channel of +record+'s class: "/sync/<faye_channel or table_name>".
      def channel_for(record)
        klass = record.class
        name = klass.respond_to?(:faye_channel) && klass.faye_channel ? klass.faye_channel : klass.table_name
        BackboneSync.sync_channel(name)
      end

      # :canonical or :legacy; push_options(payload:) sets it, and an
      # observer may override it.
      def payload_format
        backbone_sync_options[:payload]
      end

      private

      def backbone_sync_options
        if self.class.respond_to?(:backbone_sync_options)
          self.class.backbone_sync_options
        else
          BackboneSync::Pushable.build_options(self.class, {}, "push_options")
        end
      end
    end
  end
end
