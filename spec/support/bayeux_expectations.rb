# frozen_string_literal: true

module BackboneSyncSpec
  # Shared checks on Bayeux replies and deliveries.
  module BayeuxExpectations
    # Deliveries are messages with a channel and data and no `successful` key.
    def delivery?(msg)
      msg.is_a?(Hash) && msg.key?("data") && !msg.key?("successful") && !msg["channel"].to_s.start_with?("/meta/")
    end

    # Publishes a control message in-process and reads `ws` until it arrives;
    # returns every other delivery seen before it. The server fans out in
    # order, so anything wrongly delivered earlier shows up here without a
    # sleep-and-hope. With an Array of sockets, returns one Array per socket.
    def deliveries_before_control(server, ws, channel, timeout: 5)
      marker = "control-#{rand(1 << 30)}"
      server.publish(channel, { "control" => marker })
      return ws.map { |w| deliveries_until_marker(w, marker, timeout) } if ws.is_a?(Array)

      deliveries_until_marker(ws, marker, timeout)
    end

    def deliveries_until_marker(ws, marker, timeout)
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
      seen = []
      loop do
        left = deadline - Process.clock_gettime(Process::CLOCK_MONOTONIC)
        m = ws.next_bayeux(timeout: [left, 0].max)
        next unless delivery?(m)
        return seen if m["data"].is_a?(Hash) && m["data"]["control"] == marker

        seen << m
      end
    end

    # Sends `count` publishes to `channel` (about 330 bytes each, several of
    # lws's reads in all), each its own frame, in one write, as a busy
    # publisher's socket holds them.
    def send_publish_burst(publisher, client_id, channel, count, secret:)
      burst = Array.new(count) do |i|
        JSON.generate([{ channel: channel, clientId: client_id, id: "p#{i}", ext: { secret: secret },
                         data: { "n" => i, "pad" => "x" * 250 } }])
      end
      publisher.send_texts(burst)
      burst
    end

    # Reads `ws` until `count` deliveries came; returns their data["n"] in
    # arrival order and how many deliveries each frame carried.
    def burst_as_received(ws, count, timeout: 10)
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
      got = []
      frames = []
      while got.size < count
        left = deadline - Process.clock_gettime(Process::CLOCK_MONOTONIC)
        batch = Array(ws.read_json(timeout: [left, 0.01].max)).select { |m| delivery?(m) }
        next if batch.empty?

        frames << batch.size
        got.concat(batch)
      end
      [got.map { |m| m["data"]["n"] }, frames]
    end

    # The documented "400 Bayeux error": HTTP status 400 and a JSON array
    # reply whose message is unsuccessful with an error code 400.
    def expect_bayeux_400(res)
      aggregate_failures("400 Bayeux error (got HTTP #{res.status}, body #{res.body.inspect})") do
        expect(res.status).to eq(400)
        reply = JSON.parse(res.body)
        expect(reply).to be_an(Array)
        expect(reply.first).to include("successful" => false)
        expect(reply.first["error"]).to match(/\A400:/)
      end
    end
  end
end

RSpec.configure { |c| c.include BackboneSyncSpec::BayeuxExpectations } if defined?(RSpec) && RSpec.respond_to?(:configure)
