# frozen_string_literal: true

module BackboneSync
  # The `push` macro (Rails layer, app threads): broadcasts a model's
  # creates, updates and destroys, after the transaction commits, to
  # Backbone collections and models; with the outbox (outbox.rb) each
  # broadcast is also written in the transaction, before the commit.
  #
  #   class Member < ActiveRecord::Base
  #     push :create  => :collections,
  #          :update  => [:collections, :instances],
  #          :destroy => [:collections, :instances]
  #
  #     def collection_channel   # optional: "/sync/family_7_members"
  #       "family_#{family_id}_members"
  #     end
  #   end
  #
  # Every ActiveRecord model has `push` and `pushable` (no include needed);
  # a plain ActiveModel class includes this module after
  # `extend ActiveModel::Callbacks; define_model_callbacks :create, :update, :destroy`.
  #
  # Targets: :collections (collection_channel, default "/sync/<plural>"),
  # :instances (instance_channel, default "/sync/<singular>_<id>"), a
  # belongs_to association name (:family gives "/sync/family_7_members"), a
  # Symbol naming a method that returns channel names, a String naming a
  # channel, or a Proc called with the record that returns channel names.
  module Pushable
    EVENTS = %i[create update destroy].freeze
    DEFAULTS = {
      create: [:collections].freeze,
      update: %i[collections instances].freeze,
      destroy: %i[collections instances].freeze
    }.freeze
    OPTIONS = %i[async payload queue].freeze

    # What one class declared with push.
    Config = Struct.new(:events, :async, :payload, :queue, keyword_init: true)

    @models = {}
    @models_lock = Mutex.new

    class << self
      def included(base)
        base.extend(Macro)
      end

      # The classes that declared push, for the subscription endpoint.
      def models
        @models_lock.synchronize { @models.values }.map do |klass|
          # After a code reload the constant names a new class.
          current = Object.const_get(klass.name) if klass.name
          current.is_a?(Class) && current.respond_to?(:backbone_sync_config) ? current : klass
        rescue NameError
          klass
        end.uniq
      end

      def register(klass)
        @models_lock.synchronize { @models[klass.name || klass.object_id] = klass }
      end
    end

    # The class methods every ActiveRecord model gets (and a class including
    # Pushable): the macro itself. Declaring nothing changes nothing.
    module Macro
      # push :create => targets, :update => targets, :destroy => targets,
      #      async: false, payload: :canonical, queue: nil
      #
      # Replaces what an earlier push declared. With no events, the defaults
      # (the same as pushable).
      def push(events = {}, **options)
        events = events.merge(options.reject { |k, _| OPTIONS.include?(k.to_sym) })
        options = options.select { |k, _| OPTIONS.include?(k.to_sym) }
        config = Pushable.build_config(self, events, options)
        include(Pushable::Instance) unless include?(Pushable::Instance)
        extend(Pushable::ClassMethods)
        @backbone_sync_config = config
        Pushable.install_callbacks(self) unless backbone_sync_callbacks_installed?
        Pushable.register(self)
        config
      end

      # push with the defaults: creates to the collection channel, updates
      # and destroys to the collection and instance channels.
      def pushable(**options)
        push({}, **options)
      end
    end

    module ClassMethods
      # The Config in force for this class (inherited by subclasses).
      def backbone_sync_config
        return @backbone_sync_config if defined?(@backbone_sync_config) && @backbone_sync_config

        superclass.respond_to?(:backbone_sync_config) ? superclass.backbone_sync_config : nil
      end

      def backbone_sync_callbacks_installed?
        return true if defined?(@backbone_sync_callbacks_installed) && @backbone_sync_callbacks_installed

        superclass.respond_to?(:backbone_sync_callbacks_installed?) && superclass.backbone_sync_callbacks_installed?
      end

      # The class's default collection channel, "/sync/<plural>".
      def push_collection_channel
        BackboneSync.sync_channel(Pushable.names_of(self)[:plural])
      end

      # Whether the subscription endpoint should ask this model's
      # push_authorize about +channel+: its default collection channel, its
      # instance channels ("/sync/member_42"), and scoped collection channels
      # ending in "_<plural>" ("/sync/family_7_members"). Override for
      # channels named otherwise.
      def push_channel?(channel)
        names = Pushable.names_of(self)
        name = channel.to_s.delete_prefix("/sync/")
        return false if name.include?("/") || name == channel.to_s

        name == names[:plural] || name == names[:table] ||
          name.start_with?("#{names[:singular]}_") || name.end_with?("_#{names[:plural]}")
      end
    end

    module Instance
      # The default collection channel name; define collection_channel in the
      # model to scope it ("family_7_members" becomes "/sync/family_7_members").
      def collection_channel
        Pushable.names_of(self.class)[:plural]
      end

      # The default instance channel name, "<singular>_<id>".
      def instance_channel
        "#{Pushable.names_of(self.class)[:singular]}_#{id}"
      end

      # The channels +event+ goes to, as full "/sync/..." names. Raises
      # ChannelError for a target that names no valid channel.
      def push_channels(event)
        config = self.class.backbone_sync_config
        targets = config ? config.events.fetch(event.to_sym, []) : []
        targets.flat_map { |target| Pushable.resolve(self, target) }.uniq
      end

      # Broadcasts +event+ now (after_commit calls this, with what the
      # outbox staged before the commit, if anything). Never raises.
      def push_broadcast(event, origin: BackboneSync.origin, staged: nil)
        config = self.class.backbone_sync_config
        return if config.nil? || BackboneSync.suppressed?

        channels = staged ? staged.channels : push_channels(event)
        return if channels.empty?

        BackboneSync::Broadcaster.broadcast_change(self, event, channels, origin: origin, format: config.payload,
                                                                          async: config.async, queue: config.queue,
                                                                          staged: staged)
      rescue StandardError => e
        BackboneSync.report_broadcast_error(e, model: self.class.name, id: (id if respond_to?(:id)),
                                               event: event.to_s)
      end

      private

      # The callbacks: ChangeTracker remembers what happened until the
      # commit (a create then updates is a create; a destroy wins).
      def backbone_sync_mark(event)
        BackboneSync::ChangeTracker.mark(self, event, :push)
      end

      # before_commit: the outbox rows, in the transaction (when the outbox is on).
      def backbone_sync_stage
        config = self.class.backbone_sync_config
        return if config.nil?

        BackboneSync::ChangeTracker.stage(self, :push) do |event, origin|
          BackboneSync::Outbox.stage_change(self, event, origin: origin, format: config.payload) { push_channels(event) }
        end
      end

      def backbone_sync_commit
        BackboneSync::ChangeTracker.commit(self, :push) do |event, origin, staged|
          push_broadcast(event, origin: origin, staged: staged)
        end
      end

      def backbone_sync_rollback
        BackboneSync::ChangeTracker.forget(self, :push)
      end
    end

    class << self
      def build_config(klass, events, options)
        events = events.transform_keys(&:to_sym)
        unknown = events.keys - EVENTS
        unless unknown.empty?
          raise ArgumentError, "#{klass.name}.push: unknown key #{unknown.map(&:inspect).join(', ')}; " \
                               "use :create, :update, :destroy (targets) and #{OPTIONS.map(&:inspect).join(', ')}"
        end

        map = events.empty? ? DEFAULTS.dup : EVENTS.to_h { |e| [e, []] }
        events.each { |event, targets| map[event] = check_targets(klass, event, targets) }
        Config.new(events: map.transform_values(&:freeze).freeze, **build_options(klass, options, "push"))
      end

      # push's options (async:, payload:, queue:), checked, with their
      # defaults; the observer's push_options take the same.
      def build_options(klass, options, macro)
        options = options.transform_keys(&:to_sym)
        unknown = options.keys - OPTIONS
        unless unknown.empty?
          raise ArgumentError, "#{klass.name}.#{macro}: unknown option #{unknown.map(&:inspect).join(', ')}; " \
                               "use #{OPTIONS.map(&:inspect).join(', ')}"
        end

        payload = (options[:payload] || :canonical).to_sym
        unless BackboneSync::Payload::FORMATS.include?(payload)
          raise ArgumentError, "#{klass.name}.#{macro}: payload: must be :canonical or :legacy, got #{options[:payload].inspect}"
        end

        { async: options[:async] ? true : false, payload: payload, queue: options[:queue] }
      end

      def check_targets(klass, event, targets)
        targets = [targets] unless targets.is_a?(Array)
        targets.map do |target|
          case target
          when Symbol, Proc then target
          when String
            if target.include?('#{')
              raise ArgumentError, "#{klass.name}.push #{event.inspect}: #{target.inspect} looks like " \
                                   "interpolation, but channel strings are never evaluated; use a Proc " \
                                   "such as ->(record) { \"family_\#{record.family_id}_members\" }"
            end
            BackboneSync.sync_channel(target)
          else
            raise ArgumentError, "#{klass.name}.push #{event.inspect}: a target is :collections, " \
                                 ":instances, a Symbol, a String or a Proc, got #{target.inspect}"
          end
        end
      end

      # Channel names for one target of +record+.
      def resolve(record, target)
        names = case target
                when :collections then record.collection_channel
                when :instances then record.instance_channel
                when Proc then target.arity.zero? ? record.instance_exec(&target) : target.call(record)
                when Symbol then resolve_symbol(record, target)
                else target
                end
        Array(names).map { |name| BackboneSync.sync_channel(name) }
      end

      def resolve_symbol(record, name)
        klass = record.class
        reflection = klass.reflect_on_association(name) if klass.respond_to?(:reflect_on_association)
        if reflection&.macro == :belongs_to
          key = record.public_send(reflection.foreign_key)
          return [] if key.nil?

          "#{name}_#{key}_#{names_of(klass)[:plural]}"
        elsif record.respond_to?(name)
          record.public_send(name)
        else
          raise ChannelError, "#{klass.name}.push target #{name.inspect} is neither :collections, " \
                              ":instances, a belongs_to association nor a method of #{klass.name}; " \
                              "define #{klass.name}##{name} returning a channel name"
        end
      end

      # plural/singular/table names of a model class.
      def names_of(klass)
        if klass.respond_to?(:model_name)
          plural = klass.model_name.plural
          singular = klass.model_name.singular
        else
          singular = klass.name.to_s.gsub("::", "_").gsub(/([a-z\d])([A-Z])/, '\1_\2').downcase
          plural = "#{singular}s"
        end
        table = klass.respond_to?(:table_name) ? klass.table_name : plural
        { plural: plural, singular: singular, table: table }
      end

      def install_callbacks(klass)
        if klass.respond_to?(:after_commit)
          klass.after_create { backbone_sync_mark(:create) }
          klass.after_update { backbone_sync_mark(:update) }
          klass.after_destroy { backbone_sync_mark(:destroy) }
          klass.after_touch { backbone_sync_mark(:update) } if klass.respond_to?(:after_touch)
          # Inside the transaction, before COMMIT (ActiveRecord 6.1 and newer).
          klass.before_commit { backbone_sync_stage } if klass.respond_to?(:before_commit)
          klass.after_commit { backbone_sync_commit }
          klass.after_rollback { backbone_sync_rollback }
        else
          available = EVENTS.select { |e| klass.respond_to?(:"after_#{e}") }
          if available.empty?
            raise ArgumentError, "#{klass.name}.push needs model callbacks: add `extend " \
                                 "ActiveModel::Callbacks` and `define_model_callbacks :create, " \
                                 ":update, :destroy` before push (no transactions there, so it " \
                                 "publishes right after each callback)"
          end
          # No transactions: the callback is the commit.
          available.each { |e| klass.public_send(:"after_#{e}") { push_broadcast(e) } }
        end
        klass.instance_variable_set(:@backbone_sync_callbacks_installed, true)
      end
    end
  end
end

if defined?(ActiveSupport) && ActiveSupport.respond_to?(:on_load)
  ActiveSupport.on_load(:active_record) { extend BackboneSync::Pushable::Macro }
end
