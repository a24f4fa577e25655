# frozen_string_literal: true

module BackboneSync
  module Rails
    # POST /backbone_sync/subscriptions {"channel":"/sync/members"}
    #   200 {"channel":"/sync/members","token":"<expires>.<hmac>"}
    #   403 {"error":"..."} when the policy refuses (or the CSRF token is wrong)
    #   400 {"error":"..."} when the channel is missing or invalid
    # The browser sends the token as ext.token when it subscribes; the server
    # checks it with the shared secret.
    class SubscriptionsController < ActionController::Base
      protect_from_forgery with: :exception

      rescue_from ActionController::InvalidAuthenticityToken do
        render json: { error: "invalid or missing CSRF token: send the X-CSRF-Token header " \
                              "with the value of csrf_meta_tags" }, status: :forbidden
      end

      def create
        channel = params[:channel]
        unless channel.is_a?(String) && valid_channel?(channel)
          return render json: { error: "give one channel such as \"/sync/members\" (no wildcards), " \
                                       "got #{channel.inspect}" }, status: :bad_request
        end
        unless BackboneSync::Rails.subscription_allowed?(channel, request)
          return render json: { error: "not allowed to subscribe to #{channel}" }, status: :forbidden
        end

        token = BackboneSync.sign(channel, expires_in: BackboneSync::Rails.token_ttl)
        render json: { channel: channel, token: token }
      end

      private

      def valid_channel?(channel)
        BackboneSync.channel?(channel)
      end
    end
  end
end
