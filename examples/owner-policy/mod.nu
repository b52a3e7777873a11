# An admission policy: ConfigMaps in namespaces labelled `nuop.dev/owner-policy: enforce`
# must carry an `owner` label. Webhook-only: no `main reconcile`, so nuop starts no
# controller for it, it only answers the API server's admission requests.

def "main config" [] {
  {
    name: "owner-policy"
    version: "v1"
    kind: "ConfigMap"   # the default rule: ConfigMaps, every scope
    webhooks: {
      validate: {
        operations: [CREATE, UPDATE]
        namespaceSelector: { matchLabels: { "nuop.dev/owner-policy": "enforce" } }
        failurePolicy: Fail
        timeoutSeconds: 5
      }
    }
  }
}

# Input: the AdmissionReview's request ({operation, object, oldObject, userInfo, dryRun}).
# Answer: {allowed, message?, warnings?}; nothing at all also means allowed.
def "main validate" [] {
  let request = $in | from json
  let object = $request.object
  let labels = $object.metadata.labels? | default {}
  let owner = $labels.owner? | default ""
  if $owner == "" {
    return {
      allowed: false
      message: $"ConfigMap ($object.metadata.name? | default '(generated)') needs an `owner` label in this namespace \(policy nuop.dev/owner-policy=enforce\)"
    }
  }
  if ($labels.team? | default "") == "" {
    return { allowed: true, warnings: [$"owner ($owner) is set; a `team` label helps the on-call find it"] }
  }
  { allowed: true }
}
