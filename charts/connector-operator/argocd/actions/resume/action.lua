-- Resumes reconciliation: removes the pause annotation.
if obj.metadata.annotations ~= nil then
  obj.metadata.annotations["openconnectors.io/paused"] = nil
end
return obj
