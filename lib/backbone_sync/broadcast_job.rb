# frozen_string_literal: true

require "active_job"

module BackboneSync
  # Publishes a broadcast from a job runner (Rails layer, the job's thread): `push ..., async: true` enqueues
  # it after the commit, with the payload already built (the record may be
  # gone by the time the job runs, and the origin belongs to the request).
  class BroadcastJob < ActiveJob::Base
    queue_as :default

    #
    # With the outbox, +event_ids+ (channel => event id) are the ids of its
    # rows: each goes with its message (the server drops a copy the relay
    # sent first) and its row is deleted once sent.
    #
    # A failure is reported (BackboneSync.on_error) and raised, so the
    # queue's own retry applies.
    def perform(channels, payload, event_ids = nil)
      Array(channels).each do |channel|
        event_id = event_ids&.[](channel)
        BackboneSync::Broadcaster.publish!(channel, payload, event_id: event_id)
        BackboneSync::Outbox.delete([event_id]) if event_id
      rescue StandardError => e
        BackboneSync.report_broadcast_error(e, channel: channel, job: job_id)
        raise
      end
    end
  end
end
