# frozen_string_literal: true

require "spec_helper"
require "socket"

RSpec.describe BackboneSync::Publisher do
  # A TCP relay in front of the server that counts connections and can cut
  # them, so keep-alive and reconnects are observed on the wire.
  class CountingRelay
    attr_reader :port

    def initialize(target_port)
      @target_port = target_port
      @listener = TCPServer.new("127.0.0.1", 0)
      @port = @listener.addr[1]
      @accepted = 0
      @pairs = []
      @lock = Mutex.new
      @thread = Thread.new { accept_loop }
    end

    def accepted
      @lock.synchronize { @accepted }
    end

    # Closes every open connection, as a server restart or idle timeout would.
    def cut_all
      @lock.synchronize { @pairs.each { |pair| pair.each { |s| s.close rescue nil } }.clear }
    end

    def close
      @listener.close
      @thread.join(2)
      cut_all
    end

    private

    def accept_loop
      loop do
        client = @listener.accept
        upstream = TCPSocket.new("127.0.0.1", @target_port)
        @lock.synchronize do
          @accepted += 1
          @pairs << [client, upstream]
        end
        [[client, upstream], [upstream, client]].each do |from, to|
          Thread.new do
            IO.copy_stream(from, to)
          rescue IOError, SystemCallError
            nil
          ensure
            to.close rescue nil
          end
        end
      end
    rescue IOError, SystemCallError
      nil # listener closed
    end
  end

  shared_examples "a publisher" do
    # yields [url, subscriber_ws] with the subscriber on /pub/**
    it "delivers data to subscribers, with the secret stripped" do
      with_target do |url, ws|
        publisher = described_class.new(url, secret: shared_secret)
        expect(publisher.publish("/pub/users", { "id" => 1, "name" => "Ada", "at" => Time.utc(2024, 1, 2) })).to be(true)
        msg = ws.wait_for { |m| m["channel"] == "/pub/users" }
        expect(msg["data"]).to eq("id" => 1, "name" => "Ada", "at" => "2024-01-02T00:00:00.000Z")
        expect(msg.dig("ext", "secret")).to be_nil
        publisher.close
      end
    end

    it "raises PublishError with a hint when the secret is wrong, and nobody receives it" do
      with_target do |url, ws|
        bad = described_class.new(url, secret: "wrong")
        expect { bad.publish("/pub/secret", { "n" => 1 }) }
          .to raise_error(BackboneSync::PublishError, %r{403:/pub/secret:Forbidden channel.*secret is missing or wrong}) { |e|
            expect(e).not_to be_a(BackboneSync::Unreachable) # a refusal, not an outage
          }
        expect { described_class.new(url, secret: nil).publish("/pub/secret", 2) }
          .to raise_error(BackboneSync::PublishError, /403/)
        # a later valid publish arrives, and is the first thing that does
        described_class.new(url, secret: shared_secret).publish("/pub/secret", "ok")
        msg = ws.wait_for { |m| m["channel"] == "/pub/secret" }
        expect(msg["data"]).to eq("ok")
      end
    end

    it "keeps one connection alive across publishes and reconnects after it is cut" do
      with_target do |url, ws|
        uri = URI(url)
        relay = CountingRelay.new(uri.port)
        begin
          publisher = described_class.new("http://127.0.0.1:#{relay.port}#{uri.path}", secret: shared_secret)
          5.times { |i| publisher.publish("/pub/alive", i) }
          expect(relay.accepted).to eq(1)
          relay.cut_all
          publisher.publish("/pub/alive", 5)
          expect(relay.accepted).to eq(2)
          got = Array.new(6) { ws.wait_for { |m| m["channel"] == "/pub/alive" }["data"] }
          expect(got).to eq([0, 1, 2, 3, 4, 5])
        ensure
          relay.close
        end
      end
    end

    it "is safe to share between threads" do
      with_target do |url, ws|
        publisher = described_class.new(url, secret: shared_secret)
        threads = Array.new(4) { |t| Thread.new { 10.times { |i| publisher.publish("/pub/threads", t * 100 + i) } } }
        threads.each { |th| expect(th.join(20)).to be_truthy }
        got = Array.new(40) { ws.wait_for { |m| m["channel"] == "/pub/threads" }["data"] }
        expect(got.sort).to eq((0..3).flat_map { |t| (0..9).map { |i| t * 100 + i } }.sort)
      end
    end

    it "raises PublishError when the mount path is wrong" do
      with_target do |url, _ws|
        wrong = url.sub(%r{/faye\z}, "/nope")
        expect { described_class.new(wrong, secret: shared_secret).publish("/pub/x", 1) }
          .to raise_error(BackboneSync::PublishError, /HTTP 404.*mount path/)
      end
    end
  end

  context "against the real Faye server (npm faye, with the secret rule)" do
    def with_target
      with_reference_server(secret: shared_secret) do |ref|
        ws, = ws_session(ref.url, ["/pub/**"])
        begin
          yield ref.url, ws
        ensure
          ws.close_socket
        end
      end
    end

    include_examples "a publisher"
  end

  context "against BackboneSync::Server" do
    def with_target
      with_server(secret: shared_secret) do |server|
        ws, = ws_session(server.url, ["/pub/**"])
        begin
          yield server.url, ws
        ensure
          ws.close_socket
        end
      end
    end

    include_examples "a publisher"
  end

  it "gives up after the retries when nothing listens, saying how to start the server" do
    port = free_port
    publisher = described_class.new("http://127.0.0.1:#{port}/faye", secret: "s", retries: 2, open_timeout: 10)
    started = monotonic
    expect { publisher.publish("/pub/x", 1) }
      .to raise_error(BackboneSync::Unreachable, /could not reach .* after 3 attempts .*ECONNREFUSED.*faye:start/m)
    # A refused connect fails at once, even on a loaded machine; waiting out
    # the open_timeout even once would take 10 s.
    expect(monotonic - started).to be < 10
  end

  it "does not retry when the server accepted the request but did not answer in time" do
    # Nobody accepts: the kernel completes each connection into the listen
    # backlog, so after publish returns the backlog holds every attempt it made.
    listener = TCPServer.new("127.0.0.1", 0)
    begin
      publisher = described_class.new("http://127.0.0.1:#{listener.addr[1]}/faye", secret: "s", read_timeout: 0.5)
      started = monotonic
      expect { publisher.publish("/pub/slow", 1) }
        .to raise_error(BackboneSync::Unreachable, /did not answer within 0.5s; the message may or may not/)
      # It waited for the answer (>= 0.4 s: timer slack), and did not hang:
      # 10 s is far beyond 0.5 s under any load (Net::HTTP's default is 60 s).
      expect(monotonic - started).to be_between(0.4, 10)
      attempts = []
      while (conn = listener.accept_nonblock(exception: false)) != :wait_readable
        attempts << conn
      end
      expect(attempts.size).to eq(1)
    ensure
      attempts&.each(&:close)
      listener.close
    end
  end

  it "raises ChannelError before sending anything for a channel it could never publish to" do
    # Nothing listens on this port: a request would fail with PublishError instead.
    publisher = described_class.new("http://127.0.0.1:#{free_port}/faye", secret: "s", retries: 0)
    ["/a/*", "/meta/handshake", "/service/x", "no slash", :"/sync/x y", nil].each do |bad|
      expect { publisher.publish(bad, 1) }.to raise_error(BackboneSync::ChannelError, /not a valid channel/)
    end
  end

  it "rejects URLs that are not http(s)" do
    expect { described_class.new("ftp://x/faye") }.to raise_error(ArgumentError, /http\(s\) URL/)
    expect { described_class.new("not a url") }.to raise_error(ArgumentError)
  end

  it "raises EncodeError before sending anything when the data cannot be encoded" do
    publisher = described_class.new("http://127.0.0.1:#{free_port}/faye", secret: "s")
    expect { publisher.publish("/pub/x", { "bad" => "\xFF" }) }.to raise_error(BackboneSync::EncodeError)
  end

  it "retries twice by default: three attempts in all, as the README says" do
    publisher = described_class.new("http://127.0.0.1:#{free_port}/faye", secret: "s")
    expect { publisher.publish("/pub/default", 1) }.to raise_error(BackboneSync::Unreachable, /after 3 attempts/)
  end

  it "gives up on a server that accepts and never answers after its default 2 s" do
    listener = TCPServer.new("127.0.0.1", 0)
    publisher = described_class.new("http://127.0.0.1:#{listener.addr[1]}/faye", secret: "s")
    started = monotonic
    expect { publisher.publish("/pub/hung", 1) }.to raise_error(BackboneSync::Unreachable, /did not answer within 2/)
    # 2 s, once (no retry after a read timeout); 10 s is far from Net::HTTP's 60 s.
    expect(monotonic - started).to be_between(1.9, 10)
  ensure
    listener&.close
  end
end
