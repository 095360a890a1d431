-- Argo CD resource actions of a ConnectorInstance: refresh (reconcile now, reading the remote
-- instance again), pause and resume. Pause is offered while not paused, resume while paused.
local actions = {}
local paused = false
if obj.metadata ~= nil and obj.metadata.annotations ~= nil then
  local value = obj.metadata.annotations["openconnectors.io/paused"]
  paused = value ~= nil and string.lower(value) == "true"
end
actions["refresh"] = {["disabled"] = paused}
actions["pause"] = {["disabled"] = paused}
actions["resume"] = {["disabled"] = not paused}
return actions
