# frozen_string_literal: true

require "socket"

module BackboneSyncSpec
  # A real redis-server on a loopback port, owned by the spec: started,
  # stopped and restarted on the same port (the backplane specs need Redis to
  # go away and come back).
  class RedisProcess
    # Another process took the free port between its choice and the bind.
    class PortTaken < StandardError; end

    attr_reader :port

    def self.available?
      system("command -v redis-server >/dev/null 2>&1")
    end

    def self.free_port
      server = TCPServer.new("127.0.0.1", 0)
      server.addr[1]
    ensure
      server&.close
    end

    # extra: more redis-server arguments (a cluster node's, say).
    def initialize(port, extra = [])
      @port = port
      @extra = extra
      @pid = nil
    end

    def running?
      !@pid.nil?
    end

    def url
      "redis://127.0.0.1:#{port}/0"
    end

    def start
      @pid = Process.spawn("redis-server", "--port", port.to_s, "--bind", "127.0.0.1", "--save", "",
                           "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning",
                           *@extra, out: File::NULL, err: File::NULL)
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 10
      until ping
        if Process.wait(@pid, Process::WNOHANG)
          @pid = nil
          raise PortTaken, "redis-server on port #{port} exited at start (the port was taken meanwhile?)"
        end
        raise "redis-server on port #{port} did not answer within 10s" if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline

        sleep 0.05
      end
      self
    end

    def stop
      return unless @pid

      Process.kill("KILL", @pid)
      Process.wait(@pid)
    rescue Errno::ESRCH, Errno::ECHILD
      nil
    ensure
      @pid = nil
    end

    def ping
      TCPSocket.open("127.0.0.1", port) do |s|
        s.write("PING\r\n")
        s.wait_readable(1) && s.readpartial(64).start_with?("+PONG")
      end
    rescue SystemCallError, IOError
      false
    end
  end
end
