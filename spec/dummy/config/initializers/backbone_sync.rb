# frozen_string_literal: true

# Everything here is optional; these are the defaults spelled out.
# BackboneSync::Rails::Faye.root_address = "http://localhost:9292"
# BackboneSync.authorize_subscription { |channel, request| true }
# BackboneSync.on_error { |error, context| Rails.logger.error(error) }
