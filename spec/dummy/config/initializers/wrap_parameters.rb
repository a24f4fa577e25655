# frozen_string_literal: true

# Backbone sends bare JSON attributes; wrap them as params[:member] (on by
# default from Rails 7.0, spelled out for 6.1).
ActiveSupport.on_load(:action_controller) do
  wrap_parameters format: [:json]
end
