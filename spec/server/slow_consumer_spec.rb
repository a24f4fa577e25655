# frozen_string_literal: true

require "spec_helper"

RSpec.describe BackboneSync::Server, "slow consumers" do
  it "drops a WebSocket subscriber that never reads, counts it, and keeps feeding the others" do
    total = 2000
    chunk = 20
    pad = "z" * 2500 # ~5 MB in all: more than the kernel buffers of one loopback socket
    with_server(max_queue: 50, timeout: 10) do |server|
      # A tiny receive buffer so the server's side of this socket fills up fast.
      slow, = ws_session(server.url, ["/flood"], rcvbuf: 4096)
      good, = ws_session(server.url, ["/flood"], timeout: 10)
      received = []
      begin
        (total / chunk).times do |c|
          chunk.times do |i|
            n = c * chunk + i
            deadline = monotonic + 5
            begin
              server.publish("/flood", { "n" => n, "pad" => pad })
            rescue BackboneSync::Overloaded
              raise if monotonic > deadline

              sleep 0.002
              retry
            end
          end
          # Pace the publisher by the good reader, so only the slow one lags.
          want = (c + 1) * chunk
          deadline = monotonic + 10
          while received.size < want
            raise "good subscriber stalled at #{received.size}/#{want}" if monotonic > deadline

            received.concat(Array(good.read_json(timeout: deadline - monotonic)).select { |m| delivery?(m) })
          end
        end

        expect(received.map { |m| m["data"]["n"] }).to eq((0...total).to_a)
        expect(server.stats[:slow_clients_dropped]).to be >= 1
        expect(slow.eof_within?(10)).to be(true)
        eventually(what: "the dropped client's subscription to go") { server.stats[:subscriptions] == 1 }
      ensure
        slow.close_socket
        good.close
      end
    end
  end

  it "keeps memory bounded while 50 MB is published to a subscriber that never reads" do
    pad = "m" * 2500
    with_server(max_queue: 50) do |server|
      slow, = ws_session(server.url, ["/hog"], rcvbuf: 4096)
      begin
        # 16 MB: a third of the 50 MB an unbounded queue would hold; the 50
        # queued frames (125 KB) and 100 in history (250 KB) are far below it.
        # (Measured without a reading client on purpose: parsing in this
        # process adds tens of MB of noise.)
        expect_memory_growth_below(16 * 1024) do
          20_000.times do |i|
            deadline = monotonic + 5
            begin
              server.publish("/hog", { "n" => i, "pad" => pad })
            rescue BackboneSync::Overloaded
              raise if monotonic > deadline

              sleep 0.001
              retry
            end
          end
          eventually(what: "the non-reading subscriber to be dropped") { server.stats[:slow_clients_dropped] >= 1 }
        end
      ensure
        slow.close_socket
      end
    end
  end
end
