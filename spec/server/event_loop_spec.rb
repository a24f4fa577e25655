# frozen_string_literal: true

require "spec_helper"
require "open3"

# event_loop: :ev, lws on a libev (epoll) loop the service thread owns: the
# same server seen through real sockets and the real Faye clients. The whole
# suite runs on it with BACKBONE_SYNC_SPEC_EVENT_LOOP=ev (spec_helper).
RSpec.describe BackboneSync::Server, "event_loop: :ev" do
  def ev_server(**opts, &block)
    with_server(event_loop: :ev, **opts, &block)
  end

  # Service threads (server.c names them), not Ruby's, which come and go
  # (Timeout's, the timer thread): their thread ids, so that a server of an
  # earlier example still winding down is not taken for this one's.
  def service_thread_ids
    Dir.children("/proc/self/task").select do |tid|
      File.read("/proc/self/task/#{tid}/comm").chomp == "backbone_sync"
    rescue SystemCallError
      false
    end
  end


  def start_client(factory, url, channels, count, websocket)
    BackboneSyncSpec::ClientProcess.public_send(factory, url, channels, count, websocket: websocket, timeout: 30)
  end

  it "starts on a libev epoll loop, serves, and leaves no epoll descriptor or thread after stop" do
    before_epoll = epoll_fds
    before_threads = service_thread_ids
    ours = nil
    ev_server do |server|
      expect(server.event_loop).to eq(:ev)
      expect(server.running?).to be(true)
      expect(epoll_fds).to eq(before_epoll + 1)
      # The thread names itself once it runs, maybe after start returned.
      eventually(what: "the service thread") { (ours = service_thread_ids - before_threads).size == 1 }
      TCPSocket.new("127.0.0.1", server.port).close
      expect(BackboneSyncSpec::BayeuxHTTP::Session.new(server.url).handshake.first["successful"]).to be(true)
    end
    expect(epoll_fds).to eq(before_epoll)
    expect(service_thread_ids & ours).to be_empty
  end

  it "runs lws's own poll loop by default" do
    before_epoll = epoll_fds
    server = described_class.new(host: "127.0.0.1", port: 0, event_loop: :poll)
    server.start
    begin
      expect(server.event_loop).to eq(:poll)
      expect(epoll_fds).to eq(before_epoll)
    ensure
      stop_bounded(server)
    end
    expect(described_class::DEFAULTS[:event_loop]).to eq(:poll)
  end

  it "refuses any other event_loop with an ArgumentError that names :poll and :ev" do
    [:epoll, "libev", nil, 1, true].each do |bad|
      expect { described_class.new(event_loop: bad) }
        .to raise_error(ArgumentError, /event_loop must be :poll or :ev .*got #{Regexp.escape(bad.inspect)}/),
            "for #{bad.inspect}"
    end
    expect(described_class.new(event_loop: "ev").event_loop).to eq(:ev) # rake faye:start event_loop=ev
  end

  [["npm faye", :node_faye], ["Ruby faye gem", :ruby_faye]].each do |name, factory|
    [[true, "websocket"], [false, "long-polling"]].each do |websocket, transport|
      it "delivers in-process and HTTP publishes to the #{name} client over #{transport}" do
        ev_server(secret: shared_secret, timeout: 5) do |server|
          client = start_client(factory, server.url, ["/ev/a", "/ev/wild/**"], 3, websocket)
          begin
            client.wait_ready(timeout: 30)
            server.publish("/ev/a", { "n" => 1 })
            expect(BackboneSync::Publisher.new(server.url, secret: shared_secret).publish("/ev/wild/x", { "n" => 2 }))
              .to be(true)
            server.publish("/ev/a", { "n" => 3 })
            lines = client.wait_done(timeout: 30)
            # Each once, and in order on each channel. Not across the two
            # publish paths: under valgrind the Ruby gem's long-polling client
            # once printed n 2 before n 1.
            by_channel = lines.group_by { |l| l["message"]["channel"] }
                              .transform_values { |ls| ls.map { |l| l["message"]["data"]["n"] } }
            expect(by_channel).to eq({ "/ev/a" => [1, 3], "/ev/wild/x" => [2] }), client.report
            expect(lines.map { |l| l["transport"] }).to all(eq(transport))
          ensure
            client.stop
          end
        end
      end
    end
  end

  it "fans out over raw WebSockets and long-polling in the same server" do
    ev_server do |server|
      sockets = Array.new(3) { ws_session(server.url, ["/ev/fan"]).first }
      poller = BackboneSyncSpec::BayeuxHTTP::Session.new(server.url)
      begin
        poller.handshake!
        poller.subscribe!("/ev/fan")
        5.times { |i| server.publish("/ev/fan", { "i" => i }) }
        sockets.each do |ws|
          got = []
          deadline = monotonic + 10
          while got.size < 5 && monotonic < deadline
            got.concat(Array(ws.read_json(timeout: [deadline - monotonic, 0.01].max)).select { |m| delivery?(m) })
          end
          expect(got.map { |m| m["data"]["i"] }).to eq([0, 1, 2, 3, 4])
        end
        expect(poller.receive(5, within: 10).map { |m| m["data"]["i"] }).to eq([0, 1, 2, 3, 4])
      ensure
        sockets.each(&:close)
      end
    end
  end

  describe "with TLS" do
    around do |example|
      Dir.mktmpdir("bs-ev-tls") do |dir|
        @key, @cert = self_signed_cert(dir)
        example.run
      end
    end

    [[true, "websocket"], [false, "long-polling"]].each do |websocket, transport|
      it "delivers to the npm faye client over #{transport} on https" do
        ev_server(key: @key, cert: @cert, timeout: 5) do |server|
          expect(server.url).to start_with("https://")
          client = start_client(:node_faye, server.url, ["/ev/tls"], 2, websocket)
          begin
            client.wait_ready(timeout: 30)
            server.publish("/ev/tls", { "secure" => 1 })
            server.publish("/ev/tls", { "secure" => 2 })
            lines = client.wait_done(timeout: 30)
            expect(lines.map { |l| l["message"]["data"] }).to eq([{ "secure" => 1 }, { "secure" => 2 }]), client.report
            expect(lines.map { |l| l["transport"] }).to all(eq(transport))
          ensure
            client.stop
          end
        end
      end
    end

    # turn_end on the libev loop (its prepare watcher): the publisher's
    # socket is read to the end of the burst through lws_service_fd, TLS
    # records included, before any subscriber is written.
    it "delivers a publisher's burst over wss in order, in at most two frames per subscriber" do
      ev_server(secret: "burst-secret", key: @key, cert: @cert) do |server|
        subs = Array.new(3) { ws_session(server.url, ["/ev/burst"]).first }
        publisher, pub_id = ws_session(server.url)
        count = 40
        send_publish_burst(publisher, pub_id, "/ev/burst", count, secret: "burst-secret")
        subs.each do |ws|
          order, frames = burst_as_received(ws, count)
          expect(order).to eq((0...count).to_a)
          expect(frames.size).to be <= 2, "the burst came in #{frames.size} frames of #{frames.inspect} deliveries"
        end
      ensure
        (subs || []).each(&:close_socket)
        publisher&.close_socket
      end
    end

    it "presents the configured certificate on an encrypted WebSocket" do
      ev_server(key: @key, cert: @cert) do |server|
        ws, = ws_session(server.url, ["/ev/wss"])
        begin
          expect(ws.io).to be_a(OpenSSL::SSL::SSLSocket)
          expect(ws.io.peer_cert.to_pem).to eq(File.read(@cert))
          server.publish("/ev/wss", { "ok" => true })
          expect(ws.wait_for { |m| delivery?(m) }["data"]).to eq({ "ok" => true })
        ensure
          ws.close
        end
      end
    end
  end

  # Nothing else happens while the connect is held: only lws's timer on the
  # libev loop can answer it. Late by more than the slack (generous for
  # ASan and valgrind) or never is a failure; early is too.
  describe "a held /meta/connect" do
    let(:slack) { instrumented_runtime ? 6 : 2 }

    it "is answered at the timeout over long-polling" do
      ev_server(timeout: 1) do |server|
        s = BackboneSyncSpec::BayeuxHTTP::Session.new(server.url)
        s.handshake!
        s.connect(timeout: 15) # the first connect may return at once
        t0 = monotonic
        reply = s.connect(timeout: 15)
        elapsed = monotonic - t0
        expect(elapsed).to be_between(0.9, 1 + slack)
        expect(reply.first).to include("channel" => "/meta/connect", "successful" => true, "clientId" => s.client_id)
        expect(reply.first["advice"]).to include("reconnect" => "retry", "timeout" => 1000)
      end
    end

    it "is answered at the timeout over a WebSocket" do
      ev_server(timeout: 1) do |server|
        t0 = monotonic
        ws, client_id = ws_session(server.url, [])
        begin
          reply = ws.wait_for(timeout: 15) { |m| m["channel"] == "/meta/connect" && m["id"] == "c1" }
          expect(monotonic - t0).to be_between(0.9, 1 + slack)
          expect(reply).to include("successful" => true, "clientId" => client_id)
        ensure
          ws.close
        end
      end
    end
  end

  # nio4r (Puma's reactor) builds its own libev in and exports it. Were ours
  # linked into the extension, our ev_* would take the place of nio4r's:
  # Puma's selector slept its whole timeout through a wakeup, and pages
  # hung. The other way round, nio4r's would take the place of ours for
  # lws's libev plugin, and an :ev server would never wake (its stop hung).
  # A fresh process, so that the load order is ours first, then nio4r's.
  it "leaves nio4r's built-in libev alone, and refuses :ev where nio4r is loaded, saying why" do
    script = <<~RUBY
      require "backbone_sync"
      require "nio"
      server = BackboneSync::Server.new(host: "127.0.0.1", port: 0)
      server.start
      selector = NIO::Selector.new
      reader, = IO.pipe
      selector.register(reader, :r)
      t0 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      waiter = Thread.new { selector.select(20) }
      sleep 0.2
      selector.wakeup
      waiter.join(30)
      puts "woke after \#{Process.clock_gettime(Process::CLOCK_MONOTONIC) - t0}"
      server.stop
      begin
        BackboneSync::Server.new(host: "127.0.0.1", port: 0, event_loop: :ev).start
        puts "ev started"
      rescue BackboneSync::StartError => e
        puts "ev refused: \#{e.message}"
      end
    RUBY
    out, err, status = Timeout.timeout(60) do
      Open3.capture3(RbConfig.ruby, "-I", File.expand_path("../../lib", __dir__), "-e", script)
    end
    expect(status.success?).to be(true), err
    expect(out[/woke after ([\d.]+)/, 1].to_f).to be_between(0.1, 10), out
    expect(out).to match(/ev refused: event_loop: :ev cannot run in this process: \S*nio4r\S* has its own libev/), out
  end

  it "runs 100 start/stop cycles, each with a live WebSocket at stop, leaving no fd, thread or memory behind" do
    cycle = lambda do
      server = described_class.new(host: "127.0.0.1", port: 0, timeout: 5, event_loop: :ev)
      server.start
      ws = nil
      begin
        ws, = ws_session(server.url, ["/ev/cycle"])
        server.publish("/ev/cycle", { "x" => 1 })
        ws.wait_for { |m| delivery?(m) }
      ensure
        stop_bounded(server) # closes the socket from the server's side
        ws&.close_socket
      end
    end
    5.times { cycle.call } # warm up lazily allocated state (lws, OpenSSL, libev, Ruby)
    GC.start
    fds = open_fds
    tasks = service_thread_ids
    # 10 MB over 100 cycles (measured: 0.2 to 0.3 MB). A context left behind
    # costs ~400 KB (lifecycle_spec), so 25 of 100 would fail it. A leaked
    # libev loop is ~2 KB, below any memory bound: its epoll descriptor is
    # what the fd count below catches.
    # 0.3 s in all here; valgrind runs each cycle some 50 times slower.
    within = instrumented_runtime ? 600 : 60
    deadline = monotonic + within
    expect_memory_growth_below(10 * 1024) do
      100.times do
        cycle.call
        raise "100 cycles did not finish within #{within} s" if monotonic > deadline
      end
    end
    expect(open_fds).to be <= fds
    expect(service_thread_ids - tasks).to be_empty
  end

  # The plugin hidden by a bind mount in a private mount namespace, for one
  # child process: what start says on a machine without the package.
  it "raises StartError naming the packages to install when lws's libev plugin is missing" do
    plugin = "/usr/lib/x86_64-linux-gnu/libwebsockets-evlib_ev.so" # Debian's LWS_INSTALL_LIBDIR
    unless Process.uid.zero? && File.exist?(plugin) && system("unshare", "--mount", "true", err: File::NULL)
      skip "needs root, unshare(1) and #{plugin} to hide the plugin from one process"
    end

    script = <<~RUBY
      require "backbone_sync"
      begin
        BackboneSync::Server.new(host: "127.0.0.1", port: 0, event_loop: :ev).start
        puts "started"
      rescue BackboneSync::StartError => e
        puts "StartError: \#{e.message}"
      end
      server = BackboneSync::Server.new(host: "127.0.0.1", port: 0).start
      puts "poll still starts: \#{server.running?}"
      server.stop
    RUBY
    lib = File.expand_path("../../lib", __dir__)
    out, err, status = Timeout.timeout(60) do
      Open3.capture3("unshare", "--mount", "--propagation", "private", "sh", "-c",
                     "mount --bind /dev/null #{plugin} && exec \"$0\" -I\"$1\" -e \"$2\"", RbConfig.ruby, lib, script)
    end
    expect(status.exitstatus).to eq(0), err
    expect(out).to include("StartError: event_loop: :ev needs libwebsockets' libev plugin")
    expect(out).to include("apt-get install libwebsockets-evlib-ev libev-dev")
    expect(out).to include("poll still starts: true")
  end
end
