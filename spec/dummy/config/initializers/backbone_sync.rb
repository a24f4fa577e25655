# frozen_string_literal: true

# Everything here is optional; these are the defaults spelled out.
# BackboneSync::Rails::Faye.root_address = "http://localhost:9292"
# BackboneSync.authorize_subscription { |channel, request| true }
# BackboneSync.on_error { |error, context| Rails.logger.error(error) }

# The demo with signed subscriptions and a policy that says no
# (spec/javascripts/demo/signed.test.mjs):
#
#   BACKBONE_SYNC_DUMMY_CONFIG='{"embedded":{"signed_subscriptions":true}}' \
#   BACKBONE_SYNC_DUMMY_REFUSE=/sync/member_1 spec/dummy/bin/demo
#
# The token endpoint then refuses the channels BACKBONE_SYNC_DUMMY_REFUSE
# names (comma-separated) and grants every other one. Unset: no policy.
if (refused = ENV["BACKBONE_SYNC_DUMMY_REFUSE"])
  refused = refused.split(",").map(&:strip).reject(&:empty?).freeze
  BackboneSync.authorize_subscription { |channel, _request| !refused.include?(channel) }
end
