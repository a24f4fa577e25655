# frozen_string_literal: true

require "spec_helper"

RSpec.describe BackboneSync::Server, "limits and malformed input" do
  def fixture_files(kind)
    Dir[File.join(File.expand_path("../fixtures/bayeux", __dir__), kind, "*")].sort.tap { |f| raise "no fixtures in #{kind}" if f.empty? }
  end

  def nested(depth)
    depth.times.reduce(1) { |inner, _| [inner] }
  end

  # The server must still answer a plain handshake after bad input.
  def expect_alive(server)
    hs = BackboneSyncSpec::BayeuxHTTP::Session.new(server.url).handshake.first
    expect(hs["successful"]).to be(true)
    expect(server.running?).to be(true)
  end

  describe "fixtures over HTTP" do
    it "accepts every valid fixture" do
      with_server do |server|
        fixture_files("valid").each do |path|
          res = post_json(server.url, File.binread(path))
          expect(res.status).to eq(200), "#{File.basename(path)}: HTTP #{res.status} #{res.body}"
          expect(res.json).to be_an(Array)
          expect(res.json.first).to include("channel" => "/meta/handshake", "successful" => true)
        end
      end
    end

    it "answers each malformed body with a 400 Bayeux error and keeps serving" do
      with_server do |server|
        fixture_files("malformed").each do |path|
          res = post_json(server.url, File.binread(path))
          expect_bayeux_400(res)
        end
        expect(server.stats[:errors]).to be >= fixture_files("malformed").size
        expect_alive(server)
      end
    end

    it "answers each wrong-shape body with a 400 Bayeux error" do
      with_server do |server|
        fixture_files("wrong_shape").each do |path|
          res = post_json(server.url, File.binread(path))
          expect_bayeux_400(res)
        end
        expect_alive(server)
      end
    end

    it "answers a malformed form message= field with a 400 Bayeux error" do
      with_server do |server|
        expect_bayeux_400(post_form(server.url, "{oops"))
        expect_alive(server)
      end
    end
  end

  describe "fixtures over WebSocket" do
    # Faye would answer and keep the socket; ours answers, then closes with 1007
    # (a client that sends garbage is not a Faye client). Both halves are checked.
    it "answers each malformed or wrong-shape frame with a 400 error reply, then closes with 1007" do
      with_server do |server|
        files = fixture_files("malformed") + fixture_files("wrong_shape")
        files.reject! { |f| File.basename(f) == "invalid_utf8.txt" } # a WebSocket-level error: see below
        files.each do |path|
          ws, = ws_session(server.url, [])
          begin
            ws.send_frame(:text, File.binread(path))
            reply = ws.wait_for { |m| m.key?("successful") && m["channel"] != "/meta/connect" }
            expect(reply["successful"]).to be(false), "#{File.basename(path)}: #{reply.inspect}"
            expect(reply["error"]).to start_with("400:"), "#{File.basename(path)}: #{reply.inspect}"
            expect(ws.wait_for_close(timeout: 5)).to eq(1007)
          ensure
            ws.close_socket
          end
        end
        expect_alive(server)
      end
    end

    it "closes with 1007 on a text frame that is not UTF-8" do
      with_server do |server|
        BackboneSyncSpec::WSClient.open(server.url) do |ws|
          ws.send_frame(:text, File.binread(File.join(File.expand_path("../fixtures/bayeux", __dir__),
                                                      "malformed", "invalid_utf8.txt")))
          expect(ws.wait_for_close(timeout: 5)).to eq(1007)
        end
      end
    end
  end

  describe "max_message_size" do
    it "answers an HTTP body over the limit with a 400 Bayeux error; one under the limit is fine" do
      with_server(max_message_size: 2048, secret: shared_secret) do |server|
        small = [{ channel: "/size", data: { "pad" => "x" * 1000 }, ext: { secret: shared_secret } }]
        expect(post_json(server.url, small).json.first["successful"]).to be(true)
        big = [{ channel: "/size", data: { "pad" => "x" * 4000 }, ext: { secret: shared_secret } }]
        expect_bayeux_400(post_json(server.url, big))
        expect_alive(server)
      end
    end

    it "rejects a huge HTTP body (10 MB) without buffering it all or dying" do
      with_server do |server|
        body = "[" + ('{"channel":"/x","data":1},' * 400_000) + "1]"
        sock = TCPSocket.new("127.0.0.1", server.port)
        begin
          # 5 MB: half of what keeping the body would hold; the server keeps
          # at most max_message_size (64 KB) of it. Measured with the
          # connection still open, after the reply.
          reply = expect_memory_growth_below(5 * 1024) do
            sock.write("POST /faye HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" \
                       "Content-Length: #{body.bytesize}\r\n\r\n")
            # A child writes the body, so that the 10 MB of writes (Ruby's
            # copies) are not counted here. The server may stop reading once
            # it has answered: the child may see the socket closed, which is
            # not what is tested.
            writer = fork do
              (0...body.bytesize).step(65_536) { |at| sock.write(body.byteslice(at, 65_536)) }
            rescue Errno::EPIPE, Errno::ECONNRESET
              nil
            ensure
              exit!(0)
            end
            # 30 s: a loaded machine moves 10 MB over loopback in well under that.
            raise "no reply to the 10 MB body within 30 s" unless sock.wait_readable(30)

            head = +""
            head << sock.readpartial(4096) until head.include?("\r\n\r\n") && head.end_with?("]")
            Process.wait(writer)
            head
          end
          expect(reply).to start_with("HTTP/1.1 400 ")
          expect(JSON.parse(reply.split("\r\n\r\n", 2).last).first)
            .to include("successful" => false,
                        "error" => "400::Bad request: body larger than max_message_size (65536 bytes)")
        ensure
          sock.close
        end
        expect_alive(server)
      end
    end

    it "closes a WebSocket with 1009 when a message is over the limit" do
      with_server(max_message_size: 2048) do |server|
        ws, client_id = ws_session(server.url, ["/size/ws"])
        begin
          ws.send_json([{ channel: "/size/ws", clientId: client_id, data: { "pad" => "y" * 5000 }, id: "big" }])
          expect(ws.wait_for_close(timeout: 5)).to eq(1009)
        ensure
          ws.close_socket
        end
        expect_alive(server)
      end
    end

    it "closes a WebSocket with 1009 when fragments add up to over the limit" do
      with_server(max_message_size: 2048) do |server|
        ws, = ws_session(server.url, [])
        begin
          ws.send_frame(:text, "[" + (" " * 1500), fin: false)
          ws.send_frame(:continuation, (" " * 1500) + "]", fin: true)
          expect(ws.wait_for_close(timeout: 5)).to eq(1009)
        ensure
          ws.close_socket
        end
      end
    end
  end

  describe "max_depth" do
    it "accepts shallow data and answers data nested past the limit with a 400 Bayeux error" do
      with_server(max_depth: 8, secret: shared_secret) do |server|
        ok = [{ channel: "/deep", data: nested(3), ext: { secret: shared_secret } }]
        expect(post_json(server.url, ok).json.first["successful"]).to be(true)
        deep = [{ channel: "/deep", data: nested(20), ext: { secret: shared_secret } }]
        expect_bayeux_400(post_json(server.url, deep))
      end
    end

    it "survives 100,000 nested brackets (no stack overflow)" do
      with_server do |server|
        expect_bayeux_400(post_json(server.url, "[" * 100_000 + "]" * 100_000))
        expect_alive(server)
      end
    end

    it "does not deliver a too-deep message received over WebSocket, and keeps serving" do
      with_server(max_depth: 8, public_channels: ["/deepws"]) do |server|
        sub, = ws_session(server.url, ["/deepws"])
        ws, client_id = ws_session(server.url, [])
        begin
          ws.send_json([{ channel: "/deepws", clientId: client_id, data: nested(20), id: "d" }])
          # Either an error reply or a 1007 close is a rejection; silence is not.
          outcome = begin
            ws.wait_for { |m| m["id"] == "d" }
          rescue BackboneSyncSpec::WSClient::Closed => e
            e.code
          end
          if outcome.is_a?(Hash)
            expect(outcome["successful"]).to be(false)
            expect(outcome["error"]).to start_with("400:")
          else
            expect(outcome).to eq(1007)
          end
          expect(deliveries_before_control(server, sub, "/deepws")).to eq([])
        ensure
          ws.close_socket
          sub.close
        end
        expect_alive(server)
      end
    end
  end

  describe "channel names" do
    # A name is at most 512 bytes (BS_CHANNEL_MAX): every node copies it into
    # its registry and history, and fan-out looks up each of its prefixes.
    it "takes a 512-byte channel name like any other, and refuses 513 bytes with 405" do
      with_server(timeout: 2, secret: shared_secret) do |server|
        channel = "/" + ("a" * 511)
        s = BackboneSyncSpec::BayeuxHTTP::Session.new(server.url)
        s.handshake!
        s.subscribe!(channel)
        server.publish(channel, { "long" => true })
        expect(s.receive(1, within: 4).map { |m| m["channel"] }).to eq([channel])
        too_long = "/" + ("a" * 512)
        expect(s.subscribe(too_long).first["error"]).to start_with("405:")
        expect(s.publish(too_long, 1, ext: { secret: shared_secret }).first["error"]).to start_with("405:")
        expect { server.publish(too_long, 1) }.to raise_error(BackboneSync::ChannelError)
        expect(BackboneSync.channel?(too_long)).to be(false)
        expect_alive(server)
      end
    end

    it "accepts a 100-segment channel name and delivers on it, through wildcards too" do
      with_server(timeout: 2) do |server|
        channel = (1..100).map { |i| "/s#{i}" }.join
        s = BackboneSyncSpec::BayeuxHTTP::Session.new(server.url)
        s.handshake!
        s.subscribe!(channel)
        s.subscribe!("/s1/**")
        server.publish(channel, { "deep" => true })
        expect(s.receive(1, within: 4).map { |m| m["channel"] }).to eq([channel])
      end
    end
  end

  describe "max_batch" do
    it "accepts a batch at the limit and answers one over it with a 400 Bayeux error" do
      with_server(max_batch: 5) do |server|
        hs = { channel: "/meta/handshake", version: "1.0", supportedConnectionTypes: ["long-polling"] }
        at_limit = Array.new(5) { |i| hs.merge(id: i.to_s) }
        reply = post_json(server.url, at_limit)
        expect(reply.status).to eq(200)
        expect(reply.json.size).to eq(5)
        expect(reply.json.map { |m| m["successful"] }).to all(be(true))
        expect_bayeux_400(post_json(server.url, Array.new(6) { |i| hs.merge(id: i.to_s) }))
      end
    end
  end

  describe "max_subscriptions" do
    it "refuses an array subscription that would go over the limit" do
      with_server(max_subscriptions: 3) do |server|
        s = BackboneSyncSpec::BayeuxHTTP::Session.new(server.url)
        s.handshake!
        s.subscribe!("/lim/1")
        reply = s.subscribe(%w[/lim/2 /lim/3 /lim/4]).first
        expect(reply["successful"]).to be(false)
        expect(reply["error"]).to start_with("403:") # as every refused subscribe (meta_channels_spec)
        expect(reply["error"]).to end_with(":Too many subscriptions for one client (max_subscriptions)")
        expect(server.stats[:subscriptions]).to eq(1) # all or nothing: none of the three was added
      end
    end
  end
end
