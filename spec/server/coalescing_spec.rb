# frozen_string_literal: true

require "spec_helper"
require "etc"

# Write coalescing (transport.c): links woken during a loop turn wait for the
# turn's end, when up to BS_MAX_DRAINED publishers whose sockets hold more are
# read again before the writes are asked for. What a hostile client can do to
# that, over real sockets, on both loops: flood from more publishers than are
# drained, close a link inside the drain, stall half a frame into the next
# message, and read too slowly for the batched frames.
RSpec.describe BackboneSync::Server, "write coalescing under attack" do
  # Seconds of CPU the service threads (named "backbone_sync") have used.
  def service_cpu
    Dir["/proc/self/task/*"].sum do |task|
      next 0 unless (File.read("#{task}/comm").strip rescue "") == "backbone_sync"

      fields = File.read("#{task}/stat").split(") ").last.split
      (fields[11].to_i + fields[12].to_i).fdiv(Etc.sysconf(Etc::SC_CLK_TCK))
    rescue Errno::ENOENT
      0
    end
  end

  def bound
    instrumented_runtime ? 5 : 1
  end

  # `count` publishes to `channel` as masked frames, one string.
  def publish_frames(ws, client_id, channel, count, pad: 250)
    Array.new(count) do |i|
      ws.frame_bytes(:text, JSON.generate([{ channel: channel, clientId: client_id, id: "p#{i}",
                                              ext: { secret: shared_secret }, data: { "n" => i, "pad" => "x" * pad } }]))
    end.join
  end

  # Closes with a reset, so the server sees the error mid-read.
  def reset(ws)
    ws.io.setsockopt(Socket::SOL_SOCKET, Socket::SO_LINGER, [1, 0].pack("ii"))
    ws.close_socket
  end

  def fresh_client_served(server)
    Timeout.timeout(bound, Timeout::Error, "no answer to a fresh client within #{bound}s") do
      BackboneSyncSpec::BayeuxHTTP::Session.new(server.url, timeout: bound).handshake!
    end
  end

  %i[poll ev].each do |event_loop|
    context "on event_loop: #{event_loop.inspect}" do
      def serve(**opts, &block)
        with_server(secret: shared_secret, timeout: 30, **opts, &block)
      end

      # The flooders run in a child process, so their Ruby threads do not
      # take this process's GVL from the clock that measures the server.
      it "keeps serving others promptly while 6 publishers (more than are drained) flood without end" do
        serve(event_loop: event_loop, max_queue: 100) do |server|
          watch, = ws_session(server.url, ["/watch"])
          flooders = Array.new(6) { ws_session(server.url) }
          child = fork do
            threads = flooders.map do |ws, id|
              # Publishes that wake links, then pings, which cost the server more
              # to read than the client to send, and count as no message: only
              # the drain's bound on reads ends a turn that reads this socket.
              blob = publish_frames(ws, id, "/flood", 20, pad: 200) + ws.frame_bytes(:ping, "p" * 125) * 500
              Thread.new { loop { ws.io.write(blob) } rescue nil }
            end
            # Their replies are read and thrown away, as a live publisher does.
            readers = flooders.map { |ws, _| Thread.new { loop { ws.io.readpartial(65_536) } rescue nil } }
            sleep 30
            (threads + readers).each(&:kill)
            exit!(0)
          end
          flooders.each { |ws, _| ws.io.close }
          begin
            flood_sub, = ws_session(server.url, ["/flood"], rcvbuf: 8192)
            eventually(what: "the flood to start") { server.stats[:messages_in] > 500 }
            in_before = server.stats[:messages_in]
            expect_memory_growth_below(16 * 1024) do
              10.times do |i|
                started = monotonic
                server.publish("/watch", { "i" => i })
                watch.wait_for(timeout: 5) { |m| m["channel"] == "/watch" && m["data"]["i"] == i }
                expect(monotonic - started).to be < bound, "delivery #{i} took #{monotonic - started}s"
                started = monotonic
                expect(fresh_client_served(server)["successful"]).to be(true)
                expect(monotonic - started).to be < bound
              end
            end
            expect(server.stats[:messages_in] - in_before).to be > 100 # still flooding all along
          ensure
            Process.kill(:KILL, child)
            Process.wait(child)
            flood_sub&.close_socket
            watch.close_socket
          end
        end
      end

      # The drain stops at max_queue/2 messages since the turn's first wake:
      # a subscriber that reads every frame at once is never dropped as slow
      # for a burst that one socket read in a single turn.
      it "never drops a subscriber that keeps up with a burst larger than max_queue" do
        serve(event_loop: event_loop, max_queue: 50) do |server|
          sub, = ws_session(server.url, ["/burst"], timeout: 10)
          pub, id = ws_session(server.url)
          pub.io.write(publish_frames(pub, id, "/burst", 400)) # 130 KB, 8 times max_queue
          got = []
          deadline = monotonic + 10
          got.concat(sub.drain(timeout: 0.05).select { |m| m["channel"] == "/burst" }) while got.size < 400 && monotonic < deadline
          expect(server.stats[:slow_clients_dropped]).to eq(0)
          expect(got.map { |m| m["data"]["n"] }).to eq((0...400).to_a)
          pub.close_socket
          sub.close_socket
        end
      end

      it "survives links closed inside the end-of-turn drain, and delivers every intact publisher's burst" do
        serve(event_loop: event_loop) do |server|
          watch, = ws_session(server.url, ["/b"])
          tails = [->(ws) { ws.frame_bytes(:close, [1000].pack("n")) },  # closed by the client
                   ->(ws) { ws.frame_bytes(:text, "\xff\xfe".b) },      # invalid UTF-8: lws closes
                   ->(ws) { ws.frame_bytes(:text, "x" * 70_000) },      # over max_message_size: 1009
                   ->(ws) { ws.frame_bytes(:text, "not bayeux") }]      # 1007 once replies are out
          tails.each do |tail|
            # Subscribed to what they publish, so each is on the woken list when it goes.
            pubs = Array.new(5) { ws_session(server.url, ["/b"]) }
            subs = Array.new(3) { ws_session(server.url, ["/b"]).first }
            pubs.each { |ws, id| ws.io.write(publish_frames(ws, id, "/b", 60) + tail.call(ws) + publish_frames(ws, id, "/b", 20)) }
            subs.each { |ws| reset(ws) }
            sleep 0.05
            pubs.each { |ws, _| reset(ws) }
          end
          intact, id = ws_session(server.url)
          intact.io.write(publish_frames(intact, id, "/b", 100)) # 100 after the wreckage
          got = watch.drain(timeout: 1.5).select { |m| m["channel"] == "/b" && m["data"]["n"] }
          expect(got.size).to be >= 100
          expect(got.last(100).map { |m| m["data"]["n"] }).to eq((0...100).to_a)
          expect(fresh_client_served(server)["successful"]).to be(true)
          eventually(what: "every closed link to be counted out") { server.stats[:connections] == 2 }
          intact.close_socket
          watch.close_socket
        end
      end

      it "ends the turn when a publisher sends a message and half the next frame, and stalls: no spin" do
        serve(event_loop: event_loop, request_timeout: 2) do |server|
          sub, = ws_session(server.url, ["/half"])
          pub, id = ws_session(server.url)
          first = publish_frames(pub, id, "/half", 1).bytesize
          pub.io.write(publish_frames(pub, id, "/half", 2).byteslice(0, first + 40))
          started = monotonic
          expect(sub.wait_for(timeout: 2) { |m| m["channel"] == "/half" }["data"]["n"]).to eq(0)
          expect(monotonic - started).to be < bound
          cpu = service_cpu
          sleep 0.5
          expect(service_cpu - cpu).to be < 0.1, "the service thread spins on the stalled frame"
          expect(fresh_client_served(server)["successful"]).to be(true)
          expect(pub.eof_within?(5)).to be(true) # request_timeout ends the unfinished message
          expect(sub.drain(timeout: 0.2).select { |m| m["channel"] == "/half" }).to be_empty
          sub.close_socket
        end
      end

      it "drops slow readers of 32 KB batched frames at max_queue, and feeds a reader that keeps up" do
        serve(event_loop: event_loop, max_queue: 20) do |server|
          slow = Array.new(4) { ws_session(server.url, ["/big"], rcvbuf: 2048).first }
          good, = ws_session(server.url, ["/big"], timeout: 10)
          pub, id = ws_session(server.url)
          got = []
          expect_memory_growth_below(16 * 1024) do
            # 3 MB to each: more than loopback's socket buffers hold for a reader that never reads.
            60.times do
              pub.io.write(publish_frames(pub, id, "/big", 40, pad: 1200))
              want = got.size + 40
              deadline = monotonic + 5
              got.concat(good.drain(timeout: 0.02).select { |m| m["channel"] == "/big" }) while got.size < want && monotonic < deadline
            end
          end
          expect(got.map { |m| m["data"]["n"] }).to eq(Array.new(60) { (0...40).to_a }.flatten)
          eventually(what: "the slow readers to be dropped") { server.stats[:slow_clients_dropped] == 4 }
          expect(server.stats[:subscriptions]).to eq(1)
          slow.each { |ws| expect(ws.eof_within?(5)).to be(true) }
          pub.close_socket
          good.close_socket
        end
      end
    end
  end

  describe "the Origin header, now a heap copy on HTTP links" do
    def preflight(server, *origins)
      sock = TCPSocket.new("127.0.0.1", server.port)
      sock.write("OPTIONS /faye HTTP/1.1\r\nHost: x\r\n#{origins.map { |o| "Origin: #{o}\r\n" }.join}\r\n")
      got = +"".b
      deadline = monotonic + 2
      got << sock.readpartial(4096) until got.include?("\r\n\r\n") || monotonic > deadline
      got[/^access-control-allow-origin: ?(.*)\r$/i, 1]
    ensure
      sock&.close
    end

    it "reflects an Origin of up to 255 bytes, none longer, none empty, and repeated ones joined" do
      with_server do |server|
        expect(preflight(server, "o" * 255)).to eq("o" * 255)
        expect(preflight(server, "o" * 256)).to be_nil
        expect(preflight(server, "o" * 4000)).to be_nil
        expect(preflight(server)).to be_nil
        expect(preflight(server, "http://a", "http://b")).to match(%r{\Ahttp://a, *http://b\z})
      end
    end

    it "keeps none of the Origins of requests cut off mid-body or answered before a reset" do
      with_server do |server|
        origin = "http://#{'o' * 240}"
        cut = lambda do |n|
          n.times.each_slice(100) do |slice|
            socks = slice.each_with_index.map do |_, i|
              s = TCPSocket.new("127.0.0.1", server.port)
              s.write(i.even? ? "POST /faye HTTP/1.1\r\nHost: x\r\nOrigin: #{origin}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n[{"
                              : "GET /nope HTTP/1.1\r\nHost: x\r\nOrigin: #{origin}\r\n\r\n")
              s
            end
            sleep 0.02
            socks.each { |s| s.setsockopt(Socket::SOL_SOCKET, Socket::SO_LINGER, [1, 0].pack("ii")) && s.close }
          end
          eventually(timeout: 10, what: "every cut connection to go") { server.stats[:connections].zero? }
        end
        cut.call(300) # warm up lws's and glibc's pools
        expect_memory_growth_below(512) { cut.call(3000) }
      end
    end
  end
end
