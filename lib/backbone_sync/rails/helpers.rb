# frozen_string_literal: true

module BackboneSync
  module Rails
    # View helpers, available in every view.
    module Helpers
      # The meta tags the JavaScript reads (next to csrf_meta_tags):
      #
      #   <meta name="backbone-sync-server" content="http://127.0.0.1:9292/faye">
      #   <meta name="backbone-sync-subscriptions" content="/backbone_sync/subscriptions">
      def backbone_sync_tags
        tags = [tag(:meta, name: "backbone-sync-server", content: BackboneSync::Broadcaster.client_url)]
        if (path = BackboneSync::Rails.subscriptions_path)
          script_name = respond_to?(:request) && request ? request.script_name.to_s : ""
          tags << tag(:meta, name: "backbone-sync-subscriptions", content: "#{script_name}#{path}")
        end
        safe_join(tags, "\n")
      end
    end
  end
end
