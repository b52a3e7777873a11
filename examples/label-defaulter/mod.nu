# A mutating default: every ConfigMap created in a namespace labelled
# `nuop.dev/defaults: enabled` gets `environment: dev` unless it names one. The script
# answers the changed object; nuop computes the JSON patch and refuses changes to the
# object's identity (apiVersion, kind, name, namespace, uid, resourceVersion).

def "main config" [] {
  {
    name: "label-defaulter"
    version: "v1"
    kind: "ConfigMap"
    webhooks: {
      mutate: {
        operations: [CREATE]
        namespaceSelector: { matchLabels: { "nuop.dev/defaults": "enabled" } }
        failurePolicy: Ignore   # a default is a convenience: never block a create for it
        timeoutSeconds: 3
      }
    }
  }
}

def "main mutate" [] {
  let object = ($in | from json).object
  let labels = $object.metadata.labels? | default {}
  if ($labels.environment? | default "") != "" {
    return   # nothing to change: no output
  }
  $object | upsert metadata.labels ($labels | upsert environment "dev")
}
