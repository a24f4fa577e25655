# frozen_string_literal: true

Rails.application.routes.draw do
  resources :members, only: %i[index show create update destroy]
  root "members#index"
end
