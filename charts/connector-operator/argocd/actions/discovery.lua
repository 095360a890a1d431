-- Argo CD resource actions of a ConnectorInstance: refresh (reconcile now, reading the remote
-- instance again), reauthenticate (a new token now, nothing changed), test (the token, as a
-- workload uses it), approve (the planned re-authentication of spec.reauthentication: Manual),
-- pause and resume. Pause is offered while not paused, resume while paused; the others need the
-- operator at work (not paused), approve a plan that waits.
local actions = {}
local paused = false
if obj.metadata ~= nil and obj.metadata.annotations ~= nil then
  local value = obj.metadata.annotations["openconnectors.io/paused"]
  paused = value ~= nil and string.lower(value) == "true"
end
local planned = obj.status ~= nil and obj.status.plannedAction ~= nil and obj.status.plannedAction.approval ~= nil
actions["refresh"] = {["disabled"] = paused}
actions["reauthenticate"] = {["disabled"] = paused}
actions["test"] = {["disabled"] = paused}
actions["approve"] = {["disabled"] = paused or not planned}
actions["pause"] = {["disabled"] = paused}
actions["resume"] = {["disabled"] = not paused}
return actions
