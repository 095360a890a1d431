-- Argo CD health of openconnectors.io/ConnectorInstance (resource.customizations.health.openconnectors.io_ConnectorInstance).
-- Order matters: deleting, generation not observed, Stalled, paused, awaiting a person, Reconciling,
-- Ready with a re-authentication awaiting approval, Ready.
local hs = {}

local function condition(conditions, type)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == type then
      return c
    end
  end
  return nil
end

local function describe(c)
  local text = c.reason or ""
  if c.message ~= nil and c.message ~= "" then
    text = text .. ": " .. c.message
  end
  return text
end

local status = obj.status
local conditions = nil
if status ~= nil then
  conditions = status.conditions
end
local ready = condition(conditions, "Ready")

if obj.metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  if ready ~= nil and ready.status == "False" then
    hs.message = "Deleting: " .. describe(ready)
  else
    hs.message = "Deleting: waiting for the operator to delete the remote instance"
  end
  return hs
end

if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end

local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration ~= generation) then
  hs.status = "Progressing"
  hs.message = string.format("Waiting for the operator to observe generation %d", generation)
  return hs
end

local stalled = condition(conditions, "Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled)
  return hs
end

local annotations = obj.metadata.annotations
local paused_by_annotation = annotations ~= nil and annotations["openconnectors.io/paused"] ~= nil
  and string.lower(annotations["openconnectors.io/paused"]) == "true"
if paused_by_annotation or (ready ~= nil and ready.reason == "Paused") then
  hs.status = "Suspended"
  if ready ~= nil and ready.reason == "Paused" then
    hs.message = describe(ready)
  else
    hs.message = "Paused by annotation openconnectors.io/paused"
  end
  return hs
end

local reconciling = condition(conditions, "Reconciling")
-- Waiting for a person to authorize an OAuth connector in a browser: an external event, like a
-- suspended CronJob; not progress that finishes by itself.
local awaiting = { AwaitingAuthorization = true, AuthorizationDenied = true, AuthorizationFailed = true,
  AuthorizationExpired = true }
if reconciling ~= nil and reconciling.status == "True" and awaiting[reconciling.reason] then
  hs.status = "Suspended"
  hs.message = describe(reconciling)
  return hs
end
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = describe(reconciling)
  return hs
end

-- A re-authentication waiting for approval (spec.reauthentication: Manual): the token in use still
-- works, so the instance is Healthy; the message says what waits and how to approve it.
local pending = condition(conditions, "ReAuthenticationPending")
if ready ~= nil and ready.status == "True" and pending ~= nil and pending.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(pending)
  return hs
end

if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready)
  return hs
end

hs.status = "Progressing"
if ready ~= nil then
  hs.message = describe(ready)
else
  hs.message = "Waiting for the Ready condition"
end
return hs
