# frozen_string_literal: true

module BackboneSync
  module Rails
    module Faye
      # The observer style of backbone_sync-rails (2011), with the rails-observers gem:
      #
      #   class UserObserver < ActiveRecord::Observer
      #     include BackboneSync::Rails::Faye::Observer
      #   end
      #   # config/application.rb: config.active_record.observers = :user_observer
      #
      # Creates, updates and destroys of the observed models go to
      # "/sync/<table_name>" (or the model's faye_channel class method) after
      # the transaction commits, with the same payload as the push macro.
      # Define payload_format returning :legacy in the observer for JavaScript
      # that expects {"create":{"42":{...}}}.
      module Observer
        def after_create(record)
          backbone_sync_mark(record, :create)
        end

        def after_update(record)
          backbone_sync_mark(record, :update)
        end

        def after_destroy(record)
          backbone_sync_mark(record, :destroy)
        end

        def after_commit(record)
          event = record.instance_variable_get(:@backbone_sync_observed)
          return unless event

          origin = record.instance_variable_get(:@backbone_sync_observed_origin)
          backbone_sync_forget(record)
          payload = BackboneSync::Payload.build(record, event, origin: origin, format: payload_format)
          BackboneSync::Rails::Faye.publish(channel_for(record), payload,
                                            { model: record.class.name, id: record.id, event: event.to_s })
        rescue StandardError => e
          BackboneSync.report_broadcast_error(e, model: record.class.name, event: event.to_s)
        end

        def after_rollback(record)
          backbone_sync_forget(record)
        end

        # The channel of +record+'s class: "/sync/<faye_channel or table_name>".
        def channel_for(record)
          klass = record.class
          name = klass.respond_to?(:faye_channel) && klass.faye_channel ? klass.faye_channel : klass.table_name
          BackboneSync.sync_channel(name)
        end

        def payload_format
          :canonical
        end

        private

        # As with push: a create then updates in one transaction is a create;
        # a destroy wins.
        def backbone_sync_mark(record, event)
          return if BackboneSync.suppressed?

          current = record.instance_variable_get(:@backbone_sync_observed)
          if current.nil?
            record.instance_variable_set(:@backbone_sync_observed, event)
            record.instance_variable_set(:@backbone_sync_observed_origin, BackboneSync.origin)
          elsif event == :destroy
            record.instance_variable_set(:@backbone_sync_observed, :destroy)
          end
        end

        def backbone_sync_forget(record)
          record.instance_variable_set(:@backbone_sync_observed, nil)
          record.instance_variable_set(:@backbone_sync_observed_origin, nil)
        end
      end
    end
  end
end
