-- Pauses reconciliation: no platform calls until resumed (deletion is still honoured).
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["openconnectors.io/paused"] = "true"
return obj
