# frozen_string_literal: true

require "active_job"

module BackboneSync
  # Publishes a broadcast from a job runner: `push ..., async: true` enqueues
  # it after the commit, with the payload already built (the record may be
  # gone by the time the job runs, and the origin belongs to the request).
  class BroadcastJob < ActiveJob::Base
    queue_as :default

    # A failure is reported (BackboneSync.on_error) and raised, so the
    # queue's own retry applies.
    def perform(channels, payload)
      Array(channels).each do |channel|
        BackboneSync::Broadcaster.publish!(channel, payload)
      rescue StandardError => e
        BackboneSync.report_broadcast_error(e, channel: channel, job: job_id)
        raise
      end
    end
  end
end
