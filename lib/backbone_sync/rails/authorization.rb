# frozen_string_literal: true

module BackboneSync
  class << self
    # The policy of the subscription endpoint: the block gets the channel and
    # the ActionDispatch::Request and returns true to grant a token.
    #
    #   BackboneSync.authorize_subscription { |channel, request| request.session[:user_id] }
    def authorize_subscription(&block)
      @authorize_subscription = block if block
      @authorize_subscription
    end

    attr_writer :authorize_subscription
  end

  module Rails
    @subscriptions_path = "/backbone_sync/subscriptions"
    @token_ttl = 3600

    class << self
      # Where the engine routes POST for subscription tokens (false: no route).
      attr_accessor :subscriptions_path

      # Seconds a subscription token stays valid.
      attr_accessor :token_ttl

      # Whether the request may subscribe to +channel+. Every policy that
      # applies must agree: BackboneSync.authorize_subscription, and the
      # push_authorize(channel, request) of each pushable model whose
      # push_channel?(channel) is true. With no policy at all: allowed.
      def subscription_allowed?(channel, request)
        global = BackboneSync.authorize_subscription
        models = BackboneSync::Pushable.models.select do |model|
          model.respond_to?(:push_authorize) && model.push_channel?(channel)
        end
        return false if global && !global.call(channel, request)

        models.all? { |model| model.push_authorize(channel, request) }
      end
    end
  end
end
