-- Asks for a reconcile now: a new token in openconnectors.io/reconcile-requested-at, which the
-- operator echoes in status.lastHandledReconcileAt once handled.
local os = require("os")
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["openconnectors.io/reconcile-requested-at"] = os.date("!%Y-%m-%dT%H:%M:%SZ")
return obj
