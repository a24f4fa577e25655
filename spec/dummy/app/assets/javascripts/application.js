//= require jquery
//= require underscore
//= require backbone
//= require backbone_sync
//= require members
