# frozen_string_literal: true

# What a SQLite app written by several threads needs: `timeout:` in
# database.yml waits for a lock, but with sqlite3 2.x and Rails 7.x it waits
# inside SQLite holding Ruby's GVL, so the Puma thread that holds the lock
# cannot run to its commit, and the wait ends in SQLite3::BusyException.
# busy_handler_timeout= (sqlite3 2.x) waits the same time, sleeping in Ruby;
# Rails 8 does this itself. WAL mode is Rails' default from 7.1 on, and
# database.yml asks for immediate transactions.
ActiveSupport.on_load(:active_record_sqlite3adapter) do
  prepend(Module.new do
    def configure_connection
      super
      timeout = @config[:timeout]
      if timeout && @raw_connection.respond_to?(:busy_handler_timeout=)
        @raw_connection.busy_handler_timeout = self.class.type_cast_config_to_integer(timeout)
      end
    end
  end)
end
