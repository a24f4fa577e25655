# frozen_string_literal: true

# The JSON API Backbone.sync talks to, and the page that loads the assets.
class MembersController < ApplicationController
  def index
    respond_to do |format|
      format.html
      format.json { render json: Member.order(:id) }
    end
  end

  def show
    render json: Member.find(params[:id])
  end

  def create
    member = Member.new(member_params)
    if member.save
      render json: member, status: :created
    else
      render json: { errors: member.errors }, status: :unprocessable_entity
    end
  end

  def update
    member = Member.find(params[:id])
    if member.update(member_params)
      render json: member
    else
      render json: { errors: member.errors }, status: :unprocessable_entity
    end
  end

  def destroy
    Member.find(params[:id]).destroy!
    head :no_content
  end

  private

  def member_params
    params.require(:member).permit(:name, :email, :family_id)
  end
end
