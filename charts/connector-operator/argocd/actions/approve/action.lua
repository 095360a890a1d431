-- Approves the planned re-authentication shown in status.plannedAction (spec.reauthentication:
-- Manual): openconnectors.io/approve set to its approval value. Offered only while a plan waits.
if obj.status == nil or obj.status.plannedAction == nil or obj.status.plannedAction.approval == nil then
  return obj
end
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["openconnectors.io/approve"] = obj.status.plannedAction.approval
return obj
