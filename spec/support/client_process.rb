# frozen_string_literal: true

require "json"
require "tempfile"
require "rbconfig"

module BackboneSyncSpec
  ROOT = File.expand_path("../..", __dir__)
  NODE_DIR = File.join(ROOT, "spec", "support", "node")

  # A child process that prints JSON lines on stdout: the real Faye clients
  # (spec/support/node/faye_client.js, spec/support/ruby_faye_client.rb) and
  # the node reference server. It runs in its own process group so stop can
  # end it and anything it started; stop is always called from an ensure.
  class ClientProcess
    class Failed < StandardError; end

    attr_reader :pid, :lines

    def self.node(script, *args, **opts)
      path = File.join(NODE_DIR, script)
      new(["node", path, *args.map(&:to_s)], **opts)
    end

    # The npm faye Client; websocket: false runs it with client.disable('websocket').
    def self.node_faye(url, channels, count, websocket: true, timeout: 20, tokens: nil, publish: nil)
      node("faye_client.js", *faye_args(url, channels, count, websocket, timeout, tokens, publish))
    end

    # The Ruby faye gem Client (EventMachine) with the same interface.
    def self.ruby_faye(url, channels, count, websocket: true, timeout: 20, tokens: nil, publish: nil)
      script = File.join(ROOT, "spec", "support", "ruby_faye_client.rb")
      new([RbConfig.ruby, script, *faye_args(url, channels, count, websocket, timeout, tokens, publish)])
    end

    # publish: [channel, data] for the client to publish once it is ready.
    def self.faye_args(url, channels, count, websocket, timeout, tokens, publish)
      args = [url, Array(channels).join(","), count.to_s, "--timeout", timeout.to_s]
      args << "--no-websocket" unless websocket
      args.push("--tokens", JSON.generate(tokens)) if tokens
      args.push("--publish", publish[0], JSON.generate(publish[1])) if publish
      args
    end

    def self.open(*args, **opts)
      proc = new(*args, **opts)
      yield proc
    ensure
      proc&.stop
    end

    def initialize(argv, stdin: true)
      @argv = argv
      @stderr = Tempfile.new("bs-child-stderr")
      out_r, out_w = IO.pipe
      @stdin_w = nil
      spawn_opts = { out: out_w, err: @stderr.path, pgroup: true, chdir: ROOT }
      if stdin
        in_r, @stdin_w = IO.pipe
        spawn_opts[:in] = in_r
      else
        spawn_opts[:in] = File::NULL
      end
      @pid = Process.spawn(*argv, **spawn_opts)
      out_w.close
      in_r&.close
      @lines = []
      @lock = Mutex.new
      @cond = ConditionVariable.new
      @eof = false
      @reader = Thread.new(out_r) { |io| read_lines(io) }
    end

    # Waits (bounded) for a line for which the block is true and returns it.
    def wait_for(timeout: 20, what: "the expected line")
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
      @lock.synchronize do
        loop do
          found = @lines.find { |l| yield(l) }
          return found if found

          left = deadline - Process.clock_gettime(Process::CLOCK_MONOTONIC)
          raise Failed, "#{@argv[1]}: no #{what} within #{timeout}s (#{@eof ? 'it exited' : 'still running'}). #{report}" if left <= 0 || @eof

          @cond.wait(@lock, left)
        end
      end
    end

    def wait_ready(timeout: 20)
      line = wait_for(timeout: timeout, what: "ready line") { |l| l["ready"] || l["error"] || l["timeout"] }
      raise Failed, "#{@argv[1]} did not become ready: #{line.inspect}. #{report}" unless line["ready"]

      line
    end

    # Waits for the client to finish; returns the delivery lines ({"message","transport"}).
    def wait_done(timeout: 20)
      wait_for(timeout: timeout, what: "done line") { |l| l["done"] || l["timeout"] || l["error"] }
      deliveries
    end

    def deliveries
      @lock.synchronize { @lines.select { |l| l.key?("message") } }
    end

    def messages
      deliveries.map { |l| l["message"] }
    end

    def stderr_text
      File.read(@stderr.path)
    rescue StandardError
      ""
    end

    # Waits (bounded) for the child to exit and for its output to be read;
    # returns its Process::Status. Its lines are then complete.
    def wait_exit(timeout: 120)
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
      status = nil
      until (status = Process.wait2(@pid, Process::WNOHANG)&.last)
        raise Failed, "#{@argv[1]}: did not exit within #{timeout}s. #{report}" if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline

        sleep 0.05
      end
      @pid = nil
      @reader.join([deadline - Process.clock_gettime(Process::CLOCK_MONOTONIC), 1].max)
      status
    end

    def report
      "stdout lines: #{@lock.owned? ? @lines.inspect : @lock.synchronize { @lines.inspect }}; stderr: #{stderr_text[-2000..] || stderr_text}"
    end

    # TERM the process group, then KILL after a grace period; always reaps.
    def stop(grace: 3)
      return unless @pid

      begin
        @stdin_w&.close
      rescue IOError
        nil
      end
      signal("TERM")
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + grace
      until Process.waitpid(@pid, Process::WNOHANG)
        if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
          signal("KILL")
          Process.waitpid(@pid)
          break
        end
        sleep 0.05
      end
      @status = $?
    rescue Errno::ECHILD
      nil
    ensure
      @pid = nil
      @reader&.join(2)
      @stderr&.close!
    end

    private

    def signal(sig)
      Process.kill(sig, -@pid)
    rescue Errno::ESRCH, Errno::EPERM
      nil
    end

    def read_lines(io)
      io.each_line do |raw|
        parsed = begin
          JSON.parse(raw)
        rescue JSON::ParserError
          { "raw" => raw.chomp }
        end
        @lock.synchronize do
          @lines << parsed
          @cond.broadcast
        end
      end
    rescue IOError
      nil
    ensure
      io.close unless io.closed?
      @lock.synchronize do
        @eof = true
        @cond.broadcast
      end
    end
  end
end
